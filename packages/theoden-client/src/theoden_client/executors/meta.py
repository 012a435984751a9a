"""Built-in handlers of meta commands (sequential, conditional, repeat) and exit."""

from __future__ import annotations

from collections.abc import Sequence

from theoden_protocol import (
    Command,
    Conditional,
    ExecutionResponse,
    Exit,
    HasResource,
    Repeat,
    SendModel,
    Sequential,
    iter_commands,
)

from theoden_client.errors import RegistryError
from theoden_client.executors.base import (
    CONDITIONS,
    ChildCommandError,
    ExecutionContext,
    builtin,
    register_condition,
    tag_of,
)

__all__ = ["conditional", "evaluate_condition", "exit_command", "merge_responses", "repeat", "sequential"]


def merge_responses(results: Sequence[tuple[Command, ExecutionResponse]]) -> ExecutionResponse:
    """Merge children's responses into one: metrics, blobs, counts and details (later wins).

    ``num_samples`` comes from the last child that is (or contains) a `SendModel`, since that is
    the weight the server aggregates with; without one, from the last child that reports it.
    """
    metrics: dict[str, float] = {}
    blobs = {}
    counts: dict[str, int] = {}
    details = {}
    from_send: int | None = None
    from_any: int | None = None
    for command, response in results:
        metrics.update(response.metrics)
        blobs.update(response.blobs)
        counts.update(response.counts)
        details.update(response.details)
        if response.num_samples is not None:
            from_any = response.num_samples
            if any(isinstance(c, SendModel) for c in iter_commands(command)):
                from_send = response.num_samples
    return ExecutionResponse(
        metrics=metrics,
        blobs=blobs,
        counts=counts,
        details=details,
        num_samples=from_send if from_send is not None else from_any,
    )


def _run_child(ctx: ExecutionContext, child: Command, position: str) -> ExecutionResponse:
    try:
        return ctx.run(child)
    except Exception as exc:
        raise ChildCommandError(
            f"{position} {tag_of(child)!r} (uuid {child.uuid}) failed: {type(exc).__name__}: {exc}"
        ) from exc


@builtin(Sequential)
def sequential(command: Sequential, ctx: ExecutionContext) -> ExecutionResponse:
    """Run the children in order; the first failure fails the whole sequence, naming the child."""
    results: list[tuple[Command, ExecutionResponse]] = []
    total = len(command.commands)
    for i, child in enumerate(command.commands, start=1):
        results.append((child, _run_child(ctx, child, f"step {i}/{total}")))
        if ctx.exit_requested:
            break
    return merge_responses(results)


def evaluate_condition(condition: object, ctx: ExecutionContext) -> bool:
    """Evaluate a client-side condition with its registered evaluator.

    Raises:
        RegistryError: No evaluator is registered for the condition's type.
    """
    fn = CONDITIONS.get(type(condition))  # type: ignore[arg-type]
    if fn is None:
        raise RegistryError(
            f"no evaluator for client condition {type(condition).__qualname__}; register one with register_condition"
        )
    return fn(condition, ctx)


@register_condition(HasResource)
def has_resource(condition: HasResource, ctx: ExecutionContext) -> bool:
    """True when the client holds ``condition.key`` (inverted by ``negate``)."""
    return ctx.resources.has(condition.key) != condition.negate


@builtin(Conditional)
def conditional(command: Conditional, ctx: ExecutionContext) -> ExecutionResponse:
    """Run ``then`` if the condition holds, else ``otherwise``; ``details["condition"]`` says which."""
    holds = evaluate_condition(command.condition, ctx)
    branch = command.then if holds else command.otherwise
    results: list[tuple[Command, ExecutionResponse]] = []
    if branch is not None:
        results.append((branch, _run_child(ctx, branch, "then-branch" if holds else "otherwise-branch")))
    merged = merge_responses(results)
    return ExecutionResponse(
        metrics=merged.metrics,
        blobs=merged.blobs,
        counts=merged.counts,
        details={**merged.details, "condition": holds},
        num_samples=merged.num_samples,
    )


@builtin(Repeat)
def repeat(command: Repeat, ctx: ExecutionContext) -> ExecutionResponse:
    """Run the command ``times`` times; the responses merge like a sequence's (the last run wins)."""
    results: list[tuple[Command, ExecutionResponse]] = []
    for i in range(1, command.times + 1):
        results.append((command.command, _run_child(ctx, command.command, f"repetition {i}/{command.times}")))
        if ctx.exit_requested:
            break
    return merge_responses(results)


@builtin(Exit)
def exit_command(command: Exit, ctx: ExecutionContext) -> ExecutionResponse:
    """Ask the client to exit after reporting this command."""
    ctx.request_exit(command.reason)
    return ExecutionResponse(details={"reason": command.reason})
