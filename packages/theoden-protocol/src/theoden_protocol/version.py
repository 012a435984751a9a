"""Protocol versioning: one ``MAJOR.MINOR`` string exchanged when a client registers."""

from __future__ import annotations

from theoden_protocol.errors import IncompatibleVersionError

__all__ = ["PROTOCOL_VERSION", "check_compatible", "is_compatible"]

#: The version of the wire protocol this package speaks. A change of MAJOR breaks the wire
#: format (a removed field, a changed type); MINOR grows it compatibly (new fields with
#: defaults, new message types).
PROTOCOL_VERSION = "1.0"


def _parse(version: str) -> tuple[int, int]:
    """Split ``"MAJOR.MINOR"`` into integers, refusing anything else."""
    parts = version.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise IncompatibleVersionError(
            f"protocol version {version!r} is not of the form MAJOR.MINOR (this side speaks {PROTOCOL_VERSION})"
        )
    return int(parts[0]), int(parts[1])


def is_compatible(remote: str, local: str = PROTOCOL_VERSION) -> bool:
    """Return whether two sides speaking ``remote`` and ``local`` can talk (same MAJOR)."""
    try:
        return _parse(remote)[0] == _parse(local)[0]
    except IncompatibleVersionError:
        return False


def check_compatible(remote: str, local: str = PROTOCOL_VERSION, *, remote_role: str = "peer") -> None:
    """Raise `IncompatibleVersionError` naming both versions unless ``remote`` can talk to ``local``."""
    if not is_compatible(remote, local):
        raise IncompatibleVersionError(
            f"the {remote_role} speaks protocol {remote} but this side speaks protocol {local}; "
            f"both must share the major version {local.split('.')[0]}. "
            "Upgrade the older side (pip install -U theoden-client / theoden-server)."
        )
