"""`start_client`: build a transport and a `Client` from plain settings and run it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from os import PathLike
from typing import Any

from theoden_client.allowlist import CommandAllowlist
from theoden_client.client import Client
from theoden_client.executors import ExecutorRegistry
from theoden_client.transport.base import Transport
from theoden_client.transport.rest import RestTransport

__all__ = ["RABBITMQ_NOT_READY", "make_transport", "start_client"]

logger = logging.getLogger("theoden_client")

#: Message of the placeholder for the broker transport.
RABBITMQ_NOT_READY = "RabbitMQ transport: coming in issue 7; use the REST transport (--server URL) for now"


def make_transport(
    server_url: str | None,
    username: str,
    password: str,
    *,
    ca_cert: str | PathLike[str] | None = None,
    rabbitmq: str | None = None,
    timeout: float = 30.0,
) -> Transport:
    """Return the transport for ``server_url`` (REST) or ``rabbitmq`` (not yet available).

    Raises:
        NotImplementedError: ``rabbitmq`` was given.
        ValueError: Neither a server URL nor a broker URL was given.
    """
    if rabbitmq is not None:
        raise NotImplementedError(RABBITMQ_NOT_READY)
    if not server_url:
        raise ValueError("a server URL is needed, e.g. https://fl.example.org:8443")
    return RestTransport(server_url, username=username, password=password, ca_file=ca_cert, timeout=timeout)


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
        rabbitmq: Broker URL for the RabbitMQ transport (not available yet).
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
