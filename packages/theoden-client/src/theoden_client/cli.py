"""The ``theoden-client`` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from theoden_protocol import TheodenError

from theoden_client import __version__
from theoden_client.start import start_client

__all__ = ["build_parser", "main", "read_password"]

logger = logging.getLogger("theoden_client")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``theoden-client``."""
    parser = argparse.ArgumentParser(
        prog="theoden-client",
        description="Run a TheODen client: pull commands from the server and train on this site's data.",
    )
    target = parser.add_argument_group("server")
    target.add_argument("--server", metavar="URL", help="server base URL, e.g. https://fl.example.org:8443")
    target.add_argument(
        "--rabbitmq",
        metavar="URL",
        help="broker URL instead of --server, e.g. amqps://broker.example.org/theoden (the broker user is --username)",
    )
    target.add_argument("--ca-cert", metavar="FILE", help="CA bundle that signed the server's certificate")
    auth = parser.add_argument_group("credentials (the password is never given on the command line)")
    auth.add_argument("--username", required=True, help="this client's user name on the server")
    secret = auth.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password-file", metavar="FILE", help="read the password from the first line of FILE")
    secret.add_argument("--password-env", metavar="VAR", help="read the password from environment variable VAR")
    site = parser.add_argument_group("site")
    site.add_argument("--data-root", default=".", metavar="DIR", help="folder all dataset paths resolve under")
    site.add_argument(
        "--allow",
        action="append",
        metavar="TAGS",
        help="comma-separated command types that may run (repeatable), e.g. load_dataset,train,validate; default: all",
    )
    site.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    site.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first, e.g. to register own commands, executors, models or datasets (repeatable)",
    )
    site.add_argument("--poll-wait", type=float, default=30.0, metavar="S", help="long-poll wait in seconds")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def read_password(args: argparse.Namespace) -> str:
    """Return the password from ``--password-file`` or ``--password-env``.

    Raises:
        SystemExit: The file or variable is missing or empty (with a clear message).
    """
    if args.password_file:
        path = Path(args.password_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SystemExit(f"theoden-client: cannot read password file {path}: {exc.strerror}") from None
        password = lines[0].strip() if lines else ""
        source = f"password file {path}"
    else:
        password = os.environ.get(args.password_env, "")
        source = f"environment variable {args.password_env}"
    if not password:
        raise SystemExit(f"theoden-client: {source} is empty or missing")
    return password


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code (0 after a clean exit)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bool(args.server) == bool(args.rabbitmq):
        parser.error("give exactly one of --server URL (REST) or --rabbitmq URL (broker)")
    password = read_password(args)
    for module in args.plugin:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            parser.exit(2, f"theoden-client: cannot import plugin {module!r}: {exc}\n")
    if args.ca_cert and not Path(args.ca_cert).is_file():
        parser.exit(2, f"theoden-client: CA bundle {args.ca_cert} not found\n")
    try:
        reason = start_client(
            args.server,
            args.username,
            password,
            ca_cert=args.ca_cert,
            rabbitmq=args.rabbitmq,
            data_root=args.data_root,
            allow=args.allow,
            device=args.device,
            poll_wait=args.poll_wait,
        )
    except TheodenError as exc:
        logger.error("%s", exc)
        return 1
    except ValueError as exc:  # settings the transport refused (a URL without http:// or https://, ...)
        parser.exit(2, f"theoden-client: {exc}\n")
    except ssl.SSLError as exc:
        parser.exit(2, f"theoden-client: cannot use CA bundle {args.ca_cert}: {exc}\n")
    except KeyboardInterrupt:
        return 130
    logger.info("client stopped: %s", reason)
    return 0
