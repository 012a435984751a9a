"""End-to-end runs of the server core with simulated clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load
from theoden_protocol import (
    CommandStatus,
    DatasetSpec,
    ExecutionResponse,
    Exit,
    IndexPartition,
    LoadDataset,
    ModelSpec,
    SendModel,
    Sequential,
    SetPartition,
    Train,
)
from theoden_server.operations import (
    ClosedDistribution,
    DistributionStatus,
    ExitRun,
    InitGlobalModel,
    InitGlobalModelFromClient,
    LoadGlobalModel,
    MultiRoundTraining,
    OpenDistribution,
    RequireNumberOfClients,
    replace_nested,
)
from theoden_server.watchers import BestModelDetector, BestModelSaver, MetricCollector

from ._harness import SimClient, drive, tiny_model, wait_for


def plan(global_file: Path, n_rounds: int = 2, **kwargs: object) -> list:
    return [
        RequireNumberOfClients(3),
        LoadGlobalModel(global_file),
        MultiRoundTraining(n_rounds, steps=1, batch_size=4, **kwargs),  # type: ignore[arg-type]
    ]


def expected_fedavg(clients: list[SimClient], round_index: int) -> dict[str, torch.Tensor]:
    uploads = [c.uploads[round_index] for c in clients]
    weights = [c.num_samples for c in clients]
    out = {}
    for key in uploads[0]:
        if uploads[0][key].is_floating_point():
            total = sum(w * u[key].double() for w, u in zip(weights, uploads, strict=True))
            out[key] = (total / sum(weights)).float()
        else:
            out[key] = torch.stack([u[key] for u in uploads]).max(dim=0).values
    return out


def test_three_clients_multi_round_fedavg_matches_hand_computed_mean(make_server, global_file: Path) -> None:
    # Prepare
    collector, detector, saver = MetricCollector(), BestModelDetector("val/accuracy"), BestModelSaver()
    server = make_server(instructions=plan(global_file, n_rounds=3), watchers=[collector, detector, saver])
    clients = [SimClient(server, name, num_samples=n) for name, n in (("alice", 10), ("bob", 30), ("carol", 60))]
    for client in clients:
        client.register()

    # Execute
    drive(server, clients)

    # Assert
    assert server.failed is None
    assert server.finished.is_set()
    assert all(c.exited for c in clients)
    final = load(server.store.read_bytes(server.global_model.id))
    expected = expected_fedavg(clients, 2)
    assert final.keys() == expected.keys()
    for key in expected:
        assert final[key].dtype == expected[key].dtype
        torch.testing.assert_close(final[key], expected[key], rtol=1e-6, atol=1e-6)
    assert (
        final["bn.num_batches_tracked"].item() == 3 * 60
    )  # max over clients (each adds its num_samples), never averaged
    lines = [json.loads(line) for line in (server.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(line["phase"], line["round"]) for line in lines] == [
        ("round", 0),
        ("round", 1),
        ("round", 2),
        ("final_validation", 3),
    ]
    acc = [0.5 + r / 10 + n / 1000 for r, n in ((0, 10), (0, 30), (0, 60))]
    assert lines[0]["metrics"]["val/accuracy"] == pytest.approx((10 * acc[0] + 30 * acc[1] + 60 * acc[2]) / 100)
    assert lines[0]["num_samples"] == 100
    best = server.run_dir / "best_model.safetensors"
    assert best.read_bytes() == server.store.read_bytes(server.global_model.id)
    assert detector.best_round == 3


def test_each_round_loads_the_previous_rounds_global_model(make_server, global_file: Path) -> None:
    # Prepare
    server = make_server(instructions=plan(global_file, n_rounds=2, final_validation=False))
    clients = [SimClient(server, name) for name in ("a", "b", "c")]
    for client in clients:
        client.register()

    # Execute
    drive(server, clients)

    # Assert
    trainings = [cmd for cmd in clients[0].received if isinstance(cmd, Sequential)]
    assert len(trainings) == 2
    first_blob = trainings[0].commands[0].blob
    second_blob = trainings[1].commands[0].blob
    assert server.store.read_bytes(first_blob.id) == global_file.read_bytes()
    round0 = expected_fedavg(clients, 0)
    torch.testing.assert_close(load(server.store.read_bytes(second_blob.id))["w"], round0["w"])
    assert [type(c).__name__ for c in trainings[0].commands] == ["LoadWeights", "Train", "Validate", "SendModel"]
    assert trainings[0].commands[1].round == 0
    assert trainings[1].commands[1].round == 1
    assert server.store.is_public(second_blob.id)


def failing_train(names: set[str]):
    from ._harness import default_behaviour

    def behaviour(client: SimClient, command):
        if isinstance(command, Sequential) and client.name in names:
            raise RuntimeError("CUDA out of memory (simulated)")
        return default_behaviour(client, command)

    return behaviour


def test_a_failing_client_is_failed_and_the_round_proceeds_above_the_minimum(make_server, global_file: Path) -> None:
    # Prepare
    server = make_server(instructions=plan(global_file, n_rounds=1, final_validation=False), min_successful_clients=2)
    good = [SimClient(server, "a", num_samples=10), SimClient(server, "b", num_samples=20)]
    bad = SimClient(server, "c", behaviour=failing_train({"c"}))
    for client in [*good, bad]:
        client.register()

    # Execute
    drive(server, [*good, bad])

    # Assert
    assert server.failed is None
    round0 = next(i for i in server.operations.completed if isinstance(i, ClosedDistribution) and i.round == 0)
    assert round0.statuses() == {
        "a": DistributionStatus.FINISHED,
        "b": DistributionStatus.FINISHED,
        "c": DistributionStatus.FAILED,
    }
    assert "out of memory" in round0.failed_clients()["c"]
    expected = expected_fedavg(good, 0)
    torch.testing.assert_close(load(server.store.read_bytes(server.global_model.id))["w"], expected["w"])


def test_too_few_successful_clients_fail_the_run_loudly(make_server, global_file: Path) -> None:
    # Prepare
    server = make_server(instructions=plan(global_file, n_rounds=2), min_successful_clients=2)
    clients = [SimClient(server, "a"), SimClient(server, "b", behaviour=failing_train({"b", "c"}))]
    clients.append(SimClient(server, "c", behaviour=failing_train({"b", "c"})))
    for client in clients:
        client.register()

    # Execute
    drive(server, clients)
    drive(server, clients, until=lambda: all(c.exited for c in clients))

    # Assert
    assert server.failed is not None
    assert "round 0" in server.failed
    assert "minimum of 2" in server.failed
    assert "out of memory" in server.failed
    initial = server.store.read_bytes(server.global_model.id)
    assert initial == (server.run_dir.parent / "init.safetensors").read_bytes()  # global model untouched
    assert all(c.exited for c in clients)  # clients are told to exit
    assert server.failed in clients[0].received[-1].reason


def test_no_usable_results_without_minimum_keep_the_global_model(make_server, global_file: Path) -> None:
    # Prepare
    server = make_server(instructions=plan(global_file, n_rounds=1, final_validation=False))
    clients = [SimClient(server, n, behaviour=failing_train({"a", "b", "c"})) for n in ("a", "b", "c")]
    for client in clients:
        client.register()

    # Execute
    drive(server, clients)

    # Assert
    assert server.failed is None
    assert server.store.read_bytes(server.global_model.id) == global_file.read_bytes()


def test_weights_that_do_not_fit_are_rejected_with_a_clear_message(make_server, global_file: Path) -> None:
    # Prepare
    def wrong_shape(client: SimClient, command):
        if isinstance(command, Sequential):
            ref = client.upload({"w": torch.zeros(5, 3), "b": torch.zeros(3), "extra": torch.zeros(1)})
            return ExecutionResponse(blobs={"model": ref}, num_samples=5)
        return None

    server = make_server(instructions=plan(global_file, n_rounds=1, final_validation=False))
    clients = [SimClient(server, "a"), SimClient(server, "b"), SimClient(server, "c", behaviour=wrong_shape)]
    for client in clients:
        client.register()

    # Execute
    drive(server, clients)

    # Assert
    round0 = server.operations.completed[2]
    assert isinstance(round0, ClosedDistribution)
    error = round0.failed_clients()["c"]
    assert "'w' has shape [5, 3], expected [4, 3]" in error
    assert "unknown keys ['extra']" in error
    assert "missing keys ['bn.num_batches_tracked']" in error
    expected = expected_fedavg(clients[:2], 0)
    torch.testing.assert_close(load(server.store.read_bytes(server.global_model.id))["b"], expected["b"])


def test_uploads_of_another_client_are_rejected(make_server, global_file: Path) -> None:
    # Prepare
    def steal(client: SimClient, command):
        if isinstance(command, Sequential):
            ref = client.server.store.put_bytes(
                __import__("safetensors.torch").torch.save(tiny_model(0)), owner="someone-else"
            )
            return ExecutionResponse(blobs={"model": ref}, num_samples=5)
        return None

    server = make_server(instructions=plan(global_file, n_rounds=1, final_validation=False))
    clients = [SimClient(server, "a"), SimClient(server, "b"), SimClient(server, "c", behaviour=steal)]
    for client in clients:
        client.register()

    # Execute
    drive(server, clients)

    # Assert
    round0 = server.operations.completed[2]
    assert "was not uploaded by client c" in round0.failed_clients()["c"]


def test_late_joiner_gets_the_open_distribution_first(make_server, global_file: Path) -> None:
    # Prepare
    open_dist = OpenDistribution(
        [
            LoadDataset(dataset=DatasetSpec(name="digits")),
            SetPartition(partition=IndexPartition(num_parts=3)),
        ],
        customize=lambda client, index, cmd: replace_nested(cmd, SetPartition, part=index),
    )
    server = make_server(instructions=plan(global_file, n_rounds=1), open_distribution=open_dist)
    early = [SimClient(server, "a"), SimClient(server, "b")]
    for client in early:
        client.register()
    drive(server, early, until=lambda: all(len(c.received) >= 2 for c in early))
    assert server.operations.current is not None
    assert server.operations.current.name == "RequireNumberOfClients"

    # Execute
    late = SimClient(server, "late")
    late.register()
    drive(server, [*early, late])

    # Assert
    assert server.failed is None
    for index, client in enumerate([*early, late]):
        first, second, third = client.received[:3]
        assert isinstance(first, LoadDataset)
        assert isinstance(second, SetPartition)
        assert second.part == index
        assert isinstance(third, Sequential)


def test_permanent_condition_blocks_every_hand_out(make_server, global_file: Path) -> None:
    # Prepare
    server = make_server(
        instructions=[LoadGlobalModel(global_file), MultiRoundTraining(1, steps=1)],
        permanent_conditions=[RequireNumberOfClients(2)],
    )
    first = SimClient(server, "a")
    first.register()
    server.operations.wait_idle()

    # Execute
    blocked = [first.pull() for _ in range(3)]
    second = SimClient(server, "b")
    second.register()
    unblocked = first.pull()

    # Assert
    assert blocked == [None, None, None]
    assert isinstance(unblocked, Sequential)


def test_init_global_model_from_spec_and_from_a_client(make_server) -> None:
    # Prepare
    spec = ModelSpec(name="mlp", kwargs={"in_features": 4, "hidden": [3], "num_classes": 2})
    from_spec = make_server(instructions=[InitGlobalModel(spec, seed=1)])

    def send(client: SimClient, command):
        if isinstance(command, SendModel):
            ref = client.upload(tiny_model(5))
            return ExecutionResponse(blobs={"model": ref}, num_samples=1)
        return None

    from_client = make_server(
        instructions=[RequireNumberOfClients(2), InitGlobalModelFromClient(seed=3)],
        run_dir=Path(from_spec.run_dir) / "b",
    )
    clients = [SimClient(from_client, n, behaviour=send) for n in ("x", "y")]
    for client in clients:
        client.register()

    # Execute
    from_spec.finished.wait(5)
    drive(from_client, clients)

    # Assert
    weights = load(from_spec.store.read_bytes(from_spec.global_model.id))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "net.1.weight": (3, 4),
        "net.1.bias": (3,),
        "net.3.weight": (2, 3),
        "net.3.bias": (2,),
    }
    assert from_client.failed is None
    assert sum(len(c.uploads) for c in clients) == 1
    assert load(from_client.store.read_bytes(from_client.global_model.id))["w"].equal(tiny_model(5)["w"])


def test_server_run_with_epochs_and_a_user_aggregator(make_server, global_file: Path) -> None:
    # Prepare
    from theoden_server.aggregation import Aggregator

    class TakeLargestClient(Aggregator):
        def aggregate(self):
            return max(self.results, key=lambda r: r.num_samples or 0).load()

    server = make_server(
        instructions=[
            RequireNumberOfClients(2),
            LoadGlobalModel(global_file),
            MultiRoundTraining(1, epochs=2, aggregator=TakeLargestClient(), validate=False, final_validation=False),
        ]
    )
    clients = [SimClient(server, "a", num_samples=5), SimClient(server, "b", num_samples=50)]
    for client in clients:
        client.register()

    # Execute
    drive(server, clients)

    # Assert
    train = clients[0].received[0].commands[1]
    assert isinstance(train, Train)
    assert train.epochs == 2
    assert train.steps is None
    assert [type(c).__name__ for c in clients[0].received[0].commands] == ["LoadWeights", "Train", "SendModel"]
    final = load(server.store.read_bytes(server.global_model.id))
    assert final["w"].equal(clients[1].uploads[0]["w"])


def test_metrics_outside_rounds_reach_metrics_jsonl(make_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from theoden_protocol import ComputeClientScore, ExecutionResponse
    from theoden_server import ClosedDistribution, MetricCollector, RequireNumberOfClients

    from ._harness import SimClient, drive

    # Prepare: a distribution that belongs to no round, with its own phase label
    server = make_server(
        instructions=[RequireNumberOfClients(2), ClosedDistribution(ComputeClientScore(), phase="scores")],
        watchers=[MetricCollector()],
    )
    clients = [
        SimClient(server, name, behaviour=lambda c, cmd: ExecutionResponse(metrics={"score": float(len(c.name))}))
        for name in ("a", "bb")
    ]
    for client in clients:
        client.register()
    # Execute
    drive(server, clients)
    # Assert
    lines = [json.loads(line) for line in (server.run_dir / "metrics.jsonl").read_text().splitlines()]
    scores = {next(iter(line["clients"])): line["metrics"]["score"] for line in lines if line["phase"] == "scores"}
    assert scores == {"a": 1.0, "bb": 2.0}


def test_a_distribution_completes_only_when_its_last_client_settles_in_any_order(make_server) -> None:
    # Prepare: four clients get a command; they finish last-selected first
    distribution = ClosedDistribution(Train(steps=0))
    server = make_server(instructions=[RequireNumberOfClients(4), distribution])
    clients = [SimClient(server, f"c{i}") for i in range(4)]
    for client in clients:
        client.register()
    commands = {client.name: client.pull_wait() for client in clients}
    order = sorted(clients, key=lambda c: distribution.selected.index(c.name), reverse=True)

    # Execute / Assert
    for i, client in enumerate(order):
        client.report(commands[client.name], CommandStatus.FINISHED, ExecutionResponse())
        if i < len(order) - 1:
            wait_for(lambda c=client: distribution.entries[c.name].status is DistributionStatus.FINISHED)
            server.operations.wait_idle()
            assert not distribution.done
    wait_for(lambda: distribution.done)
    assert set(distribution.finished_clients()) == {c.name for c in clients}


def test_permanent_conditions_never_hold_back_the_end_of_a_run(make_server) -> None:
    # Prepare: the run is over while a permanent condition no longer holds (a client left)
    server = make_server(instructions=[ExitRun("bye")], permanent_conditions=[RequireNumberOfClients(2)])
    client = SimClient(server, "a")
    client.register()

    # Execute
    command = client.pull_wait()

    # Assert
    assert isinstance(command, Exit)
    assert command.reason == "bye"


@pytest.mark.parametrize("keep_uploads", [False, True])
def test_a_rounds_uploads_are_deleted_once_it_is_aggregated_unless_kept(
    make_server, global_file: Path, keep_uploads: bool
) -> None:
    # Prepare: a accepted, b rejected (weights of the wrong shape), c reports a blob that is not its own
    from ._harness import default_behaviour

    uploads: list[str] = []
    foreign = None

    def behaviour(client: SimClient, command):
        nonlocal foreign
        if not isinstance(command, Sequential):
            return default_behaviour(client, command)
        if client.name == "b":
            ref = client.upload({"w": torch.zeros(5, 3)})
        elif client.name == "c":
            ref = foreign = client.server.store.put_bytes(b"not c's" * 100, owner="someone-else")
            return ExecutionResponse(blobs={"model": ref}, num_samples=5)
        else:
            response = default_behaviour(client, command)
            assert response is not None
            ref = response.blobs["model"]
        uploads.append(ref.id)
        return ExecutionResponse(blobs={"model": ref}, num_samples=5)

    server = make_server(instructions=plan(global_file, n_rounds=2, final_validation=False), keep_uploads=keep_uploads)
    clients = [SimClient(server, name, behaviour=behaviour) for name in ("a", "b", "c")]
    for client in clients:
        client.register()

    # Execute
    drive(server, clients)

    # Assert: every global model stays; the clients' own uploads go unless kept; another's blob is never touched
    assert server.failed is None
    assert len(uploads) == 4  # a and b, two rounds
    assert all(server.store.exists(blob) for blob in uploads) is keep_uploads
    assert any(server.store.exists(blob) for blob in uploads) is keep_uploads
    trainings = [cmd for cmd in clients[0].received if isinstance(cmd, Sequential)]
    for model in [*(t.commands[0].blob for t in trainings), server.global_model]:
        assert server.store.exists(model.id) and server.store.is_public(model.id)
    assert foreign is not None and server.store.exists(foreign.id)


def test_the_default_best_model_detector_follows_the_plans_choosing_metric(tmp_path: Path) -> None:
    from theoden_protocol import LossSpec, MetricSpec, SetLosses
    from theoden_server.start import build_server

    losses = SetLosses(
        losses=[LossSpec(name="cross_entropy")],
        metrics=[MetricSpec(name="f1")],
        choosing_metric="f1",
        higher_is_better=True,
    )
    by_loss = SetLosses(losses=[LossSpec(name="cross_entropy")], choosing_metric="loss", higher_is_better=False)
    setup = ClosedDistribution(Sequential(commands=[LoadDataset(dataset=DatasetSpec(name="synthetic")), losses]))
    rounds = MultiRoundTraining(2, steps=1, val_split="holdout")

    chosen = BestModelDetector.for_plan([RequireNumberOfClients(1), setup, rounds])
    from_open = BestModelDetector.for_plan([], OpenDistribution([by_loss]))
    default = BestModelDetector.for_plan([setup.__class__(Train(steps=1)), rounds])

    assert (chosen.metric, chosen.higher_is_better) == ("holdout/f1", True)
    assert (from_open.metric, from_open.higher_is_better) == ("val/loss", False)
    assert (default.metric, default.higher_is_better) == ("val/accuracy", True)
    from theoden_server.security import UsersFile

    users = UsersFile(tmp_path / "users.toml")
    users.save()
    built = build_server([setup, rounds], "choice", users=users, run_dir=tmp_path / "run", jwt_secret=b"k" * 32)
    detectors = [w for w in built.server.watchers.watchers if isinstance(w, BestModelDetector)]
    assert [(d.metric, d.higher_is_better) for d in detectors] == [("holdout/f1", True)]


def test_only_the_latest_global_models_are_kept_and_the_best_one_is_saved_first(make_server, global_file: Path) -> None:
    # Prepare: 5 rounds; the best model (lowest accuracy wins here) is the first round's, long gone by the end
    from ._harness import default_behaviour

    loaded: dict[str, bytes] = {}

    def behaviour(client: SimClient, command):
        if isinstance(command, Sequential):
            blob = command.commands[0].blob
            loaded[blob.id] = client.server.store.read_bytes(blob.id)
        return default_behaviour(client, command)

    import time

    from theoden_server.watchers.base import RoundCompletedNotification, Watcher

    class Slow(Watcher):  # makes the watcher thread lag rounds behind, as a busy one would
        notification_types = (RoundCompletedNotification,)

        def handle(self, notification, pool) -> None:  # type: ignore[no-untyped-def]
            time.sleep(0.05)

    detector, saver = BestModelDetector("val/accuracy", higher_is_better=False), BestModelSaver()
    server = make_server(
        instructions=plan(global_file, n_rounds=5, final_validation=False),
        watchers=[Slow(), MetricCollector(), detector, saver],
        keep_global_models=2,
    )
    clients = [SimClient(server, name, behaviour=behaviour) for name in ("a", "b", "c")]
    for client in clients:
        client.register()

    # Execute
    drive(server, clients)
    server.stop()  # waits for the retention thread

    # Assert: the store holds the last two global models; the best (round 0's) was copied before it went
    stored = {p.name for p in (server.store.root / "blobs").glob("*/*") if not p.name.endswith(".json")}
    trainings = [cmd for cmd in clients[0].received if isinstance(cmd, Sequential)]
    models = [t.commands[0].blob.id for t in trainings] + [server.global_model.id]
    assert len(set(models)) == 6
    assert stored == set(models[-2:])
    assert detector.best_round == 0
    assert (server.run_dir / "best_model.safetensors").read_bytes() == loaded[models[1]]  # round 0's result


def test_keeping_fewer_than_two_global_models_is_refused(make_server) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        make_server(keep_global_models=1)
