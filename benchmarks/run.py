"""TheODen benchmark suite runner: ``hatch run bench [--quick] [--only 1,2,...] [--out DIR] [--keep-runs]``.

Runs each figure's module (real server and client processes on loopback), writes the results as JSON
(``benchmarks/results/<date>-<mode>.json``) and a Markdown table with each target beside its measured value
(``benchmarks/results/<date>-<mode>.md``; paste into RESULTS.md). Ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import shutil
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

#: Figure -> module (one module per figure). Order matters: 4 reuses 2's run.
FIGURES = {
    "1": "bench_round_overhead",
    "2": "bench_large_model",
    "4": "bench_client_memory",
    "3": "bench_aggregation",
    "5": "bench_control_plane",
    "6": "bench_digits",
    "2r": "bench_rabbitmq",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _meets(value: float, target: str) -> bool | None:
    op, _, number = target.partition(" ")
    try:
        bound = float(number)
    except ValueError:
        return None
    return {"<=": value <= bound, "<": value < bound, ">=": value >= bound, ">": value > bound}.get(op)


def _combine(attempts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Median of each row's value over repeated runs of a figure (rows matched by name)."""
    if len(attempts) == 1:
        return attempts[0]
    rows = []
    for row in attempts[0]:
        values = [
            r["value"]
            for a in attempts
            for r in a
            if r["name"] == row["name"] and isinstance(r.get("value"), (int, float))
        ]
        combined = dict(row)
        if values:
            combined["value"] = common.median(values)
            combined["repeats"] = values
            if row.get("target"):
                combined["ok"] = _meets(combined["value"], row["target"])
        rows.append(combined)
    return rows


def markdown(results: list[dict[str, Any]], facts: dict[str, Any], command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Date: {facts['date']}; {facts['cpus']} CPUs ({facts['cpu_model']}), {facts['memory_gb']} GB RAM, "
        f"Python {facts['python']}, torch {facts['torch']}, {facts['platform']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in facts['loadavg_at_start'])}",
        "",
        "| Fig. | Measurement | Measured (median of repeats) | Unit | Target | Met | Repeats | 1-min load after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        met = {True: "yes", False: "**no**", None: ""}[r.get("ok")]
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(
            f"| {r['figure']} | {r['name'].strip()}{note} | {_fmt(r['value'])} | {r['unit']} | {r.get('target') or ''} | {met} | {', '.join(_fmt(v) for v in r.get('repeats', []))} | {r.get('loadavg_after', (float('nan'),))[0]:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter windows (a few minutes)")
    parser.add_argument("--only", default="", help="comma-separated figures, e.g. 1,5")
    parser.add_argument("--out", type=Path, default=common.BENCH / "results")
    parser.add_argument("--repeat", type=int, default=1, help="run each figure N times; report each value's median")
    parser.add_argument(
        "--keep-runs",
        action="store_true",
        help="keep each run's directory (logs, blobs; several GB per full run) instead of deleting it after its figure",
    )
    args = parser.parse_args(argv)
    wanted = [f for f in FIGURES if not args.only or f in args.only.split(",")]
    mode = "quick" if args.quick else "full"
    command = (
        "hatch run bench"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else "")
        + (f" --repeat {args.repeat}" if args.repeat > 1 else "")
    )
    facts = common.machine_facts()
    results: list[dict[str, Any]] = []
    shared: dict[str, Any] = {}
    for figure in wanted:
        module = importlib.import_module(FIGURES[figure])
        print(f"== figure {figure}: {module.__name__} ({mode})", flush=True)
        started = time.monotonic()
        attempts: list[list[dict[str, Any]]] = []
        for _ in range(max(1, args.repeat)):
            try:
                kwargs = {"shared": shared} if "shared" in inspect.signature(module.run).parameters else {}
                attempts.append(module.run(args.quick, **kwargs))
            except Exception as exc:  # one failing figure must not lose the others
                traceback.print_exc()
                attempts.append(
                    [common.metric(figure, f"{module.__name__} failed", None, "", note=f"{type(exc).__name__}: {exc}")]
                )
        rows = _combine(attempts)
        if not args.keep_runs:  # a full run writes several GB of weights: gone once the figure is measured
            while common.RUN_DIRS:
                shutil.rmtree(common.RUN_DIRS.pop(), ignore_errors=True)
        load = os.getloadavg()
        for row in rows:
            row["seconds_to_measure"] = time.monotonic() - started
            row["loadavg_after"] = load
            print(
                f"   {row['name'].strip()}: {_fmt(row['value'])} {row['unit']}  target {row.get('target') or '-'}"
                f"  {'' if row.get('ok') is None else ('OK' if row['ok'] else 'MISSED')}",
                flush=True,
            )
        results.extend(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    payload = {"command": command, "mode": mode, "machine": facts, "results": results}
    (args.out / f"{stamp}-{mode}.json").write_text(json.dumps(payload, indent=2, default=str))
    table = markdown(results, facts, command)
    (args.out / f"{stamp}-{mode}.md").write_text(table)
    print("\n" + table)
    print(f"results: {args.out / f'{stamp}-{mode}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
