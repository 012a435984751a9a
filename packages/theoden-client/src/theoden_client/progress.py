"""Progress reporting that suits both a terminal (a tqdm bar) and a log file (a line now and then)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

from tqdm import tqdm

__all__ = ["Progress", "ProgressMode"]

ProgressMode = Literal["auto", "bar", "log", "off"]
logger = logging.getLogger("theoden_client.progress")


class Progress:
    """A progress display: a tqdm bar on a terminal, else a log line at most every ``log_interval`` s.

    Args:
        total: Number of units (steps) expected, if known.
        desc: What is progressing, e.g. ``"train"``.
        mode: ``"auto"`` (bar if stderr is a terminal, else log lines), ``"bar"``, ``"log"`` or ``"off"``.
        log_interval: Seconds between log lines when not showing a bar.
    """

    def __init__(
        self, total: int | None, desc: str, *, mode: ProgressMode = "auto", log_interval: float = 30.0
    ) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.total = total
        self.desc = desc
        self.mode = mode
        self.log_interval = log_interval
        self.count = 0
        self._postfix: dict[str, Any] = {}
        self._started = self._last_log = time.monotonic()
        self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True) if mode == "bar" else None

    def update(self, n: int = 1, **postfix: float) -> None:
        """Advance by ``n`` units and show ``postfix`` values (e.g. the running loss)."""
        self.count += n
        self._postfix = postfix
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last_log >= self.log_interval:
                self._last_log = now
                logger.info("%s: %s", self.desc, self._describe())

    def close(self) -> None:
        """Finish the display (and log a summary line when logging)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log":
            logger.info("%s done: %s in %.1fs", self.desc, self._describe(), time.monotonic() - self._started)

    def _describe(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        extra = " ".join(f"{k}={v:.4g}" for k, v in self._postfix.items())
        return f"{self.count}{of} {extra}".strip()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
