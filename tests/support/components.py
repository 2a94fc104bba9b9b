"""Running components in tests, and a processor that records what it got.

* :class:`Runner` runs one component's ``run(stop)`` in a thread, as a Service would, without
  the rest of the Service (the ``run`` fixture of ``tests/conftest.py`` stops every runner);
* :func:`running` runs components inside a real in-process Service without its HTTP component;
* :class:`Recorder` is a consumer processor that records bodies and correlation ids, and lets
  a test wait for a number of messages instead of sleeping.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from patron import Component, Config, Service, correlation
from patron.messaging import Batch, Message

__all__ = ["FAST", "Recorder", "Runner", "running"]

#: Service settings for in-process tests: no drain delay, a bounded shutdown.
FAST = Config(shutdown_timeout=15.0, drain_delay=0.0)


class Runner:
    """Runs ``component.run(stop)`` in a thread; the error it raised is kept in ``error``."""

    def __init__(self, component: Any, name: str = "test-component") -> None:
        self.component = component
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.component.run(self.stop)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = 20.0) -> BaseException | None:
        """Set stop, wait for ``run`` to return; its exception, or None."""
        self.stop.set()
        return self.ended(timeout)

    def ended(self, timeout: float = 20.0) -> BaseException | None:
        """Wait for ``run`` to return by itself; its exception, or None."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the component did not return within {timeout}s"
        return self.error


@contextlib.contextmanager
def running(*components: Component, config: Config = FAST) -> Iterator[Service]:
    """An in-process Service (no default HTTP) running ``components``; stopped at the end."""
    service = Service("test", "1", components=components, config=config,
                      default_http=False).start()
    try:
        yield service
    finally:
        service.stop()
        assert service.wait(30) is not None, "the service did not stop"


class Recorder:
    """A processor that records what it got; tests wait on it instead of sleeping.

    ``hook(batch)`` runs first for each call and may raise (a failing processor) or block.
    Thread-safe, so it serves consumers with ``concurrency`` above 1 too.
    """

    def __init__(self, hook: Callable[[Batch], None] | None = None) -> None:
        self.hook = hook
        self.batches: list[list[bytes]] = []
        self.correlation_ids: list[str] = []
        self.messages: list[Message] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, batch: Batch) -> None:
        if self.hook is not None:
            self.hook(batch)
        with self._cond:
            self.batches.append([m.body for m in batch])
            self.messages.extend(batch)
            self.correlation_ids.append(correlation.current() or "")
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    @property
    def bodies(self) -> list[bytes]:
        with self._cond:
            return [body for batch in self.batches for body in batch]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """The bodies processed, once there are at least ``count``; fails at ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: sum(map(len, self.batches)) >= count, timeout):
                got = sum(map(len, self.batches))
                raise AssertionError(f"{got} of {count} messages processed within {timeout}s")
            return [body for batch in self.batches for body in batch]
