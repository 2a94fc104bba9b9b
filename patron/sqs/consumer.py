"""The SQS consumer component: receive, process, delete, on boto3.

It runs the consumer loop every patron consumer shares (:mod:`patron.messaging`), so batching,
retries, failure strategies, readiness, spans and correlation ids work as for all of them.

Threads
    With ``concurrency=1`` (the default) everything runs in the component's thread: the
    receive, the processor, the deletes and the visibility changes. With ``concurrency=N``, N
    pollers run in threads of their own (``patron-<name>-<i>``), each with a transport of its
    own on one shared boto3 client (clients are thread-safe; the session is used once, in the
    component thread, to make it), and each calls the processor from its own thread, so the
    processor must then be thread-safe.

Receiving
    A receive that waits for the first message of a batch asks for up to ``max_messages`` (1 to
    10) messages, long-polling up to ``wait_time`` seconds (0 to 20; ``None``: the queue's
    ``ReceiveMessageWaitTimeSeconds``), with every message attribute and system attribute;
    with ``wait_time`` 0 an empty receive is followed by a short rest, so an idle queue is not
    polled in a hot loop. The receives that top a batch up wait what is left of
    ``batch_timeout`` in whole seconds, as SQS counts them: a batch may wait up to a second past
    it to fill. Messages received beyond the current batch wait in the transport and
    are handed out first; their visibility timeout runs from the receive, so choose
    ``visibility_timeout`` (``None``: the queue's) longer than ``max_messages`` times the
    processing time of one message. A stop request is noticed between receives, so stopping
    can take up to ``wait_time`` seconds. A client made here gives every call ``wait_time``
    plus 3 seconds to answer (SQS's longest wait, 20 s, plus 3 when ``wait_time`` is None),
    so a connection that died during a long poll is noticed that soon.

Acknowledgement (at-least-once)
    A message is deleted only after the processor returned for it (or the ``skip`` strategy
    gave up on it). Deletes are batched with ``DeleteMessageBatch``: processed messages are
    deleted once the messages received with them were all handed out and settled, or 10
    deletes wait, or (checked as each batch is settled) the oldest has waited a second, and
    always before the transport closes. A delete the service refuses for the message itself
    (its receipt handle expired: it is being delivered again) is logged as an error; any other
    failed delete is kept and retried with the next batch (logged once when deletes start
    failing, and once when they go through again), and a delete call that fails as a whole is
    a connection failure (the loop retries; the deletes are tried again as it closes and with
    the next batch).

    The processed messages waiting for their delete are bounded: once 300 of them (or two
    batches, when ``batch_size`` is larger) wait, nothing more is received until deletes go
    through again. Each receive refused that way is a connection failure: the loop gives the
    received but unprocessed messages back, waits as ``connection_retry`` says and tries the
    deletes again, and gives up (``TransportError``) when they keep failing. Nothing processed
    is lost: a message whose delete never went through is delivered again after its
    visibility timeout, and the consumer logs how many when it ends.

    ``nack()``, and the ``nack`` strategy, set the message's visibility timeout to
    ``nack_delay`` seconds (0: visible again at once); ``nack(requeue=False)`` leaves it
    invisible until its visibility timeout runs out. A queue with a redrive policy moves a
    message to its dead-letter queue after ``maxReceiveCount`` receives, nacked or not.

Stop
    The batch in hand is finished, what was processed is deleted, and every message received
    but not processed is made visible again at once (visibility timeout 0), so another
    consumer gets it without waiting for its timeout. Processed messages whose delete could not
    be confirmed by then are logged: they will be delivered again. With a stop deadline (the
    Service's shutdown budget), calls that would start after it are left out: what was not
    given back comes back after its visibility timeout, what was not deleted is delivered
    again. A call already under way is bounded by ``connect_timeout`` and the read timeout
    only.

Metrics
    ``component_sqs_message_counter{queue, state, hasError}`` counts messages ``FETCHED``
    (received), ``ACK`` (to be deleted) and ``NACK`` (given back); ``hasError`` is true when the
    processor failed on it (``skip`` or ``nack`` strategy). ``component_sqs_message_age{queue}``
    is the age in seconds, from ``SentTimestamp`` (milliseconds), of the oldest message of the
    latest receive. ``component_sqs_queue_size{queue, state}`` holds the approximate numbers of
    ``available``, ``delayed`` and ``invisible`` messages, read with ``GetQueueAttributes``
    every ``stats_interval`` seconds (the first time one interval after the start) by the first
    poller.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from botocore.config import Config as BotoConfig

from patron import metrics
from patron.messaging import (
    Batch,
    ConnectionRetry,
    FailureStrategy,
    Message,
    MessageState,
    PermanentError,
    Processor,
    Retry,
)
from patron.messaging._consumer import Consumer
from patron.messaging._counter import StateCounter
from patron.messaging._loop import Counts, TransportBase
from patron.messaging._options import DEFAULT_CONNECT_TIMEOUT, DEFAULT_STATS_INTERVAL
from patron.sqs import _client

__all__ = ["SQSConsumer", "SQSMessage"]

logger = logging.getLogger("patron.sqs")

_MESSAGE_COUNTER = StateCounter("sqs")
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

#: rest after an empty short poll (wait_time 0), so an idle queue is not polled in a hot loop
_SHORT_POLL_PAUSE = 0.5
#: a processed message waits at most this long (in seconds) for its batched delete
_DELETE_LINGER = 1.0
#: processed messages waiting for their delete (at least; two batches when a batch is larger)
#: beyond which nothing more is received until deletes go through: bounds the memory and the
#: calls of a consumer whose deletes keep failing
DELETE_BACKLOG = 300
#: seconds a call may take beyond its long-poll wait before the connection counts as dead
_READ_MARGIN = 3
#: SQS's longest long-poll wait (seconds)
_MAX_WAIT = 20
#: message ids named at most in one log line
_IDS_LOGGED = 10
_BATCH_MAX = 10  # entries per DeleteMessageBatch / ChangeMessageVisibilityBatch
_NO_ATTRIBUTES: Mapping[str, str] = {}
_STATS_ATTRIBUTES = {
    "ApproximateNumberOfMessages": "available",
    "ApproximateNumberOfMessagesDelayed": "delayed",
    "ApproximateNumberOfMessagesNotVisible": "invisible",
}


class DeletesFailing(Exception):
    """Too many processed messages wait for a delete that keeps failing: the consumer does not
    receive more (a connection failure to the loop, retried with its backoff)."""


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


class SQSConsumer(Consumer):
    """A component consuming SQS queue ``queue`` (a name, resolved at start, or a queue URL).

    The options every consumer shares (see :mod:`patron.messaging`): ``processor`` gets a
    :class:`patron.messaging.Batch` of up to ``batch_size`` :class:`SQSMessage` objects,
    waiting at most ``batch_timeout`` s for a batch to fill; ``failure`` is ``exit``, ``skip``
    or ``nack``; ``processing_retry`` retries a failing batch before the strategy applies;
    ``connection_retry`` starts receiving again after a failed call (receive, delete), once
    what was received and not processed was given back; ``concurrency`` pollers receive in as
    many threads; the queue's statistics are read every ``stats_interval`` s; ``name``
    (default ``sqs-<queue name>``) names the component. A queue that does not exist (at the
    start or later), credentials refused before the first receive, no region or a malformed
    endpoint fail the component at once with :class:`patron.messaging.PermanentError`.

    The client: ``client`` (a boto3 SQS client, used as is), else one made from ``session``
    (a ``boto3.session.Session``) or from a new session, which reads the usual AWS
    configuration (``AWS_*`` variables, profiles, instance roles), with ``endpoint_url`` and
    ``region`` when given. A client made here does not retry by itself (``connection_retry``
    is the one retry policy), gives up connecting after ``connect_timeout`` and waiting for an
    answer after ``wait_time`` + 3 s (23 s when ``wait_time`` is None).
    ``owner_account`` names the account owning a queue given by name.

    SQS's own: ``max_messages`` per receive (1 to 10), ``wait_time`` (long polling, 0 to 20 s),
    ``visibility_timeout`` and ``nack_delay``; see the module docstring.
    """

    def __init__(
        self,
        queue: str,
        processor: Processor,
        *,
        batch_size: int = 1,
        batch_timeout: float = 0.1,
        failure: FailureStrategy | str = FailureStrategy.EXIT,
        processing_retry: Retry | None = None,
        connection_retry: ConnectionRetry | None = None,
        concurrency: int = 1,
        stats_interval: float = DEFAULT_STATS_INTERVAL,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        name: str | None = None,
        client: Any = None,
        session: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        owner_account: str | None = None,
        max_messages: int = 3,
        wait_time: int | None = None,
        visibility_timeout: int | None = None,
        nack_delay: int = 0,
    ) -> None:
        if not queue:
            raise ValueError("SQSConsumer needs a queue name or URL")
        _client.check_client_options(client, session, endpoint_url, region)
        if not 1 <= max_messages <= 10:
            raise ValueError(f"max_messages must be 1 to 10 (SQS's limit), not {max_messages}")
        if wait_time is not None and not 0 <= wait_time <= 20:
            raise ValueError(f"wait_time must be 0 to 20 seconds (SQS's limit), not {wait_time}")
        if visibility_timeout is not None and not 0 <= visibility_timeout <= 43200:
            raise ValueError(f"visibility_timeout must be 0 to 43200 s, not {visibility_timeout}")
        if not 0 <= nack_delay <= 43200:
            raise ValueError(f"nack_delay must be 0 to 43200 s, not {nack_delay}")
        self.queue = queue
        self.queue_name = _client.queue_name(queue)
        self._client = client
        self._session = session
        self._endpoint_url = endpoint_url
        self._region = region
        self._receiving = dict(owner_account=owner_account, max_messages=max_messages,
                               wait_time=wait_time, visibility_timeout=visibility_timeout,
                               nack_delay=nack_delay,
                               delete_backlog=max(DELETE_BACKLOG, 2 * batch_size))
        # Longer than any wait the receives ask for: a read taking longer means a dead
        # connection. Also what a stop may wait for a call in flight.
        self._read_timeout = (_MAX_WAIT if wait_time is None else wait_time) + _READ_MARGIN
        self._transports: list[_SQSTransport] = []
        super().__init__(
            name=name or f"sqs-{self.queue_name}",
            processor=processor,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
            failure=failure,
            processing_retry=processing_retry,
            connection_retry=connection_retry,
            concurrency=concurrency,
            stats_interval=stats_interval,
            connect_timeout=connect_timeout,
            log=logger,
        )

    def _transport(self, index: int) -> _SQSTransport:
        transport = _SQSTransport(
            name=self._loop_name(index),
            queue=self.queue,
            queue_name=self.queue_name,
            **self._receiving,  # type: ignore[arg-type]
        )
        self._transports.append(transport)
        return transport

    def _describe(self) -> str:
        return f"SQS queue {self.queue}"

    @property
    def queue_url(self) -> str | None:
        """The queue's URL once resolved (after the start), else None."""
        return self._transports[0].url

    def run(self, stop: threading.Event) -> None:
        """Make the client, then consume until ``stop`` is set (see the module docstring)."""
        try:
            client = _client.make_client(
                client=self._client, session=self._session, endpoint_url=self._endpoint_url,
                region=self._region, owner=self.name,
                config=BotoConfig(connect_timeout=self.connect_timeout,
                                  read_timeout=self._read_timeout,
                                  retries={"mode": "standard", "total_max_attempts": 1}),
            )
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        for transport in self._transports:
            transport.client = client
        try:
            super().run(stop)
        finally:
            for transport in self._transports:
                transport.report_undeleted()


class _SQSTransport(TransportBase):
    """The client side of one poller; every method runs in its loop's thread.

    ``held`` maps the receipt handle of every message received and not yet settled (waiting in
    ``buffer`` or handed to the loop) to the message; ``to_delete`` holds the processed ones
    whose delete is not confirmed yet: at most about ``delete_backlog`` (see :meth:`fetch`).
    """

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
        delete_backlog: int = DELETE_BACKLOG,
    ) -> None:
        self.name = name
        self.queue = queue
        self.queue_name = queue_name
        self.owner_account = owner_account
        self.max_messages = max_messages
        self.wait_time = wait_time
        self.visibility_timeout = visibility_timeout
        self.nack_delay = nack_delay
        self.client: Any = None
        self.url: str | None = None
        self._answered_once = False  # refused credentials are permanent until then
        self._wait = 0
        self.buffer: collections.deque[SQSMessage] = collections.deque()
        self.held: dict[str, SQSMessage] = {}
        self.to_delete: dict[str, SQSMessage] = {}
        self.delete_backlog = delete_backlog
        self._delete_since = 0.0
        self._delete_failure = ""  # why the last deletes failed; "" while they go through
        self._open = False  # connected since the last close
        self._age = _MESSAGE_AGE.labels(queue_name)

    # -- Transport ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Resolve the queue and read its poll wait: the queue answering is the connection
        (so readiness does not wait for the first long poll to end)."""
        try:
            if self.url is None:
                self.url = _client.resolve_queue_url(self.client, self.queue, self.owner_account)
            attributes = self.client.get_queue_attributes(
                QueueUrl=self.url, AttributeNames=["ReceiveMessageWaitTimeSeconds"],
            ).get("Attributes", {})
        except Exception as exc:
            raise self._classify(exc) from exc
        self._wait = (int(attributes.get("ReceiveMessageWaitTimeSeconds", 0))
                      if self.wait_time is None else self.wait_time)
        self.idle_pause = _SHORT_POLL_PAUSE if self._wait == 0 else 0.0
        self.connected = self._answered_once = self._open = True

    def _classify(self, exc: Exception) -> Exception:
        """A missing queue, or credentials refused before anything was received, as
        :class:`PermanentError`; anything else as it is (a connection failure, retried)."""
        if _client.is_missing_queue(exc) or (
            not self._answered_once and _client.is_auth_error(exc)
        ):
            return _client.permanent_or_same(exc, self.queue, self.name)
        return exc

    def fetch(self, max_messages: int, timeout: float, starts_batch: bool) -> Sequence[Message]:
        """A batch's first receive long-polls ``wait_time``; the ones that top a batch up wait
        what is left of ``timeout``, in whole seconds as SQS counts them (rounded up).

        While ``delete_backlog`` processed messages wait for their delete, the deletes are
        tried first, and when they still fail nothing is received: :class:`DeletesFailing`
        (a connection failure to the loop, which retries it with backoff).
        """
        buffer = self.buffer
        if not buffer:
            if len(self.to_delete) >= self.delete_backlog:
                self._flush_deletes()
                if len(self.to_delete) >= self.delete_backlog:
                    raise DeletesFailing(
                        f"{self.name}: {len(self.to_delete)} processed message(s) wait for their "
                        f"delete, which keeps failing ({self._delete_failure}); nothing more is "
                        "received until deletes go through"
                    )
            self._receive(self._wait if starts_batch else min(self._wait, math.ceil(timeout)))
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
            state = message._state
            if state is MessageState.ACKED:
                held.pop(message.receipt_handle, None)
                if not to_delete:
                    self._delete_since = time.monotonic()
                to_delete[message.receipt_handle] = message
            elif state is MessageState.NACKED:
                held.pop(message.receipt_handle, None)
                if message._requeue:  # else left invisible until its visibility timeout ends
                    nacks.append(message)
            # PENDING: the loop is about to fail; close() gives it back with the rest
        if nacks:
            self._change_visibility(nacks, self.nack_delay, "nack")
        if to_delete and (
            len(to_delete) >= _BATCH_MAX
            or not self.buffer
            or time.monotonic() - self._delete_since >= _DELETE_LINGER
        ):
            self._flush_deletes()

    def record(self, counts: Counts) -> None:
        _MESSAGE_COUNTER.record(counts)

    def probe(self) -> None:
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

    def close(self) -> None:
        if not self._open:  # closed since the last connect: the deletes were tried then
            self.held.clear()
            self.buffer.clear()
            return
        self._open = False
        try:
            if self.to_delete and not self._out_of_time():
                try:
                    self._flush_deletes()
                except Exception as exc:  # logged as the loop's connection failure already
                    logger.debug("%s: deleting %d processed message(s) failed (%s)", self.name,
                                 len(self.to_delete), _client.describe(exc))
            held = list(self.held.values())
            self.held.clear()
            self.buffer.clear()
            if held:
                failed = self._change_visibility(held, 0, "give back")
                if len(failed) < len(held):
                    logger.info("%s: gave back %d received but unprocessed message(s)",
                                self.name, len(held) - len(failed))
        except Exception as exc:  # close must not raise
            logger.warning("%s: closing the SQS transport failed: %r", self.name, exc)
            logger.debug("%s: closing the SQS transport failed", self.name, exc_info=True)

    def _out_of_time(self) -> bool:
        """Whether the stop deadline leaves no time for another call."""
        return self.time_left() == 0

    # -- helpers (poller thread) -------------------------------------------------------------

    def _receive(self, wait: int) -> None:
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
            self.connected = False
            error = self._classify(exc)
            if error is exc:
                raise
            raise error from exc
        self.connected = self._answered_once = True
        items = response.get("Messages")
        if not items:
            return
        oldest: int | None = None
        queue, held, buffer = self.queue_name, self.held, self.buffer
        for item in items:
            message = SQSMessage(item, queue)
            held[message.receipt_handle] = message
            buffer.append(message)
            sent = (item.get("Attributes") or _NO_ATTRIBUTES).get("SentTimestamp")
            if sent and (oldest is None or int(sent) < oldest):
                oldest = int(sent)
        if oldest is not None:  # SQS sends milliseconds
            self._age.set(max(0.0, time.time() - oldest / 1000))

    def _flush_deletes(self) -> None:
        """Delete what waits in ``to_delete``; raises when a delete call fails as a whole (the
        messages stay in ``to_delete`` for the next attempt). Stops at the stop deadline."""
        pending = list(self.to_delete.items())
        to_delete = self.to_delete
        retried: list[str] = []  # why deletes to try again failed
        refused: list[SQSMessage] = []  # deletes that can never work
        reason = ""  # why the last of them was refused
        for start in range(0, len(pending), _BATCH_MAX):
            if start and self._out_of_time():
                break
            chunk = pending[start:start + _BATCH_MAX]
            response = self.client.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(i), "ReceiptHandle": handle}
                         for i, (handle, _message) in enumerate(chunk)],
            )
            for entry in response.get("Successful", ()):
                del to_delete[chunk[int(entry["Id"])][0]]
            for entry in response.get("Failed", ()):
                handle, message = chunk[int(entry["Id"])]
                if entry.get("SenderFault"):  # this receipt handle will never work
                    del to_delete[handle]
                    refused.append(message)
                    reason = f"{entry.get('Code')}: {entry.get('Message')}"
                else:
                    retried.append(f"{entry.get('Code')}: {entry.get('Message')}")
        self._delete_since = time.monotonic()
        if refused:
            logger.error("%s: could not delete %d processed message(s) (%s): %s; they will be "
                         "delivered again", self.name, len(refused), reason, _ids(refused))
        # One line when deletes start failing and one when they go through again, not one per
        # batch: a stream keeps settling while they fail.
        if retried:
            if not self._delete_failure:
                logger.warning("%s: deleting %d processed message(s) failed (%s); will try "
                               "again", self.name, len(retried), retried[0])
            self._delete_failure = retried[0]
        elif self._delete_failure and not to_delete:
            logger.info("%s: deletes go through again", self.name)
            self._delete_failure = ""

    def _change_visibility(
        self, messages: Sequence[SQSMessage], timeout: int, why: str
    ) -> list[SQSMessage]:
        """Set the visibility timeout of ``messages``; returns those it failed for (logged:
        they come back when their current visibility timeout runs out). Never raises."""
        failed: list[SQSMessage] = []
        for start in range(0, len(messages), _BATCH_MAX):
            chunk = messages[start:start + _BATCH_MAX]
            if self._out_of_time():  # the stop deadline: they come back on their own
                failed.extend(messages[start:])
                logger.info("%s: %s of %d message(s) left out at the stop deadline; they come "
                            "back when their visibility timeout runs out", self.name, why,
                            len(messages) - start)
                break
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

    def report_undeleted(self) -> None:
        """After the loop ended: log processed messages whose delete never got through."""
        if self.to_delete:
            logger.error(
                "%s: %d processed message(s) could not be deleted (%s); they will be delivered "
                "again after their visibility timeout", self.name, len(self.to_delete),
                _ids(self.to_delete.values()),
            )
            self.to_delete.clear()


def _ids(messages: Iterable[SQSMessage]) -> str:
    """The ids of ``messages`` for a log line: the first few, and how many more."""
    listed = list(messages)
    ids = ", ".join(m.message_id for m in listed[:_IDS_LOGGED])
    more = len(listed) - _IDS_LOGGED
    return f"{ids} and {more} more" if more > 0 else ids
