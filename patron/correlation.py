"""Correlation id: one id per request or message, carried in a context variable.

Components set it for the work they run (per HTTP request, per RPC, per message) so that log
records and outgoing client calls pick it up without passing arguments. It travels between
services in the ``X-Correlation-Id`` header (HTTP, Kafka, AMQP) or message attribute (SQS) and
in the ``x-correlation-id`` gRPC metadata key.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
from collections.abc import Iterator

__all__ = [
    "HEADER",
    "bind",
    "correlation_id",
    "current",
    "ensure",
    "new",
    "outgoing",
    "unbind",
]

HEADER = "X-Correlation-Id"
MAX_LENGTH = 128

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "patron_correlation_id", default=None
)


_VERSION_4 = 0x4 << 76
_VARIANT_RFC4122 = 0x2 << 62
_VERSION_AND_VARIANT_MASK = ~((0xF << 76) | (0x3 << 62))


def new() -> str:
    """A fresh correlation id: the text of a random (version 4) UUID.

    It identifies, it does not protect, so it comes from the fast pseudo-random generator
    rather than ``os.urandom``: one is made for every request that arrives without one.
    """
    n = (random.getrandbits(128) & _VERSION_AND_VARIANT_MASK) | _VERSION_4 | _VARIANT_RFC4122
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _is_sane(value: str) -> bool:
    # Visible ASCII only: the id is echoed into headers and logs, so no spaces, controls or
    # non-ASCII that could split a header or forge a log line.
    return (
        0 < len(value) <= MAX_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


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


def outgoing() -> str:
    """The id a client sends: the current one, or a new one outside any request or message."""
    return _current.get() or new()


def bind(value: str) -> contextvars.Token[str | None]:
    """Make ``value`` the current id until :func:`unbind` is called with the returned token.

    The low-level form of :func:`correlation_id`, for code that cannot wrap its work in a
    ``with`` block (a WSGI body closed later, a message settled later).
    """
    return _current.set(value)


def unbind(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)


@contextlib.contextmanager
def correlation_id(value: str) -> Iterator[str]:
    """Make ``value`` the current correlation id for the ``with`` block."""
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)
