from __future__ import annotations

import hashlib

import pytest
import safetensors.torch
import torch
from theoden_client.errors import (
    BlobIntegrityError,
    NoExecutorError,
    RegistryError,
    ResourceNotFoundError,
    WeightsMismatchError,
)
from theoden_client.executors import ChildCommandError, ExecutionContext, merge_responses
from theoden_client.losses import LossSet, MetricSet
from theoden_client.optim import ScheduledLR
from theoden_client.trainer import DataloaderSettings
from theoden_protocol import (
    ClearResources,
    ComputeClientScore,
    Conditional,
    DatasetSpec,
    DirichletPartition,
    ExecutionResponse,
    HasResource,
    InitModel,
    InspectLabelDistribution,
    LoadDataset,
    LoadWeights,
    LossSpec,
    MetricSpec,
    ModelSpec,
    OptimizerSpec,
    PrintResourceKeys,
    Repeat,
    SchedulerSpec,
    SendModel,
    Sequential,
    SetDataloader,
    SetLocalPartition,
    SetLosses,
    SetOptimizer,
    SetPartition,
    SetScheduler,
    Train,
    Validate,
)
from torch import nn
from torch.utils.data import Subset

from ._fakes import FakeTransport

N, FEATURES, CLASSES = 240, 8, 3


def setup_commands(
    *, lr: float = 0.1, metrics: tuple[str, ...] = ("accuracy", "macro_f1", "class_counts")
) -> Sequential:
    return Sequential(
        commands=[
            LoadDataset(
                dataset=DatasetSpec(
                    name="synthetic", kwargs={"n_samples": N, "n_features": FEATURES, "num_classes": CLASSES, "seed": 1}
                )
            ),
            SetLocalPartition(splits={"train": 0.75, "val": 0.25}, seed=3),
            InitModel(
                model=ModelSpec(name="mlp", kwargs={"in_features": FEATURES, "hidden": [16], "num_classes": CLASSES})
            ),
            SetOptimizer(optimizer=OptimizerSpec(name="sgd", kwargs={"lr": lr})),
            SetLosses(losses=[LossSpec(name="cross_entropy")], metrics=[MetricSpec(name=m) for m in metrics]),
            SetDataloader(split="train", batch_size=16),
        ]
    )


@pytest.fixture
def ready(ctx: ExecutionContext) -> ExecutionContext:
    ctx.run(setup_commands())
    return ctx


def test_setup_holds_the_documented_resource_keys(ready: ExecutionContext) -> None:
    assert ready.resources.keys() == [
        "dataloader:train",
        "dataset",
        "dataset:train",
        "dataset:val",
        "losses",
        "metrics",
        "model",
        "optimizer",
    ]
    assert len(ready.resources.get("dataset:train")) == 180
    assert len(ready.resources.get("dataset:val")) == 60
    assert isinstance(ready.resources.get("losses"), LossSet)
    assert isinstance(ready.resources.get("metrics"), MetricSet)
    assert isinstance(ready.resources.get("dataloader:train"), DataloaderSettings)


def test_training_lowers_the_loss_and_raises_accuracy(ready: ExecutionContext) -> None:
    before = ready.run(Validate(split="val"))
    trained = ready.run(Train(steps=80))
    after = ready.run(Validate(split="val"))

    assert trained.num_samples == 180
    # 180 samples in batches of 16: 12 batches per pass (the last has 4); 80 steps = 6 passes + 8 batches
    assert trained.counts == {"train/steps": 80, "train/samples_seen": 6 * 180 + 8 * 16}
    assert after.metrics["val/loss"] < 0.5 * before.metrics["val/loss"]
    assert after.metrics["val/accuracy"] > 0.8
    assert after.metrics["val/accuracy"] > before.metrics["val/accuracy"] + 0.3
    assert 0 < after.metrics["val/macro_f1"] <= 1
    assert after.num_samples == 60
    # class_counts travels as integer counts, not metrics
    assert sum(v for k, v in after.counts.items() if k.endswith("/total")) == 60
    assert not any("class_counts" in k for k in after.metrics)


def test_train_loss_goes_down_between_rounds(ready: ExecutionContext) -> None:
    first = ready.run(Train(steps=20)).metrics["train/loss"]
    ready.run(Train(steps=40))
    last = ready.run(Train(steps=20)).metrics["train/loss"]
    assert last < first


def test_zero_steps_is_a_noop_that_still_reports_samples(ready: ExecutionContext) -> None:
    model = ready.resources.get("model", nn.Module)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    response = ready.run(Train(steps=0))
    assert response.num_samples == 180
    assert "train/loss" not in response.metrics
    assert response.counts["train/steps"] == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_train_by_epochs_counts_every_batch(ready: ExecutionContext) -> None:
    response = ready.run(Train(epochs=2, batch_size=50))
    assert response.counts == {"train/steps": 2 * 4, "train/samples_seen": 2 * 180}


def test_missing_resources_fail_with_the_key_and_what_is_held(ctx: ExecutionContext) -> None:
    with pytest.raises(ResourceNotFoundError, match=r"'model'.*holds: nothing"):
        ctx.run(Train(steps=1))
    ctx.run(setup_commands())
    ctx.resources.pop("losses")
    with pytest.raises(ResourceNotFoundError, match="SetLosses"):
        ctx.run(Train(steps=1))
    with pytest.raises(ResourceNotFoundError, match=r"'dataset:test'"):
        ctx.run(Validate(split="test"))


@pytest.mark.parametrize("through", ["memory", "file"])
def test_send_model_uploads_safetensors_and_load_weights_restores_them(
    ready: ExecutionContext, fake: FakeTransport, through: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: small downloads travel through memory; with the limit at 0 they go through scratch files
    import theoden_client.executors.resource_commands as resource_commands

    if through == "file":
        monkeypatch.setattr(resource_commands, "IN_MEMORY_BYTES", 0)
    ready.run(Train(steps=5))
    sent = ready.run(SendModel())
    ref = sent.blobs["model"]
    assert sent.num_samples == 180
    assert fake.blobs[ref.id][:8] != b"\x80\x04\x95"  # not a pickle
    trained = {k: v.clone() for k, v in ready.resources.get("model", nn.Module).state_dict().items()}
    # the upload (built from views of the tensors) is a safetensors file the reference library reads
    assert hashlib.sha256(fake.blobs[ref.id]).hexdigest() == ref.sha256 == ref.id
    by_library = safetensors.torch.load(fake.blobs[ref.id])
    assert by_library.keys() == trained.keys() and all(torch.equal(by_library[k], trained[k]) for k in trained)

    ready.run(
        InitModel(model=ModelSpec(name="mlp", kwargs={"in_features": FEATURES, "hidden": [16], "num_classes": CLASSES}))
    )
    ready.run(LoadWeights(blob=ref))
    loaded = ready.resources.get("model", nn.Module).state_dict()
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)
    assert ready.workdir.exists() == (through == "file")  # memory: no file was ever made
    assert not ready.workdir.exists() or not list(ready.workdir.iterdir())  # scratch files are gone


def test_load_weights_shape_mismatch_names_the_tensor(ready: ExecutionContext) -> None:
    ref = ready.run(SendModel()).blobs["model"]
    ready.run(
        InitModel(model=ModelSpec(name="mlp", kwargs={"in_features": FEATURES, "hidden": [32], "num_classes": CLASSES}))
    )
    with pytest.raises(WeightsMismatchError, match=r"net\.1\.weight: model has \(32, 8\), weights have \(16, 8\)"):
        ready.run(LoadWeights(blob=ref))


def test_load_weights_refuses_a_corrupted_blob(ready: ExecutionContext, fake: FakeTransport) -> None:
    ref = ready.run(SendModel()).blobs["model"]
    data = bytearray(fake.blobs[ref.id])
    data[-1] ^= 0xFF
    fake.blobs[ref.id] = bytes(data)
    with pytest.raises(BlobIntegrityError, match="failed verification"):
        ready.run(LoadWeights(blob=ref))


def test_sequential_merges_children_and_takes_samples_from_send_model(ready: ExecutionContext) -> None:
    response = ready.run(Sequential(commands=[Train(steps=3), SendModel(), Validate(split="val")]))
    assert {"train/loss", "val/loss", "val/accuracy"} <= set(response.metrics)
    assert set(response.blobs) == {"model"}
    assert response.counts["train/steps"] == 3
    assert response.num_samples == 180  # the train split (SendModel), not the later val split (60)


def test_merge_without_send_model_takes_the_last_count() -> None:
    merged = merge_responses(
        [
            (Train(steps=1), ExecutionResponse(num_samples=5, metrics={"a": 1.0})),
            (Validate(), ExecutionResponse(num_samples=7)),
        ]
    )
    assert merged.num_samples == 7
    assert merged.metrics == {"a": 1.0}


def test_sequential_failure_names_the_failing_child(ctx: ExecutionContext) -> None:
    bad = Train(steps=1)
    with pytest.raises(ChildCommandError, match=rf"step 2/2 'train' \(uuid {bad.uuid}\) failed: ResourceNotFoundError"):
        ctx.run(Sequential(commands=[PrintResourceKeys(), bad]))


def test_conditional_runs_the_branch_the_condition_picks(ready: ExecutionContext) -> None:
    command = Conditional(condition=HasResource(key="model"), then=Validate(split="val"), otherwise=PrintResourceKeys())
    taken = ready.run(command)
    assert taken.details["condition"] is True
    assert "val/loss" in taken.metrics
    negated = Conditional(condition=HasResource(key="model", negate=True), then=Validate(split="val"))
    skipped = ready.run(negated)
    assert skipped.details == {"condition": False}
    assert not skipped.metrics


def test_repeat_runs_the_command_n_times(ready: ExecutionContext) -> None:
    calls: list[int] = []
    original = ready.executors.handler_for(Train(steps=1))

    def counting_train(command: Train, context: ExecutionContext) -> ExecutionResponse | None:
        calls.append(command.steps or 0)
        return original(command, context)

    ready.executors.register(Train, counting_train, override=True)
    response = ready.run(Repeat(times=3, command=Train(steps=2)))
    assert calls == [2, 2, 2]
    assert response.counts["train/steps"] == 2  # merged: the last repetition's report
    assert response.num_samples == 180


def test_partition_keeps_the_requested_part(ctx: ExecutionContext) -> None:
    ctx.run(setup_commands())
    ctx.run(SetPartition(partition=DirichletPartition(num_parts=4, alpha=0.5, seed=2), part=1))
    dataset = ctx.resources.get("dataset", Subset)
    assert 0 < len(dataset) < N
    with pytest.raises(ValueError, match="part 4 requested, but the partition has only 4 parts"):
        ctx.run(SetPartition(partition=DirichletPartition(num_parts=4, alpha=0.5), part=4))


def test_label_distribution_reports_counts_only(ready: ExecutionContext) -> None:
    response = ready.run(InspectLabelDistribution(split="train"))
    assert sum(response.counts.values()) == response.num_samples == 180
    assert set(response.counts) == {f"train/label/{c}" for c in range(CLASSES)}


def test_client_score_uses_the_named_metric(ready: ExecutionContext) -> None:
    response = ready.run(ComputeClientScore(split="val", metric="accuracy"))
    assert response.metrics["score"] == response.metrics["val/accuracy"]
    with pytest.raises(RegistryError, match="unknown metric 'nope'"):
        ready.run(ComputeClientScore(split="val", metric="nope"))


def test_clear_and_print_resources(ready: ExecutionContext) -> None:
    listed = ready.run(PrintResourceKeys())
    assert listed.details["resources"]["model"] == "theoden_client.models.MLP"  # type: ignore[index]
    cleared = ready.run(ClearResources(keys=["optimizer", "nothing-here"]))
    assert cleared.details == {"cleared": "optimizer", "not_held": "nothing-here"}
    assert not ready.resources.has("optimizer")
    ready.run(ClearResources())
    assert ready.resources.keys() == []


def test_scheduler_steps_every_optimizer_step_when_asked(ready: ExecutionContext) -> None:
    ready.run(
        SetScheduler(scheduler=SchedulerSpec(name="step", kwargs={"step_size": 2, "gamma": 0.5, "interval": "step"}))
    )
    assert isinstance(ready.resources.get("scheduler"), ScheduledLR)
    response = ready.run(Train(steps=4))
    assert response.metrics["train/lr"] == pytest.approx(0.1 * 0.25)


def test_unknown_command_type_has_no_executor(ctx: ExecutionContext) -> None:
    ctx.executors.unregister(Validate)
    with pytest.raises(NoExecutorError, match="no executor for command type 'validate'"):
        ctx.run(Validate())


def test_overriding_a_builtin_needs_override(ctx: ExecutionContext) -> None:
    def my_train(command: Train, context: ExecutionContext) -> ExecutionResponse:
        return ExecutionResponse(metrics={"custom": float(command.steps or 0)})

    with pytest.raises(RegistryError, match="already has a handler"):
        ctx.executors.register(Train, my_train)
    ctx.executors.register(Train, my_train, override=True)
    assert ctx.run(Train(steps=7)).metrics == {"custom": 7.0}


def test_an_optimizer_of_a_replaced_model_is_refused(ready: ExecutionContext) -> None:
    ready.run(InitModel(model=ModelSpec(name="mlp", kwargs={"in_features": FEATURES, "num_classes": CLASSES})))
    with pytest.raises(ValueError, match="send SetOptimizer after InitModel"):
        ready.run(Train(steps=1))
