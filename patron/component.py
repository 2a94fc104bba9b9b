"""The Component protocol: a long-running task that a Service runs in its own thread.

A component implements ``run(stop)``. The Service calls it once, in a thread of its own, and
expects it to block until ``stop`` is set and then return (a clean stop), or to raise (a
failure, which shuts the whole Service down). Returning before ``stop`` is set counts as an
unexpected exit and shuts the Service down too.

Three optional members refine how the Service sees a component:

* ``name`` (str): used in logs, metrics and exit messages; the class name otherwise.
* ``ready() -> bool``: readiness; ``GET /ready`` answers 503 while any component is not ready.
  Called from HTTP worker threads, so it must be cheap and thread-safe.
* ``alive() -> bool``: liveness; ``GET /alive`` answers 503 while any component is not alive.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

__all__ = ["Component", "is_alive", "is_ready", "name_of"]


@runtime_checkable
class Component(Protocol):
    def run(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set, then return; raise on failure. Runs in its own thread."""


def name_of(component: object) -> str:
    name = getattr(component, "name", None)
    return name if isinstance(name, str) and name else type(component).__name__


def _probe(component: object, method: str) -> bool:
    probe = getattr(component, method, None)
    return True if probe is None else bool(probe())


def is_ready(component: object) -> bool:
    return _probe(component, "ready")


def is_alive(component: object) -> bool:
    return _probe(component, "alive")
