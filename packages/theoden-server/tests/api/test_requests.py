from __future__ import annotations

import asyncio
import time

from theoden_protocol import (
    CommandStatus,
    ExecutionResponse,
    Heartbeat,
    PullCommand,
    RegisterRequest,
    StatusUpdate,
    Train,
    codec,
)

from .conftest import Api


async def _post(api: Api, who: str, message: object, path: str = "/api/v1/requests") -> tuple[int, dict]:  # type: ignore[type-arg]
    response = await api.client.post(path, content=codec.encode(message), headers=api.auth(who))
    return response.status_code, response.json()


async def test_pull_without_wait_returns_no_command_until_the_condition_holds(api: Api) -> None:
    assert (await _post(api, "alice", RegisterRequest()))[0] == 200
    status, body = await _post(api, "alice", PullCommand(wait=0))
    assert status == 200
    assert body["type"] == "command"
    assert body.get("command") is None


async def test_long_poll_returns_as_soon_as_a_command_exists(api: Api) -> None:
    # Prepare: alice waits; the plan needs two clients
    await _post(api, "alice", RegisterRequest())
    started = time.monotonic()
    pull = asyncio.create_task(_post(api, "alice", PullCommand(wait=8)))
    await asyncio.sleep(0.3)
    assert not pull.done()
    # Execute: bob joins, the condition is met
    await _post(api, "bob", RegisterRequest())
    status, body = await asyncio.wait_for(pull, 5)
    # Assert
    elapsed = time.monotonic() - started
    assert status == 200
    assert body["command"]["type"] == "train"
    assert elapsed < 4, f"long poll answered after {elapsed:.2f}s, not as soon as the command existed"


async def test_long_poll_times_out_with_no_command(api: Api) -> None:
    await _post(api, "alice", RegisterRequest())
    started = time.monotonic()
    status, body = await _post(api, "alice", PullCommand(wait=0.5))
    assert status == 200
    assert body.get("command") is None
    assert 0.4 < time.monotonic() - started < 3


async def test_a_client_reports_status_and_the_round_moves_on(api: Api) -> None:
    for name in ("alice", "bob"):
        await _post(api, name, RegisterRequest())
    for name in ("alice", "bob"):
        _, body = await _post(api, name, PullCommand(wait=2))
        command = codec.decode_response(codec.encode(body))
        assert isinstance(command.command, Train)  # type: ignore[attr-defined]
        update = StatusUpdate(
            client_name=name,
            command_uuid=command.command.uuid,  # type: ignore[attr-defined]
            status=CommandStatus.FINISHED,
            response=ExecutionResponse(metrics={"train/loss": 0.5}, num_samples=10),
        )
        status, ack = await _post(api, name, update, "/api/v1/status")
        assert status == 200, ack
        assert ack["type"] == "ack"
    _, body = await _post(api, "alice", PullCommand(wait=3))
    assert body["command"]["type"] == "exit"


async def test_impersonation_is_forbidden_and_changes_nothing(api: Api) -> None:
    for name in ("alice", "bob"):
        await _post(api, name, RegisterRequest())
    _, body = await _post(api, "bob", PullCommand(wait=2))
    bob_command = body["command"]["uuid"]
    # alice reports bob's command as failed, in bob's name
    forged = StatusUpdate(client_name="bob", command_uuid=bob_command, status=CommandStatus.FAILED)
    status, error = await _post(api, "alice", forged, "/api/v1/status")
    assert status == 403
    assert error["code"] == "forbidden"
    status, error = await _post(api, "alice", forged)
    assert status == 403
    status, error = await _post(api, "alice", PullCommand(client_name="bob"))
    assert status == 403
    status, error = await _post(api, "alice", Heartbeat(client_name="bob"))
    assert status == 403
    # bob's command is untouched: bob can still finish it
    update = StatusUpdate(
        client_name="bob",
        command_uuid=bob_command,
        status=CommandStatus.FINISHED,
        response=ExecutionResponse(num_samples=1),
    )
    status, _ = await _post(api, "bob", update, "/api/v1/status")
    assert status == 200


async def test_status_for_unknown_or_foreign_commands_is_refused(api: Api) -> None:
    for name in ("alice", "bob"):
        await _post(api, name, RegisterRequest())
    _, body = await _post(api, "bob", PullCommand(wait=2))
    unknown = StatusUpdate(client_name="alice", command_uuid="doesnotexist", status=CommandStatus.FINISHED)
    status, error = await _post(api, "alice", unknown, "/api/v1/status")
    assert status == 404
    foreign = StatusUpdate(client_name="alice", command_uuid=body["command"]["uuid"], status=CommandStatus.FINISHED)
    status, error = await _post(api, "alice", foreign, "/api/v1/status")
    assert status in (403, 409)
    assert error["code"] in ("forbidden", "conflict")


async def test_malformed_bodies_are_400_with_the_path(api: Api) -> None:
    headers = {**api.auth("alice"), "Content-Type": "application/json"}
    cases = {
        b"{": None,
        b'{"type": "teleport"}': "type",
        b'{"type": "pull_command", "wait": "long"}': "wait",
        b'{"type": "register", "admin": true}': "admin",
        b"[]": None,
    }
    for body, needle in cases.items():
        response = await api.client.post("/api/v1/requests", content=body, headers=headers)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["code"] in {"bad_request", "protocol_error"}
        if needle:
            assert needle in response.json()["detail"], response.json()
    bad_status = await api.client.post("/api/v1/status", content=b'{"type": "status_update"}', headers=headers)
    assert bad_status.status_code == 400
    assert "client_name" in bad_status.json()["detail"]


async def test_incompatible_protocol_version_is_refused_naming_both(api: Api) -> None:
    status, error = await _post(api, "alice", RegisterRequest(protocol_version="9.0"))
    assert status == 409
    assert "9.0" in error["detail"]
    assert "1.0" in error["detail"]


async def test_unknown_routes_and_methods_are_json_errors(api: Api) -> None:
    missing = await api.client.get("/api/v1/nothing-here", headers=api.auth("alice"))
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    method = await api.client.delete("/api/v1/requests", headers=api.auth("alice"))
    assert method.status_code == 405
    assert method.json()["code"] == "method_not_allowed"


async def test_oversized_json_body_is_413(api: Api) -> None:
    headers = {**api.auth("alice"), "Content-Type": "application/json"}
    big = b'{"type": "heartbeat", "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    response = await api.client.post("/api/v1/requests", content=big, headers=headers)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_operation_protection_refuses_request_types_with_403(api: Api) -> None:
    from theoden_protocol import BlobChunkGet, BlobDownload
    from theoden_server.protection import OperationBlacklist

    await _post(api, "alice", RegisterRequest())
    api.built.server.protection = OperationBlacklist(BlobDownload, BlobChunkGet)
    status, error = await _post(api, "alice", BlobDownload(blob_id="0" * 64))
    assert status == 403
    assert "'blob_download'" in error["detail"]
    assert (await _post(api, "alice", Heartbeat()))[0] == 200
