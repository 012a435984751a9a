from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from theoden_client import cli, start
from theoden_client.start import make_transport


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls: dict[str, Any] = {}

    def fake_start(server_url: str, username: str, password: str, **kwargs: Any) -> str:
        calls.update(server_url=server_url, username=username, password=password, **kwargs)
        return "done"

    monkeypatch.setattr(cli, "start_client", fake_start)
    return calls


def test_password_from_a_file(tmp_path: Path, captured: dict[str, Any]) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    code = cli.main(
        [
            "--server",
            "https://fl:8443",
            "--username",
            "site-a",
            "--password-file",
            str(secret),
            "--data-root",
            str(tmp_path),
            "--allow",
            "train,validate",
            "--allow",
            "send_model",
        ]
    )
    assert code == 0
    assert captured["password"] == "s3cret"
    assert captured["username"] == "site-a"
    assert captured["allow"] == ["train,validate", "send_model"]
    assert captured["data_root"] == str(tmp_path)


def test_password_from_the_environment(monkeypatch: pytest.MonkeyPatch, captured: dict[str, Any]) -> None:
    monkeypatch.setenv("SITE_PW", "envpw")
    assert cli.main(["--server", "http://x", "--username", "u", "--password-env", "SITE_PW"]) == 0
    assert captured["password"] == "envpw"


def test_a_missing_password_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, captured: dict[str, Any]) -> None:
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(SystemExit, match="environment variable NOPE is empty or missing"):
        cli.main(["--server", "http://x", "--username", "u", "--password-env", "NOPE"])
    assert not captured


def test_no_plain_text_password_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--server", "http://x", "--username", "u", "--password", "hunter2"])
    with pytest.raises(SystemExit):  # one of the two password sources is required
        cli.main(["--server", "http://x", "--username", "u"])
    assert "--password-file" in capsys.readouterr().err


def test_rabbitmq_transport_gets_the_credentials_from_the_username_and_password_file() -> None:
    from theoden_client.start import broker_url_with_credentials

    assert broker_url_with_credentials("amqp://broker:5673/run1", "site a", "p@ss/w") == (
        "amqp://site%20a:p%40ss%2Fw@broker:5673/run1"
    )
    assert broker_url_with_credentials("amqps://u:pw@broker/v", "x", "y") == "amqps://u:pw@broker/v"
    with pytest.raises(ValueError, match="amqp://"):
        make_transport(None, "u", "p", rabbitmq="http://broker")


def test_exactly_one_of_server_and_rabbitmq(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    with pytest.raises(SystemExit):
        cli.main(["--server", "http://x", "--rabbitmq", "amqp://b", "--username", "u", "--password-file", str(secret)])
    with pytest.raises(SystemExit):
        cli.main(["--username", "u", "--password-file", str(secret)])
    assert "exactly one of --server" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--server", "localhost:8000"], "a server URL starts with http:// or https://, got 'localhost:8000'"),
        (["--rabbitmq", "http://broker"], "a broker URL starts with amqp:// or amqps://"),
        (["--server", "https://fl:8443", "--ca-cert", "nowhere.pem"], "CA bundle nowhere.pem not found"),
        (["--server", "https://fl:8443", "--ca-cert", "{bad}"], "cannot use CA bundle"),
        (
            ["--server", "http://fl", "--plugin", "no_such_plugin_module"],
            "cannot import plugin 'no_such_plugin_module'",
        ),
    ],
)
def test_bad_settings_are_one_line_errors_not_tracebacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    monkeypatch.setenv("PW", "p")
    args = [arg.replace("{bad}", str(bad)) for arg in extra]

    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--username", "u", "--password-env", "PW"])

    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err
    assert "Traceback" not in err


def test_plugins_are_imported_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured: dict[str, Any]) -> None:
    (tmp_path / "site_plugin_for_test.py").write_text("import os\nos.environ['PLUGIN_LOADED'] = '1'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PW", "p")
    monkeypatch.delenv("PLUGIN_LOADED", raising=False)
    cli.main(["--server", "http://x", "--username", "u", "--password-env", "PW", "--plugin", "site_plugin_for_test"])
    import os

    assert os.environ["PLUGIN_LOADED"] == "1"


def test_start_client_runs_until_exit_against_a_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ._fakes import FakeTransport

    fake = FakeTransport()
    monkeypatch.setattr(start, "make_transport", lambda *a, **k: fake)
    reason = start.start_client("http://x", "u", "p", data_root=tmp_path, allow="train", handle_signals=False)
    assert reason == "queue empty"
    assert fake.closed
