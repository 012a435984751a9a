from __future__ import annotations

import inspect

import msgspec
import theoden_protocol as tp


def test_every_public_protocol_type_says_what_it_means_on_the_wire() -> None:
    missing = [
        name
        for name in tp.__all__
        if inspect.isclass(obj := getattr(tp, name))
        and issubclass(obj, (msgspec.Struct, Exception))
        and not (obj.__doc__ or "").strip()
    ]
    assert missing == []


def test_protocol_package_imports_no_heavy_dependency() -> None:
    import subprocess
    import sys

    code = "import sys, theoden_protocol; print(sorted(m for m in ('torch', 'litestar', 'pika', 'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
