"""The site's command allowlist: which command types (by wire tag) may run on this client's data."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

from theoden_protocol import Command, iter_commands, registered_types

from theoden_client.errors import CommandRefusedError

__all__ = ["STRUCTURAL_COMMANDS", "CommandAllowlist"]

logger = logging.getLogger("theoden_client.allowlist")

#: Commands that only arrange other commands (or end the run); always allowed, their children are checked.
STRUCTURAL_COMMANDS: Final = frozenset({"sequential", "conditional", "repeat", "exit"})


def _tag(command: Command) -> str:
    return str(type(command).__struct_config__.tag)


class CommandAllowlist:
    """Allow only the listed command tags (plus `STRUCTURAL_COMMANDS`); ``None`` allows everything.

    Args:
        allowed: Wire tags such as ``["load_dataset", "train", "validate"]``, or ``None``.
    """

    def __init__(self, allowed: Iterable[str] | None = None) -> None:
        self.allowed: frozenset[str] | None = None if allowed is None else frozenset(a.strip() for a in allowed)
        if self.allowed is not None:
            known = set(registered_types(Command))
            unknown = sorted(self.allowed - known)
            if unknown:
                logger.warning("allowlist names command types no loaded module defines: %s", ", ".join(unknown))

    @classmethod
    def parse(cls, values: str | Iterable[str] | None) -> CommandAllowlist:
        """Build from comma-separated text (``"train,validate"``) or a list of such texts."""
        if values is None:
            return cls(None)
        items = [values] if isinstance(values, str) else list(values)
        return cls(tag for item in items for tag in item.split(",") if tag.strip())

    def allows(self, tag: str) -> bool:
        """Return whether commands of wire tag ``tag`` may run."""
        return self.allowed is None or tag in self.allowed or tag in STRUCTURAL_COMMANDS

    def check(self, command: Command) -> None:
        """Refuse ``command`` if it, or any command nested in it, is not allowed.

        Raises:
            CommandRefusedError: Naming every refused tag.
        """
        refused = sorted({_tag(c) for c in iter_commands(command) if not self.allows(_tag(c))})
        if refused:
            allowed = ", ".join(sorted(self.allowed or ())) or "none"
            raise CommandRefusedError(
                f"this site does not allow command type(s) {', '.join(refused)} to run on its data (allowed: {allowed})"
            )

    def __repr__(self) -> str:
        return "CommandAllowlist(all)" if self.allowed is None else f"CommandAllowlist({sorted(self.allowed)})"
