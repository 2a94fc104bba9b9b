"""The classic gRPC Greeter as a patron service.

Environment: the ``PATRON_*`` variables of every service; the gRPC server listens on
``PATRON_GRPC_PORT`` (default 50051; 0 picks a free one), and the default HTTP component on
``PATRON_HTTP_DEFAULT_PORT`` (50000) serves /alive, /ready and /metrics.

Run it from the repository root with ``python -m patron samples.grpc_greeter``
and call it with patron's client::

    python -c "from patron.grpc import channel; from samples import greeter_pb2 as pb, \\
    greeter_pb2_grpc as rpc; print(rpc.GreeterStub(channel('localhost:50051')).SayHello(\\
    pb.HelloRequest(name='world')).message)"

or, since reflection is on, with ``grpcurl -plaintext -d '{"name": "world"}'
localhost:50051 helloworld.Greeter/SayHello``. ``grpc.health.v1.Health/Check`` answers
NOT_SERVING as soon as the service starts shutting down.

The stubs ``samples/greeter_pb2.py`` and ``samples/greeter_pb2_grpc.py`` are generated from
``samples/greeter.proto`` by ``python samples/generate_stubs.py``.
"""

from __future__ import annotations

from typing import Any

from patron import Service
from patron.grpc import GRPCComponent
from samples import greeter_pb2, greeter_pb2_grpc

__all__ = ["Greeter", "service"]


class Greeter(greeter_pb2_grpc.GreeterServicer):
    """Answers ``SayHello`` with a greeting containing the name; runs in gRPC worker threads."""

    def SayHello(
        self, request: greeter_pb2.HelloRequest, context: Any
    ) -> greeter_pb2.HelloReply:
        return greeter_pb2.HelloReply(message=f"Hello, {request.name}!")


def service(*, default_http: bool = True) -> Service:
    """The greeter service: the Greeter on ``PATRON_GRPC_PORT``, health tied to readiness."""
    greeter = Service("grpc-greeter", "1.0.0", default_http=default_http)
    greeter.add_component(GRPCComponent(
        greeter.config.grpc_port,
        servicers=[(greeter_pb2_grpc.add_GreeterServicer_to_server, Greeter())],
        readiness=greeter.ready,
        reflection=True,
    ))
    return greeter
