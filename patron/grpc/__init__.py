"""gRPC transport: a server component and client helpers (needs the ``patron[grpc]`` extra).

* :class:`GRPCComponent` serves the user's servicers with the standard ``grpc.health.v1``
  service (tied to the Service's readiness), optional reflection, recovery, correlation id,
  tracing, logging and metrics, and a graceful stop.
* :func:`channel` makes a client channel whose calls carry the correlation id and trace
  context and are timed into ``client_grpc_rpc_duration_seconds``.

Example::

    service = Service("greeter", "1.0")
    service.add_component(GRPCComponent(
        servicers=[(add_GreeterServicer_to_server, Greeter())], readiness=service.ready))
"""

from patron.grpc._codes import code_name
from patron.grpc.client import ClientInterceptor, channel
from patron.grpc.component import GRPCComponent, Servicer
from patron.grpc.health import NOT_SERVING, SERVING
from patron.grpc.interceptors import CORRELATION_KEY, INTERNAL_DETAILS, ObservabilityInterceptor

__all__ = [
    "CORRELATION_KEY",
    "INTERNAL_DETAILS",
    "NOT_SERVING",
    "SERVING",
    "ClientInterceptor",
    "GRPCComponent",
    "ObservabilityInterceptor",
    "Servicer",
    "channel",
    "code_name",
]
