"""Operation protection: which server requests a server accepts at all, whatever the caller's role.

A deployment that never wants, say, clients to download blobs chunk by chunk (REST-only sites) or
a user's own request type to be used, passes a protection to the server; a refused request gets
403 and changes nothing.
"""

from __future__ import annotations

from theoden_protocol import ServerRequest

__all__ = ["OperationBlacklist", "OperationProtection", "OperationWhitelist"]


class OperationProtection:
    """Decides whether a server request type may be processed; the base allows everything."""

    def allows(self, request: ServerRequest | type[ServerRequest]) -> bool:
        """Whether ``request`` (an instance or a type) may be processed."""
        return True

    @staticmethod
    def _type(request: ServerRequest | type[ServerRequest]) -> type[ServerRequest]:
        return request if isinstance(request, type) else type(request)


class OperationWhitelist(OperationProtection):
    """Only the listed request types (and their subclasses) are processed."""

    def __init__(self, *allowed: type[ServerRequest]) -> None:
        self.allowed = tuple(allowed)

    def allows(self, request: ServerRequest | type[ServerRequest]) -> bool:
        """Whether ``request`` is one of the allowed types."""
        return issubclass(self._type(request), self.allowed)


class OperationBlacklist(OperationProtection):
    """Every request type except the listed ones (and their subclasses) is processed."""

    def __init__(self, *refused: type[ServerRequest]) -> None:
        self.refused = tuple(refused)

    def allows(self, request: ServerRequest | type[ServerRequest]) -> bool:
        """Whether ``request`` is not one of the refused types."""
        return not issubclass(self._type(request), self.refused)
