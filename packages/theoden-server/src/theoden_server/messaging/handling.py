"""What to do with one broker message: authenticate, decode, call the server, and decide ack / reject / park.

Kept free of pika so every rule can be tested without a broker:

* The client's identity is the broker-validated ``user_id`` property (RabbitMQ refuses a
  ``user_id`` that differs from the connection's user). A message without one is rejected.
* Undecodable bodies are rejected (dead-lettered), never retried.
* A request whose body names another client, or any other refusal of the server, is answered
  with an `ErrorResponse` (e.g. ``forbidden``, 403) and acknowledged: it was processed.
* An unexpected failure is retried once by redelivery, then dead-lettered with a 500 answer.
* An empty pull that may wait is parked (see `PullParking`) and acknowledged.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from theoden_protocol import (
    BlobChunkGet,
    BlobDownload,
    CommandResponse,
    ErrorResponse,
    PullCommand,
    ServerRequest,
    ServerResponse,
    StatusUpdate,
    TheodenError,
    codec,
)

from theoden_server.errors import Forbidden, ProtocolError, status_of
from theoden_server.security import USER_NAME_PATTERN

if TYPE_CHECKING:
    from theoden_server.server import Server

__all__ = ["Delivery", "Disposition", "Outcome", "RequestProcessor"]

logger = logging.getLogger("theoden.server.amqp")


class Disposition(enum.Enum):
    """What happens to a message after it was handled."""

    ACK = "ack"
    """Processed: acknowledge (after the reply, if any, was published)."""
    REJECT = "reject"
    """Poison: ``basic_nack(requeue=False)``, so it is dead-lettered."""
    REQUEUE = "requeue"
    """Failed unexpectedly the first time: ``basic_nack(requeue=True)`` for one more try."""
    PARK = "park"
    """An empty pull that may wait: acknowledge and answer later."""


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """The parts of a broker message the handler looks at."""

    body: bytes
    user_id: str | None
    reply_to: str | None = None
    correlation_id: str | None = None
    redelivered: bool = False


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The handler's verdict on one message."""

    disposition: Disposition
    reply: ServerResponse | None = None
    reason: str = ""
    client: str | None = None
    pull: PullCommand | None = None
    deadline: float = 0.0
    generation: int = 0


def error_response(exc: TheodenError) -> ErrorResponse:
    """The wire answer to a refused request."""
    return ErrorResponse(code=exc.code, detail=exc.detail, status=status_of(exc))


class RequestProcessor:
    """Turns deliveries into calls of `Server.process_server_request` / `Server.process_status_update`.

    Args:
        server: The server core.
        server_user: The broker user the server connects as; it is not a client.
        admin_users: Broker users that may read any blob (operators' tools); they are not clients either.
        max_wait: Longest a pull is held (caps each pull's ``wait``); default the server's ``max_wait``.
        generation: Returns a client's long-poll generation (see `PullParking.generation`).
        clock: Monotonic clock.
    """

    def __init__(
        self,
        server: Server,
        *,
        server_user: str | None,
        admin_users: Collection[str] = (),
        max_wait: float | None = None,
        generation: Callable[[str], int] = lambda client: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.server_user = server_user
        self.admin_users = frozenset(admin_users)
        self.max_wait = server.max_wait if max_wait is None else max_wait
        self._generation = generation
        self._clock = clock

    def handle(self, delivery: Delivery) -> Outcome:
        """Authenticate, decode and process one message; never raises."""
        user = delivery.user_id
        if not user:
            return Outcome(
                disposition=Disposition.REJECT,
                reason="no user_id property: clients must set user_id to their broker user name",
            )
        if not USER_NAME_PATTERN.fullmatch(user):
            return Outcome(disposition=Disposition.REJECT, reason=f"user_id {user[:80]!r} is not a valid client name")
        try:
            request = codec.decode_request(delivery.body, "msgpack")
        except ProtocolError as exc:
            return Outcome(
                disposition=Disposition.REJECT, client=user, reason=f"undecodable message from {user}: {exc.detail}"
            )
        try:
            return self._process(request, user)
        except TheodenError as exc:
            logger.info("refused %s from %s: %s", type(request).__name__, user, exc.detail)
            return Outcome(disposition=Disposition.ACK, reply=error_response(exc), client=user)
        except Exception as exc:
            if delivery.redelivered:
                logger.exception("%s from %s failed twice; dead-lettering it", type(request).__name__, user)
                return Outcome(
                    disposition=Disposition.REJECT,
                    client=user,
                    reason=f"{type(request).__name__} failed twice: {type(exc).__name__}: {exc}",
                    reply=ErrorResponse(
                        code="internal_error",
                        detail="the server failed to handle this request; the error was logged",
                        status=500,
                    ),
                )
            logger.warning(
                "%s from %s failed (%s: %s); retrying once", type(request).__name__, user, type(exc).__name__, exc
            )
            return Outcome(disposition=Disposition.REQUEUE, client=user, reason=str(exc))

    def _process(self, request: ServerRequest, user: str) -> Outcome:
        if user == self.server_user or user in self.admin_users:
            if not isinstance(request, BlobDownload | BlobChunkGet):
                raise Forbidden(
                    f"broker user {user!r} is the server's own (or an admin), not a client; it may only read blobs"
                )
            response = self.server.process_server_request(request, user, is_admin=True)
            return Outcome(disposition=Disposition.ACK, reply=response, client=user)
        if isinstance(request, StatusUpdate):
            return Outcome(
                disposition=Disposition.ACK, reply=self.server.process_status_update(request, user), client=user
            )
        if isinstance(request, PullCommand):
            wait = min(request.wait, self.max_wait)
            return self.poll(request, user, deadline=self._clock() + wait)
        return Outcome(
            disposition=Disposition.ACK, reply=self.server.process_server_request(request, user), client=user
        )

    def poll(self, request: PullCommand, user: str, *, deadline: float) -> Outcome:
        """Ask for a command; park the pull if there is none and its deadline is still ahead.

        Raises:
            TheodenError: The server refused the pull (e.g. it names another client).
        """
        generation = self._generation(user)
        response = self.server.process_server_request(request, user)
        if isinstance(response, CommandResponse) and response.command is None and deadline > self._clock():
            return Outcome(
                disposition=Disposition.PARK, client=user, pull=request, deadline=deadline, generation=generation
            )
        return Outcome(disposition=Disposition.ACK, reply=response, client=user)

    def repoll(self, request: PullCommand, user: str, *, deadline: float) -> Outcome:
        """Check a parked pull again (after a notification or its deadline); never raises."""
        try:
            if deadline <= self._clock():
                response = self.server.process_server_request(request, user)
                return Outcome(disposition=Disposition.ACK, reply=response, client=user)
            return self.poll(request, user, deadline=deadline)
        except TheodenError as exc:
            return Outcome(disposition=Disposition.ACK, reply=error_response(exc), client=user)
        except Exception:
            logger.exception("re-checking a pull of %s failed", user)
            return Outcome(
                disposition=Disposition.ACK,
                client=user,
                reply=ErrorResponse(code="internal_error", detail="the server failed to handle this pull", status=500),
            )
