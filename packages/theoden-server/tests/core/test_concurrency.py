"""Many clients at once: nothing is lost, memory stays flat."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import torch
from safetensors.torch import load, save
from theoden_protocol import CommandStatus
from theoden_server.operations import (
    ClosedDistribution,
    DistributionStatus,
    LoadGlobalModel,
    MultiRoundTraining,
    RequireNumberOfClients,
)
from theoden_server.watchers import MetricCollector

from ._harness import SimClient, default_behaviour, write_model


def test_concurrent_status_updates_from_50_threads_lose_nothing(make_server, tmp_path: Path) -> None:
    # Prepare
    n = 50
    model = {"w": torch.zeros(8)}
    collector = MetricCollector()
    server = make_server(
        instructions=[
            RequireNumberOfClients(n),
            LoadGlobalModel(write_model(tmp_path / "g.safetensors", model)),
            MultiRoundTraining(1, steps=1, final_validation=False, exit=False),
        ],
        watchers=[collector],
    )
    clients = [SimClient(server, f"c{i:02d}", num_samples=i + 1) for i in range(n)]
    for client in clients:
        client.register()
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def work(client: SimClient) -> None:
        try:
            command = client.pull_wait(10)
            barrier.wait(10)
            client.report(command, CommandStatus.STARTED)
            client.report(command, CommandStatus.FINISHED, default_behaviour(client, command))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]

    # Execute
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    server.finished.wait(10)
    server.watchers.flush()

    # Assert
    assert errors == []
    assert server.failed is None
    assert server.finished.is_set()
    round0 = next(i for i in server.operations.completed if isinstance(i, ClosedDistribution))
    assert set(round0.statuses().values()) == {DistributionStatus.FINISHED}
    assert len(round0.finished_clients()) == n
    total = sum(c.num_samples for c in clients)
    expected = sum(c.num_samples * c.uploads[0]["w"].double() for c in clients) / total
    torch.testing.assert_close(load(server.store.read_bytes(server.global_model.id))["w"], expected.float())
    assert collector.history[0]["num_clients"] == n


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    from theoden_server.aggregation import AggregationContext, ClientResult, FedAvg
    from theoden_server.storage import BlobStore
    from theoden_server.weights import check_layout, read_layout, save_tensors


    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(field)


    root = Path(sys.argv[1])
    store = BlobStore(root / "store")
    files = sorted((root / "clients").iterdir())
    global_path = root / "global.safetensors"
    # torch's one-off set-up (kernels, the intra-op thread pool) is not the aggregation's memory
    torch.zeros(1 << 20, dtype=torch.float64).add_(torch.ones(1 << 20), alpha=2.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    baseline = status("VmRSS")
    aggregator = FedAvg()
    context = AggregationContext(round=0, global_path=global_path)
    aggregator.start(context)
    for i, path in enumerate(files):
        layout = read_layout(path)
        check_layout(context.layout, layout)
        aggregator.add(ClientResult(client=f"c{i}", blob=None, path=path, layout=layout, num_samples=i + 1))
    ref = save_tensors(store, aggregator.aggregate(), layout=context.layout)
    print(status("VmHWM") - baseline, ref.id)
    """
)


def test_fedavg_over_20_clients_of_a_10mb_model_keeps_memory_flat(tmp_path: Path) -> None:
    # Prepare
    shapes = {f"layer{i}.weight": (512, 1024) for i in range(5)}  # 5 x 2 MiB = 10 MiB of float32
    model_bytes = sum(4 * a * b for a, b in shapes.values())
    (tmp_path / "clients").mkdir()
    g = torch.Generator().manual_seed(0)
    expected = {k: torch.zeros(s, dtype=torch.float64) for k, s in shapes.items()}
    for i in range(20):
        tensors = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
        for k in tensors:
            expected[k] += (i + 1) * tensors[k].double()
        (tmp_path / "clients" / f"c{i:02d}.safetensors").write_bytes(save(tensors))
    (tmp_path / "global.safetensors").write_bytes(save({k: torch.zeros(s) for k, s in shapes.items()}))
    total = sum(range(1, 21))

    # Execute
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120, check=True
    )

    # Assert
    growth, blob_id = out.stdout.split()
    # one float32 running sum (1x the model) + the mapped upload being folded (page cache, shared,
    # counted in RSS while mapped: 1x) + slack; float64 sums would add another 1x
    assert int(growth) < 2 * model_bytes + 4 * 2**20, (
        f"peak RSS grew by {int(growth) / 2**20:.1f} MiB for a 10 MiB model"
    )
    blob = next((tmp_path / "store" / "blobs").rglob(blob_id))
    result = load(blob.read_bytes())
    torch.testing.assert_close(result["layer3.weight"], (expected["layer3.weight"] / total).float())


def test_metric_collector_keeps_the_latest_lines_in_memory_and_all_in_its_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from theoden_server.watchers import MetricCollector, WatcherPool
    from theoden_server.watchers.base import MetricNotification, RoundCompletedNotification

    collector = MetricCollector(tmp_path, keep_lines=3)
    pool = WatcherPool([collector])  # not started: delivered in this thread
    for round_ in range(5):
        pool.notify(MetricNotification(client="a", metrics={"val/accuracy": round_ / 10}, num_samples=1, round=round_))
        pool.notify(RoundCompletedNotification(round=round_, model=None))

    assert [line["round"] for line in collector.history] == [2, 3, 4]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2, 3, 4]
