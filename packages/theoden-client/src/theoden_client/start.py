"""`start_client`: build a transport and a `Client` from plain settings and run it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from os import PathLike
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from theoden_client.allowlist import CommandAllowlist
from theoden_client.client import Client
from theoden_client.executors import ExecutorRegistry
from theoden_client.transport.base import Transport
from theoden_client.transport.rest import RestTransport

__all__ = ["broker_url_with_credentials", "make_transport", "start_client"]

logger = logging.getLogger("theoden_client")

#: Message of the placeholder for the broker transport.


def make_transport(
    server_url: str | None,
    username: str,
    password: str,
    *,
    ca_cert: str | PathLike[str] | None = None,
    rabbitmq: str | None = None,
    timeout: float = 30.0,
) -> Transport:
    """Return the transport for ``server_url`` (REST) or ``rabbitmq`` (a broker URL).

    The broker user is the client's name: ``username``/``password`` are put into the broker URL
    unless it carries credentials of its own. ``ca_cert`` verifies the server (HTTPS) or the broker
    (``amqps://``).

    Raises:
        ValueError: Neither a server URL nor a broker URL was given.
    """
    if rabbitmq is not None:
        from theoden_client.transport.amqp import RabbitMQTransport

        url = broker_url_with_credentials(rabbitmq, username, password)
        return RabbitMQTransport(url, timeout=timeout, ca_file=ca_cert)
    if not server_url:
        raise ValueError("a server URL is needed, e.g. https://fl.example.org:8443")
    return RestTransport(server_url, username=username, password=password, ca_file=ca_cert, timeout=timeout)


def broker_url_with_credentials(url: str, username: str, password: str) -> str:
    """Return ``url`` with ``username:password`` filled in, unless it already names a user."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"a broker URL starts with amqp:// or amqps://, not {url.split(':', 1)[0]!r}")
    if parts.username:
        return url
    host = parts.hostname or "localhost"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def start_client(
    server_url: str | None,
    username: str,
    password: str,
    *,
    ca_cert: str | PathLike[str] | None = None,
    data_root: str | PathLike[str] = ".",
    allow: Iterable[str] | str | None = None,
    rabbitmq: str | None = None,
    executors: ExecutorRegistry | None = None,
    device: str = "cpu",
    poll_wait: float = 30.0,
    handle_signals: bool = True,
    **client_options: Any,
) -> str | None:
    """Connect to a TheODen server and serve its commands until it says exit; return the exit reason.

    Args:
        server_url: Base URL of the server, e.g. ``https://fl.example.org:8443``.
        username: This client's user name on the server.
        password: Its password (read it from a file or the environment, never a command line).
        ca_cert: CA bundle that signed the server's certificate (for a private CA).
        data_root: Folder all dataset paths resolve under.
        allow: Command types (wire tags) that may run, as a list or comma-separated text; ``None``: all.
        rabbitmq: Broker URL for the RabbitMQ transport (instead of ``server_url``); the broker user is ``username``.
        executors: Command handlers; default: the global registry with every built-in.
        device: Torch device to train on.
        poll_wait: Seconds a pull may wait on the server.
        handle_signals: Exit cleanly on SIGINT/SIGTERM.
        **client_options: Further keyword arguments of `Client` (``backoff``, ``heartbeat_interval``, ...).
    """
    transport = make_transport(server_url, username, password, ca_cert=ca_cert, rabbitmq=rabbitmq)
    client = Client(
        transport,
        data_root=data_root,
        executors=executors,
        allowlist=CommandAllowlist.parse(allow),
        device=device,
        poll_wait=poll_wait,
        **client_options,
    )
    with client:
        return client.run(handle_signals=handle_signals)
