"""Timed spans for the benchmark plugins (`client_timing`, `server_trace`): one JSON line per span.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC), comparable across the processes of one machine.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any


class SpanFile:
    """Append spans as JSON lines to ``path`` (nothing when ``path`` is empty); ``who`` names the process."""

    def __init__(self, path: str | None, who: str | int) -> None:
        self._file = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives as long as the process
        self._who = who
        self._lock = threading.Lock()

    def record(self, kind: str, start: float, end: float, **extra: Any) -> None:
        """Write one span (with the recording thread's name)."""
        if self._file is None:
            return
        line = json.dumps(
            {
                "who": self._who,
                "kind": kind,
                "start": start,
                "end": end,
                "thread": threading.current_thread().name,
                **extra,
            }
        )
        with self._lock:
            self._file.write(line + "\n")

    def timed(self, kind: str, fn: Any, detail: Callable[..., dict[str, Any]] | None = None) -> Any:
        """Wrap ``fn`` so each call is recorded as a span; ``detail(*args, **kwargs)`` adds fields."""

        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self.record(kind, t0, time.monotonic(), **(detail(*args, **kwargs) if detail else {}))

        return wrapper
