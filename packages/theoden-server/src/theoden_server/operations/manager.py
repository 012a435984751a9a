"""The operation manager: works through the plan and answers "what should this client do next?".

All state changes happen under one re-entrant lock, held only briefly; slow work (actions such
as aggregation, per-client result hooks such as folding weights, finish hooks) runs on a single
worker thread, so pulls and status updates stay fast while an aggregation runs.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from theoden_protocol import Command, Exit, StatusUpdate

from theoden_server.errors import Conflict, NotFound
from theoden_server.operations.instructions import Action, Condition, Distribution, Instruction, InstructionBundle

if TYPE_CHECKING:
    from theoden_server.operations.open_distribution import OpenDistribution
    from theoden_server.server import Server

__all__ = ["OperationManager"]

logger = logging.getLogger(__name__)
_STOP = object()


class _Worker:
    """One daemon thread running submitted jobs in order; a failing job is reported, never lost."""

    def __init__(self, on_error: Callable[[str, BaseException], None]) -> None:
        self._jobs: queue.Queue[object] = queue.Queue()
        self._on_error = on_error
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="theoden-operations", daemon=True)
            self._thread.start()

    def stop(self, timeout: float) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(_STOP)
            thread.join(timeout)

    def submit(self, job: Callable[[], None], what: str) -> None:
        self._jobs.put((job, what))

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._jobs.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            try:
                if item is _STOP:
                    return
                job, what = cast("tuple[Callable[[], None], str]", item)
                try:
                    job()
                except BaseException as exc:
                    logger.exception("%s failed", what)
                    self._on_error(what, exc)
            finally:
                self._jobs.task_done()


class OperationManager:
    """An ordered queue of instructions, permanent conditions and an optional open distribution.

    Args:
        server: The server the instructions act on.
        instructions: The plan, in order (bundles are unpacked in place when they reach the head).
        permanent_conditions: Checked before any command is handed out; while one is unresolved,
            clients get nothing.
        open_distribution: Commands every newly joining client gets before anything else.
        on_change: Called (without arguments) whenever a command may have become available.
        on_client_change: Called with a client's name when a command may have become available for that
            client only (its own status changed; the plan did not move). Waking only that client's
            parked pulls keeps a status update O(1) instead of O(clients).
    """

    def __init__(
        self,
        server: Server,
        instructions: Sequence[Instruction],
        *,
        permanent_conditions: Sequence[Condition] = (),
        open_distribution: OpenDistribution | None = None,
        on_change: Callable[[], None] | None = None,
        on_client_change: Callable[[str], None] | None = None,
    ) -> None:
        self.server = server
        self.lock = threading.RLock()
        self.permanent_conditions = list(permanent_conditions)
        self.open_distribution = open_distribution
        self.completed: list[Instruction] = []
        self.finished = False
        self._queue: deque[Instruction] = deque(instructions)
        self._running: Action | None = None
        self._tracked: dict[str, tuple[Distribution | None, str]] = {}
        self._exits: dict[str, Command] = {}
        self._exit_reason = "the run is over"
        self._on_change = on_change
        self._on_client_change = on_client_change
        self._worker = _Worker(lambda what, exc: server.fail(f"{what} failed: {type(exc).__name__}: {exc}"))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread and move the plan forward."""
        self._worker.start()
        self.advance()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker thread (the job running finishes first)."""
        self._worker.stop(timeout)

    def submit(self, job: Callable[[], None], what: str) -> None:
        """Run ``job`` on the worker thread; an exception fails the run with ``what`` in the reason."""
        self._worker.submit(job, what)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until the worker has nothing left to do (for tests); return whether it was in time."""
        return self._worker.wait_idle(timeout)

    def changed(self) -> None:
        """Tell listeners that a command may have become available."""
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                logger.exception("command-available listener failed")

    def changed_for(self, client: str) -> None:
        """Tell listeners that a command may have become available for ``client`` (and nobody else)."""
        if self._on_client_change is None:
            self.changed()
            return
        try:
            self._on_client_change(client)
        except Exception:
            logger.exception("command-available listener failed")

    # -- the queue -----------------------------------------------------------------------------

    @property
    def current(self) -> Instruction | None:
        """The instruction at the head of the queue."""
        with self.lock:
            return self._queue[0] if self._queue else None

    def pending(self) -> list[Instruction]:
        """The instructions still queued, head first."""
        with self.lock:
            return list(self._queue)

    def add(self, *instructions: Instruction) -> None:
        """Append instructions to the end of the plan."""
        with self.lock:
            self._queue.extend(instructions)
        self.advance()

    def abort(self, reason: str) -> None:
        """Drop the rest of the plan; every client is told to exit with ``reason``."""
        with self.lock:
            self._queue.clear()
            self._exit_reason = reason
            self.finished = True
        self.changed()

    def end_plan(self, reason: str = "the run is over") -> None:
        """Drop what is left of the plan and finish normally (used by `ExitRun`)."""
        with self.lock:
            self._queue.clear()
            self._exit_reason = reason

    def advance(self) -> None:
        """Move through the queue as far as possible: unpack bundles, pass resolved conditions, start the head."""
        moved = False
        try:
            with self.lock:
                moved = self._advance()
        except Exception as exc:
            logger.exception("the plan could not advance")
            self.server.fail(f"the plan could not advance: {type(exc).__name__}: {exc}")
            return
        if moved:
            self.changed()

    def _pop(self, head: Instruction) -> None:
        self._queue.popleft()
        self._queue.extendleft(reversed(head.successors(self.server)))
        self.completed.append(head)

    def _advance(self) -> bool:
        moved = False
        while not self.finished:
            if not self._queue:
                self.finished = True
                self.server._plan_done()
                return True
            head = self._queue[0]
            if isinstance(head, InstructionBundle):
                self._queue.popleft()
                self._queue.extendleft(reversed(list(head.expand(self.server))))
            elif isinstance(head, Condition):
                if not head.resolved(self.server):
                    return moved
                self._pop(head)
            elif isinstance(head, Distribution):
                if not head.started:
                    if head.gated and not self._permanent_resolved():
                        return moved  # selecting clients now would start a round the conditions forbid
                    head.start(self.server)
                    moved = True
                if not head.done:
                    return moved
                self._pop(head)
            elif isinstance(head, Action):
                if self._running is not head:
                    self._running = head
                    self.submit(functools.partial(self._run_action, head), f"action {head.name}")
                return moved
            else:
                raise TypeError(f"{head!r} is not a Condition, Distribution, Action or InstructionBundle")
            moved = True
        return moved

    def _run_action(self, action: Action) -> None:
        action.perform(self.server)
        with self.lock:
            if self._queue and self._queue[0] is action:
                self._pop(action)
            self._running = None
        self.advance()

    # -- clients -------------------------------------------------------------------------------

    def is_ready(self, client: str) -> bool:
        """Whether ``client`` finished the open distribution (always, without one)."""
        with self.lock:
            return self.open_distribution is None or self.open_distribution.is_ready(client)

    def ready_clients(self) -> list[str]:
        """Online clients that finished the open distribution, in join order."""
        online = self.server.topology.online_clients()
        with self.lock:
            if self.open_distribution is None:
                return online
            return [c for c in online if self.open_distribution.is_ready(c)]

    def _permanent_resolved(self) -> bool:
        return all(c.resolved(self.server) for c in self.permanent_conditions)

    def get_command(self, client: str) -> Command | None:
        """Return the next command for ``client`` or ``None``; never blocks."""
        self.advance()
        with self.lock:
            if self.finished:
                return self._exit_for(client)
            head = self._queue[0] if self._queue else None
            exempt = isinstance(head, Distribution) and not head.gated  # ExitRun
            if not exempt and not self._permanent_resolved():
                return None
            owner: Distribution | None = None
            command: Command | None = None
            if self.open_distribution is not None:
                command = self.open_distribution.command_for(self.server, client)
                owner = self.open_distribution
                if command is None and not self.open_distribution.is_ready(client):
                    return None
            if command is None and self._queue:
                head = self._queue[0]
                if isinstance(head, Distribution) and head.started and not head.done:
                    command, owner = head.command_for(self.server, client), head
            if command is not None:
                self._tracked[command.uuid] = (owner, client)
            return command

    def _exit_for(self, client: str) -> Command:
        command = self._exits.get(client)
        if command is None:
            command = Exit(reason=self.server.failed or self._exit_reason)
            self._exits[client] = command
            self._tracked[command.uuid] = (None, client)
        return command

    def handle_status(self, client: str, update: StatusUpdate) -> None:
        """Apply a status update from ``client`` (already authenticated as the update's sender).

        Raises:
            NotFound: no command with this uuid was handed out.
            Conflict: the command was handed to another client, or is already final.
        """
        with self.lock:
            tracked = self._tracked.get(update.command_uuid)
            if tracked is None:
                raise NotFound(f"no command {update.command_uuid} was handed out in this run")
            owner, addressee = tracked
            if addressee != client:
                raise Conflict(f"command {update.command_uuid} was not handed to {client}")
            if owner is not None:
                owner.on_status(self.server, client, update)
        self.advance()  # wakes everyone if the plan moved
        self.changed_for(client)

    def client_lost(self, client: str, reason: str) -> None:
        """Fail every open command of ``client`` (it went offline)."""
        with self.lock:
            if self.open_distribution is not None:
                self.open_distribution.client_lost(self.server, client, reason)
            head = self._queue[0] if self._queue else None
            if isinstance(head, Distribution) and head.started:
                head.client_lost(self.server, client, reason)
        self.advance()

    def client_back(self, client: str) -> None:
        """A client joined or came back: it runs the open distribution (again)."""
        with self.lock:
            if self.open_distribution is not None:
                self.open_distribution.reset(client)
        self.advance()

    def tick(self) -> None:
        """Periodic housekeeping: distribution timeouts and time-based conditions."""
        with self.lock:
            head = self._queue[0] if self._queue else None
            if isinstance(head, Distribution) and head.started and not head.done:
                head.check_timeouts(self.server, time.monotonic())
        self.advance()
