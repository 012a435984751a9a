"""The client package installs without any server-side dependency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = Path(__file__).resolve().parents[2]
SERVER_ONLY = {"litestar", "uvicorn", "theoden-server", "pyjwt", "argon2-cffi", "rich"}
HTTPX_STACK = {"httpx", "httpcore", "h11", "anyio"}  # the client speaks HTTP with the standard library


@pytest.mark.slow  # about 25 s: pip builds both packages' metadata in isolated environments
def test_installing_the_client_pulls_no_server_dependencies(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--no-input",
            "--disable-pip-version-check",
            "--report",
            str(report),
            str(PACKAGES / "theoden-protocol"),
            str(PACKAGES / "theoden-client"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}
    assert {"theoden-client", "theoden-protocol", "torch", "safetensors", "msgspec"} <= names
    assert not names & SERVER_ONLY, names & SERVER_ONLY
    assert not names & HTTPX_STACK, names & HTTPX_STACK
    assert "scikit-learn" not in names  # an optional extra only


def test_the_client_never_imports_server_code_or_httpx() -> None:
    code = (
        "import sys, theoden_client, theoden_client.cli;"
        "bad=[m for m in sys.modules if m.split('.')[0] in {'theoden_server','litestar','uvicorn','httpx'}];"
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
