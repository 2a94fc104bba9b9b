"""The SQS consumer component: receive, process, delete, on boto3.

It is a :class:`patron.messaging.ConsumerLoop` driven by an SQS transport, so batching, retries,
failure strategies, spans and correlation ids work as for every patron consumer.

Threads
    With one poller (the default) everything runs in the component's thread: the receive, the
    processor, the deletes and the visibility changes. With ``pollers=N`` the component thread
    starts N poller threads (``patron-<name>-poller-<i>``), each running a loop of its own with
    a transport of its own on one shared boto3 client (clients are thread-safe; the session is
    used once, in the component thread, to make it). Each poller calls the processor from its
    own thread, so **with N pollers the processor is called concurrently from N threads** and
    must be thread-safe. The component thread waits; when one poller fails, the others are
    stopped, all are joined, and the component raises the first error.

Receiving
    Each receive asks for up to ``max_messages`` (1 to 10) messages, long-polling up to
    ``wait_time`` seconds (0 to 20; ``None``: the queue's ``ReceiveMessageWaitTimeSeconds``), with
    every message attribute and system attribute. Messages received beyond the current batch
    wait in the transport and are handed out first; their visibility timeout runs from the
    receive, so choose ``visibility_timeout`` (``None``: the queue's) longer than
    ``max_messages`` times the processing time of one message. A stop request is noticed
    between receives, so stopping can take up to ``wait_time`` seconds.

Acknowledgement (at-least-once)
    A message is deleted only after the processor returned for it (or the ``skip`` strategy
    gave up on it). Deletes are batched with ``DeleteMessageBatch``: processed messages are
    deleted once the messages received with them were all handed out and settled, or 10
    deletes wait, or (checked as each batch is settled) the oldest has waited a second, and
    always before the transport closes. A delete the service refuses for the message itself
    (its receipt handle expired: it is being delivered again) is logged as an error; any other
    failed delete is kept and retried with the next batch, and a delete call that fails as a
    whole is a connection failure (the loop retries; the deletes are tried again as it closes
    and with the next batch).

    ``nack()``, and the ``nack`` strategy, set the message's visibility timeout to
    ``nack_delay`` seconds (0: visible again at once); ``nack(requeue=False)`` leaves it
    invisible until its visibility timeout runs out. A queue with a redrive policy moves a
    message to its dead-letter queue after ``maxReceiveCount`` receives, nacked or not.

Stop
    The batch in hand is finished, what was processed is deleted, and every message received
    but not processed is made visible again at once (visibility timeout 0), so another
    consumer gets it without waiting for its timeout. Processed messages whose delete could not
    be confirmed by then are logged: they will be delivered again.

Readiness
    ``ready()`` is true once the queue was resolved and while the last receive succeeded (of
    every poller).

Metrics
    ``component_sqs_message_counter{queue, state, hasError}`` counts messages ``FETCHED``
    (received), ``ACK`` (deleted) and ``NACK`` (given back); ``hasError`` is true when the
    processor failed on it (``skip`` or ``nack`` strategy) or the delete / visibility change
    failed. ``component_sqs_message_age{queue}`` is the age in seconds, from ``SentTimestamp``
    (milliseconds), of the oldest message of the latest receive. ``component_sqs_queue_size
    {queue, state}`` holds the approximate numbers of ``available``, ``delayed`` and
    ``invisible`` messages, read with ``GetQueueAttributes`` every ``stats_interval`` seconds
    (the first time one interval after the start) from the (first) poller's thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.config import Config as BotoConfig

from patron import metrics
from patron.messaging import (
    Batch,
    ConnectionRetry,
    ConsumerLoop,
    FailureStrategy,
    Message,
    MessageState,
    PermanentError,
    Processor,
    Retry,
)
from patron.sqs import _client

__all__ = ["SQSConsumer", "SQSMessage"]

logger = logging.getLogger("patron.sqs")

_MESSAGE_COUNTER = metrics.counter(
    "component_sqs_message_counter",
    "SQS messages by state (FETCHED, ACK, NACK) and whether an error came with them",
    ["queue", "state", "hasError"],
)
_MESSAGE_AGE = metrics.gauge(
    "component_sqs_message_age",
    "Age in seconds of the oldest message of the latest receive, from its SentTimestamp",
    ["queue"],
)
_QUEUE_SIZE = metrics.gauge(
    "component_sqs_queue_size",
    "Approximate number of messages in the queue, by state (available, delayed, invisible)",
    ["queue", "state"],
)

#: what the loop asks of a fetch that starts a batch: SQS's longest wait; fetch() waits the
#: configured wait_time within it
_POLL_TIMEOUT = 20.0
#: pause after an empty short poll (wait_time 0), so an idle queue is not polled in a hot loop
_SHORT_POLL_PAUSE = 0.5
#: a processed message waits at most this long (in seconds) for its batched delete
_DELETE_LINGER = 1.0
_BATCH_MAX = 10  # entries per DeleteMessageBatch / ChangeMessageVisibilityBatch
_NO_ATTRIBUTES: Mapping[str, str] = {}
_STATS_ATTRIBUTES = {
    "ApproximateNumberOfMessages": "available",
    "ApproximateNumberOfMessagesDelayed": "delayed",
    "ApproximateNumberOfMessagesNotVisible": "invisible",
}


class SQSMessage(Message):
    """A received SQS message; ``raw`` is the message as boto3 returned it.

    ``body`` is the message body encoded as UTF-8; ``headers`` are the message attributes:
    ``String`` (and ``String.*``) values as ``str``, ``Binary`` ones as ``bytes``, ``Number``
    ones as ``int`` when integral, else ``float`` (``raw["MessageAttributes"]`` keeps SQS's
    exact text and data types). ``attributes`` are the system attributes (``SentTimestamp``,
    ``ApproximateReceiveCount``, ``MessageGroupId``...), ``receive_count`` the number of
    receives so far, ``timestamp`` the send time in seconds since the epoch. All of them are
    read from ``raw`` when first asked for.
    """

    transport = "sqs"

    def __init__(self, raw: Mapping[str, Any], queue: str) -> None:  # the defaults are enough
        self.raw = raw
        self.source = queue
        self.receipt_handle: str = raw["ReceiptHandle"]

    @property
    def body(self) -> bytes:
        body = self._body
        if not body:
            body = self._body = self.raw.get("Body", "").encode("utf-8")
        return body

    @property
    def timestamp(self) -> float | None:
        sent = self.attributes.get("SentTimestamp")
        return int(sent) / 1000 if sent else None  # SQS sends milliseconds

    @property
    def message_id(self) -> str:
        return str(self.raw.get("MessageId", ""))

    @property
    def attributes(self) -> Mapping[str, str]:
        return self.raw.get("Attributes") or _NO_ATTRIBUTES

    @property
    def receive_count(self) -> int:
        return int(self.attributes.get("ApproximateReceiveCount", 1))

    def _load_headers(self) -> Mapping[str, Any]:
        headers: dict[str, Any] = {}
        for name, attribute in (self.raw.get("MessageAttributes") or {}).items():
            data_type = attribute.get("DataType", "String")
            if data_type.startswith("Binary"):
                headers[name] = attribute.get("BinaryValue", b"")
            elif data_type.startswith("Number"):
                headers[name] = _number(attribute.get("StringValue", ""))
            else:
                headers[name] = attribute.get("StringValue", "")
        return headers


def _number(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


class SQSConsumer:
    """A component consuming SQS queue ``queue`` (a name, resolved at start, or a queue URL).

    ``processor`` gets a :class:`patron.messaging.Batch` of up to ``batch_size``
    :class:`SQSMessage` objects, waiting at most ``batch_timeout`` s for a batch to fill.
    ``failure`` is ``exit``, ``skip`` or ``nack``; ``processing_retry`` retries a failing batch
    before the strategy applies. ``retries`` / ``retry_wait`` are the receive retries: after a
    failed call (receive, delete) what was received and not processed is given back and
    receiving starts again ``retry_wait`` s later, at most ``retries`` times in a row, before
    the component fails with :class:`patron.messaging.TransportError`. A queue that does not
    exist (at the start or later), credentials refused before the first receive, no region or
    a malformed endpoint fail the component at once with
    :class:`patron.messaging.PermanentError`.

    The client: ``client`` (a boto3 SQS client, used as is), else one made from ``session``
    (a ``boto3.session.Session``) or from a new session, which reads the usual AWS
    configuration (``AWS_*`` variables, profiles, instance roles), with ``endpoint_url`` and
    ``region`` when given. A client made here does not retry by itself (the receive retries
    above are the one retry policy) and gives up connecting after 5 s. ``owner_account``
    names the account owning a queue given by name.

    See the module docstring for threads (``pollers``), receiving, acknowledgement, stop,
    readiness and metrics.
    """

    def __init__(
        self,
        queue: str,
        processor: Processor,
        *,
        client: Any = None,
        session: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        owner_account: str | None = None,
        max_messages: int = 3,
        wait_time: int | None = None,
        visibility_timeout: int | None = None,
        batch_size: int = 1,
        batch_timeout: float = 0.1,
        failure: FailureStrategy | str = FailureStrategy.EXIT,
        processing_retry: Retry | None = None,
        nack_delay: int = 0,
        retries: int = 10,
        retry_wait: float = 1.0,
        pollers: int = 1,
        stats_interval: float = 10.0,
        name: str | None = None,
    ) -> None:
        if not queue:
            raise ValueError("SQSConsumer needs a queue name or URL")
        if client is not None and (session is not None or endpoint_url or region):
            raise ValueError("pass either client, or session / endpoint_url / region")
        if not 1 <= max_messages <= 10:
            raise ValueError(f"max_messages must be 1 to 10 (SQS's limit), not {max_messages}")
        if wait_time is not None and not 0 <= wait_time <= 20:
            raise ValueError(f"wait_time must be 0 to 20 seconds (SQS's limit), not {wait_time}")
        if visibility_timeout is not None and not 0 <= visibility_timeout <= 43200:
            raise ValueError(f"visibility_timeout must be 0 to 43200 s, not {visibility_timeout}")
        if not 0 <= nack_delay <= 43200:
            raise ValueError(f"nack_delay must be 0 to 43200 s, not {nack_delay}")
        if pollers < 1:
            raise ValueError(f"pollers must be at least 1, not {pollers}")
        if stats_interval < 0:
            raise ValueError("stats_interval must be >= 0 (0 turns the queue statistics off)")
        self.queue = queue
        self.queue_name = _client.queue_name(queue)
        self.name = name or f"sqs-{self.queue_name}"
        self._client = client
        self._session = session
        self._endpoint_url = endpoint_url
        self._region = region
        self._transports = [
            _SQSTransport(
                name=self.name if pollers == 1 else f"{self.name}-poller-{i}",
                queue=queue,
                queue_name=self.queue_name,
                owner_account=owner_account,
                max_messages=max_messages,
                wait_time=wait_time,
                visibility_timeout=visibility_timeout,
                nack_delay=nack_delay,
                stats_interval=stats_interval if i == 0 else 0.0,
            )
            for i in range(pollers)
        ]
        self._loops = [
            ConsumerLoop(
                transport,
                processor,
                name=transport.name,
                batch_size=batch_size,
                batch_timeout=batch_timeout,
                poll_timeout=_POLL_TIMEOUT,
                failure=failure,
                retry=processing_retry,
                connection=ConnectionRetry(retries, retry_wait),
                log=logger,
            )
            for transport in self._transports
        ]

    @property
    def queue_url(self) -> str | None:
        """The queue's URL once resolved (after the start), else None."""
        return self._transports[0].url

    def ready(self) -> bool:
        return all(transport.ready for transport in self._transports)

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; see the module docstring for what that involves."""
        try:
            client = _client.make_client(
                client=self._client, session=self._session, endpoint_url=self._endpoint_url,
                region=self._region, owner=self.name,
                # Receives long-poll at most 20 s: a read taking 30 s means a dead connection.
                config=BotoConfig(connect_timeout=5, read_timeout=30,
                                  retries={"mode": "standard", "total_max_attempts": 1}),
            )
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        for transport in self._transports:
            transport.client = client
        logger.info("%s: consuming SQS queue %s with %d poller(s)", self.name, self.queue,
                    len(self._loops))
        try:
            if len(self._loops) == 1:
                self._transports[0].stop = stop
                self._loops[0].run(stop)
            else:
                self._run_pollers(stop)
        finally:
            for transport in self._transports:
                transport.report_undeleted()
        logger.info("%s: stopped", self.name)

    def _run_pollers(self, stop: threading.Event) -> None:
        inner = threading.Event()  # stops every poller: set on stop, or when one of them ends
        ended = threading.Event()
        errors: list[BaseException] = []

        def poll(loop: ConsumerLoop) -> None:
            try:
                loop.run(inner)
            except BaseException as exc:  # handed to the component thread, which raises it
                errors.append(exc)
            finally:
                ended.set()
                inner.set()

        threads = []
        for transport, loop in zip(self._transports, self._loops, strict=True):
            transport.stop = inner
            thread = threading.Thread(target=poll, args=(loop,), name=f"patron-{loop.name}",
                                      daemon=True)  # joined below
            threads.append(thread)
            thread.start()
        try:
            while not ended.is_set() and not stop.wait(0.1):
                pass
        finally:
            inner.set()
            for thread in threads:
                thread.join()
        for other in errors[1:]:  # the first is raised, with the component's usual log line
            logger.error("%s: another poller failed too: %r", self.name, other)
        if errors:
            raise errors[0]
        if not stop.is_set():
            raise RuntimeError(f"{self.name}: a poller ended before the component was stopped")


class _SQSTransport:
    """The client side of :class:`SQSConsumer`; every method runs in its poller's thread.

    ``held`` maps the receipt handle of every message received and not yet settled (waiting in
    ``buffer`` or handed to the loop) to the message; ``to_delete`` holds the processed ones
    whose delete is not confirmed yet.
    """

    supports_nack = True

    def __init__(
        self,
        *,
        name: str,
        queue: str,
        queue_name: str,
        owner_account: str | None,
        max_messages: int,
        wait_time: int | None,
        visibility_timeout: int | None,
        nack_delay: int,
        stats_interval: float,
    ) -> None:
        self.name = name
        self.queue = queue
        self.queue_name = queue_name
        self.owner_account = owner_account
        self.max_messages = max_messages
        self.wait_time = wait_time
        self.visibility_timeout = visibility_timeout
        self.nack_delay = nack_delay
        self.stats_interval = stats_interval
        self.client: Any = None
        self.stop = threading.Event()  # the loop's stop event, for pausing between short polls
        self.url: str | None = None
        self.ready = False  # read by ready() from other threads: a plain bool is enough
        self._received_once = False  # refused credentials are permanent until then
        self._wait = 0
        self.buffer: collections.deque[SQSMessage] = collections.deque()
        self.held: dict[str, SQSMessage] = {}
        self.to_delete: dict[str, SQSMessage] = {}
        self._delete_since = 0.0
        self._next_stats = 0.0
        self._counters: dict[tuple[str, bool], Any] = {}
        self._age = _MESSAGE_AGE.labels(queue_name)

    # -- Transport ---------------------------------------------------------------------------

    def connect(self) -> None:
        self.ready = False
        try:
            if self.url is None:
                self.url = _client.resolve_queue_url(self.client, self.queue, self.owner_account)
            if self.wait_time is None:  # the queue's default, read on each (re)connect
                attributes = self.client.get_queue_attributes(
                    QueueUrl=self.url, AttributeNames=["ReceiveMessageWaitTimeSeconds"],
                ).get("Attributes", {})
                self._wait = int(attributes.get("ReceiveMessageWaitTimeSeconds", 0))
            else:
                self._wait = self.wait_time
        except Exception as exc:
            raise self._classify(exc) from exc

    def _classify(self, exc: Exception) -> Exception:
        """A missing queue, or credentials refused before anything was received, as
        :class:`PermanentError`; anything else as it is (a connection failure, retried)."""
        if _client.is_missing_queue(exc) or (
            not self._received_once and _client.is_auth_error(exc)
        ):
            return _client.permanent_or_same(exc, self.queue, self.name)
        return exc

    def fetch(self, max_messages: int, timeout: float) -> Sequence[Message]:
        buffer = self.buffer
        if not buffer:
            first = timeout >= _POLL_TIMEOUT  # starts a batch, rather than topping one up
            if first and self.stats_interval:
                now = time.monotonic()
                if not self._next_stats:  # the first reading comes one interval after the start
                    self._next_stats = now + self.stats_interval
                elif now >= self._next_stats:
                    self._update_stats()
            wait = min(self._wait, int(timeout))
            if not self._receive(wait) and wait == 0 and first:
                self.stop.wait(_SHORT_POLL_PAUSE)
        if len(buffer) <= max_messages:
            out = list(buffer)
            buffer.clear()
            return out
        return [buffer.popleft() for _ in range(max_messages)]

    def settle(self, batch: Batch) -> None:
        held, to_delete = self.held, self.to_delete
        nacks: list[SQSMessage] = []
        for message in batch:
            assert isinstance(message, SQSMessage)
            state = message.state
            if state is MessageState.ACKED:
                held.pop(message.receipt_handle, None)
                if not to_delete:
                    self._delete_since = time.monotonic()
                to_delete[message.receipt_handle] = message
            elif state is MessageState.NACKED:
                held.pop(message.receipt_handle, None)
                if message.requeue:
                    nacks.append(message)
                else:  # left invisible until its visibility timeout runs out
                    self._count("NACK", message.error is not None)
            # PENDING: the loop is about to fail; close() gives it back with the rest
        if nacks:
            failed = self._change_visibility(nacks, self.nack_delay, "nack")
            for message in nacks:
                self._count("NACK", message.error is not None or message in failed)
        if to_delete and (
            len(to_delete) >= _BATCH_MAX
            or not self.buffer
            or time.monotonic() - self._delete_since >= _DELETE_LINGER
        ):
            self._flush_deletes()

    def close(self) -> None:
        self.ready = False
        try:
            if self.client is None or self.url is None:
                self.held.clear()
                self.buffer.clear()
                return
            if self.to_delete:
                try:
                    self._flush_deletes()
                except Exception as exc:
                    logger.warning("%s: deleting %d processed message(s) failed (%s); "
                                   "will try again", self.name, len(self.to_delete),
                                   _client.describe(exc))
            held = list(self.held.values())
            self.held.clear()
            self.buffer.clear()
            if held:
                failed = self._change_visibility(held, 0, "give back")
                logger.info("%s: gave back %d received but unprocessed message(s)",
                            self.name, len(held) - len(failed))
        except Exception:  # close must not raise
            logger.exception("%s: closing the SQS transport failed", self.name)

    # -- helpers (poller thread) -------------------------------------------------------------

    def _receive(self, wait: int) -> int:
        kwargs: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": self.max_messages,
            "WaitTimeSeconds": wait,
            "MessageAttributeNames": ["All"],
            "AttributeNames": ["All"],
        }
        if self.visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = self.visibility_timeout
        try:
            response = self.client.receive_message(**kwargs)
        except Exception as exc:
            self.ready = False
            error = self._classify(exc)
            if error is exc:
                raise
            raise error from exc
        self.ready = self._received_once = True
        items = response.get("Messages")
        if not items:
            return 0
        oldest: int | None = None
        queue, held, buffer = self.queue_name, self.held, self.buffer
        for item in items:
            message = SQSMessage(item, queue)
            held[message.receipt_handle] = message
            buffer.append(message)
            sent = (item.get("Attributes") or _NO_ATTRIBUTES).get("SentTimestamp")
            if sent and (oldest is None or int(sent) < oldest):
                oldest = int(sent)
        self._count("FETCHED", False, len(items))
        if oldest is not None:  # SQS sends milliseconds
            self._age.set(max(0.0, time.time() - oldest / 1000))
        return len(items)

    def _flush_deletes(self) -> None:
        """Delete what waits in ``to_delete``; raises when a delete call fails as a whole (the
        messages stay in ``to_delete`` for the next attempt)."""
        pending = list(self.to_delete.items())
        to_delete = self.to_delete
        for start in range(0, len(pending), _BATCH_MAX):
            chunk = pending[start:start + _BATCH_MAX]
            response = self.client.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(i), "ReceiptHandle": handle}
                         for i, (handle, _message) in enumerate(chunk)],
            )
            clean = failed = 0  # counted once per call: the counters take a lock
            for entry in response.get("Successful", ()):
                handle, message = chunk[int(entry["Id"])]
                del to_delete[handle]
                if message.error is None:
                    clean += 1
                else:
                    failed += 1
            for entry in response.get("Failed", ()):
                handle, message = chunk[int(entry["Id"])]
                if entry.get("SenderFault"):  # this receipt handle will never work
                    del to_delete[handle]
                    failed += 1
                    logger.error(
                        "%s: could not delete processed message %s (%s: %s); it will be "
                        "delivered again", self.name, message.message_id, entry.get("Code"),
                        entry.get("Message"),
                    )
                else:
                    logger.warning(
                        "%s: deleting message %s failed (%s: %s); will try again",
                        self.name, message.message_id, entry.get("Code"), entry.get("Message"),
                    )
            if clean:
                self._count("ACK", False, clean)
            if failed:
                self._count("ACK", True, failed)
        self._delete_since = time.monotonic()

    def _change_visibility(
        self, messages: Sequence[SQSMessage], timeout: int, why: str
    ) -> list[SQSMessage]:
        """Set the visibility timeout of ``messages``; returns those it failed for (logged:
        they come back when their current visibility timeout runs out). Never raises."""
        failed: list[SQSMessage] = []
        for start in range(0, len(messages), _BATCH_MAX):
            chunk = messages[start:start + _BATCH_MAX]
            try:
                response = self.client.change_message_visibility_batch(
                    QueueUrl=self.url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m.receipt_handle,
                              "VisibilityTimeout": timeout} for i, m in enumerate(chunk)],
                )
            except Exception as exc:
                failed.extend(chunk)
                logger.warning("%s: %s of %d message(s) failed (%s); they come back when "
                               "their visibility timeout runs out", self.name, why, len(chunk),
                               _client.describe(exc))
                continue
            for entry in response.get("Failed", ()):
                message = chunk[int(entry["Id"])]
                failed.append(message)
                logger.warning("%s: %s of message %s failed (%s: %s); it comes back when its "
                               "visibility timeout runs out", self.name, why,
                               message.message_id, entry.get("Code"), entry.get("Message"))
        return failed

    def _update_stats(self) -> None:
        self._next_stats = time.monotonic() + self.stats_interval
        try:
            attributes = self.client.get_queue_attributes(
                QueueUrl=self.url, AttributeNames=list(_STATS_ATTRIBUTES),
            ).get("Attributes", {})
        except Exception as exc:  # statistics never stop the consumer; the receive will tell
            logger.warning("%s: reading the queue statistics failed: %s", self.name,
                           _client.describe(exc))
            return
        for attribute, state in _STATS_ATTRIBUTES.items():
            if attribute in attributes:
                _QUEUE_SIZE.labels(self.queue_name, state).set(int(attributes[attribute]))

    def _count(self, state: str, has_error: bool, n: int = 1) -> None:
        child = self._counters.get((state, has_error))
        if child is None:
            child = self._counters[(state, has_error)] = _MESSAGE_COUNTER.labels(
                self.queue_name, state, "true" if has_error else "false"
            )
        child.inc(n)

    def report_undeleted(self) -> None:
        """After the loop ended: log processed messages whose delete never got through."""
        if self.to_delete:
            logger.error(
                "%s: %d processed message(s) could not be deleted (%s); they will be delivered "
                "again after their visibility timeout", self.name, len(self.to_delete),
                ", ".join(m.message_id for m in self.to_delete.values()),
            )
            self.to_delete.clear()
