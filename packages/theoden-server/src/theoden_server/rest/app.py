"""The Litestar application: routes under ``/api/v1`` over one `Server`."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import anyio.to_thread
import msgspec
from litestar import Litestar, Request, Router, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, OAuthFlow, OAuthFlows, SecurityScheme
from litestar.params import FromPath, JSONBody, URLEncodedBody
from litestar.response import File
from theoden_protocol import (
    Ack,
    BlobRef,
    LoginResponse,
    ServerRequest,
    ServerResponse,
    StatusUpdate,
)
from theoden_protocol._base import family_union

from theoden_server.errors import BadRequest
from theoden_server.rest.errors import EXCEPTION_HANDLERS
from theoden_server.rest.fastpath import API_PREFIX, FastPath, authenticate, dispatch, readable_blob, receive_blob
from theoden_server.rest.longpoll import LongPollHub
from theoden_server.security import Principal, TokenIssuer, UsersFile
from theoden_server.server import Server
from theoden_server.storage import BlobStore

__all__ = ["RestContext", "RestSettings", "TokenForm", "create_app"]

logger = logging.getLogger("theoden.server.rest")


@dataclass(frozen=True, kw_only=True)
class RestSettings:
    """Knobs of the REST interface."""

    max_wait: float = 30.0
    """Longest a pull request is held (the client's ``wait`` is capped to this)."""
    max_request_bytes: int = 4 * 1024 * 1024
    """Largest JSON body accepted on ``/requests`` and ``/status``."""
    openapi: bool = True
    """Serve the OpenAPI schema and its UI under ``/api/v1/schema``."""


@dataclass(kw_only=True)
class RestContext:
    """What the handlers need, held in ``app.state``."""

    server: Server
    users: UsersFile
    tokens: TokenIssuer
    store: BlobStore
    settings: RestSettings
    hub: LongPollHub = field(default_factory=LongPollHub)


class TokenForm(msgspec.Struct, kw_only=True):
    """OAuth2 password grant form (``application/x-www-form-urlencoded``)."""

    username: str
    password: str
    grant_type: str = "password"
    scope: str = ""
    client_id: str | None = None
    client_secret: str | None = None


async def provide_ctx(state: State) -> RestContext:
    """Dependency: the app's context."""
    ctx: RestContext = state["theoden"]
    return ctx


async def provide_principal(request: Request[Any, Any, Any], ctx: NamedDependency[RestContext]) -> Principal:
    """Dependency: the authenticated caller, from the bearer token (401 otherwise).

    It takes ``ctx`` as a dependency (rather than reading the state itself) so Litestar resolves the two
    one after the other; independent dependencies would be resolved concurrently in a task group per
    request, which costs more than resolving them.
    """
    return authenticate(ctx, request.headers.get("authorization"))


# -- auth ----------------------------------------------------------------------------------------


@post("/auth/token", status_code=200, security=[], tags=["auth"], summary="Log in (OAuth2 password flow)")
async def issue_token(data: URLEncodedBody[TokenForm], ctx: NamedDependency[RestContext]) -> LoginResponse:
    """Exchange a username and password for a bearer JWT."""
    if data.grant_type != "password":
        raise BadRequest(f"grant_type must be 'password', not {data.grant_type[:40]!r}")
    principal = await anyio.to_thread.run_sync(ctx.users.authenticate, data.username, data.password)
    token, expires_in = ctx.tokens.issue(principal)
    return LoginResponse(access_token=token, expires_in=expires_in)


# -- requests and status -------------------------------------------------------------------------


def _requests_handler() -> Any:
    async def handle_request(data: Any, principal: Any, ctx: Any) -> Any:
        """Process any server request; a pull may wait up to its ``wait`` seconds for a command."""
        return await dispatch(ctx, data, principal)

    handle_request.__annotations__ = {
        "data": JSONBody[family_union(ServerRequest)],  # type: ignore[misc]
        "principal": NamedDependency[Principal],
        "ctx": NamedDependency[RestContext],
        "return": family_union(ServerResponse),
    }
    return post("/requests", status_code=200, tags=["requests"], summary="Send a server request")(handle_request)


@post("/status", status_code=200, tags=["requests"], summary="Report a command's status")
async def post_status(
    data: JSONBody[StatusUpdate], principal: NamedDependency[Principal], ctx: NamedDependency[RestContext]
) -> Ack:
    """Report that a command started, finished (with its results) or failed."""
    return ctx.server.process_status_update(data, principal.name)


# -- storage -------------------------------------------------------------------------------------


@put("/storage/{blob_id:str}", status_code=201, request_max_body_size=None, tags=["storage"], summary="Upload a blob")
async def upload_blob(
    request: Request[Any, Any, Any],
    blob_id: FromPath[str],
    principal: NamedDependency[Principal],
    ctx: NamedDependency[RestContext],
) -> BlobRef:
    """Stream a blob into the store; ``blob_id`` must be the SHA-256 of the body."""
    return await receive_blob(ctx, principal, blob_id, request.headers.get, request.stream())


@get("/storage/{blob_id:str}", tags=["storage"], summary="Download a blob")
async def download_blob(
    blob_id: FromPath[str], principal: NamedDependency[Principal], ctx: NamedDependency[RestContext]
) -> File:
    """Stream a blob the caller may read (the global model; a client's own uploads)."""
    ref = readable_blob(ctx, principal, blob_id)
    return File(
        ctx.store.path(blob_id),
        media_type=ref.media_type,
        headers={"X-Content-SHA256": ref.sha256},
        content_disposition_type="inline",
        filename=f"{blob_id}.safetensors",
    )


# -- health and admin ----------------------------------------------------------------------------


class Health(msgspec.Struct, kw_only=True):
    """Liveness of the server."""

    status: str
    run_name: str
    finished: bool
    waiting_pulls: int


@get("/health", security=[], tags=["health"], summary="Liveness (no authentication)")
async def health(ctx: NamedDependency[RestContext]) -> Health:
    """Say that the server is up and which run it serves."""
    return Health(
        status="ok", run_name=ctx.server.run_name, finished=ctx.server.finished.is_set(), waiting_pulls=ctx.hub.waiting
    )


# -- the app -------------------------------------------------------------------------------------


def create_app(
    server: Server,
    *,
    users: UsersFile,
    tokens: TokenIssuer,
    store: BlobStore | None = None,
    settings: RestSettings | None = None,
    extra_route_handlers: list[Any] | None = None,
) -> Litestar:
    """Build the Litestar app serving ``server`` under ``/api/v1``."""
    settings = settings or RestSettings()
    ctx = RestContext(server=server, users=users, tokens=tokens, store=store or server.store, settings=settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        ctx.hub.bind(asyncio.get_running_loop(), server.subscribe)
        try:
            yield
        finally:
            ctx.hub.close()

    api = Router(
        path=API_PREFIX,
        route_handlers=[
            issue_token,
            _requests_handler(),
            post_status,
            upload_blob,
            download_blob,
            health,
            *(extra_route_handlers or []),
        ],
        dependencies={"ctx": Provide(provide_ctx), "principal": Provide(provide_principal)},
    )
    openapi = OpenAPIConfig(
        title="TheODen server",
        version="0.1.0",
        path=f"{API_PREFIX}/schema",
        render_plugins=[SwaggerRenderPlugin()],
        components=Components(
            security_schemes={
                "OAuth2": SecurityScheme(
                    type="oauth2",
                    description="Log in with a username and password to get a bearer JWT.",
                    flows=OAuthFlows(password=OAuthFlow(token_url=f"{API_PREFIX}/auth/token", scopes={})),
                )
            }
        ),
        security=[{"OAuth2": []}],
    )
    app = Litestar(
        route_handlers=[api],
        state=State({"theoden": ctx}),
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_request_bytes,
        openapi_config=openapi if settings.openapi else None,
        lifespan=[lifespan],
        debug=False,
    )
    # the two hot routes skip Litestar's per-request machinery (same answers; see rest/fastpath.py)
    app.asgi_handler = cast(Any, FastPath(cast(Any, app.asgi_handler), ctx))
    return app
