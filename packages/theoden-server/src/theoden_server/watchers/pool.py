"""The watcher pool: the observer bus that delivers notifications to watchers on its own thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable

from theoden_server.watchers.base import Notification, Watcher

__all__ = ["WatcherPool"]

logger = logging.getLogger(__name__)
_STOP = object()


class WatcherPool:
    """Delivers notifications to watchers in order, off the request path.

    Before `start` (and after `stop`) notifications are delivered synchronously in the caller's
    thread; once started, `notify` only enqueues and a single daemon thread delivers. A watcher
    that raises is logged and skipped; it never breaks the server or the other watchers.

    Args:
        watchers: The initial watchers, called in this order.
    """

    def __init__(self, watchers: Iterable[Watcher] = ()) -> None:
        self._watchers: list[Watcher] = list(watchers)
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._deliver_lock = threading.RLock()
        # notification type -> whether any watcher may want it (recomputed when watchers change)
        self._wanted: dict[type[Notification], bool] = {}
        self.errors = 0

    @property
    def watchers(self) -> list[Watcher]:
        """The registered watchers (a copy)."""
        with self._lock:
            return list(self._watchers)

    def add(self, watcher: Watcher) -> None:
        """Register another watcher."""
        with self._lock:
            self._watchers.append(watcher)
            self._wanted = {}

    def remove(self, watcher: Watcher) -> None:
        """Unregister ``watcher`` (missing ones are ignored)."""
        with self._lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)
            self._wanted = {}

    def start(self) -> None:
        """Start delivering on a background thread."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="theoden-watchers", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, stop the thread and close every watcher (idempotent)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)
        for watcher in self.watchers:
            try:
                watcher.close()
            except Exception:
                logger.exception("watcher %s failed to close", type(watcher).__name__)

    def notify(self, notification: Notification) -> None:
        """Deliver ``notification`` to every watcher that wants it (queued when started).

        A notification no watcher wants is dropped at once: the server notifies on every request,
        and waking the delivery thread for nothing costs more than the request itself.
        """
        if self._thread is not None:
            if self._maybe_wanted(notification):
                self._queue.put(notification)
        else:
            self._deliver(notification)

    def _maybe_wanted(self, notification: Notification) -> bool:
        kind = type(notification)
        wanted = self._wanted.get(kind)
        if wanted is None:
            with self._lock:
                # a watcher with its own `wants` decides per notification, on the delivery thread
                wanted = any(
                    type(w).wants is not Watcher.wants or issubclass(kind, w.notification_types) for w in self._watchers
                )
                self._wanted[kind] = wanted
        return wanted

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued notification was delivered; return whether it was in time."""
        if self._thread is None or threading.current_thread() is self._thread:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
            elif isinstance(item, Notification):
                self._deliver(item)

    def _deliver(self, notification: Notification) -> None:
        with self._deliver_lock:
            for watcher in self.watchers:
                try:
                    if watcher.wants(notification):
                        watcher.handle(notification, self)
                except Exception:
                    self.errors += 1
                    logger.exception(
                        "watcher %s failed on %s; the server carries on",
                        type(watcher).__name__,
                        type(notification).__name__,
                    )
