"""Who may talk to the server: password hashing, the users file, JWT bearer tokens and their secret.

Passwords are stored as argon2id hashes in a small TOML file that only the server's account can read
(mode 0600). A successful login yields a short-lived HMAC-signed JWT whose secret is loaded from the
environment or from a private file, so tokens stay valid when the server restarts.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import ipaddress
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from theoden_server.errors import Conflict, InvalidRequest, NotFound, TheodenError, Unauthorized

__all__ = [
    "is_loopback",
    "MIN_PASSWORD_LENGTH",
    "MIN_SECRET_BYTES",
    "USER_NAME_PATTERN",
    "Principal",
    "Role",
    "SecurityConfigError",
    "TokenIssuer",
    "UsersFile",
    "generate_password",
    "hash_password",
    "load_jwt_secret",
    "verify_password",
    "write_private_file",
]

logger = logging.getLogger(__name__)

USER_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
"""What a user name may look like (matched in full): it doubles as a client's identity everywhere."""

MIN_PASSWORD_LENGTH = 12
"""Shortest password :meth:`UsersFile.add` accepts from a person (generated ones are 32 characters)."""

MIN_SECRET_BYTES = 32
"""Shortest JWT signing secret accepted (RFC 7518 §3.2: at least the size of the HS256 hash)."""

_MAX_PASSWORD_LENGTH = 1024  # longer inputs are refused before hashing: argon2 time grows with input size
_MAX_TOKEN_LENGTH = 8192
#: Verified tokens remembered (a few per client between renewals).
_VERIFIED_CACHE_SIZE = 8192
_LOGIN_FAILED = "wrong username or password"

# argon2-cffi's defaults are RFC 9106's second recommended profile: argon2id, t=3, m=64 MiB, p=4.
_HASHER = PasswordHasher()


class SecurityConfigError(TheodenError):
    """The server's security configuration (users file, JWT secret) is missing or unusable."""

    code: ClassVar[str] = "security_config_error"


class Role(enum.StrEnum):
    """What a principal may do: run commands on its own data, or administer the run."""

    CLIENT = "client"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its name (a client's identity) and its role."""

    name: str
    role: Role

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))

    @property
    def is_admin(self) -> bool:
        """Whether the principal may use administrative routes."""
        return self.role is Role.ADMIN


def hash_password(password: str) -> str:
    """Return an argon2id hash of ``password`` in PHC string form (``$argon2id$v=19$...``)."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Return whether ``password`` matches ``password_hash``; an unreadable hash never matches."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    """Return a new random password (32 URL-safe characters, 192 bits of entropy)."""
    return secrets.token_urlsafe(24)


@functools.cache
def _dummy_hash() -> str:
    # Hashed once, lazily: verifying against it makes an unknown name cost as much as a wrong password.
    return hash_password(secrets.token_urlsafe(24))


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename) with mode 0600.

    Readers see either the old or the new content, never a half-written file, and the content is never
    readable by other accounts, not even for a moment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _warn_if_shared(path: Path, what: str) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "%s %s is accessible by other accounts (mode %o); run: chmod 600 %s", what, path, mode & 0o777, path
        )


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not USER_NAME_PATTERN.fullmatch(name):
        raise InvalidRequest(
            f"invalid user name {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    return name


def _check_role(role: object) -> Role:
    try:
        return Role(role if isinstance(role, str) else "")
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise InvalidRequest(f"invalid role {role!r}: choose one of {choices}") from None


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(value: str) -> str:
    """Return ``value`` as a TOML basic string, escaping quotes, backslashes and every control character."""
    parts = ['"']
    for char in value:
        if char in _TOML_ESCAPES:
            parts.append(_TOML_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            parts.append(f"\\u{ord(char):04X}")
        else:
            parts.append(char)
    parts.append('"')
    return "".join(parts)


@dataclass(frozen=True)
class _Entry:
    role: Role
    password_hash: str


class UsersFile:
    """The users who may log in, kept in a TOML file with one ``[users.NAME]`` table per user.

    Each table holds ``role`` (``"client"`` or ``"admin"``) and ``password_hash`` (argon2id). Methods are
    thread-safe; changes reach the disk only through :meth:`save`.
    """

    def __init__(self, path: Path | str, users: dict[str, _Entry] | None = None) -> None:
        self.path = Path(path)
        self._users: dict[str, _Entry] = dict(users or {})
        self._lock = threading.Lock()
        self._stamp = _file_stamp(self.path)

    @classmethod
    def load(cls, path: Path | str) -> UsersFile:
        """Read the users file at ``path``; a missing file gives an empty set of users bound to ``path``.

        Raises:
            SecurityConfigError: the file cannot be read or is not a valid users file.
        """
        path = Path(path)
        stamp = _file_stamp(path)  # taken before reading, so a change made meanwhile is seen by the next reload
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as error:
            raise SecurityConfigError(f"cannot read users file {path}: {error.strerror}") from None
        _warn_if_shared(path, "users file")
        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise SecurityConfigError(f"users file {path} is not valid TOML: {error}") from None
        users = cls(path, _parse_users(path, document))
        users._stamp = stamp
        return users

    def reload_if_changed(self) -> bool:
        """Re-read :attr:`path` if another process changed it since it was loaded or saved here.

        Lets a running server pick up ``theoden-server users add|remove`` without a restart. Unsaved
        changes made in this process are replaced by the file's content.

        Returns:
            Whether the users were re-read.

        Raises:
            SecurityConfigError: the changed file is malformed (the current users stay in force).
        """
        stamp = _file_stamp(self.path)
        if stamp == self._stamp:
            return False
        fresh = UsersFile.load(self.path)
        with self._lock:
            self._users, self._stamp = fresh._users, fresh._stamp
        logger.info("reloaded users file %s (%d users)", self.path, len(fresh._users))
        return True

    def save(self) -> None:
        """Write the users to :attr:`path` atomically, readable by the owner only (mode 0600)."""
        lines = [
            "# TheODen users. Edit with `theoden-server users add|remove`; keep this file private (mode 0600).",
            "",
        ]
        with self._lock:
            for name in sorted(self._users):
                entry = self._users[name]
                lines += [
                    f"[users.{_toml_string(name)}]",
                    f"role = {_toml_string(entry.role.value)}",
                    f"password_hash = {_toml_string(entry.password_hash)}",
                    "",
                ]
            write_private_file(self.path, "\n".join(lines).encode("utf-8"))
            self._stamp = _file_stamp(self.path)

    def add(
        self, name: str, *, role: Role | str = Role.CLIENT, password: str | None = None, replace: bool = False
    ) -> str:
        """Add a user and return its password (a new random one unless ``password`` is given).

        Raises:
            InvalidRequest: the name, role or password is not acceptable.
            Conflict: the user exists and ``replace`` is false.
        """
        name = _check_name(name)
        checked_role = _check_role(role)
        if password is None:
            password = generate_password()
        elif not MIN_PASSWORD_LENGTH <= len(password) <= _MAX_PASSWORD_LENGTH:
            raise InvalidRequest(
                f"password must have {MIN_PASSWORD_LENGTH} to {_MAX_PASSWORD_LENGTH} characters;"
                " omit it to have a strong one generated"
            )
        entry = _Entry(checked_role, hash_password(password))
        with self._lock:
            if name in self._users and not replace:
                raise Conflict(f"user {name!r} already exists; pass replace=True (--replace) to set a new password")
            self._users[name] = entry
        return password

    def remove(self, name: str) -> None:
        """Remove a user; its tokens stay valid until they expire.

        Raises:
            NotFound: there is no such user.
        """
        with self._lock:
            if name not in self._users:
                raise NotFound(f"no user {name!r} in {self.path}")
            del self._users[name]

    def authenticate(self, name: str, password: str) -> Principal:
        """Return the principal for a correct name and password.

        An unknown name costs as much time as a wrong password and fails with the same message, so the
        answer tells an attacker nothing about which names exist.

        Raises:
            Unauthorized: the name is unknown or the password is wrong.
        """
        with self._lock:
            entry = self._users.get(name) if isinstance(name, str) else None
        if not isinstance(password, str) or len(password) > _MAX_PASSWORD_LENGTH:
            raise Unauthorized(_LOGIN_FAILED)
        if entry is None:
            verify_password(_dummy_hash(), password)
            raise Unauthorized(_LOGIN_FAILED)
        if not verify_password(entry.password_hash, password):
            raise Unauthorized(_LOGIN_FAILED)
        if _HASHER.check_needs_rehash(entry.password_hash):
            # Parameters were strengthened since this hash was made: upgrade it (on disk at the next save).
            with self._lock:
                if self._users.get(name) == entry:
                    self._users[name] = _Entry(entry.role, hash_password(password))
        return Principal(name, entry.role)

    def names(self) -> list[str]:
        """Return the user names, sorted."""
        with self._lock:
            return sorted(self._users)

    def role_of(self, name: str) -> Role:
        """Return a user's role.

        Raises:
            NotFound: there is no such user.
        """
        with self._lock:
            entry = self._users.get(name)
        if entry is None:
            raise NotFound(f"no user {name!r} in {self.path}")
        return entry.role

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._users

    def __len__(self) -> int:
        with self._lock:
            return len(self._users)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"UsersFile({str(self.path)!r}, users={len(self)})"


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


def _parse_users(path: Path, document: dict[str, Any]) -> dict[str, _Entry]:
    unknown = set(document) - {"users"}
    if unknown:
        raise SecurityConfigError(f"users file {path}: unknown top-level key(s) {sorted(unknown)}; only [users.NAME]")
    table = document.get("users", {})
    if not isinstance(table, dict):
        raise SecurityConfigError(f"users file {path}: `users` must be a table of [users.NAME] sections")
    users: dict[str, _Entry] = {}
    for name, fields in table.items():
        where = f"users file {path}, [users.{_toml_string(name)}]"
        if not USER_NAME_PATTERN.fullmatch(name):
            raise SecurityConfigError(f"{where}: invalid user name (allowed: A-Z a-z 0-9 _ . -, at most 64)")
        if not isinstance(fields, dict):
            raise SecurityConfigError(f"{where}: must be a table with `role` and `password_hash`")
        extra = set(fields) - {"role", "password_hash"}
        if extra:
            raise SecurityConfigError(f"{where}: unknown key(s) {sorted(extra)}")
        role, password_hash = fields.get("role"), fields.get("password_hash")
        if role not in set(Role):
            raise SecurityConfigError(f"{where}: `role` must be one of {[r.value for r in Role]}, not {role!r}")
        if not isinstance(password_hash, str) or not password_hash.startswith("$argon2"):
            raise SecurityConfigError(f"{where}: `password_hash` must be an argon2 hash; set it with `users add`")
        users[name] = _Entry(Role(role), password_hash)
    return users


_MIN_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


class TokenIssuer:
    """Issues and checks the HMAC-signed JWT bearer tokens that clients and admins present.

    Claims: ``sub`` (user name), ``role``, ``iat``, ``exp``, ``iss``, ``aud`` and a random ``jti``.
    Verification accepts only the configured algorithm (never ``none``) and allows ``leeway_seconds``
    of clock skew.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        issuer: str = "theoden",
        audience: str = "theoden",
        ttl_seconds: int = 3600,
        algorithm: str = "HS256",
        leeway_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if algorithm not in _MIN_KEY_BYTES:
            raise ValueError(f"unsupported JWT algorithm {algorithm!r}; choose one of {sorted(_MIN_KEY_BYTES)}")
        if len(secret) < _MIN_KEY_BYTES[algorithm]:
            raise SecurityConfigError(
                f"JWT secret has {len(secret)} bytes; {algorithm} needs at least {_MIN_KEY_BYTES[algorithm]}"
            )
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        self._secret = bytes(secret)
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = int(ttl_seconds)
        self.algorithm = algorithm
        self.leeway_seconds = leeway_seconds
        self._clock = clock
        # token -> (principal, exp): a token's signature and claims are checked once, then only its
        # expiry (clients send the same token with every request until it is renewed)
        self._verified: dict[str, tuple[Principal, float]] = {}

    def __repr__(self) -> str:  # never shows the secret
        return f"TokenIssuer(issuer={self.issuer!r}, audience={self.audience!r}, ttl_seconds={self.ttl_seconds})"

    def issue(self, principal: Principal) -> tuple[str, int]:
        """Return a signed token for ``principal`` and its lifetime in seconds."""
        now = int(self._clock())
        claims = {
            "sub": principal.name,
            "role": principal.role.value,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "iss": self.issuer,
            "aud": self.audience,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=self.algorithm), self.ttl_seconds

    def verify(self, token: str) -> Principal:
        """Return the principal a valid token was issued to.

        Raises:
            Unauthorized: the token is expired, forged, tampered with, malformed, or meant for another server;
                the detail says which and what to do.
        """
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
            raise Unauthorized("malformed token: expected a JWT in the Authorization: Bearer header")
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires = cached
            if self._clock() <= expires + self.leeway_seconds:
                return principal
            self._verified.pop(token, None)
            raise Unauthorized("token expired, log in again")
        principal, expires = self._decode(token)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:  # drop the oldest entry (dicts keep insertion order)
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                self._verified.pop(next(iter(self._verified)))
        self._verified[token] = (principal, expires)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        """Check a token's signature and claims; return its principal and expiry time."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": ["sub", "role", "iat", "exp", "iss", "aud", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired, log in again") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized(
                "token signature invalid: it was not issued by this server (or its secret changed)"
            ) from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized(f"token signature invalid: only {self.algorithm} tokens are accepted") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"token is meant for another audience (this server is {self.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(f"token was issued by another issuer (this server is {self.issuer!r})") from None
        except jwt.MissingRequiredClaimError as error:
            raise Unauthorized(f"malformed token: missing claim {error.claim!r}") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token is not valid yet: check that client and server clocks agree") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("malformed token: log in again to get a new one") from None
        name, role = claims["sub"], claims["role"]
        if not isinstance(name, str) or not USER_NAME_PATTERN.fullmatch(name) or role not in set(Role):
            raise Unauthorized("malformed token: bad subject or role claim")
        expires = float(claims["exp"])
        if self._clock() > expires + self.leeway_seconds:  # the issuer's clock decides, as for remembered tokens
            raise Unauthorized("token expired, log in again")
        return Principal(name, Role(role)), expires


def load_jwt_secret(
    secret: str | bytes | None = None,
    *,
    env_var: str = "THEODEN_JWT_SECRET",
    secret_file: Path | str | None = None,
) -> bytes:
    """Return the JWT signing secret: ``secret``, else ``$THEODEN_JWT_SECRET``, else ``secret_file``.

    If none is set but ``secret_file`` is given and does not exist yet, a random secret is created there
    (mode 0600), so that tokens issued before a restart stay valid after it. The file holds the secret as
    text; surrounding whitespace is ignored.

    Raises:
        SecurityConfigError: no secret is configured, or it is shorter than 32 bytes.
    """
    if secret is not None:
        value, source = (secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)), "the given secret"
    elif os.environ.get(env_var):
        value, source = os.environ[env_var].encode("utf-8"), f"${env_var}"
    elif secret_file is not None:
        value, source = _read_or_create_secret(Path(secret_file)), f"secret file {secret_file}"
    else:
        raise SecurityConfigError(
            f"no JWT secret configured: set ${env_var} (e.g. to the output of `openssl rand -hex 32`)"
            " or give a secret file, which is created if missing"
        )
    if len(value) < MIN_SECRET_BYTES:
        raise SecurityConfigError(
            f"JWT secret from {source} is too short ({len(value)} bytes; at least {MIN_SECRET_BYTES} needed);"
            " generate one with `openssl rand -hex 32`"
        )
    return value


def _read_or_create_secret(path: Path) -> bytes:
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(secrets.token_hex(MIN_SECRET_BYTES).encode("ascii") + b"\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(tmp, path)  # appears complete or not at all, and never replaces an existing secret
                logger.info("created JWT secret file %s", path)
            except FileExistsError:
                pass  # another process created it meanwhile: use theirs
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as error:
            raise SecurityConfigError(f"cannot create JWT secret file {path}: {error.strerror}") from None
    try:
        value = path.read_bytes().strip()
    except OSError as error:
        raise SecurityConfigError(f"cannot read JWT secret file {path}: {error.strerror}") from None
    _warn_if_shared(path, "JWT secret file")
    return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
