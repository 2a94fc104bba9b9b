"""The ``grpc.health.v1`` service, tied to a readiness callable.

:class:`Health` is grpcio's reference health servicer with three changes: ``Check`` refreshes the
status from the readiness callable before answering, so a probe never sees a stale answer;
``Watch`` streams are tracked so that :meth:`Health.close_watches` can end them when the server
stops (otherwise every open ``Watch`` would hold the server's shutdown for the whole grace
period); and statuses are kept for the overall server (``""``) and every registered service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from grpc_health.v1 import health, health_pb2

__all__ = ["NOT_SERVING", "SERVING", "Health"]

logger = logging.getLogger("patron.grpc")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health(health.HealthServicer):
    """Health statuses that follow ``readiness``; every method is safe from any thread.

    ``readiness`` is called from :meth:`sync` (the component's run loop polls it) and from each
    ``Check`` (a grpcio worker thread). It must be cheap; when it raises, the server reports
    NOT_SERVING and the error is logged once. ``serving`` is the component's own state (the
    server started and is not stopping); the status is SERVING only when both agree.
    """

    def __init__(self, readiness: Callable[[], bool] | None, services: Iterable[str] = ()) -> None:
        super().__init__(experimental_non_blocking=True)
        self._readiness = readiness
        self._services = ("", *services)
        self._status_lock = threading.Lock()
        self._status = NOT_SERVING
        self._readiness_failed = False
        self.serving = False
        self._watches_lock = threading.Lock()
        self._watches: set[Callable[[Any], None]] = set()
        for service in self._services:
            super().set(service, NOT_SERVING)

    @property
    def status(self) -> int:
        """The current status: :data:`SERVING` or :data:`NOT_SERVING`."""
        return self._status

    def _ready(self) -> bool:
        if self._readiness is None:
            return True
        try:
            ready = bool(self._readiness())
        except Exception:
            if not self._readiness_failed:
                logger.warning("grpc: the readiness callable raised; NOT_SERVING", exc_info=True)
            self._readiness_failed = True
            return False
        self._readiness_failed = False
        return ready

    def sync(self) -> int:
        """Recompute the status; on a change, tell every Check and Watch caller. Returns it."""
        with self._status_lock:
            status = SERVING if self.serving and self._ready() else NOT_SERVING
            if status != self._status:
                self._status = status
                logger.info("grpc: health %s", health_pb2.HealthCheckResponse.ServingStatus.Name(
                    status))
                for service in self._services:
                    self.set(service, status)
            return status

    def Check(self, request: Any, context: Any) -> Any:
        self.sync()
        return super().Check(request, context)

    def Watch(
        self, request: Any, context: Any, send_response_callback: Any = None
    ) -> Any:
        if send_response_callback is None:  # a server without non-blocking support
            return super().Watch(request, context)
        send = _OnceClosed(send_response_callback)
        with self._watches_lock:
            self._watches.add(send)
        context.add_callback(lambda: self._forget(send))
        return super().Watch(request, context, send)

    def _forget(self, send: Callable[[Any], None]) -> None:
        with self._watches_lock:
            self._watches.discard(send)

    def shutdown(self) -> None:
        """NOT_SERVING for good: later :meth:`sync` calls change nothing."""
        with self._status_lock:
            self.serving = False
            if self._status != NOT_SERVING:
                logger.info("grpc: health NOT_SERVING")
            self._status = NOT_SERVING
            self.enter_graceful_shutdown()

    def close_watches(self) -> None:
        """End every open ``Watch`` stream with status OK (after its last NOT_SERVING)."""
        with self._watches_lock:
            watches, self._watches = list(self._watches), set()
        for send in watches:
            send(None)


class _OnceClosed:
    """A Watch's send callback that sends nothing after the stream was ended (``None``).

    grpcio's health servicer ends a stream again when it terminates; ending it twice would send
    a second status. Sends on one stream are serialized by a lock of its own.
    """

    __slots__ = ("_closed", "_lock", "_send")

    def __init__(self, send: Callable[[Any], None]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, response: Any) -> None:
        with self._lock:
            if self._closed:
                return
            if response is None:
                self._closed = True
            self._send(response)
