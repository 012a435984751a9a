from __future__ import annotations

import stat
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from theoden_server.cli import load_plan, main
from theoden_server.security import Role, UsersFile

pytestmark = pytest.mark.usefixtures("cheap_hasher")


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_plan puts the plan's folder on it


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.toml"
    assert main(["users", "add", "site-1", "--users", str(path)]) == 0
    return path


@pytest.fixture
def fake_start(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    module = types.ModuleType("theoden_server.start")

    def start_server(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs))

    module.start_server = start_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "theoden_server.start", module)
    return calls


def write_plan(tmp_path: Path, body: str, name: str = "plan.py") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


# --- users ----------------------------------------------------------------------------------------------------


def test_users_add_prints_a_password_that_authenticates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.toml"

    code = main(["users", "add", "hospital-a", "--users", str(path)])

    out = capsys.readouterr().out
    assert code == 0
    assert "store it safely" in out
    password = out.strip().splitlines()[-1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert UsersFile.load(path).authenticate("hospital-a", password).role is Role.CLIENT
    assert out.count(password) == 1


def test_users_add_password_out_writes_a_private_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, secret = tmp_path / "users.toml", tmp_path / "secrets" / "admin.pw"

    code = main(["users", "add", "ops", "--role", "admin", "--users", str(path), "--password-out", str(secret)])

    out = capsys.readouterr().out
    password = secret.read_text().strip()
    assert code == 0
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert password not in out
    assert UsersFile.load(path).authenticate("ops", password).is_admin


def test_users_add_password_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, given = tmp_path / "users.toml", tmp_path / "pw"
    given.write_text("my chosen passphrase\n")

    assert main(["users", "add", "b", "--users", str(path), "--password-file", str(given)]) == 0

    assert "my chosen passphrase" not in capsys.readouterr().out
    assert UsersFile.load(path).authenticate("b", "my chosen passphrase").name == "b"


def test_users_add_existing_needs_replace(users_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["users", "add", "site-1", "--users", str(users_file)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["users", "add", "site-1", "--role", "admin", "--replace", "--users", str(users_file)]) == 0
    assert UsersFile.load(users_file).role_of("site-1") is Role.ADMIN


def test_users_list_and_remove(users_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["users", "list", "--users", str(users_file)]) == 0
    listing = capsys.readouterr().out
    assert listing.split() == ["site-1", "client"]
    assert "argon2" not in listing

    assert main(["users", "remove", "site-1", "--users", str(users_file)]) == 0
    assert "site-1" not in UsersFile.load(users_file)
    assert main(["users", "remove", "site-1", "--users", str(users_file)]) == 1
    assert "no user 'site-1'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["users", "add", "bad name"], 2, "invalid user name"),
        (["users", "add", "a", "--role", "root"], 2, "invalid choice"),
        (["users", "add", "a", "--password-file", "missing.pw"], 2, "cannot read password file"),
        (["users", "frobnicate"], 2, "invalid choice"),
        ([], 2, "required"),
    ],
)
def test_user_mistakes_are_one_line_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_malformed_users_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.toml"
    path.write_text("[users\n")
    assert main(["users", "list", "--users", str(path)]) == 1
    assert "not valid TOML" in capsys.readouterr().err


# --- certs ----------------------------------------------------------------------------------------------------


def test_certs_create(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "tls"

    code = main(["certs", "create", "--out", str(out_dir), "--host", "fl.example.org", "--host", "10.1.2.3"])

    out = capsys.readouterr().out
    assert code == 0
    assert {p.name for p in out_dir.iterdir()} == {"ca.pem", "ca-key.pem", "server.pem", "server-key.pem"}
    assert stat.S_IMODE((out_dir / "server-key.pem").stat().st_mode) == 0o600
    assert f"--ssl-certfile {out_dir / 'server.pem'}" in out
    cert = x509.load_pem_x509_certificate((out_dir / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]

    assert main(["certs", "create", "--out", str(out_dir)]) == 2
    assert "--force" in capsys.readouterr().err


# --- run ------------------------------------------------------------------------------------------------------


def test_run_without_instructions_exits_2(
    tmp_path: Path, users_file: Path, fake_start: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, "run_name = 'x'\n")

    code = main(["run", str(plan), "--users", str(users_file)])

    err = capsys.readouterr().err
    assert code == 2
    assert "defines no `instructions`" in err
    assert "Traceback" not in err
    assert fake_start == []


def test_run_passes_the_plan_and_options_to_start_server(
    tmp_path: Path, users_file: Path, fake_start: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    # Prepare: a plan that imports a helper module next to it
    (tmp_path / "plan_helpers.py").write_text("STEPS = ['require', 'train']\n")
    plan = write_plan(
        tmp_path,
        "from plan_helpers import STEPS\n"
        "instructions = list(STEPS)\n"
        "run_name = 'from-plan'\n"
        "permanent_conditions = ['cond']\n"
        "open_distribution = 'open'\n"
        "watchers = ['w']\n",
    )
    pki = tmp_path / "tls"
    assert main(["certs", "create", "--out", str(pki)]) == 0

    # Execute
    code = main(
        [
            "run", str(plan), "--run-name", "cli-name", "--host", "0.0.0.0", "--port", "9443",
            "--users", str(users_file), "--ssl-certfile", str(pki / "server.pem"),
            "--ssl-keyfile", str(pki / "server-key.pem"), "--run-dir", str(tmp_path / "runs"),
            "--rabbitmq", "amqp://guest:guest@localhost/", "--jwt-secret-file", str(tmp_path / "jwt"),
            "--no-exit-on-finish",
        ]
    )  # fmt: skip

    # Assert
    assert code == 0
    [(args, kwargs)] = fake_start
    assert args == (["require", "train"], "cli-name")
    assert kwargs == {
        "permanent_conditions": ["cond"],
        "open_distribution": "open",
        "watchers": ["w"],
        "host": "0.0.0.0",
        "port": 9443,
        "users": users_file,
        "ssl_certfile": pki / "server.pem",
        "ssl_keyfile": pki / "server-key.pem",
        "rabbitmq": "amqp://guest:guest@localhost/",
        "run_dir": tmp_path / "runs",
        "exit_on_finish": False,
        "jwt_secret_file": tmp_path / "jwt",
    }


def test_run_defaults(
    tmp_path: Path, users_file: Path, fake_start: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    plan = write_plan(tmp_path, "instructions = ('only',)\n", name="my_plan.py")

    assert main(["run", str(plan), "--users", str(users_file)]) == 0

    [(args, kwargs)] = fake_start
    assert args == (["only"], "my_plan")
    assert kwargs["host"] == "127.0.0.1"
    assert kwargs["port"] == 8000
    assert kwargs["permanent_conditions"] == []
    assert kwargs["watchers"] == []
    assert kwargs["open_distribution"] is None
    assert kwargs["ssl_certfile"] is None
    assert kwargs["exit_on_finish"] is True
    assert kwargs["jwt_secret_file"] == users_file.parent / "jwt-secret"


@pytest.mark.parametrize(
    ("plan_body", "extra", "message"),
    [
        ("instructions = []\n", [], "must be a non-empty list"),
        ("instructions = 3\n", [], "must be a non-empty list"),
        ("x = 1\nraise RuntimeError('boom')\n", [], "failed to load (line 2): RuntimeError: boom"),
        ("instructions = [1]\n", ["--ssl-certfile", "c.pem"], "give both --ssl-certfile and --ssl-keyfile"),
        ("instructions = [1]\n", ["--host", "0.0.0.0"], "refusing plain HTTP on 0.0.0.0"),
        ("instructions = [1]\n", ["--port", "70000"], "--port must be between"),
        ("instructions = [1]\n", ["--users", "nowhere.toml"], "users file nowhere.toml not found"),
    ],
)
def test_run_usage_errors(
    tmp_path: Path,
    users_file: Path,
    fake_start: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    plan_body: str,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    plan = write_plan(tmp_path, plan_body)

    code = main(["run", str(plan), "--users", str(users_file), *extra])

    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert fake_start == []


def test_run_missing_plan_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.py")]) == 2
    assert "plan file not found" in capsys.readouterr().err


def test_run_insecure_http_is_allowed_explicitly(
    tmp_path: Path, users_file: Path, fake_start: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    plan = write_plan(tmp_path, "instructions = [1]\n")
    assert main(["run", str(plan), "--users", str(users_file), "--host", "0.0.0.0", "--insecure-http"]) == 0
    assert fake_start[0][1]["host"] == "0.0.0.0"


def test_run_passes_the_brokers_ca_file_and_admin_users(
    tmp_path: Path, users_file: Path, fake_start: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    plan = write_plan(tmp_path, "instructions = [1]\n")
    ca = tmp_path / "broker-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    broker = ["--rabbitmq", "amqps://srv:pw@broker:5671/run1"]
    admins = ["--rabbitmq-admin-user", "ops", "--rabbitmq-admin-user", "audit"]
    args = ["run", str(plan), "--users", str(users_file), *broker, "--rabbitmq-ca-file", str(ca), *admins]

    assert main(args) == 0

    kwargs = fake_start[0][1]
    assert kwargs["rabbitmq_ca_file"] == ca
    assert kwargs["rabbitmq_admin_users"] == ["ops", "audit"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rabbitmq-admin-user", "ops"], "need --rabbitmq URL"),
        (["--rabbitmq", "amqp://b", "--rabbitmq-ca-file", "missing.pem"], "--rabbitmq-ca-file: file not found"),
    ],
)
def test_run_refuses_broker_options_it_cannot_use(
    tmp_path: Path,
    users_file: Path,
    fake_start: list[Any],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    plan = write_plan(tmp_path, "instructions = [1]\n")
    assert main(["run", str(plan), "--users", str(users_file), *extra]) == 2
    assert message in capsys.readouterr().err
    assert fake_start == []


@pytest.mark.parametrize("keep", [False, True])
def test_run_keeps_uploads_only_when_asked(
    tmp_path: Path, users_file: Path, fake_start: list[tuple[tuple[Any, ...], dict[str, Any]]], keep: bool
) -> None:
    plan = write_plan(tmp_path, "instructions = [1]\n")
    assert main(["run", str(plan), "--users", str(users_file), *(["--keep-uploads"] if keep else [])]) == 0
    assert fake_start[0][1].get("keep_uploads", False) is keep


def test_load_plan_reads_optional_names(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, "instructions = ['a']\nwatchers = ('w1', 'w2')\n"))
    assert plan.instructions == ["a"]
    assert plan.watchers == ["w1", "w2"]
    assert plan.run_name is None
    assert plan.open_distribution is None
    assert plan.permanent_conditions == []


def test_python_dash_m_is_the_cli(users_file: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "theoden_server", "users", "list", "--users", str(users_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["site-1", "client"]


def test_run_reports_a_broken_installation_in_one_line(
    tmp_path: Path, users_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "theoden_server.start", None)  # makes the import fail
    plan = write_plan(tmp_path, "instructions = [1]\n")
    assert main(["run", str(plan), "--users", str(users_file)]) == 1
    assert "cannot start the server" in capsys.readouterr().err


def test_run_passes_keep_global_models_and_refuses_fewer_than_two(
    tmp_path: Path,
    users_file: Path,
    fake_start: list[tuple[tuple[Any, ...], dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = write_plan(tmp_path, "instructions = [1]\n")
    assert main(["run", str(plan), "--users", str(users_file), "--keep-global-models", "3"]) == 0
    assert fake_start[0][1]["keep_global_models"] == 3
    assert main(["run", str(plan), "--users", str(users_file), "--keep-global-models", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert len(fake_start) == 1
