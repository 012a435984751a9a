"""Constrained scalar types reused across the protocol."""

from __future__ import annotations

from typing import Annotated, TypeAlias

import msgspec

__all__ = [
    "BlobId",
    "Kwargs",
    "KwargValue",
    "Metrics",
    "Name",
    "Scalar",
    "Sha256",
    "Uuid",
]

#: A name chosen by a person: a client, a resource key, a registered model or dataset.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f]*$")]
#: The identifier of a command (see `new_uuid`).
Uuid = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
#: Lower-case hex SHA-256 digest.
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
#: The identifier of a blob in a store; never contains a path separator.
BlobId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")]

#: A keyword-argument value: a scalar, a list of scalars (or of lists of scalars), or a flat mapping.
Scalar: TypeAlias = str | int | float | bool | None
KwargValue: TypeAlias = (
    Scalar
    | Annotated[list[Scalar | Annotated[list[Scalar], msgspec.Meta(max_length=65536)]], msgspec.Meta(max_length=65536)]
    | Annotated[dict[str, Scalar], msgspec.Meta(max_length=1024)]
)
#: Typed keyword arguments for a registered factory (model, optimizer, dataset, ...).
Kwargs = Annotated[dict[Name, KwargValue], msgspec.Meta(max_length=256)]
#: Metric name → value.
Metrics = Annotated[dict[Name, float], msgspec.Meta(max_length=10_000)]
