"""Command executors: a registry from command type to handler, with built-ins for every protocol command.

Register a handler for your own command (a registered `theoden_protocol.Command` subclass), or
replace a built-in::

    from theoden_client.executors import EXECUTORS

    @EXECUTORS.register(MyCommand)
    def run_my_command(command: MyCommand, ctx: ExecutionContext) -> ExecutionResponse: ...

    EXECUTORS.register(Train, my_train_step, override=True)
"""

from __future__ import annotations

from theoden_client.executors import actions, meta, resource_commands
from theoden_client.executors.actions import DATASET_KEY, SCHEDULER_KEY, resolve_split
from theoden_client.executors.base import (
    BUILTIN_HANDLERS,
    CONDITIONS,
    ChildCommandError,
    ExecutionContext,
    ExecutorRegistry,
    Handler,
    register_condition,
    tag_of,
)
from theoden_client.executors.meta import evaluate_condition, merge_responses
from theoden_client.executors.resource_commands import LOSSES_KEY, METRICS_KEY, dataloader_key

__all__ = [
    "BUILTIN_HANDLERS",
    "CONDITIONS",
    "DATASET_KEY",
    "EXECUTORS",
    "LOSSES_KEY",
    "METRICS_KEY",
    "SCHEDULER_KEY",
    "ChildCommandError",
    "ExecutionContext",
    "ExecutorRegistry",
    "Handler",
    "actions",
    "dataloader_key",
    "default_executors",
    "evaluate_condition",
    "merge_responses",
    "meta",
    "register_condition",
    "resolve_split",
    "resource_commands",
    "tag_of",
]


def default_executors() -> ExecutorRegistry:
    """Return a new registry holding the built-in handler of every protocol command."""
    return ExecutorRegistry(BUILTIN_HANDLERS)


#: The registry clients use unless given another; register user handlers here.
EXECUTORS = default_executors()
