"""In-process harness: simulated clients that call the server's two entry points."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save
from theoden_protocol import (
    Command,
    CommandResponse,
    CommandStatus,
    ExecutionResponse,
    Exit,
    LoadWeights,
    PullCommand,
    RegisterRequest,
    SendModel,
    Sequential,
    StatusUpdate,
    Train,
    Validate,
)
from theoden_server.server import Server

Behaviour = Callable[["SimClient", Command], ExecutionResponse | None]


def tiny_model(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small model with a float weight, a float bias and an integer buffer."""
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g),
        "b": torch.randn(3, generator=g),
        "bn.num_batches_tracked": torch.tensor(seed, dtype=torch.int64),
    }


def write_model(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.write_bytes(save(tensors))
    return path


class SimClient:
    """A simulated client: registers, pulls, 'executes' and reports, all in-process."""

    def __init__(self, server: Server, name: str, *, num_samples: int = 10, behaviour: Behaviour | None = None) -> None:
        self.server = server
        self.name = name
        self.num_samples = num_samples
        self.behaviour = behaviour
        self.received: list[Command] = []
        self.weights: dict[str, torch.Tensor] = {}
        self.exited = False
        self.uploads: list[dict[str, torch.Tensor]] = []

    def register(self) -> None:
        self.server.process_server_request(RegisterRequest(), self.name)

    def pull(self) -> Command | None:
        response = self.server.process_server_request(PullCommand(), self.name)
        assert isinstance(response, CommandResponse)
        return response.command

    def pull_wait(self, timeout: float = 5.0) -> Command:
        """Pull until a command arrives (actions such as loading the model run in the background)."""
        deadline = time.monotonic() + timeout
        while (command := self.pull()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} got no command in time; {self.server.describe()}")
            time.sleep(0.005)
        return command

    def report(self, command: Command, status: CommandStatus, response: ExecutionResponse | None = None) -> None:
        update = StatusUpdate(client_name=self.name, command_uuid=command.uuid, status=status, response=response)
        self.server.process_status_update(update, self.name)

    def step(self) -> bool:
        """Pull once and run the command; return whether there was one."""
        command = self.pull()
        if command is None:
            return False
        self.received.append(command)
        self.report(command, CommandStatus.STARTED)
        if isinstance(command, Exit):
            self.exited = True
        try:
            response = (self.behaviour or default_behaviour)(self, command)
        except Exception as exc:
            self.report(command, CommandStatus.FAILED, ExecutionResponse(error=str(exc)))
            return True
        self.report(command, CommandStatus.FINISHED, response)
        return True

    def trained_weights(self, round: int | None) -> dict[str, torch.Tensor]:
        """Deterministic 'training': the loaded weights plus a client- and round-specific offset."""
        offset = float(sum(map(ord, self.name)) % 7 + 1) * 0.1 + (round or 0)
        out = {}
        for key, value in self.weights.items():
            out[key] = value + offset if value.is_floating_point() else value + self.num_samples
        return out

    def upload(self, tensors: dict[str, torch.Tensor]) -> Any:
        self.uploads.append(tensors)
        return self.server.store.put_bytes(save(tensors), owner=self.name)


def default_behaviour(client: SimClient, command: Command) -> ExecutionResponse | None:
    commands = command.commands if isinstance(command, Sequential) else [command]
    metrics: dict[str, float] = {}
    blobs = {}
    num_samples = None
    round_ = None
    for child in commands:
        if isinstance(child, LoadWeights):
            client.weights = load(client.server.store.read_bytes(child.blob.id))
        elif isinstance(child, Train):
            round_ = child.round
            metrics["train/loss"] = 1.0 / (1 + (child.round or 0))
        elif isinstance(child, Validate):
            metrics["val/accuracy"] = 0.5 + 0.1 * (child.round or 0) + client.num_samples / 1000
        elif isinstance(child, SendModel):
            if not client.weights:
                client.weights = tiny_model(len(client.name))
            blobs["model"] = client.upload(client.trained_weights(round_))
            num_samples = client.num_samples
    return ExecutionResponse(metrics=metrics, blobs=blobs, num_samples=num_samples)


def drive(
    server: Server, clients: list[SimClient], *, until: Callable[[], bool] | None = None, timeout: float = 20.0
) -> None:
    """Round-robin the clients until ``until()`` (default: the run finished) or the timeout."""
    done = until or server.finished.is_set
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; server state: {server.describe()}")
        busy = False
        for client in clients:
            if not client.exited:
                busy |= client.step()
        if not busy:
            time.sleep(0.002)
    server.operations.wait_idle(5)
    server.watchers.flush(5)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)
