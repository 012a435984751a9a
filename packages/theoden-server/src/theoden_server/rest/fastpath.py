"""The hot routes, served without the framework's per-request machinery.

Every client round goes through ``POST /api/v1/requests`` (pulls, heartbeats), ``POST
/api/v1/status`` and ``GET`` / ``PUT /api/v1/storage/{id}`` (the global model, the client's update). For these, Litestar's
routing, dependency injection, signature model and response pipeline cost about three times the
work of the request itself, and its file responses hop to a worker thread per 64 KiB (profiled in
``benchmarks/RESULTS.md``, figures 1 and 5). `FastPath` sits in front of the Litestar app and
answers them directly: authenticate the bearer token, read the body up to the size limit, decode
it with the protocol's codec, call the `Server`, encode the answer (or stream the blob). It
answers as the Litestar handlers would (same statuses, same `ErrorBody`, same headers that
clients use); those handlers stay registered, so the OpenAPI schema still documents the routes.
Every other route goes to Litestar unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from theoden_protocol import (
    BlobRef,
    CommandResponse,
    ErrorBody,
    PullCommand,
    ServerRequest,
    ServerResponse,
    StatusUpdate,
    codec,
)
from theoden_protocol.errors import TheodenError

from theoden_server.errors import BadRequest, Forbidden, PayloadTooLarge, Unauthorized, status_of
from theoden_server.security import Principal
from theoden_server.storage import CACHE_BLOB_BYTES, validate_blob_id

if TYPE_CHECKING:
    from theoden_server.rest.app import RestContext

__all__ = ["API_PREFIX", "FastPath", "authenticate", "dispatch", "readable_blob", "receive_blob"]

logger = logging.getLogger("theoden.server.rest")

API_PREFIX = "/api/v1"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_STORAGE = f"{API_PREFIX}/storage/"
#: Blobs up to this size are served from memory in one piece; larger ones read in pieces on a worker thread.
_INLINE_READ_BYTES = CACHE_BLOB_BYTES
_READ_CHUNK_BYTES = 1024 * 1024
#: Received upload bytes are handed to a worker thread in batches of about this size.
_UPLOAD_FLUSH_BYTES = 4 * 1024 * 1024
_CHALLENGE = (b"www-authenticate", b"Bearer")


class ClientGone(Exception):
    """The client disconnected before its request was complete (nothing to answer)."""


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


async def receive_blob(
    ctx: RestContext,
    principal: Principal,
    blob_id: str,
    header: Callable[[str], str | None],
    chunks: AsyncIterator[bytes],
) -> BlobRef:
    """Stream an upload into the store as ``principal``'s blob; ``blob_id`` must be the SHA-256 of the body.

    ``header`` looks up a request header by its lower-case name. Received chunks are handed to a worker
    thread in batches (hashing and writing release the GIL) without being joined first (a join would
    copy every byte once more on the event loop); the last batch and the commit share one hop.
    """
    validate_blob_id(blob_id)
    store = ctx.store
    length_header = header("content-length")
    length = int(length_header) if length_header and length_header.isdigit() else None
    if length is not None and length > store.max_blob_bytes:
        raise PayloadTooLarge(f"blob of {length} bytes is larger than the limit of {store.max_blob_bytes} bytes")
    claimed = header("x-content-sha256")
    if claimed is not None and claimed != blob_id:
        raise BadRequest("X-Content-SHA256 differs from the blob id in the path")
    media_type = header("content-type") or "application/octet-stream"
    writer = store.writer(
        media_type=media_type[:128],
        owner=principal.name,
        expected_sha256=blob_id,
        expected_size=length,
        in_memory=not ctx.server.keep_uploads,  # uploads deleted after their round need not touch the disk
    )

    def finish(last: list[bytes]) -> BlobRef:
        writer.write_chunks(last)
        return writer.commit()

    try:
        pending: list[bytes] = []
        pending_bytes = 0
        async for chunk in chunks:
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= _UPLOAD_FLUSH_BYTES:
                await anyio.to_thread.run_sync(writer.write_chunks, pending)
                pending = []
                pending_bytes = 0
        return await anyio.to_thread.run_sync(finish, pending)
    except BaseException:
        writer.abort()
        raise


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:  # ASGI servers lower-case header names
            return bytes(value).decode("latin-1")
    return None


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body's pieces as they arrive; `ClientGone` when the client disconnects first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client went away before its request was complete")
        if chunk := message.get("body", b""):
            yield chunk
        if not message.get("more_body", False):
            return


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body; `PayloadTooLarge` past ``limit``, `ClientGone` when the client went away."""
    length = _header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"a body of {length} bytes is larger than this route accepts ({limit} bytes)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in _body_chunks(receive):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than this route accepts ({limit} bytes)")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def readable_blob(ctx: RestContext, principal: Principal, blob_id: str) -> BlobRef:
    """The reference of a blob ``principal`` may read (`NotFound`, `Forbidden` otherwise)."""
    store = ctx.store
    ref = store.ref(blob_id)
    if not store.can_read(blob_id, principal.name, is_admin=principal.is_admin):
        raise Forbidden(f"blob {blob_id} is not readable by {principal.name!r}: it is another client's upload")
    return ref


class FastPath:
    """ASGI wrapper answering the hot routes itself (see the module docstring).

    Args:
        app: The ASGI app every other request goes to (Litestar's handler stack).
        ctx: The REST context (server, users, tokens, store, settings, long-poll hub).
    """

    def __init__(self, app: ASGIApp, ctx: RestContext) -> None:
        self.app = app
        self.ctx = ctx
        self._routes = {f"{API_PREFIX}/requests": False, f"{API_PREFIX}/status": True}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a hot route, or pass the request on."""
        if scope["type"] == "http":
            is_status = self._routes.get(scope["path"])
            if is_status is not None and scope["method"] == "POST":
                await self._post(scope, receive, send, is_status=is_status)
                return
            if scope["path"].startswith(_STORAGE):
                if scope["method"] == "GET":
                    await self._download(scope, send, scope["path"][len(_STORAGE) :])
                    return
                if scope["method"] == "PUT":
                    await self._upload(scope, receive, send, scope["path"][len(_STORAGE) :])
                    return
        await self.app(scope, receive, send)

    async def _post(self, scope: Scope, receive: Receive, send: Send, *, is_status: bool) -> None:
        """``POST /requests`` and ``POST /status``."""
        try:
            principal = authenticate(self.ctx, _header(scope, b"authorization"))
            body = await _read_body(scope, receive, self.ctx.settings.max_request_bytes)
            data = codec.decode_status(body) if is_status else codec.decode_request(body)
            payload = codec.encode(await dispatch(self.ctx, data, principal))
        except ClientGone:
            return
        except Exception as exc:
            await _send_error(scope, send, exc)
            return
        headers = [_JSON, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _upload(self, scope: Scope, receive: Receive, send: Send, blob_id: str) -> None:
        """``PUT /storage/{blob_id}``: a streamed upload (see `receive_blob`)."""
        try:
            principal = authenticate(self.ctx, _header(scope, b"authorization"))
            ref = await receive_blob(
                self.ctx, principal, blob_id, lambda name: _header(scope, name.encode("latin-1")), _body_chunks(receive)
            )
        except ClientGone:
            return
        except Exception as exc:
            await _send_error(scope, send, exc)
            return
        payload = codec.encode(ref)
        headers = [_JSON, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _download(self, scope: Scope, send: Send, blob_id: str) -> None:
        """``GET /storage/{blob_id}``: a blob the caller may read; small ones in one piece."""
        try:
            ref = readable_blob(self.ctx, authenticate(self.ctx, _header(scope, b"authorization")), blob_id)
            # a small blob (the global model, read by every client) comes from memory after its first read
            small = self.ctx.store.read_cached(blob_id) if ref.size <= _INLINE_READ_BYTES else None
            file = self.ctx.store.open(blob_id) if small is None else None
        except Exception as exc:
            await _send_error(scope, send, exc)
            return
        headers = [
            (b"content-type", ref.media_type.encode("latin-1")),
            (b"content-length", str(ref.size).encode()),
            (b"x-content-sha256", ref.sha256.encode()),
            (b"content-disposition", f'inline; filename="{blob_id}.safetensors"'.encode()),
        ]
        if file is None:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": small})
            return
        with file:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            while chunk := await anyio.to_thread.run_sync(file.read, _READ_CHUNK_BYTES):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


async def _send_error(scope: Scope, send: Send, exc: Exception) -> None:
    """Answer with the `ErrorBody` the app's exception handlers would give."""
    headers = [_JSON]
    if isinstance(exc, TheodenError):
        status, payload = status_of(exc), codec.encode(ErrorBody(code=exc.code, detail=exc.detail))
        if isinstance(exc, Unauthorized):
            headers.append(_CHALLENGE)
    else:
        logger.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
        status = 500
        payload = codec.encode(
            ErrorBody(code="internal_error", detail="the server failed to handle this request; the error was logged")
        )
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
