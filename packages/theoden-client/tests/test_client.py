from __future__ import annotations

import gc
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from theoden_client import Backoff, Client, CommandAllowlist, default_executors
from theoden_client.errors import AuthenticationError, ServerUnavailable, UndecodableCommandError
from theoden_client.executors import ExecutionContext
from theoden_protocol import (
    Ack,
    Command,
    CommandStatus,
    DatasetSpec,
    ExecutionResponse,
    Exit,
    LoadDataset,
    PrintResourceKeys,
    Sequential,
    StatusUpdate,
    Train,
    register,
)

from ._fakes import FakeTransport

# NOTE: these tests drive the loop against FakeTransport. A reconnect test against a real server
# process (uvicorn, killed and restarted mid-run) belongs in integration_tests/ once theoden-server
# exists (issue 5 follow-up).


@register
class Hello(Command, tag="test_client_hello", kw_only=True):
    """A user command for the tests."""

    greeting: str = "hi"
    sleep: float = 0.0


def hello(command: Hello, ctx: ExecutionContext) -> ExecutionResponse:
    if command.sleep:
        time.sleep(command.sleep)
    return ExecutionResponse(details={"echo": command.greeting})


def make_client(fake: FakeTransport, tmp_path: Path, **kwargs: object) -> Client:
    executors = default_executors()
    executors.register(Hello, hello)
    options: dict[str, object] = {
        "data_root": tmp_path,
        "executors": executors,
        "progress": "off",
        "backoff": Backoff(initial=0.01, maximum=0.05, rng=random.Random(0)),
    }
    options.update(kwargs)
    return Client(fake, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("started_after", [0.0, 0.5])
def test_loop_reports_started_then_finished_and_exits(tmp_path: Path, started_after: float) -> None:
    hi, exit_ = Hello(greeting="hello"), Exit(reason="run over")
    fake = FakeTransport([hi, None, exit_])
    client = make_client(fake, tmp_path, report_started_after=started_after)

    reason = client.run(handle_signals=False)

    # Assert: quick commands are reported STARTED only when asked to at once
    expected = ["started", "finished"] if started_after == 0 else ["finished"]
    assert reason == "run over"
    assert fake.statuses_of(hi.uuid) == expected
    assert fake.final(hi.uuid).response.details == {"echo": "hello"}  # type: ignore[union-attr]
    assert fake.statuses_of(exit_.uuid) == expected
    assert all(s.client_name == "site-a" for s in fake.statuses)
    assert fake.logins == fake.registrations == 1
    assert fake.requests[0].protocol_version == "1.0"  # type: ignore[attr-defined]


class SlowStartedTransport(FakeTransport):
    """Takes 0.3 s to accept a STARTED; records when each status arrived."""

    def __init__(self, commands: list) -> None:  # type: ignore[type-arg]
        super().__init__(commands)
        self.arrivals: list[tuple[str, float]] = []

    def send_status(self, update: StatusUpdate) -> Ack:
        if update.status is CommandStatus.STARTED:
            time.sleep(0.3)
        self.arrivals.append((str(update.status), time.monotonic()))
        return super().send_status(update)


@pytest.mark.parametrize("fails", [False, True])
def test_started_goes_out_beside_the_work_and_never_after_the_final_status(tmp_path: Path, fails: bool) -> None:
    # Prepare: a command that takes 0.3 s, or fails at once; STARTED is due after 0.05 s
    work = Hello(greeting="x", sleep=0.3) if not fails else Train(steps=1)  # Train without a model fails
    fake = SlowStartedTransport([work, Exit()])
    client = make_client(fake, tmp_path, report_started_after=0.05)

    # Execute
    began = time.monotonic()
    update = client.handle(work)
    took = time.monotonic() - began

    # Assert: the long command's STARTED (0.3 s to deliver) overlapped its work and arrived first;
    # the command that failed at once was reported FAILED only
    assert update.status is (CommandStatus.FAILED if fails else CommandStatus.FINISHED)
    if fails:
        assert [status for status, _ in fake.arrivals] == ["failed"]
        assert took < 0.25
    else:
        assert [status for status, _ in fake.arrivals] == ["started", "finished"]
        assert 0.35 <= took < 0.6


def test_started_that_is_being_sent_when_the_command_ends_still_comes_first(tmp_path: Path) -> None:
    # Prepare: STARTED falls due after 0.1 s and takes 0.3 s to deliver; the command ends at 0.15 s
    work = Hello(greeting="x", sleep=0.15)
    fake = SlowStartedTransport([work, Exit()])
    client = make_client(fake, tmp_path, report_started_after=0.1)

    update = client.handle(work)

    assert update.status is CommandStatus.FINISHED
    assert [status for status, _ in fake.arrivals] == ["started", "finished"]


def test_a_failing_command_is_failed_and_the_client_keeps_running(tmp_path: Path) -> None:
    bad, good = Train(steps=1), Hello()
    fake = FakeTransport([bad, good])
    make_client(fake, tmp_path).run(handle_signals=False)
    failed = fake.final(bad.uuid)
    assert failed.status == "failed"
    assert "ResourceNotFoundError" in (failed.response.error or "")  # type: ignore[union-attr]
    assert fake.final(good.uuid).status == "finished"


def test_command_without_executor_fails_clearly(tmp_path: Path) -> None:
    command = Hello()
    fake = FakeTransport([command])
    client = make_client(fake, tmp_path)
    client.context.executors.unregister(Hello)
    client.run(handle_signals=False)
    assert "no executor for command type 'test_client_hello'" in (fake.final(command.uuid).response.error or "")  # type: ignore[union-attr]


def test_undecodable_command_is_failed_by_uuid(tmp_path: Path) -> None:
    fake = FakeTransport([UndecodableCommandError("unknown type 'alien'", uuid="abc123", type="alien"), Hello()])
    make_client(fake, tmp_path).run(handle_signals=False)
    failed = fake.final("abc123")
    assert failed.status == "failed"
    assert "alien" in (failed.response.error or "")
    assert fake.statuses_of("abc123") == ["failed"]


def test_allowlist_refuses_commands_and_nested_children(tmp_path: Path) -> None:
    plain = LoadDataset(dataset=DatasetSpec(name="synthetic"))
    nested = Sequential(commands=[Hello(), Train(steps=1)])
    allowed = Hello()
    fake = FakeTransport([plain, nested, allowed])
    make_client(fake, tmp_path, allowlist=CommandAllowlist.parse("test_client_hello")).run(handle_signals=False)

    assert fake.statuses_of(plain.uuid) == ["failed"]  # refused before it started
    assert "load_dataset" in (fake.final(plain.uuid).response.error or "")  # type: ignore[union-attr]
    error = fake.final(nested.uuid).response.error or ""  # type: ignore[union-attr]
    assert "CommandRefusedError" in error
    assert "train" in error
    assert fake.final(allowed.uuid).status == "finished"


def test_reconnects_with_backoff_until_the_server_returns(tmp_path: Path) -> None:
    command = Hello()
    fake = FakeTransport([command])
    fake.fail["login"] = 3
    backoff = Backoff(initial=0.01, maximum=0.02, rng=random.Random(1))
    delays: list[float] = []
    original = backoff.next_delay

    def recording() -> float:
        delays.append(original())
        return delays[-1]

    backoff.next_delay = recording  # type: ignore[method-assign]
    make_client(fake, tmp_path, backoff=backoff).run(handle_signals=False)

    assert len(delays) == 3
    assert all(0 < d <= 0.02 for d in delays)
    assert fake.logins == 1
    assert fake.final(command.uuid).status == "finished"


def test_reconnect_after_a_lost_pull_registers_again(tmp_path: Path) -> None:
    command = Hello()
    fake = FakeTransport([ServerUnavailable("connection reset"), command])
    make_client(fake, tmp_path).run(handle_signals=False)
    assert fake.registrations == 2
    assert fake.logins == 2
    assert fake.final(command.uuid).status == "finished"


def test_an_undelivered_result_is_sent_after_reconnecting(tmp_path: Path) -> None:
    command = Hello(greeting="keep me")
    fake = FakeTransport([command])
    fake.fail["status:finished"] = 2  # the first try and the first flush after reconnecting fail
    client = make_client(fake, tmp_path)
    client.run(handle_signals=False)

    final = fake.final(command.uuid)
    assert final.status == "finished"
    assert final.response.details == {"echo": "keep me"}
    assert fake.registrations >= 2
    assert not client.pending
    # the result arrived before the next command (the exit) was pulled and run
    uuids = [s.command_uuid for s in fake.statuses if s.status == "finished"]
    assert uuids.index(command.uuid) < len(uuids) - 1


def test_gives_up_after_max_reconnect_attempts(tmp_path: Path) -> None:
    fake = FakeTransport()
    fake.fail["login"] = 100
    with pytest.raises(ServerUnavailable, match="gave up after 3 failed reconnect attempts"):
        make_client(fake, tmp_path, max_reconnect_attempts=3).run(handle_signals=False)


def test_wrong_credentials_are_fatal(tmp_path: Path) -> None:
    fake = FakeTransport()

    def refuse() -> None:
        raise AuthenticationError(401, "invalid_credentials", "wrong password")

    fake.login = refuse  # type: ignore[method-assign]
    with pytest.raises(AuthenticationError, match="wrong password"):
        make_client(fake, tmp_path).run(handle_signals=False)


def test_heartbeats_continue_during_a_long_command(tmp_path: Path) -> None:
    fake = FakeTransport([Hello(sleep=0.5)], heartbeat_interval=0.05)
    make_client(fake, tmp_path).run(handle_signals=False)
    assert fake.heartbeats >= 4


def test_stop_from_another_thread_interrupts_training(tmp_path: Path) -> None:
    from .test_executors import setup_commands

    long_train = Train(steps=1_000_000)
    fake = FakeTransport([setup_commands(), long_train])
    client = make_client(fake, tmp_path)

    def stop_once_training_started() -> None:
        deadline = time.monotonic() + 30
        while not fake.statuses_of(long_train.uuid) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        client.stop("operator stop")

    threading.Thread(target=stop_once_training_started, daemon=True).start()
    assert client.run(handle_signals=False) == "operator stop"
    error = fake.final(long_train.uuid).response.error or ""  # type: ignore[union-attr]
    assert "ShutdownRequested" in error
    assert "shutting down" in error


def test_sigterm_while_polling_exits_cleanly(tmp_path: Path) -> None:
    fake = FakeTransport([None] * 1000)
    fake.pull_delay = 0.05
    client = make_client(fake, tmp_path)
    timer = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGTERM))
    timer.start()
    before = signal.getsignal(signal.SIGTERM)
    reason = client.run()
    timer.join()
    assert reason == "interrupted by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert fake.queue  # it stopped long before the queue ran out


def test_print_resource_keys_through_the_loop(tmp_path: Path) -> None:
    command = PrintResourceKeys()
    fake = FakeTransport([command])
    client = make_client(fake, tmp_path)
    client.resources.set("model", object())
    client.run(handle_signals=False)
    assert fake.final(command.uuid).response.details == {"resources": {"model": "object"}}  # type: ignore[union-attr]


def test_close_closes_the_transport_and_removes_the_workdir(tmp_path: Path) -> None:
    fake = FakeTransport()
    client = make_client(fake, tmp_path)
    workdir = client.context.workdir
    assert workdir.is_dir()
    client.close()
    assert fake.closed
    assert not workdir.exists()


def test_non_finite_metrics_are_dropped_not_sent(tmp_path: Path) -> None:
    command = Hello()
    fake = FakeTransport([command])
    client = make_client(fake, tmp_path)
    client.context.executors.register(
        Hello,
        lambda c, ctx: ExecutionResponse(metrics={"train/loss": float("nan"), "ok": 1.0}),
        override=True,
    )
    client.run(handle_signals=False)
    response = fake.final(command.uuid).response
    assert response is not None
    assert response.metrics == {"ok": 1.0}
    assert response.details == {"non_finite_metrics": "train/loss"}


_kept_alive: list[list[object]] = []


@register
class Grow(Command, tag="test_client_grow", kw_only=True):
    """Keep ``count`` new tracked objects alive; report how many objects are frozen."""

    count: int = 0


def grow(command: Grow, ctx: ExecutionContext) -> ExecutionResponse:
    _kept_alive.extend([] for _ in range(command.count))
    return ExecutionResponse(details={"frozen": gc.get_freeze_count()})


@pytest.mark.parametrize("check_interval", [0.0, 3600.0])
def test_heap_that_grew_is_frozen_again_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check_interval: float
) -> None:
    import theoden_client.client as client_module

    monkeypatch.setattr(client_module, "FREEZE_CHECK_INTERVAL", check_interval)
    commands = [Grow(), Grow(count=client_module.FREEZE_GROWTH_BLOCKS + 10_000), Grow()]
    fake = FakeTransport(commands)
    client = make_client(fake, tmp_path)
    client.context.executors.register(Grow, grow)
    try:
        client.run(handle_signals=False)
    finally:
        _kept_alive.clear()

    frozen = [fake.final(c.uuid).response.details["frozen"] for c in commands]  # type: ignore[union-attr]
    assert frozen[0] > 0  # the start-up heap is frozen before the first command
    if check_interval == 0:  # checked after every command: the grown heap is frozen before the next one
        assert frozen[2] >= frozen[1] + client_module.FREEZE_GROWTH_BLOCKS
    else:  # checked after the first command only; the next check is an interval away
        assert frozen[2] == frozen[1]
    assert gc.get_freeze_count() == 0  # the run unfroze what it froze
