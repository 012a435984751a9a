"""Client plugin (``--plugin distinct_uploads``): every client uploads different weights.

With zero training steps every client would upload the global model unchanged, so the server's
content-addressed store keeps one blob for all of them. This plugin nudges one weight by a per-process
amount before each upload (what any training step does, at no cost), so each upload is its own blob:
the case of a real run.
"""

from __future__ import annotations

import os

import torch
from theoden_client.executors import EXECUTORS
from theoden_protocol import SendModel
from torch import nn

_tag = SendModel.__struct_config__.tag
_original = EXECUTORS._handlers[_tag]
_nudge = 1e-3 * (1 + os.getpid() % 9973)


def _send_distinct(command, ctx):  # type: ignore[no-untyped-def]
    model = ctx.resources.get(command.model_key, nn.Module)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += _nudge
    return _original(command, ctx)


EXECUTORS.register(SendModel, _send_distinct, override=True)
