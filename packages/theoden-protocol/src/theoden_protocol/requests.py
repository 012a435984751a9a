"""Server requests: what a client asks of the server, as a tagged union on ``type``.

Over REST each request is the body of ``POST /api/v1/requests`` (status updates also have
``POST /api/v1/status``); over RabbitMQ every request is a message on the server's request
queue. The server answers each with a `ServerResponse`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from theoden_protocol._base import WireStruct, _declare_family, _register_builtin
from theoden_protocol._types import BlobId, KwargValue, Name, Sha256
from theoden_protocol.blobs import SAFETENSORS_MEDIA_TYPE
from theoden_protocol.version import PROTOCOL_VERSION

__all__ = [
    "MAX_CHUNK_BYTES",
    "MAX_WAIT_SECONDS",
    "BlobChunkGet",
    "BlobChunkPut",
    "BlobDownload",
    "BlobUpload",
    "Heartbeat",
    "LoginRequest",
    "PullCommand",
    "RegisterRequest",
    "ServerRequest",
]

#: Longest a pull may ask to wait; servers may cap it lower.
MAX_WAIT_SECONDS = 300.0
#: Largest chunk of a blob in one broker message.
MAX_CHUNK_BYTES = 8 * 1024 * 1024


class ServerRequest(WireStruct, tag_field="type", frozen=True):
    """Base of every client → server request.

    ``client_name`` is optional: the server takes the client's identity from its credentials,
    and refuses a request whose ``client_name`` names anybody else.
    """

    client_name: Name | None = None


class LoginRequest(ServerRequest, tag="login", kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Exchange a username and password for an access token (JSON alternative to the OAuth2 form)."""

    username: Name
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class RegisterRequest(ServerRequest, tag="register", kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Join the run as the authenticated client; the server checks ``protocol_version``.

    Sent once after authenticating and again after every reconnect. ``info`` carries facts the
    operator may want to see (host name, torch version); never data.
    """

    protocol_version: Annotated[str, msgspec.Meta(max_length=32)] = PROTOCOL_VERSION
    client_version: Annotated[str, msgspec.Meta(max_length=64)] = ""
    info: Annotated[dict[Name, KwargValue], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=dict)


class PullCommand(ServerRequest, tag="pull_command", kw_only=True, frozen=True):
    """Ask for the next command; the server may hold the request up to ``wait`` seconds (long-poll)."""

    wait: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT_SECONDS)] = 0.0


class Heartbeat(ServerRequest, tag="heartbeat", kw_only=True, frozen=True):
    """Tell the server the client is alive (sent between commands and during long ones)."""


class BlobUpload(ServerRequest, tag="blob_upload", kw_only=True, frozen=True):
    """Announce an upload of ``size`` bytes with digest ``sha256``; the answer says where to send it."""

    sha256: Sha256
    size: Annotated[int, msgspec.Meta(ge=0)]
    media_type: Name = SAFETENSORS_MEDIA_TYPE


class BlobDownload(ServerRequest, tag="blob_download", kw_only=True, frozen=True):
    """Ask where and how to fetch blob ``blob_id``."""

    blob_id: BlobId


class BlobChunkPut(ServerRequest, tag="blob_chunk_put", kw_only=True, frozen=True):
    """One chunk of an announced upload (broker transport); ``index`` counts from 0."""

    blob_id: BlobId
    index: Annotated[int, msgspec.Meta(ge=0)]
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_CHUNK_BYTES)]


class BlobChunkGet(ServerRequest, tag="blob_chunk_get", kw_only=True, frozen=True):
    """Ask for chunk ``index`` of blob ``blob_id`` (broker transport)."""

    blob_id: BlobId
    index: Annotated[int, msgspec.Meta(ge=0)]


_declare_family("server request", ServerRequest)
_register_builtin(
    [LoginRequest, RegisterRequest, PullCommand, Heartbeat, BlobUpload, BlobDownload, BlobChunkPut, BlobChunkGet]
)
