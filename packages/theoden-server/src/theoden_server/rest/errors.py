"""One place that turns every error into a JSON `ErrorBody` with the status of the contract."""

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from theoden_protocol import ErrorBody, TheodenError

from theoden_server.errors import Unauthorized, status_of

__all__ = ["EXCEPTION_HANDLERS"]

logger = logging.getLogger("theoden.server.rest")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


def _body(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response[ErrorBody]:
    return Response(content=ErrorBody(code=code, detail=detail), status_code=status, headers=headers)


def theoden_error_handler(_: Request[Any, Any, Any], exc: TheodenError) -> Response[ErrorBody]:
    """Domain and protocol errors: their own code and the status the domain chose."""
    status = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return _body(status, exc.code, exc.detail, headers)


def _validation_detail(exc: ValidationException) -> str:
    extra = exc.extra if isinstance(exc.extra, list) else []
    messages = []
    for item in extra:
        if isinstance(item, dict):
            message = str(item.get("message", ""))
            key = item.get("key")
            source = item.get("source")
            where = f" ({source} {key})" if key and f"`$.{key}`" not in message else ""
            messages.append(f"{message}{where}")
    if messages:
        return "invalid request: " + "; ".join(messages)
    return str(exc.detail)


def http_exception_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    """Framework errors (unknown route, wrong method, body too large, invalid body) in our format."""
    status = exc.status_code
    if status >= 500:
        logger.error("HTTP %s: %s", status, exc.detail)
    detail = _validation_detail(exc) if isinstance(exc, ValidationException) else str(exc.detail)
    if status == 413:
        detail = f"{detail}: the body is larger than this route accepts"
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _body(status, _CODES.get(status, "http_error"), detail, headers)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """Anything unexpected: log it with its traceback, answer 500 without internals."""
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _body(500, "internal_error", "the server failed to handle this request; the error was logged")


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    TheodenError: theoden_error_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
