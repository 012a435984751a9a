"""Blob references: how weights and other large payloads are named on the wire."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from theoden_protocol._base import WireStruct
from theoden_protocol._types import BlobId, Name, Sha256

__all__ = ["SAFETENSORS_MEDIA_TYPE", "BlobRef"]

#: Media type of a safetensors file, the only form weights travel in.
SAFETENSORS_MEDIA_TYPE: Final = "application/vnd.safetensors"


class BlobRef(WireStruct, frozen=True):
    """A blob held by the server's store: its ``id``, content digest, byte size and media type.

    Receivers verify ``sha256`` and ``size`` after every transfer; a mismatch is an error,
    never silently accepted.
    """

    id: BlobId
    sha256: Sha256
    size: Annotated[int, msgspec.Meta(ge=0)]
    media_type: Name = SAFETENSORS_MEDIA_TYPE
