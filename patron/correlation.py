"""Correlation id: one id per request or message, carried in a context variable.

Components set it for the work they run (per HTTP request, per RPC, per message) so that log
records and outgoing client calls pick it up without passing arguments. It travels between
services in the ``X-Correlation-Id`` header (HTTP, Kafka, AMQP) or message attribute (SQS) and
in the ``x-correlation-id`` gRPC metadata key.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Iterator

__all__ = [
    "HEADER",
    "correlation_id",
    "current",
    "ensure",
    "new",
]

HEADER = "X-Correlation-Id"
MAX_LENGTH = 128

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "patron_correlation_id", default=None
)


def new() -> str:
    """A fresh correlation id (UUID4 text)."""
    return str(uuid.uuid4())


def _is_sane(value: str) -> bool:
    # Visible ASCII only: the id is echoed into headers and logs, so no spaces, controls or
    # non-ASCII that could split a header or forge a log line.
    return 0 < len(value) <= MAX_LENGTH and all("!" <= ch <= "~" for ch in value)


def ensure(value: str | bytes | None) -> str:
    """``value`` when it is a sane id (1 to 128 visible ASCII characters), else a new UUID4."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return new()
    if value and _is_sane(value):
        return value
    return new()


def current() -> str | None:
    """The correlation id of the work running in this context, if any."""
    return _current.get()


@contextlib.contextmanager
def correlation_id(value: str) -> Iterator[str]:
    """Make ``value`` the current correlation id for the ``with`` block."""
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)
