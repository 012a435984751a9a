"""The user command, shared by server and clients: ``data_statistics`` (protocol only, no torch).

Both sides import this module: the server's plan to send the command, each client through its
executor plugin (``stats_executor``) so its decoder accepts it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from theoden_protocol import Command, register


@register
class DataStatistics(Command, tag="data_statistics", kw_only=True, frozen=True):
    """Report the mean and standard deviation of every feature of the data set held under ``key``.

    Only summary statistics leave the site, never samples: with them the server computes the
    federation's normalisation constants.
    """

    key: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = "dataset"
    max_features: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
