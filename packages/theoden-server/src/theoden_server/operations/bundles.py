"""Instruction bundles: multi-round training, unpacked into per-round distribute/aggregate steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from theoden_protocol import Command, LoadWeights, SendModel, Sequential, Train, Validate

from theoden_server.aggregation.base import Aggregator
from theoden_server.aggregation.fedavg import FedAvg
from theoden_server.operations.actions import Aggregation, ExitRun
from theoden_server.operations.distributions import ClosedDistribution
from theoden_server.operations.instructions import Instruction, InstructionBundle
from theoden_server.operations.selectors import AllClients, Selector

if TYPE_CHECKING:
    from theoden_server.server import Server

__all__ = ["MultiRoundTraining", "TrainingRound", "ValidationRound"]


class TrainingRound(InstructionBundle):
    """One communication round, built when it starts so it carries the current global model.

    Expands into a `ClosedDistribution` of ``Sequential[LoadWeights(global), Train, (Validate),
    SendModel]`` (no ``LoadWeights`` while there is no global model) followed by an `Aggregation`.
    """

    def __init__(
        self,
        round: int,
        *,
        aggregator: Aggregator,
        steps: int | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        validate: bool = True,
        selector: Selector | None = None,
        min_successful_clients: int | None = None,
        timeout: float | None = None,
        train_split: str = "train",
        val_split: str = "val",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or f"round {round}")
        self.round = round
        self.aggregator = aggregator
        self.steps, self.epochs, self.batch_size = steps, epochs, batch_size
        self.validate = validate
        self.selector = selector or AllClients()
        self.min_successful_clients = min_successful_clients
        self.timeout = timeout
        self.train_split, self.val_split = train_split, val_split

    def commands(self, server: Server) -> list[Command]:
        """Return the commands every client runs this round."""
        commands: list[Command] = []
        if server.global_model is not None:
            commands.append(LoadWeights(blob=server.global_model))
        commands.append(
            Train(
                steps=self.steps,
                epochs=self.epochs,
                batch_size=self.batch_size,
                split=self.train_split,
                round=self.round,
            )
        )
        if self.validate:
            commands.append(Validate(split=self.val_split, batch_size=self.batch_size, round=self.round))
        commands.append(SendModel(sample_split=self.train_split))
        return commands

    def expand(self, server: Server) -> Sequence[Instruction]:
        """Return this round's distribution and aggregation."""
        aggregation = Aggregation(self.aggregator, round=self.round, min_successful_clients=self.min_successful_clients)
        distribution = ClosedDistribution(
            Sequential(commands=self.commands(server)),
            self.selector,
            on_init=aggregation.begin,
            on_client_finish=aggregation.collect,
            round=self.round,
            timeout=self.timeout,
            name=f"train round {self.round}",
        )
        return [distribution, aggregation]


class ValidationRound(InstructionBundle):
    """Validate the current global model on the clients (e.g. after the last round)."""

    def __init__(
        self,
        round: int,
        *,
        selector: Selector | None = None,
        batch_size: int | None = None,
        split: str = "val",
        phase: str = "final_validation",
        timeout: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or f"{phase} {round}")
        self.round = round
        self.selector = selector or AllClients()
        self.batch_size = batch_size
        self.split = split
        self.phase = phase
        self.timeout = timeout

    def expand(self, server: Server) -> Sequence[Instruction]:
        """Return the validation distribution."""
        commands: list[Command] = []
        if server.global_model is not None:
            commands.append(LoadWeights(blob=server.global_model))
        commands.append(Validate(split=self.split, batch_size=self.batch_size, round=self.round))
        return [
            ClosedDistribution(
                Sequential(commands=commands),
                self.selector,
                round=self.round,
                phase=self.phase,
                completes_round=True,
                timeout=self.timeout,
                name=f"{self.phase} {self.round}",
            )
        ]


class MultiRoundTraining(InstructionBundle):
    """``n_rounds`` of train-and-aggregate, then an optional final validation and an exit.

    Rounds are numbered from ``first_round``; the final validation is labelled with the round
    after the last one. Exactly one of ``steps`` and ``epochs`` says how long each client trains.

    Args:
        n_rounds: Number of communication rounds.
        steps: Optimizer steps per client per round.
        epochs: Epochs per client per round.
        batch_size: Batch size (``None``: the client's dataloader setting).
        aggregator: The strategy (default `FedAvg`).
        validate: Validate on each client in every round (after training, before sending).
        final_validation: Validate the final global model on every client.
        exit: Tell the clients to exit at the end.
        selector: Which clients train each round (default: all available).
        min_successful_clients: Fewest usable results per round (``None``: the server's setting).
        timeout: Fail a client whose round takes longer than this many seconds.
        first_round: Number of the first round.
        train_split: Split to train on (and whose size weighs the client).
        val_split: Split to validate on.
    """

    def __init__(
        self,
        n_rounds: int,
        *,
        steps: int | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        aggregator: Aggregator | None = None,
        validate: bool = True,
        final_validation: bool = True,
        exit: bool = True,
        selector: Selector | None = None,
        min_successful_clients: int | None = None,
        timeout: float | None = None,
        first_round: int = 0,
        train_split: str = "train",
        val_split: str = "val",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if n_rounds < 0:
            raise ValueError("n_rounds must be >= 0")
        if (steps is None) == (epochs is None):
            raise ValueError("MultiRoundTraining needs exactly one of steps or epochs")
        self.n_rounds = n_rounds
        self.steps, self.epochs, self.batch_size = steps, epochs, batch_size
        self.aggregator = aggregator or FedAvg()
        self.validate, self.final_validation, self.exit = validate, final_validation, exit
        self.selector = selector or AllClients()
        self.min_successful_clients = min_successful_clients
        self.timeout = timeout
        self.first_round = first_round
        self.train_split, self.val_split = train_split, val_split

    def expand(self, server: Server) -> Sequence[Instruction]:
        """Return the rounds, the final validation and the exit."""
        last = self.first_round + self.n_rounds
        plan: list[Instruction] = [
            TrainingRound(
                r,
                aggregator=self.aggregator,
                steps=self.steps,
                epochs=self.epochs,
                batch_size=self.batch_size,
                validate=self.validate,
                selector=self.selector,
                min_successful_clients=self.min_successful_clients,
                timeout=self.timeout,
                train_split=self.train_split,
                val_split=self.val_split,
            )
            for r in range(self.first_round, last)
        ]
        if self.final_validation:
            plan.append(
                ValidationRound(
                    last, selector=self.selector, batch_size=self.batch_size, split=self.val_split, timeout=self.timeout
                )
            )
        if self.exit:
            plan.append(ExitRun(f"training finished after {self.n_rounds} rounds"))
        return plan

    def describe(self) -> dict[str, Any]:
        """Return the training's settings."""
        return {
            **super().describe(),
            "n_rounds": self.n_rounds,
            "steps": self.steps,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            **self.aggregator.describe(),
        }
