"""The REST interface: a Litestar app over `Server` (OAuth2 password flow, JWT, streamed blobs)."""

from __future__ import annotations

from theoden_server.rest.app import RestSettings, create_app

__all__ = ["RestSettings", "create_app"]
