"""The ``theoden-server`` command line: manage users, create certificates, run a training plan.

Exit codes: 0 success, 1 failure, 2 usage error (bad arguments, bad plan file). Mistakes get one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from theoden_server.errors import InvalidRequest, TheodenError

__all__ = ["CliError", "Plan", "build_parser", "load_plan", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_DEFAULT_USERS = Path("users.toml")


class CliError(Exception):
    """A mistake the command line reports in one line and exits with ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Plan:
    """What a plan file defines: the instructions to run and the optional extras."""

    instructions: list[Any]
    run_name: str | None = None
    permanent_conditions: list[Any] = field(default_factory=list)
    open_distribution: Any = None
    watchers: list[Any] = field(default_factory=list)


def load_plan(path: Path | str) -> Plan:
    """Import the Python file at ``path`` and return the plan it defines.

    The file must define ``instructions`` (a non-empty list); it may define ``run_name``,
    ``permanent_conditions``, ``open_distribution`` and ``watchers``. Its folder is put on ``sys.path`` so it
    can import modules next to it (e.g. a user's own commands).

    Raises:
        CliError: the file is missing, fails to import, or lacks a usable ``instructions`` (exit code 2).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise CliError(f"plan file not found: {path}", exit_code=EXIT_USAGE)
    module_name = f"theoden_plan_{path.stem}" if path.stem.isidentifier() else "theoden_plan"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot import {path} as Python; a plan is a .py file", exit_code=EXIT_USAGE)
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[module_name] = module  # dataclasses and pickling-free registries look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(module_name, None)
        frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
        where = f" (line {frames[-1].lineno})" if frames else ""
        message = f"plan {path.name} failed to load{where}: {type(error).__name__}: {error}"
        raise CliError(message, exit_code=EXIT_USAGE) from error
    if not hasattr(module, "instructions"):
        raise CliError(
            f"plan {path.name} defines no `instructions`; add e.g. `instructions = [RequireNumberOfClients(2), ...]`",
            exit_code=EXIT_USAGE,
        )
    instructions = module.instructions
    if not isinstance(instructions, list | tuple) or not instructions:
        raise CliError(
            f"plan {path.name}: `instructions` must be a non-empty list, not {type(instructions).__name__}",
            exit_code=EXIT_USAGE,
        )
    return Plan(
        instructions=list(instructions),
        run_name=getattr(module, "run_name", None),
        permanent_conditions=list(getattr(module, "permanent_conditions", None) or []),
        open_distribution=getattr(module, "open_distribution", None),
        watchers=list(getattr(module, "watchers", None) or []),
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``theoden-server``."""
    parser = argparse.ArgumentParser(prog="theoden-server", description="TheODen federated-learning server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    users = commands.add_parser("users", help="manage who may log in").add_subparsers(
        dest="users_command", required=True, metavar="ACTION"
    )
    users_file = argparse.ArgumentParser(add_help=False)
    users_file.add_argument(
        "--users", type=Path, default=_DEFAULT_USERS, metavar="FILE", help="users file (default: ./users.toml)"
    )
    add = users.add_parser("add", parents=[users_file], help="add a user (or replace its password)")
    add.add_argument("name")
    add.add_argument("--role", choices=["client", "admin"], default="client")
    source = add.add_mutually_exclusive_group()
    source.add_argument("--password-file", type=Path, metavar="F", help="read the password from F ('-': stdin)")
    source.add_argument(
        "--password-out", type=Path, metavar="F", help="write the generated password to F (mode 0600), not stdout"
    )
    add.add_argument("--replace", action="store_true", help="replace an existing user's role and password")
    add.set_defaults(handler=_users_add)
    listing = users.add_parser("list", parents=[users_file], help="list users and roles")
    listing.set_defaults(handler=_users_list)
    remove = users.add_parser("remove", parents=[users_file], help="remove a user")
    remove.add_argument("name")
    remove.set_defaults(handler=_users_remove)

    certs = commands.add_parser("certs", help="create TLS certificates").add_subparsers(
        dest="certs_command", required=True, metavar="ACTION"
    )
    create = certs.add_parser("create", help="create a CA and a server certificate for HTTPS")
    create.add_argument("--out", type=Path, required=True, metavar="DIR")
    create.add_argument(
        "--host",
        action="append",
        metavar="H",
        help="DNS name or IP clients connect to (repeatable; default: localhost, 127.0.0.1)",
    )
    create.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    create.add_argument("--force", action="store_true", help="overwrite existing files in DIR")
    create.set_defaults(handler=_certs_create)

    run = commands.add_parser("run", help="run a training plan")
    run.add_argument("plan", type=Path, metavar="PLAN.py")
    run.add_argument("--run-name", help="name of the run (default: the plan's run_name, else the file name)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument(
        "--users", type=Path, default=_DEFAULT_USERS, metavar="FILE", help="users file (default: ./users.toml)"
    )
    run.add_argument("--ssl-certfile", type=Path, metavar="F")
    run.add_argument("--ssl-keyfile", type=Path, metavar="F")
    run.add_argument("--run-dir", type=Path, metavar="DIR", help="where the run's metrics, models and logs go")
    run.add_argument("--rabbitmq", metavar="URL", help="also serve clients through this RabbitMQ broker")
    run.add_argument(
        "--rabbitmq-ca-file",
        type=Path,
        metavar="FILE",
        help="CA bundle that signed the amqps:// broker's certificate (default: the system's CAs)",
    )
    run.add_argument(
        "--rabbitmq-admin-user",
        action="append",
        default=[],
        metavar="USER",
        help="broker user of an operator's tool (not a client) that may read any blob (repeatable)",
    )
    run.add_argument(
        "--jwt-secret-file",
        type=Path,
        metavar="F",
        help="token signing secret, created if missing (default: jwt-secret next to the users file;"
        " $THEODEN_JWT_SECRET takes precedence)",
    )
    run.add_argument("--no-exit-on-finish", action="store_true", help="keep serving after the plan is done")
    run.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds of silence after which a client is offline and its open commands fail (default: 30)",
    )
    run.add_argument(
        "--min-successful-clients",
        type=int,
        metavar="N",
        help="fewest successful clients a round needs to aggregate; fewer fail the run (default: aggregate what arrived)",
    )
    run.add_argument(
        "--keep-uploads",
        action="store_true",
        help="keep the clients' uploads after their round (default: deleted once aggregated; global models stay)",
    )
    run.add_argument(
        "--keep-global-models",
        type=int,
        metavar="N",
        help="keep only the latest N (>= 2) global models in the store (default: every round's; the best model"
        " is kept apart in the run directory either way)",
    )
    run.add_argument("--max-wait", type=float, default=30.0, metavar="S", help="longest a pull is held (default: 30)")
    run.add_argument("--token-ttl", type=int, default=3600, metavar="S", help="token lifetime (default: 3600)")
    run.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain HTTP on a non-loopback address (only behind a TLS-terminating proxy)",
    )
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on usage errors, 0 after --help
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return int(args.handler(args))
    except CliError as error:
        _error(str(error))
        return error.exit_code
    except InvalidRequest as error:  # a bad name, role or password given on the command line
        _error(error.detail)
        return EXIT_USAGE
    except TheodenError as error:
        _error(error.detail)
        return EXIT_FAILURE
    except OSError as error:  # unreadable files, a port in use, ...
        _error(str(error))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def _error(message: str) -> None:
    print(f"theoden-server: error: {message}", file=sys.stderr)


def _users_add(args: argparse.Namespace) -> int:
    from theoden_server.security import UsersFile, write_private_file

    password: str | None = None
    if args.password_file is not None:
        password = _read_password(args.password_file)
    users = UsersFile.load(args.users)
    existed = args.name in users
    password = users.add(args.name, role=args.role, password=password, replace=args.replace)
    users.save()
    print(f"{'Replaced' if existed else 'Added'} {args.role} user {args.name!r} in {users.path}.")
    if args.password_file is not None:
        return EXIT_OK
    if args.password_out is not None:
        write_private_file(args.password_out, (password + "\n").encode("utf-8"))
        print(f"Its password was written to {args.password_out} (mode 0600); hand it to the user securely.")
    else:
        print("Its password is shown only this once; store it safely (e.g. in a password manager):")
        print(password)
    return EXIT_OK


def _read_password(path: Path) -> str:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as error:
        raise CliError(f"cannot read password file {path}: {error.strerror}", exit_code=EXIT_USAGE) from None
    password = text.rstrip("\r\n")
    if not password:
        raise CliError(f"password file {path} is empty", exit_code=EXIT_USAGE)
    return password


def _users_list(args: argparse.Namespace) -> int:
    from theoden_server.security import UsersFile

    users = UsersFile.load(args.users)
    if not len(users):
        print(f"No users in {users.path}. Add one with: theoden-server users add NAME --users {users.path}")
        return EXIT_OK
    names = users.names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {users.role_of(name).value}")
    return EXIT_OK


def _users_remove(args: argparse.Namespace) -> int:
    from theoden_server.security import UsersFile

    users = UsersFile.load(args.users)
    users.remove(args.name)
    users.save()
    print(f"Removed user {args.name!r} from {users.path}. Tokens it already holds stay valid until they expire.")
    return EXIT_OK


def _certs_create(args: argparse.Namespace) -> int:
    from theoden_server.certs import create_ca, create_server_certificate

    if args.days <= 0:
        raise CliError("--days must be positive", exit_code=EXIT_USAGE)
    hosts = args.host or ["localhost", "127.0.0.1"]
    try:
        ca_cert, ca_key = create_ca(args.out, days=args.days, overwrite=args.force)
        cert, key = create_server_certificate(
            args.out, ca_cert=ca_cert, ca_key=ca_key, hosts=hosts, days=args.days, overwrite=args.force
        )
    except FileExistsError as error:
        raise CliError(
            f"{args.out} already holds certificates or keys ({error}); use --force to replace them"
            " (clients then need the new ca.pem)",
            exit_code=EXIT_USAGE,
        ) from None
    except ValueError as error:
        raise CliError(str(error), exit_code=EXIT_USAGE) from None
    print(f"CA certificate:      {ca_cert}   (give to every client; they verify the server with it)")
    print(f"CA key:              {ca_key}   (keep offline/private; only needed to issue more certificates)")
    print(f"Server certificate:  {cert}   (valid for {', '.join(hosts)})")
    print(f"Server key:          {key}   (private, mode 0600)")
    print(f"Serve HTTPS with:    theoden-server run PLAN.py --ssl-certfile {cert} --ssl-keyfile {key}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise CliError("give both --ssl-certfile and --ssl-keyfile, or neither", exit_code=EXIT_USAGE)
    for option, path in (
        ("--ssl-certfile", args.ssl_certfile),
        ("--ssl-keyfile", args.ssl_keyfile),
        ("--rabbitmq-ca-file", args.rabbitmq_ca_file),
    ):
        if path is not None and not path.is_file():
            raise CliError(f"{option}: file not found: {path}", exit_code=EXIT_USAGE)
    if args.rabbitmq is None and (args.rabbitmq_ca_file is not None or args.rabbitmq_admin_user):
        raise CliError("--rabbitmq-ca-file and --rabbitmq-admin-user need --rabbitmq URL", exit_code=EXIT_USAGE)
    from theoden_server.security import is_loopback  # the same rule start_server applies

    if args.ssl_certfile is None and not is_loopback(args.host) and not args.insecure_http:
        raise CliError(
            f"refusing plain HTTP on {args.host}: passwords and tokens would travel unencrypted. Use"
            " --ssl-certfile/--ssl-keyfile (see `theoden-server certs create`), or --insecure-http behind a TLS proxy",
            exit_code=EXIT_USAGE,
        )
    if not 0 <= args.port < 65536:
        raise CliError(f"--port must be between 0 (any free port) and 65535, not {args.port}", exit_code=EXIT_USAGE)
    plan = load_plan(args.plan)
    if args.rabbitmq is None and not args.users.is_file():
        raise CliError(
            f"users file {args.users} not found; nobody could log in. Create it with:"
            f" theoden-server users add NAME --users {args.users}",
            exit_code=EXIT_USAGE,
        )
    if args.users.is_file():
        from theoden_server.security import UsersFile

        UsersFile.load(args.users)  # fail now, not at the first login, if it is malformed
    run_name = args.run_name or plan.run_name or args.plan.stem
    jwt_secret_file = args.jwt_secret_file or args.users.parent / "jwt-secret"

    try:
        from theoden_server.start import start_server  # imported late: it pulls in the whole server
    except ImportError as error:
        raise CliError(f"cannot start the server: {error} (is theoden-server fully installed?)") from error

    result = start_server(
        plan.instructions,
        run_name,
        permanent_conditions=plan.permanent_conditions,
        open_distribution=plan.open_distribution,
        watchers=plan.watchers,
        host=args.host,
        port=args.port,
        users=args.users,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        rabbitmq=args.rabbitmq,
        run_dir=args.run_dir,
        exit_on_finish=not args.no_exit_on_finish,
        jwt_secret_file=jwt_secret_file,
        **_tuning(args),
    )
    return result if isinstance(result, int) else EXIT_OK


def _tuning(args: argparse.Namespace) -> dict[str, Any]:
    """Server knobs given on the command line (only those that differ from start_server's defaults)."""
    for option, value in (("--heartbeat-timeout", args.heartbeat_timeout), ("--max-wait", args.max_wait)):
        if value <= 0:
            raise CliError(f"{option} must be positive, not {value}", exit_code=EXIT_USAGE)
    if args.token_ttl <= 0:
        raise CliError(f"--token-ttl must be positive, not {args.token_ttl}", exit_code=EXIT_USAGE)
    if args.min_successful_clients is not None and args.min_successful_clients < 1:
        raise CliError("--min-successful-clients must be at least 1", exit_code=EXIT_USAGE)
    tuning: dict[str, Any] = {}
    if args.heartbeat_timeout != 30.0:
        tuning["heartbeat_timeout"] = args.heartbeat_timeout
    if args.max_wait != 30.0:
        tuning["max_wait"] = args.max_wait
    if args.token_ttl != 3600:
        tuning["token_ttl"] = args.token_ttl
    if args.min_successful_clients is not None:
        tuning["min_successful_clients"] = args.min_successful_clients
    if args.insecure_http:
        tuning["insecure_http"] = True
    if args.rabbitmq_ca_file is not None:
        tuning["rabbitmq_ca_file"] = args.rabbitmq_ca_file
    if args.rabbitmq_admin_user:
        tuning["rabbitmq_admin_users"] = args.rabbitmq_admin_user
    if args.keep_uploads:
        tuning["keep_uploads"] = True
    if args.keep_global_models is not None:
        if args.keep_global_models < 2:
            raise CliError(
                "--keep-global-models must be at least 2 (the current and the previous model)", exit_code=EXIT_USAGE
            )
        tuning["keep_global_models"] = args.keep_global_models
    return tuning
