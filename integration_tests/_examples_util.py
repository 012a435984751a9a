"""Helpers of test_examples.py: run the tutorials' ``run.py`` concurrently (a few at a time) and fake data."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@dataclass
class Finished:
    """A tutorial run that ended: its exit code, output and run directory."""

    returncode: int
    stdout: str
    stderr: str
    run_dir: Path
    seconds: float

    def check(self) -> None:
        """Fail with the output and every log when the run did not succeed."""
        if self.returncode != 0:
            logs = "\n".join(
                f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                for log in sorted(self.run_dir.glob("logs/*.log"))
            )
            raise AssertionError(f"exit code {self.returncode}\n{self.stdout}\n{self.stderr}\n{logs}")


def _run(script: Path, args: list[str], run_dir: Path, timeout: float) -> Finished:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script), "--run-dir", str(run_dir), "--timeout", str(timeout), *args],
        capture_output=True, text=True, timeout=timeout + 60, cwd=ROOT,
    )  # fmt: skip
    return Finished(result.returncode, result.stdout, result.stderr, run_dir, time.monotonic() - started)


class ExampleRunner:
    """Starts tutorial runs on a small pool of threads so several run at once; each test waits for its own."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="example")
        self._runs: dict[str, Future[Finished]] = {}

    def submit(self, name: str, args: list[str], run_dir: Path, timeout: float = 240) -> None:
        """Queue ``examples/<name>/run.py`` with ``args`` (once)."""
        if name not in self._runs:
            self._runs[name] = self._pool.submit(_run, EXAMPLES / name / "run.py", args, run_dir, timeout)

    def result(self, name: str) -> Finished:
        """Wait for the run of ``name`` and return it."""
        return self._runs[name].result()

    def close(self) -> None:
        """Wait for every queued run (they all end: each has a timeout)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def import_example(name: str, module: str) -> ModuleType:
    """Import ``examples/<name>/<module>.py`` (its folder goes on ``sys.path``, as when the server loads a plan)."""
    folder = EXAMPLES / name
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"example_{name}_{module}", folder / f"{module}.py")
    assert spec is not None
    assert spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def write_fake_cifar10(data_root: Path, *, per_batch: int = 40, seed: int = 0) -> Path:
    """Write a tiny ``cifar-10-batches-py`` in the official format (pickled dicts of uint8 rows and labels)."""
    folder = data_root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(x) for x in rng.integers(0, 10, size=per_batch)],
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{name}-{i}.png".encode() for i in range(per_batch)],
        }
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return folder
