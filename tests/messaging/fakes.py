"""An in-memory transport for the consumer loop: the core is pure logic, so this is its broker.

It behaves like a small queue broker: ``push`` adds messages, ``fetch`` hands them out (waiting
on a condition, never sleeping), ``settle`` records every decision and puts nacked-with-requeue
messages back at the front (like AMQP), ``close`` gives back what was fetched and not
acknowledged. Failures are scripted per method.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

from patron.messaging import Batch, Message, MessageState
from patron.messaging._loop import Counts, TransportBase

__all__ = ["FakeTransport", "ScriptedTransport", "Settled"]


class Settled:
    """What ``settle`` saw for one batch: (body, state, requeue, error) per message."""

    def __init__(self, batch: Batch) -> None:
        self.items = [(m.body, m.state, m.requeue, m.error) for m in batch]

    def bodies(self, state: MessageState) -> list[bytes]:
        return [body for body, s, _, _ in self.items if s is state]


class FakeTransport(TransportBase):
    def __init__(self, *, supports_nack: bool = True) -> None:
        self.supports_nack = supports_nack
        self._cond = threading.Condition()
        self._queue: collections.deque[Message] = collections.deque()
        self._outstanding: dict[int, Message] = {}
        self.connect_errors: list[BaseException] = []
        self.fetch_errors: list[BaseException | None] = []  # None: that fetch succeeds
        self.settle_errors: list[BaseException] = []
        self.connects = 0
        self.closes = 0
        self.fetches = 0
        self.settled: list[Settled] = []
        self.acked: list[bytes] = []
        self.given_back: list[bytes] = []
        self.open = False
        self.starts: list[bool] = []  # starts_batch of every fetch
        self.recorded: dict[tuple[str, object, bool], int] = {}
        self.probes = 0

    # -- test side ---------------------------------------------------------------------------

    def push(self, *bodies: bytes | str, key: bytes | None = None,
             headers: dict[str, object] | None = None) -> None:
        with self._cond:
            for body in bodies:
                data = body.encode() if isinstance(body, str) else body
                self._queue.append(Message(data, key=key, headers=headers, source="q",
                                           transport="fake", nackable=self.supports_nack))
            self._cond.notify_all()

    def wait_settled(self, count: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.settled) >= count, timeout)

    def wait_acked(self, count: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.acked) >= count, timeout)

    # -- Transport ---------------------------------------------------------------------------

    def connect(self) -> None:
        self.connects += 1
        if self.connect_errors:
            raise self.connect_errors.pop(0)
        self.open = True
        self.subscribed()

    def subscribed(self) -> None:
        """Called by connect: from now on the transport can deliver."""
        self.connected = True

    def fetch(self, max_messages: int, timeout: float, starts_batch: bool) -> Sequence[Message]:
        assert self.open, "fetch on a closed transport"
        self.fetches += 1
        self.starts.append(starts_batch)
        error = self.fetch_errors.pop(0) if self.fetch_errors else None
        if error is not None:
            raise error
        with self._cond:
            self._cond.wait_for(lambda: bool(self._queue), timeout)
            got = []
            while self._queue and len(got) < max_messages:
                message = self._queue.popleft()
                self._outstanding[id(message)] = message
                got.append(message)
            return got

    def settle(self, batch: Batch) -> None:
        if self.settle_errors:
            raise self.settle_errors.pop(0)
        with self._cond:
            self.settled.append(Settled(batch))
            redeliver = []
            for message in batch:
                if message.state is MessageState.PENDING:
                    continue
                del self._outstanding[id(message)]
                if message.state is MessageState.ACKED:
                    self.acked.append(message.body)
                elif message.requeue:
                    redeliver.append(Message(message.body, key=message.key, source="q",
                                             transport="fake"))
            self._queue.extendleft(reversed(redeliver))
            self._cond.notify_all()

    def record(self, counts: Counts) -> None:
        with self._cond:
            for key, n in counts.items():
                self.recorded[key] = self.recorded.get(key, 0) + n

    def probe(self) -> None:
        self.probes += 1

    def close(self) -> None:
        self.closes += 1
        self.open = False
        with self._cond:
            for message in self._outstanding.values():
                self.given_back.append(message.body)
                self._queue.appendleft(Message(message.body, source="q", transport="fake"))
            self._outstanding.clear()
            self._cond.notify_all()


class ScriptedTransport(TransportBase):
    """Hands out messages in scripted chunk sizes (0 = an empty fetch), then sets ``stop``."""

    supports_nack = False

    def __init__(self, chunks: list[int], stop: threading.Event) -> None:
        self._chunks = collections.deque(chunks)
        self._stop = stop
        self._next = 0
        self.produced: list[bytes] = []

    def connect(self) -> None:
        pass

    def fetch(self, max_messages: int, timeout: float, starts_batch: bool) -> Sequence[Message]:
        if not self._chunks:
            self._stop.set()
            return []
        size = self._chunks.popleft()
        if size > max_messages:  # the rest arrives with the next fetch
            self._chunks.appendleft(size - max_messages)
            size = max_messages
        got = []
        for _ in range(size):
            body = str(self._next).encode()
            self._next += 1
            self.produced.append(body)
            got.append(Message(body, source="s", transport="fake", nackable=False))
        return got

    def settle(self, batch: Batch) -> None:
        pass

    def record(self, counts: Counts) -> None:
        pass

    def close(self) -> None:
        pass
