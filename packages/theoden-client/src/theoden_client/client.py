"""`Client`: log in, register, then pull commands, run them and report their status until told to exit."""

from __future__ import annotations

import gc
import logging
import math
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable
from os import PathLike
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
from theoden_protocol import (
    Command,
    CommandStatus,
    ExecutionResponse,
    ProtocolError,
    RegisterRequest,
    StatusUpdate,
    check_compatible,
)

from theoden_client.allowlist import CommandAllowlist
from theoden_client.data import DataRoot
from theoden_client.errors import (
    AuthenticationError,
    ServerRejected,
    ServerUnavailable,
    TransportError,
    UndecodableCommandError,
)
from theoden_client.executors import EXECUTORS, ExecutionContext, ExecutorRegistry
from theoden_client.progress import ProgressMode
from theoden_client.reconnect import Backoff
from theoden_client.resources import ResourceManager
from theoden_client.transport.base import Transport

__all__ = ["Client"]

logger = logging.getLogger("theoden_client")

#: Longest error text sent to the server (the protocol allows 64 KiB).
MAX_ERROR_CHARS = 8000
#: Shortest pause between two pulls that returned no command.
MIN_POLL_INTERVAL = 0.05
#: After a command that left this many more allocated memory blocks alive, the heap is frozen again.
FREEZE_GROWTH_BLOCKS = 50_000
#: Seconds between two checks of that growth (counting the blocks walks every memory arena: ~0.1 ms).
FREEZE_CHECK_INTERVAL = 2.0


def _without_non_finite(response: ExecutionResponse) -> ExecutionResponse:
    """Drop NaN/inf metrics (JSON cannot carry them) and name them in ``details["non_finite_metrics"]``."""
    bad = sorted(k for k, v in response.metrics.items() if not math.isfinite(v))
    if not bad:
        return response
    logger.warning("metrics %s are not finite (diverged training?); they are not reported", ", ".join(bad))
    return msgspec.structs.replace(
        response,
        metrics={k: v for k, v in response.metrics.items() if k not in bad},
        details={**response.details, "non_finite_metrics": ", ".join(bad)},
    )


class _Interrupted(BaseException):
    """Raised by the signal handler to leave a blocking wait (long-poll, back-off) at once."""


class Client:
    """A TheODen client: runs the server's commands on local data and reports back.

    Args:
        transport: How to reach the server (e.g. `RestTransport`); the client closes it in `close`.
        data_root: Folder all dataset paths resolve under.
        executors: Command handlers; default: the global `EXECUTORS` (built-ins plus user handlers).
        allowlist: Which command types may run; default: all.
        device: Torch device for models and training (``"cpu"``, ``"cuda"``, ...).
        poll_wait: Seconds a pull may wait on the server for a command (capped by the server's ``max_wait``).
        heartbeat_interval: Seconds between heartbeats; default: what the server asks for at registration.
        backoff: Reconnect policy; default: `Backoff` with 0.5 s initial, 30 s maximum delay.
        max_reconnect_attempts: Give up (raise `ServerUnavailable`) after this many failed attempts
            in a row; ``None`` retries forever.
        progress: How training shows progress (see `Progress`).
        workdir: Folder for temporary weight files; default: a fresh temporary folder, removed on close.
        resources: Start with these resources (e.g. in tests); default: empty.
        report_started_after: Report STARTED for a command once it has run this many seconds (``0``: at
            once). A command that finishes sooner is reported FINISHED (or FAILED) only: one request less
            per short command, and the server's view is the same a moment later.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        data_root: str | PathLike[str] = ".",
        executors: ExecutorRegistry | None = None,
        allowlist: CommandAllowlist | Iterable[str] | None = None,
        device: str = "cpu",
        poll_wait: float = 30.0,
        heartbeat_interval: float | None = None,
        backoff: Backoff | None = None,
        max_reconnect_attempts: int | None = None,
        progress: ProgressMode = "auto",
        workdir: str | PathLike[str] | None = None,
        resources: ResourceManager | None = None,
        report_started_after: float = 0.5,
    ) -> None:
        if not isinstance(allowlist, CommandAllowlist):
            allowlist = CommandAllowlist(allowlist)
        self.transport = transport
        self.poll_wait = poll_wait
        self.report_started_after = report_started_after
        self.backoff = backoff or Backoff()
        self.max_reconnect_attempts = max_reconnect_attempts
        self._heartbeat_override = heartbeat_interval
        self.heartbeat_interval = heartbeat_interval or 5.0
        self.max_wait = poll_wait
        self._own_workdir = workdir is None
        self._stop = threading.Event()
        self.context = ExecutionContext(
            resources=resources if resources is not None else ResourceManager(),
            executors=executors if executors is not None else EXECUTORS,
            data_root=DataRoot(data_root),
            workdir=Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="theoden-client-")),
            transport=transport,
            allowlist=allowlist,
            device=device,
            progress=progress,
            stop=self._stop,
        )
        self.pending: deque[StatusUpdate] = deque()
        self.client_name: str | None = None
        self.connected = False
        self._idle = False
        self._heartbeat_thread: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._frozen_blocks = 0
        self._next_heap_check = 0.0

    # -- public ------------------------------------------------------------------------------

    @property
    def resources(self) -> ResourceManager:
        """What the client holds between commands."""
        return self.context.resources

    @property
    def exit_reason(self) -> str | None:
        """Why the client stopped (``None`` while running)."""
        return self.context.exit_reason

    def run(self, *, handle_signals: bool = True) -> str | None:
        """Serve until an `Exit` command, `stop`, SIGINT or SIGTERM; return the exit reason.

        Args:
            handle_signals: Install SIGINT/SIGTERM handlers for a clean exit (main thread only).

        Raises:
            AuthenticationError: The server refused the credentials.
            IncompatibleVersionError: Client and server speak different protocol versions.
            ServerRejected: The server refused the registration.
            ServerUnavailable: ``max_reconnect_attempts`` failed attempts in a row.
        """
        restore = self._install_signal_handlers() if handle_signals else {}
        self._freeze_heap()
        try:
            while not self._stop.is_set():
                try:
                    self._connect()
                    self._serve()
                except (TransportError, ProtocolError) as exc:
                    # Wrong credentials and a refused registration will not heal by retrying.
                    if isinstance(exc, AuthenticationError) or (isinstance(exc, ServerRejected) and not self.connected):
                        raise
                    self._wait_before_reconnect(exc)
            self._flush_pending(final=True)
        except _Interrupted:
            if self.exit_reason is None:
                self.context.request_exit("interrupted by signal")
            self._flush_pending(final=True)
        finally:
            gc.unfreeze()
            self._stop_heartbeat()
            self.connected = False
            for signum, handler in restore.items():
                signal.signal(signum, handler)
        return self.exit_reason

    def stop(self, reason: str = "stopped") -> None:
        """Ask the client to stop after the current command (a running training stops at its next step)."""
        if self.exit_reason is None:
            self.context.request_exit(reason)
        self._stop.set()

    def close(self) -> None:
        """Stop heartbeats, close the transport and remove the temporary work folder."""
        self._stop_heartbeat()
        self.transport.close()
        if self._own_workdir:
            shutil.rmtree(self.context.workdir, ignore_errors=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handle(self, command: Command) -> StatusUpdate:
        """Run one command: check the allowlist, execute, report FINISHED or FAILED (and STARTED if it runs long).

        A final status that cannot be delivered stays in `pending` and is sent after reconnecting.

        Returns:
            The final status update.
        """
        try:
            self.context.allowlist.check(command)
        except Exception as exc:
            logger.warning("refused command %s: %s", command.uuid, exc)
            return self._finish(command, self._failure(exc))
        # STARTED goes out beside the work, once the command has run `report_started_after` seconds (a
        # command done sooner goes straight to its final status); the final status waits for it, so the
        # server never sees them out of order
        started = threading.Timer(self.report_started_after, self._send_started, args=(command,))
        started.daemon = True
        started.start()
        try:
            response = self.context.run(command)
        except Exception as exc:
            logger.error("command %s (%s) failed: %s", command.uuid, type(command).__name__, exc, exc_info=exc)
            started.cancel()
            started.join()
            return self._finish(command, self._failure(exc))
        logger.info("command %s (%s) finished", command.uuid, type(command).__name__)
        started.cancel()  # too late if it is being sent: then the join waits for it
        started.join()
        return self._finish(command, _without_non_finite(response), CommandStatus.FINISHED)

    # -- connection ----------------------------------------------------------------------------

    def _connect(self) -> None:
        from theoden_client import __version__

        self.transport.login()
        info: dict[str, Any] = {"python": platform.python_version(), "device": self.context.device}
        try:
            import torch

            info["torch"] = str(torch.__version__)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        registered = self.transport.register(RegisterRequest(client_version=__version__, info=info))
        check_compatible(registered.protocol_version, remote_role="server")
        self.client_name = self.context.client_name = registered.client_name
        self.heartbeat_interval = self._heartbeat_override or registered.heartbeat_interval
        self.max_wait = registered.max_wait
        self.connected = True
        self.backoff.reset()
        logger.info("registered as %s in run %s", registered.client_name, registered.run_name)
        self._start_heartbeat()

    def _wait_before_reconnect(self, exc: Exception) -> None:
        self.connected = False
        if self.max_reconnect_attempts is not None and self.backoff.attempts >= self.max_reconnect_attempts:
            raise ServerUnavailable(
                f"gave up after {self.backoff.attempts} failed reconnect attempts; last error: {exc}"
            ) from exc
        delay = self.backoff.next_delay()
        logger.warning("lost the server (%s); reconnecting in %.1fs", exc, delay)
        self._idle = True
        try:
            self._stop.wait(delay)
        finally:
            self._idle = False

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._flush_pending()
            self._idle = True
            try:
                reply = self.transport.pull_command(wait=max(0.0, min(self.poll_wait, self.max_wait)))
            except UndecodableCommandError as exc:
                if exc.uuid is None:
                    raise
                logger.error("cannot run command %s: %s", exc.uuid, exc)
                self._report_final(self._update(exc.uuid, CommandStatus.FAILED, self._failure(exc)))
                continue
            finally:
                self._idle = False
            if reply.command is None:
                self._idle = True
                try:
                    # A floor keeps a server that answers at once without a command from being hammered.
                    self._stop.wait(max(reply.retry_after, MIN_POLL_INTERVAL))
                finally:
                    self._idle = False
                continue
            self.handle(reply.command)
            if time.monotonic() >= self._next_heap_check:
                self._next_heap_check = time.monotonic() + FREEZE_CHECK_INTERVAL
                if sys.getallocatedblocks() - self._frozen_blocks > FREEZE_GROWTH_BLOCKS:
                    self._freeze_heap()  # e.g. the first optimizer step imports torch._dynamo
            if self.exit_reason is not None:
                logger.info("exiting: %s", self.exit_reason)
                self._stop.set()

    def _freeze_heap(self) -> None:
        """Move what is alive now out of the cyclic garbage collector's reach.

        The libraries (torch alone: ~170k objects, ~280k after the first training step), the model and the data
        live as long as the client; scanning them made each full collection a 50-150 ms pause.
        """
        gc.collect()  # what is garbage already is freed, not frozen
        gc.freeze()
        self._frozen_blocks = sys.getallocatedblocks()

    # -- status reporting ----------------------------------------------------------------------

    def _update(self, uuid: str, status: CommandStatus, response: ExecutionResponse | None) -> StatusUpdate:
        return StatusUpdate(
            client_name=self.client_name or "unregistered", command_uuid=uuid, status=status, response=response
        )

    @staticmethod
    def _failure(exc: BaseException) -> ExecutionResponse:
        text = f"{type(exc).__name__}: {exc}"
        if len(text) > MAX_ERROR_CHARS:
            text = text[: MAX_ERROR_CHARS - 15] + " ... (truncated)"
        return ExecutionResponse(error=text)

    def _send_started(self, command: Command) -> None:
        try:
            self.transport.send_status(self._update(command.uuid, CommandStatus.STARTED, None))
        except TransportError as exc:
            # The final status matters; a lost STARTED only delays the server's view.
            logger.warning("could not report STARTED for %s: %s", command.uuid, exc)

    def _finish(
        self, command: Command, response: ExecutionResponse, status: CommandStatus = CommandStatus.FAILED
    ) -> StatusUpdate:
        update = self._update(command.uuid, status, response)
        self._report_final(update)
        return update

    def _report_final(self, update: StatusUpdate) -> None:
        try:
            self.transport.send_status(update)
        except ServerUnavailable:
            logger.warning(
                "could not report %s for %s; will retry after reconnecting", update.status, update.command_uuid
            )
            self.pending.append(update)
        except ServerRejected as exc:
            logger.error("server refused the %s status of %s: %s", update.status, update.command_uuid, exc)

    def _flush_pending(self, *, final: bool = False) -> None:
        """Send queued final statuses in order; on the way out, try once more and report what is lost."""
        while self.pending:
            update = self.pending[0]
            try:
                self.transport.send_status(update)
            except ServerRejected as exc:
                logger.error("server refused the queued status of %s: %s", update.command_uuid, exc)
            except ServerUnavailable:
                if not final:
                    raise
                logger.error("exiting with %d undelivered status update(s)", len(self.pending))
                return
            self.pending.popleft()

    # -- heartbeat and signals -----------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        if self._heartbeat_thread is not None and self._heartbeat_thread.is_alive():
            return
        self._heartbeat_stop.clear()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="theoden-heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def _heartbeat_loop(self) -> None:
        while not self._heartbeat_stop.wait(self.heartbeat_interval):
            if not self.connected:
                continue
            try:
                self.transport.heartbeat()
            except TransportError as exc:
                logger.debug("heartbeat failed: %s", exc)
            except Exception:  # never let the heartbeat thread die silently
                logger.exception("heartbeat failed unexpectedly")

    def _stop_heartbeat(self) -> None:
        self._heartbeat_stop.set()
        thread = self._heartbeat_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._heartbeat_thread = None

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stop.is_set():
            logger.warning("%s again: exiting now", name)
            raise KeyboardInterrupt
        logger.info("%s received: finishing the current command, then exiting", name)
        self.stop(f"interrupted by {name}")
        if self._idle:
            raise _Interrupted
