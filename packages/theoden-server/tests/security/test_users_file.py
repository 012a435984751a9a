from __future__ import annotations

import os
import stat
import statistics
import time
import tomllib
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from theoden_server import security
from theoden_server.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from theoden_server.security import (
    Principal,
    Role,
    SecurityConfigError,
    UsersFile,
    _toml_string,
    hash_password,
)

pytestmark = pytest.mark.usefixtures("cheap_hasher")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip_add_save_load_authenticate(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "conf" / "users.toml"
    users = UsersFile.load(path)
    assert len(users) == 0
    assert users.path == path

    # Execute
    generated = users.add("hospital-a")
    users.add("admin.1", role="admin", password="a long admin password")
    users.save()
    loaded = UsersFile.load(path)

    # Assert
    assert mode_of(path) == 0o600
    assert loaded.names() == ["admin.1", "hospital-a"]
    assert "hospital-a" in loaded
    assert "nobody" not in loaded
    assert len(loaded) == 2
    assert loaded.role_of("admin.1") is Role.ADMIN
    assert loaded.authenticate("hospital-a", generated) == Principal("hospital-a", Role.CLIENT)
    admin = loaded.authenticate("admin.1", "a long admin password")
    assert admin.is_admin
    assert not Principal("x", Role.CLIENT).is_admin
    text = path.read_text()
    assert generated not in text
    assert "a long admin password" not in text
    assert "$argon2id$" in text


def test_wrong_password_and_unknown_user_fail_alike(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.toml")
    users.add("alice", password="alice's good password")

    with pytest.raises(Unauthorized) as wrong:
        users.authenticate("alice", "not the password")
    with pytest.raises(Unauthorized) as unknown:
        users.authenticate("mallory", "not the password")

    assert wrong.value.detail == unknown.value.detail == "wrong username or password"


def test_unknown_user_still_costs_a_hash_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a hasher slow enough to measure, fast enough for CI
    monkeypatch.setattr(security, "_HASHER", PasswordHasher(time_cost=2, memory_cost=8192, parallelism=1))
    security._dummy_hash.cache_clear()
    users = UsersFile(tmp_path / "users.toml")
    users.add("alice", password="alice's good password")
    with pytest.raises(Unauthorized):
        users.authenticate("mallory", "warm the dummy hash up")

    def timed(name: str) -> float:
        start = time.perf_counter()
        with pytest.raises(Unauthorized):
            users.authenticate(name, "not the password")
        return time.perf_counter() - start

    # Execute
    wrong = statistics.median(timed("alice") for _ in range(3))
    unknown = statistics.median(timed("mallory") for _ in range(3))

    # Assert: same order of magnitude (without the dummy hash, unknown would be ~1000x faster)
    assert unknown > wrong / 4
    assert wrong > unknown / 4


def test_existing_user_needs_replace(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.toml")
    first = users.add("bob")
    with pytest.raises(Conflict, match="already exists"):
        users.add("bob")
    second = users.add("bob", role=Role.ADMIN, replace=True)
    assert users.role_of("bob") is Role.ADMIN
    assert users.authenticate("bob", second).name == "bob"
    with pytest.raises(Unauthorized):
        users.authenticate("bob", first)


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-rf", "a b", "a/b", 'a"b', "ä", "a\nb", "x" * 65, "[users]", "a=b", "../etc"]
)
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid user name"):
        UsersFile(tmp_path / "u.toml").add(name)


def test_bad_role_and_short_password_are_refused(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "u.toml")
    with pytest.raises(InvalidRequest, match="invalid role 'root'"):
        users.add("a", role="root")
    with pytest.raises(InvalidRequest, match="at least|12 to"):
        users.add("a", password="short")
    assert len(users) == 0


def test_remove(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "u.toml")
    users.add("a")
    users.remove("a")
    assert "a" not in users
    with pytest.raises(NotFound):
        users.remove("a")
    with pytest.raises(NotFound):
        users.role_of("a")


def test_names_needing_quotes_survive_a_round_trip(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "u.toml")
    password = users.add("site.a-b_c.9")
    users.add("9")
    users.save()
    loaded = UsersFile.load(tmp_path / "u.toml")
    assert loaded.names() == ["9", "site.a-b_c.9"]
    assert loaded.authenticate("site.a-b_c.9", password).name == "site.a-b_c.9"


@pytest.mark.parametrize(
    "value",
    ['quote " inside', "back\\slash", "new\nline", "tab\tcr\r", "bell\x07 del\x7f nul\x00", "ünïcødé ✓", "\\u0041", ""],
)
def test_toml_strings_are_escaped(value: str) -> None:
    assert tomllib.loads(f"k = {_toml_string(value)}")["k"] == value


def test_save_is_atomic_and_tightens_permissions(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("")
    os.chmod(path, 0o644)
    users = UsersFile.load(path)
    users.add("a")
    users.save()
    assert mode_of(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["users.toml"]  # no temporary files left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[users.a\nrole=", "not valid TOML"),
        ("admins = 1", "unknown top-level key"),
        ("users = 3", "must be a table"),
        ('[users."bad name"]\nrole = "client"\npassword_hash = "$argon2id$x"', "invalid user name"),
        ('[users.a]\nrole = "root"\npassword_hash = "$argon2id$x"', "`role` must be one of"),
        ('[users.a]\nrole = "client"\npassword_hash = "plaintext"', "must be an argon2 hash"),
        ('[users.a]\nrole = "client"', "must be an argon2 hash"),
        ('[users.a]\nrole = "client"\npassword_hash = "$argon2id$x"\npassword = "oops"', "unknown key"),
    ],
)
def test_malformed_files_give_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "users.toml"
    path.write_text(content)
    with pytest.raises(SecurityConfigError, match=message) as error:
        UsersFile.load(path)
    assert str(path) in error.value.detail


def test_hand_written_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text(
        f"# comment\n[users.carol]\nrole = 'admin'\npassword_hash = '{hash_password('carol password 1')}'\n"
    )
    assert UsersFile.load(path).authenticate("carol", "carol password 1").is_admin


def test_outdated_hash_parameters_are_upgraded_on_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a user hashed with weaker parameters than the current hasher's
    users = UsersFile(tmp_path / "u.toml")
    password = users.add("a")
    monkeypatch.setattr(security, "_HASHER", PasswordHasher(time_cost=2, memory_cost=1024, parallelism=1))
    old_hash = users._users["a"].password_hash

    # Execute
    users.authenticate("a", password)

    # Assert
    new_hash = users._users["a"].password_hash
    assert new_hash != old_hash
    assert ",t=2," in new_hash
    assert users.authenticate("a", password).name == "a"


def test_running_server_picks_up_changes_from_the_cli(tmp_path: Path) -> None:
    # Prepare: the server has loaded the file; an admin then adds a user from another process
    path = tmp_path / "users.toml"
    UsersFile(path).save()
    server_view = UsersFile.load(path)
    assert not server_view.reload_if_changed()
    admin_view = UsersFile.load(path)
    password = admin_view.add("late-hospital")
    admin_view.save()

    # Execute
    reloaded = server_view.reload_if_changed()

    # Assert
    assert reloaded
    assert server_view.authenticate("late-hospital", password).name == "late-hospital"
    assert not server_view.reload_if_changed()


def test_malformed_reload_keeps_the_current_users(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    users = UsersFile(path)
    users.add("a")
    users.save()
    path.write_text("[users\n")
    with pytest.raises(SecurityConfigError, match="not valid TOML"):
        users.reload_if_changed()
    assert "a" in users
