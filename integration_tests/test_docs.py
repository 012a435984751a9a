"""Every Python snippet in docs/ and the README runs as written."""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _snippets() -> list[tuple[str, str]]:
    found = []
    for doc in sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]):
        for index, match in enumerate(_BLOCK.finditer(doc.read_text())):
            found.append((f"{doc.relative_to(ROOT)}#{index}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "code"), _snippets(), ids=[w for w, _ in _snippets()])
def test_doc_snippet_runs(where: str, code: str, tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        # a real module, so type hints of classes a snippet defines can be resolved
        name = "doc_snippet_" + re.sub(r"\W", "_", where)
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec(compile(code, where, "exec"), module.__dict__)
    finally:
        os.chdir(cwd)
