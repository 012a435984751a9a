"""Operations: the plan a server works through (conditions, distributions, actions, bundles)."""

from __future__ import annotations

from theoden_server.operations.actions import (
    Aggregation,
    ExitRun,
    InitGlobalModel,
    InitGlobalModelFromClient,
    LoadGlobalModel,
    client_result,
)
from theoden_server.operations.bundles import MultiRoundTraining, TrainingRound, ValidationRound
from theoden_server.operations.conditions import (
    RequireAllClients,
    RequireClients,
    RequireNumberOfClients,
    RequirePercentageOfClients,
)
from theoden_server.operations.distributions import (
    ClientEntry,
    ClosedDistribution,
    DistributionStatus,
    renew_uuids,
    replace_nested,
)
from theoden_server.operations.instructions import Action, Condition, Distribution, Instruction, InstructionBundle
from theoden_server.operations.manager import OperationManager
from theoden_server.operations.open_distribution import OpenDistribution
from theoden_server.operations.selectors import AllClients, NamedClients, NClients, RandomFraction, Selector

__all__ = [
    "Action",
    "Aggregation",
    "AllClients",
    "ClientEntry",
    "ClosedDistribution",
    "Condition",
    "Distribution",
    "DistributionStatus",
    "ExitRun",
    "InitGlobalModel",
    "InitGlobalModelFromClient",
    "Instruction",
    "InstructionBundle",
    "LoadGlobalModel",
    "MultiRoundTraining",
    "NClients",
    "NamedClients",
    "OpenDistribution",
    "OperationManager",
    "RandomFraction",
    "RequireAllClients",
    "RequireClients",
    "RequireNumberOfClients",
    "RequirePercentageOfClients",
    "Selector",
    "TrainingRound",
    "ValidationRound",
    "client_result",
    "renew_uuids",
    "replace_nested",
]
