"""Every tutorial under examples/ runs as its README says, on tiny generated data, with real processes.

The integration tests start the selected tutorials' ``run.py`` at once (three at a time) and
each test then waits for its own; the unit tests check the tutorials' own classes directly.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _examples_util import ExampleRunner, Finished, import_example, write_fake_cifar10

#: test name -> (tutorial folder, run.py arguments that keep it small)
RUNS: dict[str, tuple[str, list[str]]] = {
    "test_01_cifar10_trains_three_sites_from_local_cifar_folders": (
        "01_cifar10_run", ["--clients", "3", "--rounds", "2", "--width", "4", "--batch-size", "16"],
    ),
    "test_02_own_command_reaches_the_server_and_is_pooled": ("02_own_command", ["--clients", "2"]),
    "test_03_site_overrides_train_with_gradient_clipping": (
        "03_overwrite_commands", ["--clients", "2", "--rounds", "1", "--clip-norm", "0.5"],
    ),
    "test_04_condition_waits_for_sites_with_enough_data": ("04_new_condition", ["--clients", "3", "--rounds", "1"]),
    "test_05_action_checkpoints_every_round": ("05_new_action", ["--clients", "2", "--rounds", "2"]),
    "test_06_run_with_fedavgm": ("06_new_aggregator", ["--clients", "2", "--rounds", "2"]),
    # a decrease of val/loss by more than 10 never happens: early stopping ends the run after round 1 of 4
    "test_07_watchers_write_client_metrics_csv_and_stop_early": (
        "07_new_watcher", ["--clients", "2", "--rounds", "4", "--patience", "1", "--min-delta", "10"],
    ),
    "test_09_clients_verify_the_server_over_https": ("09_ssl", ["--clients", "2", "--rounds", "1"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def runner(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleRunner]:
    base = tmp_path_factory.mktemp("examples")
    pool = ExampleRunner(workers=3)
    selected = [item.originalname for item in request.session.items if isinstance(item, pytest.Function)]
    for test in [t for t in selected if t in RUNS]:
        name, args = RUNS[test]
        if name == "01_cifar10_run":
            write_fake_cifar10(base / "data")
            args = [*args, "--data-root", str(base / "data")]
        pool.submit(name, args, base / name)
    yield pool
    pool.close()


def _finished(runner: ExampleRunner, test: str) -> Finished:
    result = runner.result(RUNS[test][0])
    result.check()
    print(f"{RUNS[test][0]}: {result.seconds:.1f} s")
    # nothing left running: every process of the tutorial has exited
    assert subprocess.run(["pgrep", "-f", str(result.run_dir)], capture_output=True, text=True).stdout.strip() == ""
    return result


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration
@pytest.mark.slow
def test_01_cifar10_trains_three_sites_from_local_cifar_folders(runner: ExampleRunner) -> None:
    result = _finished(runner, "test_01_cifar10_trains_three_sites_from_local_cifar_folders")
    records = _records(result.run_dir)
    rounds = [r for r in records if r["phase"] == "round"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(r["num_clients"] == 3 for r in rounds)
    assert {"train/loss", "val/accuracy", "val/loss"} <= set(rounds[0]["metrics"])
    # 200 fake training images in 3 balanced parts of 66-67, 80% of each for training
    assert all(53 <= c["num_samples"] <= 54 for c in rounds[0]["clients"].values())
    assert [r["phase"] for r in records][-1] == "final_validation"
    server_log = (result.run_dir / "logs" / "server.log").read_text()
    assert "(client site-" in server_log  # the global model came from one client
    assert (result.run_dir / "best_model.safetensors").stat().st_size > 0
    assert "best global model: round" in result.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_02_own_command_reaches_the_server_and_is_pooled(runner: ExampleRunner, tmp_path: Path) -> None:
    from theoden_client.data import DataRoot
    from theoden_client.datasets import synthetic

    result = _finished(runner, "test_02_own_command_reaches_the_server_and_is_pooled")
    stats = json.loads((result.run_dir / "data_statistics.json").read_text())
    assert set(stats["sites"]) == {"site-1", "site-2"}
    assert stats["num_samples"] == 600
    # pooling the sites' statistics gives the statistics of the whole data set
    x = synthetic(DataRoot(tmp_path), n_samples=600, n_features=8, seed=3).features.to(torch.float64)
    assert stats["mean"] == pytest.approx(x.mean(0).tolist(), abs=1e-9)
    assert stats["std"] == pytest.approx(x.std(0, unbiased=False).tolist(), abs=1e-9)
    assert "pooled over 600 samples of 2 sites" in result.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_03_site_overrides_train_with_gradient_clipping(runner: ExampleRunner) -> None:
    result = _finished(runner, "test_03_site_overrides_train_with_gradient_clipping")
    (round0,) = [r for r in _records(result.run_dir) if r["phase"] == "round"]
    # only site-1 loaded the plugin: its train step reports the gradient norms, site-2's built-in does not
    assert {"train/grad_norm", "train/clipped"} <= set(round0["clients"]["site-1"])
    assert "train/grad_norm" not in round0["clients"]["site-2"]
    assert 0 <= round0["clients"]["site-1"]["train/clipped"] <= 1
    assert round0["num_clients"] == 2


@pytest.mark.integration
@pytest.mark.slow
def test_04_condition_waits_for_sites_with_enough_data(runner: ExampleRunner) -> None:
    result = _finished(runner, "test_04_condition_waits_for_sites_with_enough_data")
    (round0,) = [r for r in _records(result.run_dir) if r["phase"] == "round"]
    # three sites joined; the one with 5% of the data (30 samples) was left out of training
    assert round0["num_clients"] == 2
    assert [c["num_samples"] for c in round0["clients"].values()] == [216, 216]
    assert "trained on:" in result.stdout


def test_04_during_hours_spans_midnight() -> None:
    conditions = import_example("04_new_condition", "conditions")

    def at(hour: int, minute: int = 0) -> dt.datetime:
        return dt.datetime(2024, 1, 1, hour, minute)

    night = [conditions.DuringHours("22:00", "06:00", now=lambda h=h: at(h)) for h in (21, 22, 3, 6)]
    assert [c.resolved(None) for c in night] == [False, True, True, False]
    office = [conditions.DuringHours("08:00", "17:30", now=lambda h=h: at(h)) for h in (7, 8, 17, 18)]
    assert [c.resolved(None) for c in office] == [False, True, True, False]


@pytest.mark.integration
@pytest.mark.slow
def test_05_action_checkpoints_every_round(runner: ExampleRunner) -> None:
    result = _finished(runner, "test_05_action_checkpoints_every_round")
    index = json.loads((result.run_dir / "checkpoints" / "index.json").read_text())
    assert [e["file"] for e in index] == ["round-000.safetensors", "round-001.safetensors"]
    models = {r["round"]: r["model"] for r in _records(result.run_dir) if r["phase"] == "round"}
    for entry in index:
        path = result.run_dir / "checkpoints" / entry["file"]
        # each checkpoint is that round's aggregated global model, byte for byte
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["model"] == models[entry["round"]]
        with safe_open(str(path), "pt") as f:
            assert f.metadata()["round"] == str(entry["round"])


def test_06_fedavgm_matches_a_hand_computation(tmp_path: Path) -> None:
    from theoden_protocol import BlobRef
    from theoden_server import AggregationContext, ClientResult
    from theoden_server.weights import read_layout

    fedavgm = import_example("06_new_aggregator", "fedavgm")

    def blob(name: str, tensors: dict[str, torch.Tensor]) -> tuple[BlobRef, Path]:
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path))
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        return BlobRef(id=sha, sha256=sha, size=path.stat().st_size), path

    def result(name: str, w: list[float], count: int, n: int) -> ClientResult:
        ref, path = blob(name, {"w": torch.tensor(w), "count": torch.tensor([count])})
        return ClientResult(client=name, blob=ref, path=path, layout=read_layout(path), num_samples=n)

    def round_(number: int, x: list[float], clients: list[ClientResult]) -> dict[str, torch.Tensor]:
        ref, path = blob(f"global-{number}", {"w": torch.tensor(x), "count": torch.tensor([0])})
        aggregator.start(AggregationContext(round=number, global_model=ref, global_path=path))
        for client in clients:
            aggregator.add(client)
        new = aggregator.aggregate()
        return {name: new[name] for name in new}

    # Prepare
    aggregator = fedavgm.FedAvgM(momentum=0.5, server_lr=1.0)
    # Execute: round 0 from x = [0, 0]; client a (1 sample) sends [1, 2], client b (3 samples) [3, 6]
    first = round_(0, [0.0, 0.0], [result("a", [1.0, 2.0], 3, 1), result("b", [3.0, 6.0], 5, 3)])
    # round 1 from x = [2.5, 5]; both clients send [3.5, 5]
    second = round_(1, first["w"].tolist(), [result("a1", [3.5, 5.0], 7, 1), result("b1", [3.5, 5.0], 2, 1)])
    # Assert, by hand:
    # round 0: mean = (1*[1,2] + 3*[3,6]) / 4 = [2.5, 5]; v = [2.5, 5]; x = [0, 0] + v = [2.5, 5]
    assert first["w"].tolist() == pytest.approx([2.5, 5.0])
    assert first["count"].tolist() == [5]  # integer buffers take the maximum, never a momentum step
    # round 1: delta = [3.5, 5] - [2.5, 5] = [1, 0]; v = 0.5*[2.5, 5] + [1, 0] = [2.25, 2.5]; x = [4.75, 7.5]
    assert second["w"].tolist() == pytest.approx([4.75, 7.5])
    assert aggregator.velocity["w"].tolist() == pytest.approx([2.25, 2.5])
    # with no momentum and a server learning rate of 1, FedAvgM is FedAvg
    plain = fedavgm.FedAvgM(momentum=0.0, server_lr=1.0)
    aggregator = plain
    assert round_(2, [9.0, 9.0], [result("c", [1.0, 3.0], 0, 1), result("d", [3.0, 5.0], 0, 1)])["w"].tolist() == [
        2.0,
        4.0,
    ]


@pytest.mark.integration
@pytest.mark.slow
def test_06_run_with_fedavgm(runner: ExampleRunner) -> None:
    result = _finished(runner, "test_06_run_with_fedavgm")
    server_log = (result.run_dir / "logs" / "server.log").read_text()
    assert server_log.count("aggregated by FedAvgM from 2 results") == 2
    last = [r for r in _records(result.run_dir) if r["phase"] == "round"][-1]
    path = result.run_dir / "blobs" / "blobs" / last["model"][:2] / last["model"]
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["aggregator"] == "FedAvgM"


@pytest.mark.integration
@pytest.mark.slow
def test_07_watchers_write_client_metrics_csv_and_stop_early(runner: ExampleRunner) -> None:
    result = _finished(runner, "test_07_watchers_write_client_metrics_csv_and_stop_early")
    with (result.run_dir / "client_metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    expected = {
        (r["phase"], str(r["round"]), client, metric)
        for r in _records(result.run_dir)
        for client, values in r["clients"].items()
        for metric in values
        if metric != "num_samples"
    }
    # every metric of every client in metrics.jsonl is a row of the CSV
    assert expected <= {(row["phase"], row["round"], row["client"], row["metric"]) for row in rows}
    assert {row["client"] for row in rows} == {"site-1", "site-2"}
    # early stopping: no improvement in round 1, so the plan ended there (no more rounds, no final validation)
    records = _records(result.run_dir)
    assert [r["round"] for r in records] == [0, 1]
    assert (
        "early stopping: val/loss did not improve for 1 round(s)"
        in (result.run_dir / "logs" / "server.log").read_text()
    )


@pytest.mark.integration
@pytest.mark.slow
def test_09_clients_verify_the_server_over_https(runner: ExampleRunner) -> None:
    result = _finished(runner, "test_09_clients_verify_the_server_over_https")
    assert json.loads((result.run_dir / "endpoint.json").read_text())["tls"] is True
    assert "server listening at https://localhost:" in result.stdout
    for site in ("site-1", "site-2"):
        log = (result.run_dir / "logs" / f"{site}.log").read_text()
        assert "logged in to https://localhost:" in log
        assert "TLS, server certificate verified against" in log
    assert [r["round"] for r in _records(result.run_dir) if r["phase"] == "round"] == [0]
