"""The SQS publisher: publish and publish-batch with correlation id and trace context.

Threads
    An :class:`SQSPublisher` may be shared by every thread of a service: boto3 clients are
    thread-safe, and the queue URL is resolved once, under a lock, on first use.

Timeouts and retries
    A publish gives up at ``publish_timeout``: no call starts after it, a call that fails for a
    passing reason (the endpoint unreachable, throttling, a server error) is tried again after
    a short, growing pause only while the deadline allows, and no single call reads for longer
    than ``publish_timeout`` (so an endpoint that hangs on the last try can make a publish take
    up to about twice that). ``connect_timeout`` bounds opening a connection.

Context propagation
    Each publish runs in a span ``"{queue} publish"`` (kind producer, child of the active span)
    and adds two kinds of message attributes beside the caller's headers: ``X-Correlation-Id``
    (the current correlation id, or a new one) and the trace context (``uber-trace-id``, plus
    ``uberctx-*`` for baggage). They are added within SQS's limits, the caller's first:

    * at most 10 attributes per message: with 9 of the caller's only the correlation id is
      added, with 10 nothing (the consumer then starts a new trace with a new correlation id);
      an attribute the caller set under one of these names (any case) is kept as it is;
    * they never push a message that fits SQS's classic 256 KiB size limit (body plus
      attributes: names, data types and values) over it: such a message goes without them.

    Either way the publisher logs one warning the first time it leaves something out.

Errors
    Every failure raises :class:`PublishError`: a missing queue, refused credentials, a
    message too big for the queue, an unreachable endpoint, the deadline.
    :meth:`SQSPublisher.publish_batch` names each entry SQS did not accept, together with the
    ids of those it accepted. Bad arguments raise ``ValueError`` / ``TypeError`` before
    anything is sent.

Metrics
    ``client_sqs_publish_duration_seconds{queue, success}``: one observation per API call.
"""

from __future__ import annotations

import dataclasses
import decimal
import logging
import math
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from botocore.config import Config as BotoConfig

from patron import messaging, metrics
from patron.messaging._options import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PUBLISH_TIMEOUT
from patron.messaging._publisher import Publisher
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
_RETRY_PAUSE = 0.05  # seconds before the first retry of a transient failure, doubling after

AttributeValue = str | bytes | bytearray | int | float | decimal.Decimal | Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One message for :meth:`SQSPublisher.publish_batch`: its body (text, or UTF-8 bytes),
    headers (message attributes, see :meth:`SQSPublisher.publish`), per-message ``delay``
    (seconds, 0 to 900) and the FIFO ``group_id`` / ``deduplication_id``."""

    body: str | bytes
    headers: Mapping[str, AttributeValue] | None = None
    delay: int | None = None
    group_id: str | None = None
    deduplication_id: str | None = None


class PublishError(messaging.PublishError):
    """SQS did not accept a message (or some messages of a batch).

    ``failures`` lists ``(index, code, message, sender_fault)`` for each entry not accepted
    (index into the messages given to :meth:`SQSPublisher.publish_batch`; 0 for
    :meth:`SQSPublisher.publish`); ``message_ids`` holds the id of every entry SQS accepted,
    None for the others.
    """

    def __init__(self, text: str, failures: Sequence[tuple[int, str, str, bool]] = (),
                 message_ids: Sequence[str | None] = ()) -> None:
        super().__init__(text)
        self.failures = list(failures)
        self.message_ids = list(message_ids)


class SQSPublisher(Publisher):
    """Publishes messages to SQS queue ``queue`` (a name, or a queue URL).

    The client: ``client`` (a boto3 SQS client, used as is), else one made from ``session``
    or from a new boto3 session (the usual AWS configuration), with ``endpoint_url`` and
    ``region`` when given. ``owner_account`` names the account owning a queue given by name.
    See the module docstring for threads, timeouts, context propagation, errors and metrics.
    """

    transport = "sqs"

    def __init__(
        self,
        queue: str,
        *,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        client: Any = None,
        session: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        owner_account: str | None = None,
    ) -> None:
        super().__init__(publish_timeout=publish_timeout, connect_timeout=connect_timeout)
        if not queue:
            raise ValueError("SQSPublisher needs a queue name or URL")
        _client.check_client_options(client, session, endpoint_url, region)
        self.queue = queue
        self.queue_name = _client.queue_name(queue)
        self.owner_account = owner_account
        self._own_client = client is None
        self.client = _client.make_client(
            client=client, session=session, endpoint_url=endpoint_url, region=region,
            # publish() retries within its deadline itself: botocore's retries would not
            config=BotoConfig(connect_timeout=min(connect_timeout, publish_timeout),
                              read_timeout=publish_timeout,
                              retries={"mode": "standard", "total_max_attempts": 1}),
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
        """The queue's URL, resolved with ``GetQueueUrl`` on first use; raises
        :class:`PublishError` when that fails (a missing queue included)."""
        return self._queue_url(self._deadline())

    def _queue_url(self, deadline: float) -> str:
        url = self._url
        if url is not None:
            return url
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise PublishError(f"SQS publish to {self.queue_name} timed out resolving the "
                               "queue URL")
        try:
            if self._url is None:
                kwargs: dict[str, Any] = {"QueueName": self.queue}
                if self.owner_account:
                    kwargs["QueueOwnerAWSAccountId"] = self.owner_account
                self._url = str(self._call("get_queue_url", deadline, kwargs)["QueueUrl"])
            return self._url
        finally:
            self._lock.release()

    def publish(
        self,
        body: str | bytes,
        *,
        headers: Mapping[str, AttributeValue] | None = None,
        delay: int | None = None,
        group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> str:
        """Send one message; returns its message id.

        ``headers`` become message attributes: ``str`` (``String``), ``bytes`` (``Binary``),
        ``int`` / ``float`` / ``Decimal`` (``Number``), or a dict in SQS's own form
        (``{"DataType": "Number.float", "StringValue": "1.5"}``) for custom data types.
        ``delay`` (0 to 900 s) postpones delivery; ``group_id`` and ``deduplication_id`` are for
        FIFO queues.
        """
        entry = _entry(Outgoing(body, headers, delay, group_id, deduplication_id))
        deadline = self._deadline()
        url = self._queue_url(deadline)
        with self._span(self.queue_name):
            self._inject(entry)
            response = self._call("send_message", deadline, dict(entry, QueueUrl=url))
        return str(response["MessageId"])

    def publish_batch(self, messages: Iterable[str | bytes | Outgoing]) -> list[str]:
        """Send messages with ``SendMessageBatch`` (10 per call, and at most 256 KiB per call);
        returns their message ids in order. Raises :class:`PublishError` naming every message
        SQS did not accept (after sending all the others it could) and the ids of those it
        accepted, so nothing is lost silently."""
        entries = [
            _entry(m if isinstance(m, Outgoing) else Outgoing(m)) for m in messages
        ]
        if not entries:
            return []
        deadline = self._deadline()
        url = self._queue_url(deadline)
        ids: list[str | None] = [None] * len(entries)
        failures: list[tuple[int, str, str, bool]] = []
        with self._span(self.queue_name):
            for entry in entries:
                self._inject(entry)
            chunks = list(_chunks(entries))
            for n, chunk in enumerate(chunks):
                try:
                    response = self._call("send_message_batch", deadline, {
                        "QueueUrl": url,
                        "Entries": [dict(entries[i], Id=str(i)) for i in chunk],
                    })
                except PublishError as exc:
                    # Say which went and which did not.
                    failures.extend((i, "NotSent", str(exc), False)
                                    for rest in chunks[n:] for i in rest)
                    raise PublishError(
                        f"SQS publish to {self.queue_name}: {len(failures)} of {len(entries)} "
                        f"message(s) not sent: {exc}", failures, ids,
                    ) from exc
                for item in response.get("Successful", ()):
                    ids[int(item["Id"])] = str(item["MessageId"])
                for item in response.get("Failed", ()):
                    failures.append((int(item["Id"]), str(item.get("Code", "")),
                                     str(item.get("Message", "")),
                                     bool(item.get("SenderFault"))))
        if failures:
            failures.sort()
            first = failures[0]
            raise PublishError(
                f"SQS refused {len(failures)} of {len(entries)} message(s) for "
                f"{self.queue_name}; first: #{first[0]} {first[1]}: {first[2]}", failures, ids,
            )
        return [i for i in ids if i is not None]

    def close(self) -> None:
        """Close the client's connections when the publisher made the client. Never raises."""
        if self._own_client:
            try:
                self.client.close()
            except Exception:
                logger.debug("SQS publisher for %s: closing the client", self.queue_name,
                             exc_info=True)

    def _call(self, operation: str, deadline: float, kwargs: Mapping[str, Any]) -> Any:
        """Call ``operation``; a transient failure (connection refused, throttling, a server
        error) is tried again after a short, growing pause while the deadline allows. Any
        failure left raises :class:`PublishError`."""
        attempt = 0
        while True:
            if time.monotonic() >= deadline:
                raise PublishError(f"SQS {operation} to {self.queue_name} timed out after "
                                   f"{self.publish_timeout:g}s")
            started = time.perf_counter()
            try:
                response = getattr(self.client, operation)(**kwargs)
            except Exception as exc:
                self._durations[False].observe(time.perf_counter() - started)
                pause = _RETRY_PAUSE * 2 ** attempt * (0.5 + random.random() / 2)
                if _client.is_transient(exc) and time.monotonic() + pause < deadline:
                    attempt += 1
                    time.sleep(pause)
                    continue
                code = _client.error_code(exc) or type(exc).__name__
                raise PublishError(
                    f"SQS {operation} to {self.queue_name} failed: {_client.describe(exc)}",
                    [(0, code, _client.describe(exc), _client.is_sender_fault(exc))],
                ) from exc
            self._durations[True].observe(time.perf_counter() - started)
            return response

    def _inject(self, entry: dict[str, Any]) -> None:
        """Add the correlation id and the active span's context within SQS's limits."""
        attributes: dict[str, dict[str, Any]] = entry.setdefault("MessageAttributes", {})
        size = _size(entry["MessageBody"], attributes)
        left_out: list[str] = []
        for name, value in self._context(attributes).items():
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
    if message.headers:
        entry["MessageAttributes"] = {
            name: _attribute(name, value) for name, value in message.headers.items()
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
