"""GRPCComponent: a grpcio server run as a patron component.

Threads
    :meth:`GRPCComponent.run` runs in the component thread the Service gives it: it builds and
    starts the server, then polls the readiness callable every ``health_interval`` seconds until
    ``stop`` is set, then stops the server. RPC handlers run in a bounded pool of
    ``max_workers`` threads named ``patron-<name>-worker_N``; grpcio runs its own polling
    threads.

Stop
    When ``stop`` is set: the health service answers NOT_SERVING for good, the server stops
    accepting RPCs (new calls get UNAVAILABLE), open health ``Watch`` streams end, in-flight RPCs
    get ``grace`` seconds (default 10, and never past the Service's shutdown deadline, see
    :meth:`GRPCComponent.stop_by`) to finish, then grpcio cancels what is
    left (the client sees UNAVAILABLE and ``context.is_active()`` turns false); ``run`` returns
    once every handler has returned. A handler that ignores cancellation keeps its worker
    thread, and the Service names the component as not stopped at its shutdown timeout: long
    handlers should check ``context.is_active()`` or use ``context.add_callback()``.

Port
    ``port`` defaults to ``PATRON_GRPC_PORT`` (read with the other ``PATRON_*`` settings by
    :class:`patron.config.Config`; 50051 when unset); ``0`` picks a free port, readable from
    :attr:`GRPCComponent.port` once :meth:`GRPCComponent.wait_started` returned True.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any

import grpc

from patron.component import time_left
from patron.config import DEFAULT_GRACE, DEFAULT_HOST, Config
from patron.grpc.health import Health
from patron.grpc.interceptors import DEFAULT_ERROR_CODES, ObservabilityInterceptor

__all__ = ["DEFAULT_MAX_MESSAGE_LENGTH", "DEFAULT_MAX_WORKERS", "GRPCComponent", "Servicer"]

logger = logging.getLogger("patron.grpc")

DEFAULT_MAX_WORKERS = 10
DEFAULT_MAX_MESSAGE_LENGTH = 4 * 1024 * 1024  # grpcio's own default, made explicit

Servicer = tuple[Callable[[Any, Any], None], object]
"""A generated ``add_XServicer_to_server`` function and the servicer instance it registers."""


class _Registrar:
    """Stands in for the server while servicers register, to learn their service names."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server
        self.services: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        handlers = tuple(handlers)
        for handler in handlers:
            service_name = getattr(handler, "service_name", None)
            if callable(service_name):
                self._note(service_name())
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self._note(service)
        self._server.add_registered_method_handlers(service, handlers)

    def _note(self, service: object) -> None:
        if isinstance(service, str) and service and service not in self.services:
            self.services.append(service)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class GRPCComponent:
    """A gRPC server with health, optional reflection, observability and graceful stop.

    ``servicers`` are ``(add_XServicer_to_server, servicer)`` pairs from generated code;
    ``handlers`` are extra ``grpc.GenericRpcHandler`` objects. Both may also be added with
    :meth:`add_servicer` / :meth:`add_handler` before the component runs.

    ``readiness`` (for example ``service.ready``) ties the ``grpc.health.v1`` status of the
    server (``""``) and of every registered service to the Service: SERVING only while it
    returns True and the server runs, so probes see NOT_SERVING during drain and shutdown.
    It is polled every ``health_interval`` seconds (``Watch`` streams see changes then) and
    called at every ``Check``. Without it, the status is SERVING while the server runs.

    Options: ``host`` to bind (default all interfaces); ``max_workers`` threads run handlers;
    ``max_concurrent_rpcs`` (default unlimited) makes grpcio answer RESOURCE_EXHAUSTED beyond
    that many RPCs in progress instead of queueing them; ``max_receive_message_length`` and
    ``max_send_message_length`` in bytes (larger messages fail with RESOURCE_EXHAUSTED);
    ``keepalive_time`` / ``keepalive_timeout`` / ``max_connection_idle`` / ``max_connection_age``
    in seconds (grpcio's defaults when None); ``options`` are raw grpcio channel arguments that
    override everything else; ``credentials`` (``grpc.ssl_server_credentials(...)``) serve TLS;
    ``reflection`` registers the reflection service; ``interceptors`` run inside patron's
    :class:`~patron.grpc.interceptors.ObservabilityInterceptor`; ``error_codes`` are the status
    codes logged at ERROR.

    Construction raises ``ValueError`` on a bad option and
    :class:`~patron.config.ConfigError` on a bad ``PATRON_*`` variable when ``port`` is None;
    :meth:`run` raises ``RuntimeError`` when the address cannot be bound.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        servicers: Iterable[Servicer] = (),
        handlers: Iterable[grpc.GenericRpcHandler] = (),
        readiness: Callable[[], bool] | None = None,
        host: str = DEFAULT_HOST,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_concurrent_rpcs: int | None = None,
        grace: float = DEFAULT_GRACE,
        health_interval: float = 0.2,
        reflection: bool = False,
        credentials: grpc.ServerCredentials | None = None,
        max_receive_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        max_send_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        keepalive_time: float | None = None,
        keepalive_timeout: float | None = None,
        max_connection_idle: float | None = None,
        max_connection_age: float | None = None,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        error_codes: Iterable[grpc.StatusCode] = DEFAULT_ERROR_CODES,
        name: str = "grpc",
    ) -> None:
        self._wanted_port = Config.from_env().grpc_port if port is None else port
        if not 0 <= self._wanted_port <= 65535:
            raise ValueError(f"port must be from 0 to 65535, not {self._wanted_port}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, not {max_workers}")
        if max_concurrent_rpcs is not None and max_concurrent_rpcs < 1:
            raise ValueError(f"max_concurrent_rpcs must be >= 1, not {max_concurrent_rpcs}")
        if grace < 0:
            raise ValueError(f"grace must be >= 0 seconds, not {grace}")
        if health_interval <= 0:
            raise ValueError(f"health_interval must be > 0 seconds, not {health_interval}")
        for label, length in (("max_receive_message_length", max_receive_message_length),
                              ("max_send_message_length", max_send_message_length)):
            if length < 1:
                raise ValueError(f"{label} must be >= 1 byte, not {length}")
        self.name = name
        self._host = host
        self._servicers: list[Servicer] = list(servicers)
        self._handlers: list[grpc.GenericRpcHandler] = list(handlers)
        self._readiness = readiness
        self._max_workers = max_workers
        self._max_concurrent_rpcs = max_concurrent_rpcs
        self._grace = grace
        self._health_interval = health_interval
        self._reflection = reflection
        self._credentials = credentials
        self._interceptors = (ObservabilityInterceptor(error_codes=error_codes), *interceptors)
        self._options = _server_options(
            max_receive_message_length, max_send_message_length, keepalive_time,
            keepalive_timeout, max_connection_idle, max_connection_age, options,
        )
        self._lock = threading.Lock()
        self._ran = False
        self._started = threading.Event()
        self._health: Health | None = None
        self._port: int | None = None
        self._deadline: float | None = None

    # -- composition -------------------------------------------------------------------------

    def add_servicer(self, add_to_server: Callable[[Any, Any], None], servicer: object) -> None:
        """Register ``servicer`` with its generated ``add_XServicer_to_server`` before running."""
        self._before_run()
        self._servicers.append((add_to_server, servicer))

    def add_handler(self, handler: grpc.GenericRpcHandler) -> None:
        """Register a ``grpc.GenericRpcHandler`` before running."""
        self._before_run()
        self._handlers.append(handler)

    def _before_run(self) -> None:
        if self._ran:
            raise RuntimeError("servicers and handlers must be added before the component runs")

    # -- health ------------------------------------------------------------------------------

    def ready(self) -> bool:
        """True while the server accepts RPCs (started and not stopping)."""
        health = self._health
        return health is not None and health.serving

    @property
    def port(self) -> int:
        """The bound port (useful with port 0); raises ``RuntimeError`` until it listens."""
        if self._port is None:
            raise RuntimeError(f"the gRPC component {self.name!r} is not listening yet")
        return self._port

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the server listens (True) or ``timeout`` passes (False)."""
        return self._started.wait(timeout)

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then stop gracefully; see the module docstring."""
        with self._lock:
            if self._ran:
                raise RuntimeError(f"component {self.name!r} already ran; build a new one")
            self._ran = True
        pool = futures.ThreadPoolExecutor(
            self._max_workers, thread_name_prefix=f"patron-{self.name}-worker"
        )
        try:
            server, health = self._build(pool)
            self._port = self._bind(server)
            server.start()
        except BaseException:
            pool.shutdown(wait=False)
            raise
        health.serving = True
        health.sync()
        self._started.set()
        logger.info(
            "gRPC component %s listening on %s:%d (%d workers, %s)",
            self.name, self._host, self.port, self._max_workers,
            "TLS" if self._credentials is not None else "plaintext",
        )
        try:
            while not stop.wait(self._health_interval):
                health.sync()
        finally:
            self._stop(server, health, pool)

    def _build(self, pool: futures.ThreadPoolExecutor) -> tuple[grpc.Server, Health]:
        server = grpc.server(
            pool,
            interceptors=self._interceptors,
            options=self._options,
            maximum_concurrent_rpcs=self._max_concurrent_rpcs,
        )
        registrar = _Registrar(server)
        for add_to_server, servicer in self._servicers:
            add_to_server(servicer, registrar)
        if self._handlers:
            registrar.add_generic_rpc_handlers(self._handlers)
        from grpc_health.v1 import health as health_module
        from grpc_health.v1 import health_pb2_grpc

        health = Health(self._readiness, registrar.services)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        if self._reflection:
            from grpc_reflection.v1alpha import reflection

            names = (*registrar.services, health_module.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, server)
        self._health = health
        return server, health

    def _bind(self, server: grpc.Server) -> int:
        address = f"{self._host}:{self._wanted_port}"
        try:
            if self._credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, self._credentials)
        except RuntimeError as exc:  # grpcio >= 1.56 raises; older versions return 0
            raise RuntimeError(f"grpc component {self.name!r} cannot listen on {address}: "
                               f"{exc}") from None
        if not port:
            raise RuntimeError(f"grpc component {self.name!r} cannot listen on {address}")
        return int(port)

    def stop_by(self, deadline: float) -> None:
        """The Service's shutdown deadline (``time.monotonic()``): in-flight RPCs get no more
        than what is left of it, so the gRPC component never makes the service overrun."""
        self._deadline = deadline

    def _stop(self, server: grpc.Server, health: Health, pool: futures.ThreadPoolExecutor) -> None:
        health.shutdown()
        grace = self._grace
        if self._deadline is not None:  # keeping time for cancelling and joining the handlers
            grace = min(grace, time_left(self._deadline))
        logger.info("gRPC component %s stopping; in-flight RPCs have %.1fs to finish",
                    self.name, grace)
        stopped = server.stop(grace)
        health.close_watches()
        stopped.wait()
        pool.shutdown(wait=True)  # the handlers grpcio cancelled at the grace deadline return
        logger.info("gRPC component %s stopped", self.name)


def _server_options(
    max_receive: int,
    max_send: int,
    keepalive_time: float | None,
    keepalive_timeout: float | None,
    max_connection_idle: float | None,
    max_connection_age: float | None,
    extra: Sequence[tuple[str, Any]],
) -> list[tuple[str, Any]]:
    options: dict[str, Any] = {
        "grpc.max_receive_message_length": max_receive,
        "grpc.max_send_message_length": max_send,
        # Without this, a second server on a taken port binds silently and steals traffic.
        "grpc.so_reuseport": 0,
    }
    for key, seconds in (
        ("grpc.keepalive_time_ms", keepalive_time),
        ("grpc.keepalive_timeout_ms", keepalive_timeout),
        ("grpc.max_connection_idle_ms", max_connection_idle),
        ("grpc.max_connection_age_ms", max_connection_age),
    ):
        if seconds is not None:
            if seconds <= 0:
                raise ValueError(f"{key.removeprefix('grpc.').removesuffix('_ms')} must be > 0 "
                                 f"seconds, not {seconds}")
            options[key] = int(seconds * 1000)
    options.update(dict(extra))
    return list(options.items())
