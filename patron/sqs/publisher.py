"""The SQS publisher client: send and send-batch with correlation id and trace context.

Threads
    An :class:`SQSPublisher` may be shared by every thread of a service: boto3 clients are
    thread-safe, and the queue URL is resolved once, under a lock, on first use.

Context propagation
    Each send runs in a span ``"{queue} send"`` (kind producer, child of the active span) and
    adds two kinds of message attributes beside the caller's: ``X-Correlation-Id`` (the current
    correlation id, or a new one) and the trace context (``uber-trace-id``, plus ``uberctx-*``
    for baggage). They are added within SQS's limits, the caller's attributes first:

    * at most 10 attributes per message: with 9 of the caller's only the correlation id is
      added, with 10 nothing (the consumer then starts a new trace with a new correlation id);
      an attribute the caller set under one of these names (any case) is kept as it is;
    * they never push a message that fits SQS's classic 256 KiB size limit (body plus
      attributes: names, data types and values) over it: such a message goes without them.

    Either way the publisher logs one warning the first time it leaves something out.

Errors
    ``send`` raises botocore's exceptions as they come (a missing queue, refused credentials,
    a message too big for the queue...), after boto3's own retries. ``send_batch`` raises
    :class:`PublishError` naming each entry SQS refused, together with the ids of those it
    accepted, so nothing is lost silently. Bad arguments raise ``ValueError`` / ``TypeError``
    before anything is sent.

Metrics
    ``client_sqs_publish_duration_seconds{queue, success}``: one observation per API call.
"""

from __future__ import annotations

import dataclasses
import decimal
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from botocore.config import Config as BotoConfig

from patron import correlation, messaging, metrics, tracing
from patron.sqs import _client

__all__ = ["MAX_ATTRIBUTES", "Outgoing", "PublishError", "SQSPublisher"]

logger = logging.getLogger("patron.sqs")

_PUBLISH_DURATION = metrics.histogram(
    "client_sqs_publish_duration_seconds",
    "Duration of SQS send calls, by queue and success",
    ["queue", "success"],
)

#: SQS's limit of message attributes per message
MAX_ATTRIBUTES = 10
#: SQS's classic message size limit (queues may allow up to 1 MiB): injected attributes never
#: push a message that fits it over it
CLASSIC_MAX_SIZE = 256 * 1024
_BATCH_MAX = 10

AttributeValue = str | bytes | bytearray | int | float | decimal.Decimal | Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One message for :meth:`SQSPublisher.send_batch`: its body (text, or UTF-8 bytes),
    attributes (see :meth:`SQSPublisher.send`), per-message ``delay`` (seconds, 0 to 900) and the
    FIFO ``group_id`` / ``deduplication_id``."""

    body: str | bytes
    attributes: Mapping[str, AttributeValue] | None = None
    delay: int | None = None
    group_id: str | None = None
    deduplication_id: str | None = None


class PublishError(messaging.PublishError):
    """SQS refused some entries of a batch.

    ``failures`` lists ``(index, code, message, sender_fault)`` for each refused entry (index
    into the messages given to ``send_batch``); ``message_ids`` holds the id of every entry
    SQS accepted, None for the refused ones.
    """

    def __init__(self, queue: str, failures: list[tuple[int, str, str, bool]],
                 message_ids: list[str | None]) -> None:
        self.failures = failures
        self.message_ids = message_ids
        first = failures[0]
        super().__init__(
            f"SQS refused {len(failures)} of {len(message_ids)} message(s) for {queue}; first: "
            f"#{first[0]} {first[1]}: {first[2]}"
        )


class SQSPublisher:
    """Sends messages to SQS queue ``queue`` (a name, or a queue URL).

    The client: ``client`` (a boto3 SQS client, used as is), else one made from ``session``
    or from a new boto3 session (the usual AWS configuration), with ``endpoint_url`` and
    ``region`` when given, and boto3's standard retries (3 attempts). ``owner_account`` names
    the account owning a queue given by name. See the module docstring for threads, context
    propagation, errors and metrics.
    """

    def __init__(
        self,
        queue: str,
        *,
        client: Any = None,
        session: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        owner_account: str | None = None,
    ) -> None:
        if not queue:
            raise ValueError("SQSPublisher needs a queue name or URL")
        if client is not None and (session is not None or endpoint_url or region):
            raise ValueError("pass either client, or session / endpoint_url / region")
        self.queue = queue
        self.queue_name = _client.queue_name(queue)
        self.owner_account = owner_account
        self.client = _client.make_client(
            client=client, session=session, endpoint_url=endpoint_url, region=region,
            config=BotoConfig(connect_timeout=5, read_timeout=30,
                              retries={"mode": "standard", "total_max_attempts": 3}),
            owner=f"SQS publisher for {self.queue_name}",
        )
        self._url: str | None = queue if _client.is_url(queue) else None
        self._lock = threading.Lock()
        self._warned = False
        self._durations = {
            True: _PUBLISH_DURATION.labels(self.queue_name, "true"),
            False: _PUBLISH_DURATION.labels(self.queue_name, "false"),
        }

    @property
    def queue_url(self) -> str:
        """The queue's URL, resolved with ``GetQueueUrl`` on first use (botocore's errors
        propagate, a missing queue included)."""
        url = self._url
        if url is None:
            with self._lock:
                if self._url is None:
                    started = time.perf_counter()
                    try:
                        self._url = _client.resolve_queue_url(self.client, self.queue,
                                                              self.owner_account)
                    except Exception:
                        self._durations[False].observe(time.perf_counter() - started)
                        raise
                url = self._url
        return url

    def send(
        self,
        body: str | bytes,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        delay: int | None = None,
        group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> str:
        """Send one message; returns its message id.

        ``attributes`` maps names to values: ``str`` (``String``), ``bytes`` (``Binary``),
        ``int`` / ``float`` / ``Decimal`` (``Number``), or a dict in SQS's own form
        (``{"DataType": "Number.float", "StringValue": "1.5"}``) for custom data types.
        """
        entry = _entry(Outgoing(body, attributes, delay, group_id, deduplication_id))
        url = self.queue_url
        with tracing.start_span(f"{self.queue_name} send", kind=tracing.tags.SPAN_KIND_PRODUCER,
                                component="sqs"):
            self._inject(entry)
            started = time.perf_counter()
            ok = False
            try:
                response = self.client.send_message(QueueUrl=url, **entry)
                ok = True
            finally:
                self._durations[ok].observe(time.perf_counter() - started)
        return str(response["MessageId"])

    def send_batch(self, messages: Iterable[str | bytes | Outgoing]) -> list[str]:
        """Send messages with ``SendMessageBatch`` (10 per call, and at most 256 KiB per call);
        returns their message ids in order. Raises :class:`PublishError` when SQS refused
        some (after sending all the others)."""
        entries = [
            _entry(m if isinstance(m, Outgoing) else Outgoing(m)) for m in messages
        ]
        if not entries:
            return []
        url = self.queue_url
        ids: list[str | None] = [None] * len(entries)
        failures: list[tuple[int, str, str, bool]] = []
        with tracing.start_span(f"{self.queue_name} send", kind=tracing.tags.SPAN_KIND_PRODUCER,
                                component="sqs"):
            for entry in entries:
                self._inject(entry)
            chunks = list(_chunks(entries))
            for n, chunk in enumerate(chunks):
                started = time.perf_counter()
                ok = False
                try:
                    response = self.client.send_message_batch(
                        QueueUrl=url,
                        Entries=[dict(entries[i], Id=str(i)) for i in chunk],
                    )
                    ok = not response.get("Failed")
                except Exception as exc:
                    if n == 0:
                        raise  # nothing was sent: the error as it came
                    # Some went already: say which did and which did not.
                    reason = _client.describe(exc)
                    failures.extend((i, type(exc).__name__, reason, False)
                                    for rest in chunks[n:] for i in rest)
                    raise PublishError(self.queue_name, failures, ids) from exc
                finally:
                    self._durations[ok].observe(time.perf_counter() - started)
                for item in response.get("Successful", ()):
                    ids[int(item["Id"])] = str(item["MessageId"])
                for item in response.get("Failed", ()):
                    failures.append((int(item["Id"]), str(item.get("Code", "")),
                                     str(item.get("Message", "")),
                                     bool(item.get("SenderFault"))))
        if failures:
            failures.sort()
            raise PublishError(self.queue_name, failures, ids)
        return [i for i in ids if i is not None]

    def _inject(self, entry: dict[str, Any]) -> None:
        """Add the correlation id and the active span's context within SQS's limits."""
        attributes: dict[str, dict[str, Any]] = entry.setdefault("MessageAttributes", {})
        carrier = {correlation.HEADER: correlation.outgoing()}
        tracing.inject(carrier)
        taken = {name.lower() for name in attributes}
        size = _size(entry["MessageBody"], attributes)
        left_out: list[str] = []
        for name, value in carrier.items():
            if name.lower() in taken:
                continue
            extra = len(name.encode()) + len("String") + len(value.encode())
            if len(attributes) >= MAX_ATTRIBUTES or size <= CLASSIC_MAX_SIZE < size + extra:
                left_out.append(name)
                continue
            attributes[name] = {"DataType": "String", "StringValue": value}
            size += extra
        if not attributes:
            del entry["MessageAttributes"]
        if left_out and not self._warned:
            self._warned = True
            logger.warning(
                "SQS publisher for %s: left out %s (SQS allows %d attributes and the caller's "
                "come first, or they would push the message over %d bytes); consumers start a "
                "new trace. Logged once.", self.queue_name, ", ".join(left_out), MAX_ATTRIBUTES,
                CLASSIC_MAX_SIZE,
            )


def _entry(message: Outgoing) -> dict[str, Any]:
    body = message.body
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("SQS message bodies are text: the body is not valid UTF-8 "
                             "(base64-encode binary payloads)") from None
    if not isinstance(body, str):
        raise TypeError(f"an SQS message body is str or bytes, not {type(body).__name__}")
    if not body:
        raise ValueError("SQS does not accept an empty message body")
    entry: dict[str, Any] = {"MessageBody": body}
    if message.attributes:
        entry["MessageAttributes"] = {
            name: _attribute(name, value) for name, value in message.attributes.items()
        }
    if message.delay is not None:  # SQS itself refuses a delay outside 0 to 900 s
        entry["DelaySeconds"] = int(message.delay)
    if message.group_id is not None:
        entry["MessageGroupId"] = message.group_id
    if message.deduplication_id is not None:
        entry["MessageDeduplicationId"] = message.deduplication_id
    return entry


def _attribute(name: str, value: AttributeValue) -> dict[str, Any]:
    if isinstance(value, Mapping):
        data_type = value.get("DataType")
        if not isinstance(data_type, str) or not (
            "StringValue" in value or "BinaryValue" in value
        ):
            raise ValueError(f"attribute {name!r}: a dict value needs DataType and StringValue "
                             "or BinaryValue")
        return dict(value)
    if isinstance(value, bool):  # before int: True is an int, but not a number anyone means
        raise TypeError(f"attribute {name!r}: bool is ambiguous; send 'true'/'false' or 1/0")
    if isinstance(value, str):
        return {"DataType": "String", "StringValue": value}
    if isinstance(value, (bytes, bytearray)):
        return {"DataType": "Binary", "BinaryValue": bytes(value)}
    if isinstance(value, (int, float, decimal.Decimal)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"attribute {name!r}: SQS numbers are finite, not {value}")
        return {"DataType": "Number", "StringValue": str(value)}
    raise TypeError(f"attribute {name!r}: unsupported value type {type(value).__name__}")


def _size(body: str, attributes: Mapping[str, Mapping[str, Any]]) -> int:
    """The size SQS counts against its limit: body, and attribute names, types and values."""
    size = len(body.encode("utf-8"))
    for name, attribute in attributes.items():
        size += len(name.encode()) + len(str(attribute.get("DataType", "")).encode())
        if "BinaryValue" in attribute:
            size += len(attribute["BinaryValue"])
        else:
            size += len(str(attribute.get("StringValue", "")).encode())
    return size


def _chunks(entries: list[dict[str, Any]]) -> Iterable[list[int]]:
    """Indexes of ``entries`` in groups of at most 10 and (unless alone) 256 KiB."""
    chunk: list[int] = []
    total = 0
    for i, entry in enumerate(entries):
        size = _size(entry["MessageBody"], entry.get("MessageAttributes", {}))
        if chunk and (len(chunk) >= _BATCH_MAX or total + size > CLASSIC_MAX_SIZE):
            yield chunk
            chunk, total = [], 0
        chunk.append(i)
        total += size
    if chunk:
        yield chunk
