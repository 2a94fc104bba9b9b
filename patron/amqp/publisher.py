"""The AMQP publisher client: publish with publisher confirms, correlation id and trace context.

Threads
    One :class:`AMQPPublisher` owns one pika ``BlockingConnection``, which is not thread-safe;
    a lock serialises every use of it, so :meth:`AMQPPublisher.publish` may be called from
    any number of threads (one publish at a time goes over the connection; give each busy
    thread its own publisher when that is too slow). Everything runs in the calling thread:
    the connection has no thread of its own.

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
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import pika
from pika import exceptions as pika_errors

from patron import correlation, messaging, metrics, tracing
from patron.amqp._connection import describe, parameters, redact

__all__ = ["AMQPPublisher", "PublishError"]

logger = logging.getLogger("patron.amqp")

_PUBLISH_DURATION = metrics.histogram(
    "client_amqp_publish_duration_seconds",
    "Time to publish an AMQP message (including the broker's confirm)",
    ["exchange", "success"],
)

_PERSISTENT = 2  # AMQP delivery-mode: written to disk by durable queues


class PublishError(messaging.PublishError):
    """The message was not published (or its confirm never came); ``str()`` says why."""


class AMQPPublisher:
    """Publishes messages to the broker at ``url`` over one connection of its own.

    ``confirms`` turns on publisher confirms (see the module docstring). ``heartbeat`` (s)
    is negotiated with the broker; an idle publisher does no I/O, so the broker may drop its
    connection after about that long, and the next publish reconnects first.
    ``connect_timeout`` bounds opening the connection; ``publish_timeout`` bounds how long a
    publish may stay blocked by the broker's flow control (a memory or disk alarm) before the
    connection is dropped. ``connection_name`` is what the broker shows for the connection.

    Safe to call from several threads (a lock serialises publishes); :meth:`close` (or
    ``with``) closes the connection.
    """

    def __init__(
        self,
        url: str,
        *,
        confirms: bool = True,
        heartbeat: int = 60,
        connect_timeout: float = 10.0,
        publish_timeout: float = 30.0,
        connection_name: str | None = None,
    ) -> None:
        if publish_timeout <= 0:
            raise ValueError(f"publish_timeout must be positive, not {publish_timeout}")
        self.url = redact(url)
        self.confirms = confirms
        self._params = parameters(
            url,
            heartbeat=heartbeat,
            connect_timeout=connect_timeout,
            connection_name=connection_name or f"patron-publisher-{uuid.uuid4().hex[:8]}",
            blocked_timeout=publish_timeout,
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

        ``headers`` are added to ``properties.headers``. ``X-Correlation-Id`` is set to the
        current correlation id (a new one outside any) unless the headers carry one, and the
        trace context of a ``"{exchange} publish"`` span is injected. ``timestamp`` is set
        to now and ``delivery_mode`` to persistent (unless ``persistent`` is false) when
        ``properties`` leaves them unset. ``mandatory`` makes a message that no queue
        receives an error instead of a silent drop.

        Raises :class:`PublishError`; ``TypeError`` when ``body`` is not bytes.
        """
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"the body must be bytes, not {type(body).__name__}")
        props = _properties(properties, headers, persistent)
        started = time.perf_counter()
        success = False
        try:
            with tracing.start_span(
                f"{exchange or routing_key} publish",
                kind=tracing.tags.SPAN_KIND_PRODUCER,
                component="amqp",
            ) as scope:
                scope.span.set_tag("exchange", exchange)
                scope.span.set_tag("routing_key", routing_key)
                carrier: dict[str, str] = {}
                tracing.inject(carrier)
                props.headers.update(carrier)
                with self._lock:
                    self._publish(exchange, routing_key, bytes(body), props, mandatory)
            success = True
        finally:
            _PUBLISH_DURATION.labels(exchange, "true" if success else "false").observe(
                time.perf_counter() - started
            )

    def close(self) -> None:
        """Close the connection; a later publish opens a new one. Never raises."""
        with self._lock:
            self._reset(close=True)

    def __enter__(self) -> AMQPPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- under the lock ----------------------------------------------------------------------

    def _publish(
        self, exchange: str, routing_key: str, body: bytes, props: pika.BasicProperties,
        mandatory: bool,
    ) -> None:
        for attempt in (1, 2):
            channel = self._ensure_channel()
            try:
                channel.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)
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
            except (pika_errors.AMQPConnectionError, pika_errors.ChannelWrongStateError,
                    pika_errors.ChannelClosed, OSError) as exc:
                self._reset(close=True)
                if attempt == 2:
                    raise PublishError(
                        f"publishing to exchange {exchange!r} failed twice, the connection to "
                        f"{self.url} broke: {describe(exc)}"
                    ) from exc
                logger.warning("amqp publisher: connection to %s broke during a publish (%s); "
                               "publishing again on a new connection", self.url, describe(exc))

    def _ensure_channel(self) -> Any:
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
            try:
                self._connection = pika.BlockingConnection(self._params)
            except (pika_errors.AMQPError, OSError) as exc:
                raise PublishError(f"cannot connect to {self.url}: {describe(exc)}") from exc
        if self._channel is None or not self._channel.is_open:
            try:
                channel = self._connection.channel()
                if self.confirms:
                    channel.confirm_delivery()
            except (pika_errors.AMQPError, OSError) as exc:
                self._reset(close=True)
                raise PublishError(
                    f"cannot open a channel on {self.url}: {describe(exc)}"
                ) from exc
            self._channel = channel
        return self._channel

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
    """A copy of ``given`` with the headers, correlation id, timestamp and delivery mode."""
    props = pika.BasicProperties()
    if given is not None:
        props.__dict__.update(given.__dict__)
    merged: dict[str, Any] = dict(props.headers or {})
    merged.update(headers or {})
    if not any(name.lower() == correlation.HEADER.lower() for name in merged):
        merged[correlation.HEADER] = correlation.outgoing()
    props.headers = merged
    if props.timestamp is None:
        props.timestamp = int(time.time())
    if props.delivery_mode is None and persistent:
        props.delivery_mode = _PERSISTENT
    return props
