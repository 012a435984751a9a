"""Client plugin for `timeline.py`: `client_timing`'s spans plus one span per handled command."""

from __future__ import annotations

import client_timing
from theoden_client.client import Client

Client.handle = client_timing._timed("client:handle", Client.handle)  # type: ignore[method-assign]
