"""Server plugin for `timeline.py` (not a figure): time the server's steps of a round.

Imported by the zero-training plan when ``BENCH_SERVER_TRACE`` names a file; wraps the REST fast path's
handlers, the per-client result processing, distribution start, the aggregation and the global model
update with timers and appends one JSON line per span (``CLOCK_MONOTONIC``, comparable across processes).
"""

from __future__ import annotations

import os
import time
from functools import wraps
from typing import Any

from spans import SpanFile
from theoden_server.operations.actions import Aggregation
from theoden_server.operations.distributions import ClosedDistribution
from theoden_server.rest import fastpath
from theoden_server.server import Server

SPANS = SpanFile(os.environ["BENCH_SERVER_TRACE"], "server")
_record = SPANS.record
_sync = SPANS.timed


def _async(kind: str, fn: Any) -> Any:
    @wraps(fn)
    async def wrapper(self: Any, scope: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return await fn(self, scope, *args, **kwargs)
        finally:
            _record(kind, t0, time.monotonic(), path=scope["path"][-12:])

    return wrapper


fastpath.FastPath._post = _async("http:post", fastpath.FastPath._post)  # type: ignore[method-assign]
fastpath.FastPath._upload = _async("http:put", fastpath.FastPath._upload)  # type: ignore[method-assign]
fastpath.FastPath._download = _async("http:get", fastpath.FastPath._download)  # type: ignore[method-assign]
ClosedDistribution._process_result = _sync(  # type: ignore[method-assign]
    "ops:result", ClosedDistribution._process_result, lambda self, server, client, response: {"client": client}
)
ClosedDistribution.start = _sync("ops:dist_start", ClosedDistribution.start)  # type: ignore[method-assign]
Aggregation.perform = _sync("ops:aggregate", Aggregation.perform)  # type: ignore[method-assign]
Server.set_global_model = _sync("ops:set_global", Server.set_global_model)  # type: ignore[method-assign]
Server.process_status_update = _sync(  # type: ignore[method-assign]
    "core:status", Server.process_status_update, lambda self, update, client: {"status": update.status.value}
)
