"""Hypothesis strategies that build any protocol message from msgspec's own type information."""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec
import msgspec.inspect as mi
import theoden_protocol as tp
from hypothesis import strategies as st

_simple_names = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF), min_size=1, max_size=12)


def _for_pattern(pattern: str | None, min_len: int | None, max_len: int | None) -> st.SearchStrategy[str]:
    lo = min_len or 0
    hi = min(max_len if max_len is not None else 16, 16)
    if pattern is None:
        return st.text(min_size=lo, max_size=hi)
    if pattern == r"^[^\x00-\x1f]*$":
        return st.text(
            alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x10FFFF, exclude_categories=("Cs",)),
            min_size=max(lo, 1),
            max_size=hi,
        )
    base = st.from_regex(re.compile(pattern), fullmatch=True)
    return base.filter(lambda s: lo <= len(s) <= (max_len if max_len is not None else 10**9)).map(
        lambda s: s[:hi] if len(s[:hi]) >= lo and re.fullmatch(pattern, s[:hi]) else s
    )


def from_type_info(t: mi.Type, *, depth: int = 0) -> st.SearchStrategy[Any]:
    """Return a strategy producing values of the msgspec type ``t`` (within its constraints)."""
    if isinstance(t, mi.Metadata):
        return from_type_info(t.type, depth=depth)
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -(2**40))
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else 2**40)
        return st.integers(min_value=lo, max_value=hi)
    if isinstance(t, mi.FloatType):
        lo = t.ge if t.ge is not None else t.gt
        hi = t.le if t.le is not None else t.lt
        return st.floats(
            min_value=lo,
            max_value=hi,
            exclude_min=t.gt is not None,
            exclude_max=t.lt is not None,
            allow_nan=False,
            allow_infinity=False,
        )
    if isinstance(t, mi.StrType):
        return _for_pattern(t.pattern, t.min_length, t.max_length)
    if isinstance(t, mi.BytesType):
        return st.binary(max_size=64)
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.ListType):
        lo = t.min_length or 0
        return st.lists(from_type_info(t.item_type, depth=depth + 1), min_size=lo, max_size=max(lo, 3))
    if isinstance(t, mi.DictType):
        lo = t.min_length or 0
        return st.dictionaries(
            from_type_info(t.key_type, depth=depth + 1),
            from_type_info(t.value_type, depth=depth + 1),
            min_size=lo,
            max_size=max(lo, 3),
        )
    if isinstance(t, mi.UnionType):
        return st.one_of([from_type_info(x, depth=depth) for x in t.types])
    if isinstance(t, mi.StructType):
        return struct_strategy(t.cls, depth=depth + 1)
    raise NotImplementedError(f"no strategy for {t!r}")


# fields declared open (Any for msgspec, a registry family for the reader)
_OPEN_FIELDS: dict[str, type[msgspec.Struct]] = {
    "commands": tp.Command,
    "then": tp.Command,
    "otherwise": tp.Command,
    "command": tp.Command,
    "condition": tp.ClientCondition,
    "partition": tp.PartitionSpec,
}


@functools.cache
def family_strategy(base: type[msgspec.Struct], *, depth: int = 0) -> st.SearchStrategy[Any]:
    """Any registered member of a family; meta commands only near the top so trees stay small."""
    members = [
        cls
        for cls in tp.registered_types(base).values()
        if depth < 2 or cls not in (tp.Sequential, tp.Conditional, tp.Repeat)
    ]
    return st.one_of([struct_strategy(cls, depth=depth + 1) for cls in members])


def _is_open(t: mi.Type) -> bool:
    while isinstance(t, (mi.Metadata, mi.ListType)):
        t = t.type if isinstance(t, mi.Metadata) else t.item_type
    return isinstance(t, mi.AnyType)


@functools.cache
def struct_strategy(cls: type[msgspec.Struct], *, depth: int = 0) -> st.SearchStrategy[Any]:
    """Build instances of the struct ``cls`` field by field."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for field in info.fields:
        if field.name in _OPEN_FIELDS and _is_open(field.type):
            family = family_strategy(_OPEN_FIELDS[field.name], depth=depth)
            if field.name == "commands":
                kwargs[field.name] = st.lists(family, max_size=3)
            elif field.name == "otherwise":
                kwargs[field.name] = st.none() | family
            else:
                kwargs[field.name] = family
        else:
            kwargs[field.name] = from_type_info(field.type, depth=depth)
    if cls is tp.Train:
        kwargs["steps"] = st.integers(0, 1000)
        kwargs["epochs"] = st.none()
    if cls is tp.PercentagePartition:
        kwargs["fractions"] = st.lists(st.floats(0.01, 0.2), min_size=1, max_size=4)
    if cls is tp.SetLocalPartition:
        kwargs["splits"] = st.dictionaries(st.sampled_from(["train", "val", "test"]), st.floats(0.01, 0.3), min_size=1)
    return st.builds(cls, **kwargs)
