"""Client plugin (``--plugin client_timing``) for figure 6: time what a client spends on what.

Wraps the built-in executors of LoadWeights, Train, Validate and SendModel and the REST transport's pull,
status, download and upload with timers; appends one JSON line per timed span to ``$BENCH_CLIENT_TIMES``.
Nothing in the client changes besides the timing (the original handlers run unchanged).
"""

from __future__ import annotations

import os
import time
from functools import wraps
from typing import Any

from spans import SpanFile
from theoden_client.executors import EXECUTORS
from theoden_client.transport.base import Transport
from theoden_client.transport.rest import RestTransport
from theoden_protocol import LoadWeights, SendModel, Train, Validate

SPANS = SpanFile(os.environ.get("BENCH_CLIENT_TIMES"), os.getpid())
_record = SPANS.record
_timed = SPANS.timed


for command_type, kind in (
    (LoadWeights, "exec:load_weights"),
    (Train, "exec:train"),
    (Validate, "exec:validate"),
    (SendModel, "exec:send_model"),
):
    tag = command_type.__struct_config__.tag
    original = EXECUTORS._handlers[tag]
    EXECUTORS.register(command_type, _timed(kind, original), override=True)

Transport.pull_command = _timed("net:pull", Transport.pull_command)  # type: ignore[method-assign]
Transport.heartbeat = _timed("net:heartbeat", Transport.heartbeat)  # type: ignore[method-assign]
RestTransport.send_status = _timed("net:status", RestTransport.send_status)  # type: ignore[method-assign]
RestTransport.download_blob = _timed("net:download", RestTransport.download_blob)  # type: ignore[method-assign]
RestTransport.upload_blob = _timed("net:upload", RestTransport.upload_blob)  # type: ignore[method-assign]
RestTransport.download_bytes = _timed("net:download", RestTransport.download_bytes)  # type: ignore[method-assign]
RestTransport.upload_parts = _timed("net:upload", RestTransport.upload_parts)  # type: ignore[method-assign]


def _timed_enter(kind: str, factory: Any) -> Any:
    """Time a context manager's entry (for `download_buffer`, the download itself)."""

    @wraps(factory)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        manager = factory(*args, **kwargs)
        enter = manager.__enter__

        class Timed:
            def __enter__(self) -> Any:
                t0 = time.monotonic()
                try:
                    return enter()
                finally:
                    _record(kind, t0, time.monotonic())

            def __exit__(self, *exc: Any) -> Any:
                return manager.__exit__(*exc)

        return Timed()

    return wrapper


RestTransport.download_buffer = _timed_enter("net:download", RestTransport.download_buffer)  # type: ignore[method-assign]
