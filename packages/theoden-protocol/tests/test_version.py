from __future__ import annotations

import pytest
import theoden_protocol as tp


def test_same_major_is_compatible() -> None:
    tp.check_compatible("1.7", "1.0")
    assert tp.is_compatible("1.0")


def test_other_major_is_refused_naming_both_versions() -> None:
    with pytest.raises(
        tp.IncompatibleVersionError, match=r"client speaks protocol 2\.1 .* this side speaks protocol 1\.0"
    ):
        tp.check_compatible("2.1", "1.0", remote_role="client")


@pytest.mark.parametrize("bad", ["", "1", "1.x", "v1.0", "1.0.0"])
def test_malformed_versions_are_refused(bad: str) -> None:
    assert not tp.is_compatible(bad)
    with pytest.raises(tp.IncompatibleVersionError, match="1.0"):
        tp.check_compatible(bad)


def test_register_request_carries_the_protocol_version() -> None:
    assert tp.RegisterRequest().protocol_version == tp.PROTOCOL_VERSION
