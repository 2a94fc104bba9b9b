"""The base of every consumer component: ``concurrency`` loops supervised as one component."""

from __future__ import annotations

import logging
import threading
import weakref
from typing import ClassVar

from patron import metrics
from patron.messaging._loop import ConsumerLoop, Transport
from patron.messaging._message import Processor
from patron.messaging._options import ConnectionRetry, FailureStrategy, Retry

__all__ = ["Consumer"]

#: how often the component thread looks at the Service's stop event while its loops run
_WATCH_INTERVAL = 0.1

_CONNECTED = metrics.gauge(
    "component_consumer_connected",
    "Connections of a consumer component that can deliver right now (0 to its concurrency)",
    ["name"],
)


class Consumer:
    """A consumer component: ``concurrency`` :class:`ConsumerLoop` objects, each with a
    transport of its own, made by :meth:`_transport`.

    Threads
        :meth:`run` runs in the component thread. With ``concurrency=1`` the one loop runs
        there. With more, it starts one thread per loop (``patron-<name>-<i>``) and watches
        them: when one loop fails the others are stopped, all are joined and the first error
        is raised; setting ``stop`` stops all. **With concurrency above 1 the processor is
        called from several threads at once** and must be thread-safe.

    Readiness
        :meth:`ready` is true once every loop connected at least once (subscribed; Kafka:
        partitions assigned), and stays true through rebalances and reconnects while the
        loops retry: a short broker hiccup must not take a service's HTTP routes out of load
        balancing. It turns false as soon as one loop gives up, and when the component stops.
        Whether the connections work right now is the ``component_consumer_connected{name}``
        gauge.

    Statistics
        Every ``stats_interval`` seconds the first loop reads the broker's statistics (a
        queue's size), or every loop when :attr:`_stats_per_loop` says they differ per
        connection (Kafka: each member's own partitions).

    Stop deadline
        The Service calls :meth:`stop_by` just before it sets ``stop``, with the
        ``time.monotonic()`` by which :meth:`run` must have returned (what is left of its
        shutdown budget); each transport bounds the waits of its closing with it. The batch in
        hand is still finished first: a processor call is never cut short.
    """

    #: whether each loop reads statistics of its own (Kafka lag) rather than one for all
    _stats_per_loop: ClassVar[bool] = False

    def __init__(
        self,
        *,
        name: str,
        processor: Processor,
        batch_size: int,
        batch_timeout: float,
        failure: FailureStrategy | str,
        processing_retry: Retry | None,
        connection_retry: ConnectionRetry | None,
        concurrency: int,
        stats_interval: float,
        connect_timeout: float,
        log: logging.Logger,
        poll_timeout: float = 0.25,
        requeue: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, not {connect_timeout}")
        self.name = name
        self.concurrency = concurrency
        self.connect_timeout = connect_timeout
        self._log = log
        self._loops = [
            ConsumerLoop(
                self._transport(index),
                processor,
                name=self._loop_name(index),
                batch_size=batch_size,
                batch_timeout=batch_timeout,
                poll_timeout=poll_timeout,
                failure=failure,
                retry=processing_retry,
                connection=connection_retry,
                requeue=requeue,
                stats_interval=stats_interval if index == 0 or self._stats_per_loop else 0.0,
                log=log,
            )
            for index in range(concurrency)
        ]
        self._running = False
        self._gave_up = False  # a loop failed: the others are being stopped
        me = weakref.ref(self)  # the gauge must not keep a finished consumer alive

        def connected() -> float:
            consumer = me()
            return 0 if consumer is None else consumer._connected()

        _CONNECTED.labels(name).set_function(connected)

    def _loop_name(self, index: int) -> str:
        """The name of loop ``index`` in logs and thread names: the component's own when it is
        the only one."""
        return self.name if self.concurrency == 1 else f"{self.name}-{index}"

    def _transport(self, index: int) -> Transport:
        """The transport of loop ``index`` (0 to ``concurrency - 1``); called by the
        constructor, after the subclass set its own attributes."""
        raise NotImplementedError

    def _describe(self) -> str:
        """What the component consumes, for its start log line."""
        raise NotImplementedError

    def _connected(self) -> int:
        return sum(loop.transport.connected for loop in self._loops)

    def stop_by(self, deadline: float) -> None:
        """Bound the stop about to be asked for by ``deadline`` (``time.monotonic()``); see the
        class docstring. Called from the Service's supervisor thread; never blocks."""
        for loop in self._loops:
            loop.stop_by(deadline)

    def ready(self) -> bool:
        """See the class docstring; any thread."""
        return (self._running and not self._gave_up
                and all(loop.transport.has_connected for loop in self._loops))

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set. Raises ``ProcessingError``, ``TransportError`` or
        ``PermanentError`` (from :mod:`patron.messaging`) once every connection is closed."""
        self._log.info("%s: consuming %s (concurrency %d)", self.name, self._describe(),
                       self.concurrency)
        self._running, self._gave_up = True, False
        try:
            if len(self._loops) == 1:
                self._loops[0].run(stop)
            else:
                self._run_loops(stop)
        finally:
            self._running = False
        self._log.info("%s: stopped", self.name)

    def _run_loops(self, stop: threading.Event) -> None:
        inner = threading.Event()  # stops every loop: set on stop, or when one of them ends
        errors: list[BaseException] = []

        def run_loop(loop: ConsumerLoop) -> None:
            try:
                loop.run(inner)
            except BaseException as exc:  # handed to the component thread, which raises it
                self._gave_up = True
                errors.append(exc)
            finally:
                inner.set()

        # Daemon threads only so that a wedged one cannot hang the interpreter: joined below.
        threads = [
            threading.Thread(target=run_loop, args=(loop,), name=f"patron-{loop.name}",
                             daemon=True)
            for loop in self._loops
        ]
        try:
            for thread in threads:
                thread.start()
            while not inner.is_set() and not stop.wait(_WATCH_INTERVAL):
                pass
        finally:
            inner.set()
            for thread in threads:
                if thread.ident is not None:  # started
                    thread.join()
        for other in errors[1:]:  # the first is raised, with the component's usual log line
            self._log.error("%s: another loop failed too: %r", self.name, other)
        if errors:
            raise errors[0]
        if not stop.is_set():
            raise RuntimeError(f"{self.name}: a loop ended before the component was stopped")
