"""The Component protocol: a long-running task that a Service runs in its own thread.

A component implements ``run(stop)``. The Service calls it once, in a thread of its own, and
expects it to block until ``stop`` is set and then return (a clean stop), or to raise (a
failure, which shuts the whole Service down). Returning before ``stop`` is set counts as an
unexpected exit and shuts the Service down too.

Optional members refine how the Service sees a component; each is a small protocol of its own
(checkable with ``isinstance``):

* :class:`Named` ``name``: used in logs, metrics and exit messages; the class name otherwise.
* :class:`Ready` ``ready() -> bool``: readiness; ``GET /ready`` answers 503 while any component
  is not ready. Called from HTTP worker threads, so it must be cheap and thread-safe.
* :class:`Alive` ``alive() -> bool``: liveness; ``GET /alive`` answers 503 while any component
  is not alive. Same rules as ``ready``.
* :class:`StopsLast` ``stop_last``: when true, the component is told to stop only once every
  other component has stopped, and gets at least a second for it even when the others used up
  the shutdown timeout: for components the others need to the end, such as the default HTTP
  component, which serves health checks and metrics.
* :class:`StopsBy` ``stop_by(deadline)``: called in the Service's supervisor thread just before
  the stop event is set, with the ``time.monotonic()`` by which the component must have
  returned: the time left of the one shutdown budget. A component bounds its own waits with it
  (a server's grace for requests in flight, a client's last commit); it must not block.
  :func:`time_left` gives what is left of it, less :data:`STOP_RESERVE`.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = [
    "STOP_RESERVE",
    "Alive",
    "Component",
    "Named",
    "Probes",
    "Ready",
    "StopsBy",
    "StopsLast",
    "is_alive",
    "is_ready",
    "name_of",
    "stops_last",
    "time_left",
]

#: seconds a component keeps back from its ``stop_by`` deadline: its drain (requests in flight,
#: a last commit) ends that much earlier, so that cancelling what still runs, joining threads and
#: returning fit before the deadline, on a busy machine too; a component returning right at the
#: deadline would be reported as not stopping in time
STOP_RESERVE = 0.5


def time_left(deadline: float, reserve: float = STOP_RESERVE) -> float:
    """Seconds from now until ``reserve`` before ``deadline`` (``time.monotonic()``); 0 once
    that has passed."""
    return max(0.0, deadline - reserve - time.monotonic())

@runtime_checkable
class Component(Protocol):
    def run(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set, then return; raise on failure. Runs in its own thread."""


@runtime_checkable
class Named(Protocol):
    name: str


@runtime_checkable
class Ready(Protocol):
    def ready(self) -> bool:
        """Whether the component can take work now; any thread, cheap."""


@runtime_checkable
class Alive(Protocol):
    def alive(self) -> bool:
        """Whether the component works at all (false: restart the process); any thread."""


@runtime_checkable
class StopsLast(Protocol):
    stop_last: bool


@runtime_checkable
class StopsBy(Protocol):
    def stop_by(self, deadline: float) -> None:
        """Learn the ``time.monotonic()`` deadline of the stop about to be asked for."""


class Probes(Ready, Alive, Protocol):
    """Readiness and liveness of a whole service, and whether it is shutting down: what the
    default HTTP component asks (a :class:`patron.Service` is one). Any thread; cheap."""

    @property
    def draining(self) -> bool:
        """True from the moment shutdown starts (readiness turned false for good)."""


def name_of(component: object) -> str:
    name = getattr(component, "name", None)
    return name if isinstance(name, str) and name else type(component).__name__


# getattr rather than isinstance(component, Ready): from Python 3.12 on, isinstance with a
# runtime protocol does not see members a wrapper provides through __getattr__.
def is_ready(component: object) -> bool:
    probe = getattr(component, "ready", None)
    return True if probe is None else bool(probe())


def is_alive(component: object) -> bool:
    probe = getattr(component, "alive", None)
    return True if probe is None else bool(probe())


def stops_last(component: object) -> bool:
    return bool(getattr(component, "stop_last", False))
