"""Figure 3 - aggregation memory and speed: 10 clients x 100 MB.

Memory: real processes; the server's RSS is sampled every 50 ms; idle = its RSS just before round 0's first
command starts on a client (setup and the global model done), peak = the highest sample while the rounds run.
Speed, side by side in this process on the uploads of the run's last round: the server's own aggregation
path (FedAvg.add per upload from the stored blob + FedAvg.aggregate + save_tensors into a BlobStore, i.e.
from uploaded blobs to the new global model) against an in-memory torch weighted sum of the same tensors
(already loaded; float32 ``acc = t0 * w0; acc.add_(t, alpha=w)``), each repeated after one warm-up and the
medians compared, both at the server's torch thread setting. One `FedAvg` serves every repetition, as one
serves every round on the server: from its second round it reuses its running sums' memory, which spares
the first-touch page faults of a fresh 100 MB buffer (~30 ms here); a side-by-side row gives the in-memory
sum the same advantage (output preallocated once). Dirty pages are flushed (``os.sync``) before each
repetition: on this machine's disk a 100 MB write takes ~0.09 s when nothing is waiting to be written
back and 0.4-0.6 s right after another 100 MB write, which would measure the disk, not the aggregation.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common


def _client_blobs(run_dir: Path, count: int) -> list[tuple[str, Path]]:
    """The last round's uploads: with zero training every client uploads the same bytes, which the
    content-addressed store keeps once, so each of the ``count`` results names the same file (as on the server)."""
    import msgspec

    found = []
    for meta in (run_dir / "blobs" / "blobs").glob("*/*.meta.json"):
        info = msgspec.json.decode(meta.read_bytes())
        if info.get("owners"):
            found.append(
                (info.get("created", 0.0), info["owners"], meta.with_name(meta.name.removesuffix(".meta.json")))
            )
    found.sort(key=lambda item: item[0])
    _, owners, path = found[-1]
    return [(owners[i % len(owners)], path) for i in range(count)]


def aggregation_speed(blobs: list[tuple[str, Path]], repeats: int) -> tuple[list[float], list[float], list[float]]:
    """Seconds per repetition: the server's aggregation, a plain in-memory weighted sum, and one that
    writes into a preallocated output (what the server's FedAvg does from its second round on)."""
    import torch
    from safetensors.torch import load_file
    from theoden_protocol import BlobRef
    from theoden_server.aggregation.base import AggregationContext, ClientResult
    from theoden_server.aggregation.fedavg import FedAvg
    from theoden_server.storage import BlobStore
    from theoden_server.weights import read_layout, save_tensors

    weights = [float(64 + i) for i in range(len(blobs))]
    threads = torch.get_num_threads()
    if common.SERVER_TORCH_THREADS is not None:  # both sides at the server's thread setting
        torch.set_num_threads(common.SERVER_TORCH_THREADS)
    server_times, memory_times, prealloc_times = [], [], []
    with tempfile.TemporaryDirectory(dir=blobs[0][1].parents[3]) as tmp:
        store = BlobStore(tmp)
        agg = FedAvg()  # one aggregator for the whole run, as on the server (it reuses its running sums)
        for attempt in range(repeats + 1):  # the first is a warm-up (first-touch page faults, torch set-up)
            os.sync()  # no repetition pays for the disk writeback of the one before (see RESULTS.md, figure 3)
            t0 = time.perf_counter()
            agg.start(AggregationContext(round=0, global_path=blobs[0][1]))
            for (owner, path), w in zip(blobs, weights, strict=True):
                layout = read_layout(path)
                ref = BlobRef(id=path.name, sha256=path.name, size=path.stat().st_size)
                agg.add(ClientResult(client=owner, blob=ref, path=path, layout=layout, num_samples=int(w)))
            ref = save_tensors(store, agg.aggregate(), layout=agg.context.layout)
            if attempt:
                server_times.append(time.perf_counter() - t0)
            store.delete(ref.id)
        del agg
        first = load_file(str(blobs[0][1]))  # not timed: the baseline starts from tensors in memory
        loaded = [{k: v.clone() for k, v in first.items()} for _ in blobs]  # one copy per client, as 10 uploads
        del first
        total = sum(weights)
        for attempt in range(repeats + 1):
            os.sync()
            t0 = time.perf_counter()
            result = {}
            for name in loaded[0]:
                acc = loaded[0][name] * weights[0]
                for tensors, w in zip(loaded[1:], weights[1:], strict=True):
                    acc.add_(tensors[name], alpha=w)
                result[name] = acc.div_(total)
            if attempt:
                memory_times.append(time.perf_counter() - t0)
            del result, acc
        outputs = {name: torch.empty_like(t) for name, t in loaded[0].items()}
        for attempt in range(repeats + 1):
            os.sync()
            t0 = time.perf_counter()
            for name, acc in outputs.items():
                torch.mul(loaded[0][name], weights[0], out=acc)
                for tensors, w in zip(loaded[1:], weights[1:], strict=True):
                    acc.add_(tensors[name], alpha=w)
                acc.div_(total)
            if attempt:
                prealloc_times.append(time.perf_counter() - t0)
        del loaded, outputs
        torch.set_num_threads(threads)
    return server_times, memory_times, prealloc_times


def run(quick: bool) -> list[dict[str, Any]]:
    clients = 10
    size = common.model_bytes(*common.MODEL_100MB)
    result = common.run_zero_train(
        "agg-10x100",
        clients=clients,
        rounds=2 if quick else 3,
        model=common.MODEL_100MB,
        sample_rss=True,
        rss_interval=0.05,
        timeout=1800,
        server_extra=["--keep-uploads"],  # the last round's uploads are measured again below
    )
    started = [e["mono"] for e in result.events if e["event"] == "status" and e["status"] == "started"]
    round0 = started[clients + 1]  # setup (N) and InitGlobalModelFromClient (1) came first
    end = result.round_ends()[-1]
    assert result.rss is not None
    idle = result.rss.before("server", round0)
    peak = result.rss.peak("server", round0, end)
    growth = (peak - idle) / common.MB
    finished = [e for e in result.events if e["event"] in ("status", "aggregated")]
    lags = []  # last FINISHED of a round -> its aggregation done (the part of aggregation clients wait for)
    last_finish = None
    for e in finished:
        if e["event"] == "status" and e["status"] == "finished":
            last_finish = e["mono"]
        elif e["event"] == "aggregated" and last_finish is not None:
            lags.append(e["mono"] - last_finish)
    blobs = _client_blobs(result.run_dir, clients)
    server_times, memory_times, prealloc_times = aggregation_speed(blobs, 3 if quick else 5)
    ratio = common.median(server_times) / common.median(memory_times)
    prealloc_ratio = common.median(server_times) / common.median(prealloc_times)
    M = common.metric
    return [
        M(
            "3",
            f"{clients} x 100 MB: server peak RSS above idle during the rounds",
            growth,
            "MB",
            "<= 500",
            growth <= 500,
            detail={
                "idle_MB": idle / common.MB,
                "peak_MB": peak / common.MB,
                "model_MB": size / common.MB,
                "run_dir": str(result.run_dir),
            },
        ),
        M(
            "3",
            "aggregation, blobs -> new global model (FedAvg + save_tensors)",
            common.median(server_times),
            "s",
            detail={"all": server_times},
        ),
        M(
            "3",
            "in-memory torch weighted sum, same tensors",
            common.median(memory_times),
            "s",
            detail={"all": memory_times},
        ),
        M("3", "aggregation / in-memory weighted sum", ratio, "x", "<= 2", ratio <= 2),
        M(
            "3",
            "in-memory weighted sum into a preallocated output, same tensors",
            common.median(prealloc_times),
            "s",
            detail={"all": prealloc_times},
        ),
        M("3", "aggregation / preallocated in-memory weighted sum", prealloc_ratio, "x"),
        M(
            "3",
            "in the run: last FINISHED -> new global model (median over rounds)",
            common.median(lags),
            "s",
            detail={"all": lags, "round_times": result.round_times()},
        ),
    ]


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2, default=str))
