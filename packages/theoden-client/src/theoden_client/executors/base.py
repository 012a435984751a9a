"""Executor registry and the context every command handler receives."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from theoden_protocol import ClientCondition, Command, ExecutionResponse, registered_types

from theoden_client.allowlist import CommandAllowlist
from theoden_client.data import DataRoot
from theoden_client.errors import ClientError, NoExecutorError, RegistryError
from theoden_client.progress import ProgressMode
from theoden_client.resources import ResourceManager
from theoden_client.transport.base import Transport

__all__ = [
    "BUILTIN_HANDLERS",
    "CONDITIONS",
    "ChildCommandError",
    "ConditionFn",
    "ExecutionContext",
    "ExecutorRegistry",
    "Handler",
    "register_condition",
    "tag_of",
]

logger = logging.getLogger("theoden_client.executors")

#: ``handler(command, context) -> ExecutionResponse | None`` (``None`` means an empty response).
Handler = Callable[[Any, "ExecutionContext"], ExecutionResponse | None]
#: ``fn(condition, context) -> bool`` for a client-side condition type.
ConditionFn = Callable[[Any, "ExecutionContext"], bool]
H = TypeVar("H", bound=Handler)
C = TypeVar("C", bound=ConditionFn)

#: Handlers of the protocol's own commands, by wire tag (filled by the built-in modules).
BUILTIN_HANDLERS: dict[str, Handler] = {}
#: Client-side condition type → evaluator (for `Conditional`).
CONDITIONS: dict[type[ClientCondition], ConditionFn] = {}


def tag_of(command_type: type[Command] | Command | str) -> str:
    """Return the wire tag of a command type, a command, or a tag itself."""
    if isinstance(command_type, str):
        return command_type
    cls = command_type if isinstance(command_type, type) else type(command_type)
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise RegistryError(f'{cls.__qualname__} has no wire tag; declare it with `tag="..."`')
    return tag


def register_condition(condition_type: type[ClientCondition]) -> Callable[[C], C]:
    """Decorator: evaluate conditions of ``condition_type`` with ``fn(condition, context) -> bool``."""

    def add(fn: C) -> C:
        CONDITIONS[condition_type] = fn
        return fn

    return add


class ChildCommandError(ClientError):
    """A command inside a meta command failed; the message says which one and why."""


class ExecutorRegistry:
    """Command wire tag → handler.

    Args:
        handlers: Initial table (e.g. the built-ins); copied.
    """

    def __init__(self, handlers: dict[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = dict(handlers or {})
        self._lock = threading.Lock()

    def register(
        self, command_type: type[Command] | str, handler: Handler | None = None, *, override: bool = False
    ) -> Any:
        """Run commands of ``command_type`` with ``handler``; use directly or as a decorator.

        Args:
            command_type: A registered `Command` subclass, or its wire tag.
            handler: ``handler(command, context) -> ExecutionResponse | None``.
            override: Replace an existing handler (e.g. a built-in) instead of refusing.

        Raises:
            RegistryError: A handler exists and ``override`` is false, or the class is not a
                registered command type (decorate it with ``@theoden_protocol.register``).
        """
        tag = tag_of(command_type)
        if isinstance(command_type, type) and registered_types(Command).get(tag) is not command_type:
            raise RegistryError(
                f"{command_type.__qualname__} is not a registered command type; decorate it with "
                "@theoden_protocol.register so the client can decode it"
            )

        def add(fn: H) -> H:
            with self._lock:
                if tag in self._handlers and not override and self._handlers[tag] is not fn:
                    raise RegistryError(f"command {tag!r} already has a handler; pass override=True to replace it")
                self._handlers[tag] = fn
            return fn

        return add(handler) if handler is not None else add

    def unregister(self, command_type: type[Command] | str) -> None:
        """Remove the handler of ``command_type`` (no error if absent)."""
        with self._lock:
            self._handlers.pop(tag_of(command_type), None)

    def handler_for(self, command: Command) -> Handler:
        """Return the handler of ``command``'s type.

        Raises:
            NoExecutorError: No handler is registered for it; the message names the type.
        """
        tag = tag_of(command)
        handler = self._handlers.get(tag)
        if handler is None:
            raise NoExecutorError(
                f"this client has no executor for command type {tag!r} ({type(command).__qualname__}); "
                "register one with ExecutorRegistry.register"
            )
        return handler

    def execute(self, command: Command, context: ExecutionContext) -> ExecutionResponse:
        """Run ``command`` with its handler and return its response (empty if the handler returns ``None``)."""
        response = self.handler_for(command)(command, context)
        return response if response is not None else ExecutionResponse()

    def tags(self) -> list[str]:
        """Return the tags that have a handler, sorted."""
        return sorted(self._handlers)

    def copy(self) -> ExecutorRegistry:
        """Return an independent registry with the same handlers."""
        return ExecutorRegistry(self._handlers)

    def __contains__(self, command_type: object) -> bool:
        return isinstance(command_type, (str, type)) and tag_of(command_type) in self._handlers


@dataclass(kw_only=True)
class ExecutionContext:
    """Everything a handler may use: the client's resources, data root, transport and settings.

    Attributes:
        resources: What the client holds between commands.
        executors: The registry, so meta commands can run their children (`run`).
        data_root: Where the client's data lives; dataset paths resolve under it.
        workdir: A private folder for temporary files (downloaded and uploaded weights).
        transport: The connection to the server (for blobs); ``None`` when running offline.
        allowlist: Checked again for every nested command run through `run`.
        device: The torch device to train on.
        progress: How training shows progress (see `Progress`).
        stop: Set when the client is asked to stop; long handlers should check it.
        client_name: The name the server registered this client as.
    """

    resources: ResourceManager = field(default_factory=ResourceManager)
    executors: ExecutorRegistry
    data_root: DataRoot
    workdir: Path
    transport: Transport | None = None
    allowlist: CommandAllowlist = field(default_factory=CommandAllowlist)
    device: str = "cpu"
    progress: ProgressMode = "auto"
    stop: threading.Event = field(default_factory=threading.Event)
    client_name: str | None = None
    exit_reason: str | None = None

    def run(self, command: Command) -> ExecutionResponse:
        """Run ``command`` (e.g. a meta command's child), checking the allowlist first."""
        self.allowlist.check(command)
        return self.executors.execute(command, self)

    def request_exit(self, reason: str) -> None:
        """Ask the client to exit once the current command is reported."""
        self.exit_reason = reason or "exit requested by the server"

    @property
    def exit_requested(self) -> bool:
        """Whether an `Exit` command ran."""
        return self.exit_reason is not None

    def require_transport(self) -> Transport:
        """Return the transport or raise a clear error when running without a server."""
        if self.transport is None:
            raise ClientError("this command needs a connection to the server, but the client runs offline")
        return self.transport


def builtin(command_type: type[Command]) -> Callable[[H], H]:
    """Decorator for the built-in modules: record ``fn`` as the default handler of ``command_type``."""

    def add(fn: H) -> H:
        BUILTIN_HANDLERS[tag_of(command_type)] = fn
        return fn

    return add
