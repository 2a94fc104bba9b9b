"""The AMQP publisher: publish with publisher confirms, correlation id and trace context.

Threads
    One :class:`AMQPPublisher` owns one pika ``BlockingConnection``, which is not thread-safe;
    a lock serialises every use of it, so :meth:`AMQPPublisher.publish` may be called from
    any number of threads (one publish at a time goes over the connection; give each busy
    thread its own publisher when that is too slow). Everything runs in the calling thread:
    the connection has no thread of its own.

Timeouts
    Every publish is done within ``publish_timeout``, waiting for the lock and opening the
    connection included (``connect_timeout`` bounds each connection attempt too): a publish
    the broker does not answer (a memory or disk alarm blocks publishers, a broker that stopped
    responding) is cut off at its deadline by dropping the connection, and publishes queued
    behind it give up at their own deadlines. The next publish opens a new connection. A publish
    cut off this way may still reach its queue (the broker may have read it before the
    connection dropped): publishing it again may make a duplicate, as with any at-least-once
    retry.

Confirms and reconnection
    With ``confirms`` on (the default) :meth:`publish` returns once the broker has taken
    responsibility for the message (``basic.ack``), and raises :class:`PublishError` when it
    refused it (``basic.nack``), returned it (``mandatory`` and no queue bound) or the exchange
    does not exist. The connection is opened on first use. Before each publish pending I/O is
    processed, so a connection the broker closed meanwhile (restart, ``rabbitmqctl
    close_connection``, missed heartbeats while idle) is noticed and reopened first. When the
    connection breaks *during* a publish, whether the broker got the message is unknown: it is
    published once more on a new connection (at-least-once: a duplicate is possible), and a
    second failure raises :class:`PublishError`.

Metrics
    ``client_amqp_publish_duration_seconds{exchange, success}``: one observation per publish.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pika
from pika import exceptions as pika_errors

from patron import messaging, metrics
from patron.amqp._client import CONNECT_ERRORS, Stalled, cut_off, describe, parameters, redact
from patron.messaging._options import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PUBLISH_TIMEOUT
from patron.messaging._publisher import Publisher

__all__ = ["AMQPPublisher", "PublishError"]

logger = logging.getLogger("patron.amqp")

_PUBLISH_DURATION = metrics.histogram(
    "client_amqp_publish_duration_seconds",
    "Time to publish an AMQP message (including the broker's confirm)",
    ["exchange", "success"],
)

_PERSISTENT = 2  # AMQP delivery-mode: written to disk by durable queues

T = TypeVar("T")


class PublishError(messaging.PublishError):
    """The message was not published (or its confirm never came); ``str()`` says why."""


class AMQPPublisher(Publisher):
    """Publishes messages to the broker at ``url`` over one connection of its own.

    ``confirms`` turns on publisher confirms (see the module docstring). ``heartbeat`` (s)
    is negotiated with the broker; an idle publisher does no I/O, so the broker may drop its
    connection after about that long, and the next publish reconnects first.
    ``connect_timeout`` bounds opening the connection, ``publish_timeout`` each publish.
    ``connection_name`` is what the broker shows for the connection.

    Safe to call from several threads (a lock serialises publishes); :meth:`close` (or
    ``with``) closes the connection.
    """

    transport = "amqp"

    def __init__(
        self,
        url: str,
        *,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        confirms: bool = True,
        heartbeat: int = 60,
        connection_name: str | None = None,
    ) -> None:
        super().__init__(publish_timeout=publish_timeout, connect_timeout=connect_timeout)
        self.url = redact(url)
        self.confirms = confirms
        self._params = parameters(
            url,
            heartbeat=heartbeat,
            connect_timeout=connect_timeout,
            connection_name=connection_name or f"patron-publisher-{uuid.uuid4().hex[:8]}",
        )
        self._lock = threading.Lock()
        self._connection: Any = None
        self._channel: Any = None

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        properties: pika.BasicProperties | None = None,
        mandatory: bool = False,
        persistent: bool = True,
    ) -> None:
        """Publish ``body`` to ``exchange`` ("" is the default exchange, where ``routing_key``
        names the queue) and wait for the broker's confirm.

        ``headers`` are added to ``properties.headers``, then ``X-Correlation-Id`` and the trace
        context of a ``"{exchange} publish"`` span (``"{routing_key} publish"`` on the default
        exchange), unless the headers carry them. ``timestamp`` is set to now and
        ``delivery_mode`` to persistent (unless ``persistent`` is false) when ``properties``
        leaves them unset. ``mandatory`` makes a message that no queue receives an error
        instead of a silent drop.

        Raises :class:`PublishError`; ``TypeError`` when ``body`` is not bytes.
        """
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"the body must be bytes, not {type(body).__name__}")
        deadline = self._deadline()
        props = _properties(properties, headers, persistent)
        started = time.perf_counter()
        success = False
        try:
            with self._span(exchange or routing_key) as scope:
                scope.span.set_tag("exchange", exchange)
                scope.span.set_tag("routing_key", routing_key)
                props.headers.update(self._context(props.headers))
                if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise PublishError(
                        f"publishing to exchange {exchange!r} timed out after "
                        f"{self.publish_timeout:g}s waiting for other publishes to finish"
                    )
                try:
                    self._publish(exchange, routing_key, bytes(body), props, mandatory, deadline)
                finally:
                    self._lock.release()
            success = True
        finally:
            _PUBLISH_DURATION.labels(exchange, "true" if success else "false").observe(
                time.perf_counter() - started
            )

    def close(self) -> None:
        """Close the connection; a later publish opens a new one. Never raises."""
        with self._lock:
            self._reset(close=True)

    # -- under the lock ----------------------------------------------------------------------

    def _publish(
        self, exchange: str, routing_key: str, body: bytes, props: pika.BasicProperties,
        mandatory: bool, deadline: float,
    ) -> None:
        for attempt in (1, 2):
            try:
                channel = self._ensure_channel(deadline)
                self._bounded(deadline, functools.partial(
                    channel.basic_publish, exchange, routing_key, body, props,
                    mandatory=mandatory))
                return
            except pika_errors.UnroutableError:
                raise PublishError(
                    f"message to exchange {exchange!r} with routing key {routing_key!r} was "
                    "returned: no queue is bound for it"
                ) from None
            except pika_errors.NackError:
                raise PublishError(
                    f"the broker refused (nacked) the message to exchange {exchange!r}"
                ) from None
            except pika_errors.ChannelClosedByBroker as exc:
                self._channel = None  # the connection is fine; the next publish opens a channel
                raise PublishError(
                    f"cannot publish to exchange {exchange!r}: {describe(exc)}"
                ) from exc
            except Stalled:
                self._reset(close=True)
                raise PublishError(
                    f"publishing to exchange {exchange!r} timed out after "
                    f"{self.publish_timeout:g}s; the connection to {self.url} was dropped"
                ) from None
            except (pika_errors.AMQPConnectionError, pika_errors.ChannelWrongStateError,
                    pika_errors.ChannelClosed, OSError) as exc:
                self._reset(close=True)
                if attempt == 2 or time.monotonic() >= deadline:
                    raise PublishError(
                        f"publishing to exchange {exchange!r} failed, the connection to "
                        f"{self.url} broke: {describe(exc)}"
                    ) from exc
                logger.warning("amqp publisher: connection to %s broke during a publish (%s); "
                               "publishing again on a new connection", self.url, describe(exc))

    def _bounded(self, deadline: float, call: Callable[[], T]) -> T:
        """Run ``call`` on the connection, dropping the connection if it is still running at
        ``deadline``; ``call`` then raises :class:`Stalled`."""
        left = deadline - time.monotonic()
        if left <= 0:  # nothing was sent: the connection stays as it is
            raise PublishError(f"publishing timed out after {self.publish_timeout:g}s")
        with cut_off(self._connection, left):
            return call()

    def _ensure_channel(self, deadline: float) -> Any:
        """The channel to publish on, opened (with its connection) when needed, by
        ``deadline``; raises :class:`PublishError`, or :class:`Stalled` at the deadline."""
        if self._connection is not None:
            try:
                # Reads whatever the broker sent while we were idle: a Connection.Close raises
                # here, before anything is written, so the message goes out on a new connection.
                self._connection.process_data_events(time_limit=0)
            except Exception as exc:
                logger.info("amqp publisher: connection to %s was closed (%s); reconnecting",
                            self.url, describe(exc))
                self._reset(close=True)
        if self._connection is None or not self._connection.is_open:
            self._reset(close=True)
            left = deadline - time.monotonic()
            if left <= 0:
                raise PublishError(f"publishing timed out after {self.publish_timeout:g}s")
            # connect_timeout bounds the attempt, and so does what is left of the publish's time.
            self._params.socket_timeout = self._params.stack_timeout = min(
                self.connect_timeout, left)
            try:
                self._connection = pika.BlockingConnection(self._params)
            except CONNECT_ERRORS as exc:
                raise PublishError(f"cannot connect to {self.url}: {describe(exc)}") from exc
        if self._channel is None or not self._channel.is_open:
            try:
                channel = self._bounded(deadline, self._open_channel)
            except Stalled:
                raise
            except (pika_errors.AMQPError, OSError) as exc:
                self._reset(close=True)
                raise PublishError(
                    f"cannot open a channel on {self.url}: {describe(exc)}"
                ) from exc
            self._channel = channel
        return self._channel

    def _open_channel(self) -> Any:
        channel = self._connection.channel()
        if self.confirms:
            channel.confirm_delivery()
        return channel

    def _reset(self, close: bool) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if close and connection is not None:
            try:
                if connection.is_open:
                    connection.close()
            except Exception as exc:
                logger.debug("amqp publisher: closing the connection: %s", describe(exc))


def _properties(
    given: pika.BasicProperties | None, headers: Mapping[str, Any] | None, persistent: bool
) -> pika.BasicProperties:
    """A copy of ``given`` with the headers, timestamp and delivery mode."""
    props = pika.BasicProperties()
    if given is not None:
        props.__dict__.update(given.__dict__)
    merged: dict[str, Any] = dict(props.headers or {})
    merged.update(headers or {})
    props.headers = merged
    if props.timestamp is None:
        props.timestamp = int(time.time())
    if props.delivery_mode is None and persistent:
        props.delivery_mode = _PERSISTENT
    return props
