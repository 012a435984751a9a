"""The README's main command, end to end: server and three clients as processes over REST."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.slow
def test_demo_trains_a_good_global_model_and_leaves_a_complete_run_directory(tmp_path: Path) -> None:
    # Execute
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--run-dir", str(run_dir), "--timeout", "240"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Assert
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"^\s+(\d)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", result.stdout, re.M)
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    accuracy = float(re.search(r"accuracy ([\d.]+) on (\d+) held-out", result.stdout).group(1))  # type: ignore[union-attr]
    assert accuracy >= 0.90, result.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if r["phase"] == "round"] == [0, 1, 2, 3, 4]
    assert all(r["num_clients"] == 3 for r in records if r["phase"] == "round")
    assert (run_dir / "best_model.safetensors").stat().st_size > 0
    for log in ["server.log", "site-1.log", "site-2.log", "site-3.log"]:
        assert (run_dir / "logs" / log).stat().st_size > 0
    # nothing left running: every process of the demo has exited
    ps = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True)
    assert ps.stdout.strip() == ""
