"""What the AMQP consumer and publisher share: connection settings and error texts.

Nothing here opens a connection or keeps state; every function runs in its caller's thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pika
from pika import exceptions as pika_errors
from pika.adapters.utils.connection_workflow import AMQPConnectorException

__all__ = ["CONNECT_ERRORS", "Stalled", "cut_off", "describe", "is_refused_login", "parameters",
           "redact"]

#: what opening a ``BlockingConnection`` raises when the broker cannot be had: an AMQP handshake
#: that got no answer (``AMQPConnectorStackTimeout``) is no ``AMQPError``
CONNECT_ERRORS = (pika_errors.AMQPError, AMQPConnectorException, OSError)

# pika logs each connection's opening and closing at INFO and each failed attempt as several
# ERROR lines with a traceback; every failure also reaches patron as an exception, which it
# logs once, clearly. So pika stays quiet unless the application set a level for it.
_pika_logger = logging.getLogger("pika")
if _pika_logger.level == logging.NOTSET:
    _pika_logger.setLevel(logging.CRITICAL)


class Stalled(pika_errors.AMQPConnectionError):
    """The connection was dropped because a call on it was still waiting at its deadline."""


@contextlib.contextmanager
def cut_off(connection: Any, seconds: float) -> Iterator[None]:
    """Drop ``connection`` (a ``BlockingConnection``) if the block still waits on it after
    ``seconds``: the call waiting then raises :class:`Stalled`.

    pika's blocking calls take no timeout. Its blocking adapter runs timers only inside its own
    I/O loop, which is where a call waiting for the broker waits; the timer ends the wait the
    way a missed heartbeat would. Runs in the connection's thread, like every use of it.
    """
    impl = connection._impl
    timer = impl._adapter_call_later(max(0.0, seconds),
                                     lambda: impl._terminate_stream(Stalled()))
    try:
        yield
    finally:
        impl._adapter_remove_timeout(timer)


def is_refused_login(exc: BaseException) -> bool:
    """Whether opening a connection failed because the broker refused the login (wrong user or
    password) or the virtual host (unknown, or not permitted to the user); a virtual host that
    is merely down on the node (it restarts) is not."""
    if isinstance(exc, pika_errors.ProbableAuthenticationError):
        return True
    return isinstance(exc, pika_errors.ProbableAccessDeniedError) and "is down" not in str(exc)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for logs and error messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def parameters(
    url: str,
    *,
    heartbeat: int,
    connect_timeout: float,
    connection_name: str,
) -> pika.URLParameters:
    """pika connection parameters for ``url``; raises ``ValueError`` naming what is wrong.

    One connection attempt per call (the caller owns the retry policy); ``connection_name``
    is shown by the broker's management tools (``rabbitmqctl list_connections
    client_properties``).
    """
    if not isinstance(url, str) or not url.startswith(("amqp://", "amqps://")):
        raise ValueError(f"an AMQP URL starts with amqp:// or amqps://, not {redact(str(url))!r}")
    if heartbeat < 0:
        raise ValueError(f"heartbeat must be >= 0 s (0 turns heartbeats off), not {heartbeat}")
    if connect_timeout <= 0:
        raise ValueError(f"connect_timeout must be positive, not {connect_timeout}")
    try:
        params = pika.URLParameters(url)
        params.heartbeat = math.ceil(heartbeat)  # pika takes whole seconds
        params.socket_timeout = connect_timeout
        params.stack_timeout = connect_timeout
        params.connection_attempts = 1
        params.retry_delay = 0
        params.client_properties = {"connection_name": connection_name}
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid AMQP URL {redact(url)}: {exc}") from None
    return params


def describe(exc: BaseException) -> str:
    """A one-line, operator-friendly text for a pika (or socket) error."""
    if isinstance(exc, pika_errors.ProbableAuthenticationError):
        return f"authentication refused (wrong user or password?): {_first(exc)}"
    if isinstance(exc, pika_errors.ProbableAccessDeniedError):
        return f"access denied (unknown virtual host or no permission?): {_first(exc)}"
    if isinstance(exc, (pika_errors.ConnectionClosed, pika_errors.ChannelClosed)):
        kind = "connection" if isinstance(exc, pika_errors.ConnectionClosed) else "channel"
        by = "by the broker" if isinstance(
            exc, (pika_errors.ConnectionClosedByBroker, pika_errors.ChannelClosedByBroker)
        ) else ""
        return f"{kind} closed {by}: {exc.reply_code} {exc.reply_text}".replace("  ", " ")
    inner = _cause(exc)
    if inner is not None:
        return describe(inner)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _cause(exc: BaseException) -> BaseException | None:
    """The error pika wrapped in ``exc``, if any: connection failures come as
    ``AMQPConnectionError(AMQPConnectorSocketConnectError(exception=ConnectionRefusedError))``."""
    inner = getattr(exc, "exception", None)  # pika's connector errors keep it there
    if isinstance(inner, BaseException):
        return inner
    if isinstance(exc, pika_errors.AMQPConnectionError) and exc.args:
        first = exc.args[0]
        if isinstance(first, BaseException):
            return first
    return None


def _first(exc: BaseException) -> Any:
    return exc.args[0] if exc.args else exc
