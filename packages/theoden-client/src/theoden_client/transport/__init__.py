"""Transports: how the client reaches the server (REST now; RabbitMQ in a later issue)."""

from __future__ import annotations

from theoden_client.transport.base import BlobSink, Transport, salvage_command
from theoden_client.transport.rest import API_PREFIX, RestTransport

__all__ = ["API_PREFIX", "BlobSink", "RestTransport", "Transport", "salvage_command"]
