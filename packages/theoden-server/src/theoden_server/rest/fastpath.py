"""The hot routes, served without the framework's per-request machinery.

Every client round trip goes through ``POST /api/v1/requests`` (pulls, heartbeats) and
``POST /api/v1/status``. For these two, Litestar's routing, dependency injection, signature
model and response pipeline cost about three times the work of the request itself (profiled in
``benchmarks/RESULTS.md``, figure 5). `FastPath` sits in front of the Litestar app and answers
them directly: authenticate the bearer token, read the body up to the size limit, decode it with
the protocol's codec, call the `Server`, encode the answer. It answers exactly as the Litestar
handlers would (same statuses, same `ErrorBody`); those handlers stay registered, so the
OpenAPI schema still documents both routes. Every other route goes to Litestar unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from theoden_protocol import CommandResponse, ErrorBody, PullCommand, ServerRequest, ServerResponse, StatusUpdate, codec
from theoden_protocol.errors import TheodenError

from theoden_server.errors import PayloadTooLarge, Unauthorized, status_of
from theoden_server.security import Principal

if TYPE_CHECKING:
    from theoden_server.rest.app import RestContext

__all__ = ["API_PREFIX", "FastPath", "authenticate", "dispatch"]

logger = logging.getLogger("theoden.server.rest")

API_PREFIX = "/api/v1"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_CHALLENGE = (b"www-authenticate", b"Bearer")


def authenticate(ctx: RestContext, header: str | None) -> Principal:
    """Return the caller of a request from its ``Authorization`` header (`Unauthorized` otherwise)."""
    if not header:
        raise Unauthorized(
            f"missing bearer token: log in at POST {API_PREFIX}/auth/token and send 'Authorization: Bearer <token>'"
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    principal = ctx.tokens.verify(token.strip())
    if principal.name not in ctx.users:
        raise Unauthorized(f"user {principal.name!r} no longer exists; ask the operator for an account")
    return principal


async def _long_poll(ctx: RestContext, request: PullCommand, client: str) -> ServerResponse:
    wait = min(request.wait, ctx.settings.max_wait)
    deadline = time.monotonic() + wait
    server = ctx.server
    while True:
        event = ctx.hub.register(client)
        try:
            response = server.process_server_request(request, client)
            remaining = deadline - time.monotonic()
            if not isinstance(response, CommandResponse) or response.command is not None or remaining <= 0:
                return response
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
        finally:
            ctx.hub.unregister(client, event)


async def dispatch(ctx: RestContext, data: ServerRequest | StatusUpdate, principal: Principal) -> ServerResponse:
    """Hand a decoded request to the server; a pull may wait (long-poll) for a command."""
    if isinstance(data, PullCommand):  # the server refuses a pull naming another client before any wait
        return await _long_poll(ctx, data, principal.name)
    if isinstance(data, StatusUpdate):
        # The core applies a status under a briefly held lock and hands slow work to its worker thread,
        # so it runs inline: a thread hop per update costs more than the update (and convoys on the GIL).
        return ctx.server.process_status_update(data, principal.name)
    return ctx.server.process_server_request(data, principal.name, is_admin=principal.is_admin)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:  # ASGI servers lower-case header names
            return bytes(value).decode("latin-1")
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole body, or ``None`` when the client went away; `PayloadTooLarge` past ``limit``."""
    length = _header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"a body of {length} bytes is larger than this route accepts ({limit} bytes)")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than this route accepts ({limit} bytes)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class FastPath:
    """ASGI wrapper answering ``POST /requests`` and ``POST /status`` itself (see the module docstring).

    Args:
        app: The ASGI app every other request goes to (Litestar's handler stack).
        ctx: The REST context (server, users, tokens, settings, long-poll hub).
    """

    def __init__(self, app: ASGIApp, ctx: RestContext) -> None:
        self.app = app
        self.ctx = ctx
        self._routes = {f"{API_PREFIX}/requests": False, f"{API_PREFIX}/status": True}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a hot route, or pass the request on."""
        is_status = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if is_status is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = [_JSON]
        try:
            principal = authenticate(self.ctx, _header(scope, b"authorization"))
            body = await _read_body(scope, receive, self.ctx.settings.max_request_bytes)
            if body is None:
                return
            if is_status:
                result: ServerResponse = self.ctx.server.process_status_update(
                    codec.decode_status(body), principal.name
                )
            else:
                result = await dispatch(self.ctx, codec.decode_request(body), principal)
            status, payload = 200, codec.encode(result)
        except TheodenError as exc:
            status, payload = status_of(exc), codec.encode(ErrorBody(code=exc.code, detail=exc.detail))
            if isinstance(exc, Unauthorized):
                headers.append(_CHALLENGE)
        except Exception:
            logger.exception("unhandled error on POST %s", scope["path"])
            status = 500
            payload = codec.encode(
                ErrorBody(
                    code="internal_error", detail="the server failed to handle this request; the error was logged"
                )
            )
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
