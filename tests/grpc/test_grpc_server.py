"""GRPCComponent with real grpcio servers and clients on loopback: calls, faults, bad input."""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from patron import correlation
from patron.grpc import INTERNAL_DETAILS, GRPCComponent, channel
from samples.greeter_pb2 import HelloRequest
from samples.greeter_pb2_grpc import GreeterStub, add_GreeterServicer_to_server
from samples.grpc_greeter import Greeter
from tests.conftest import wait_for
from tests.grpc.helpers import Running, handled, metric
from tests.grpc.servers import SECRET, Echo, EchoStub, method
from tests.support.jaeger import span_tags

Serve = Callable[..., Running]


def hello(name: str = "a") -> HelloRequest:
    return HelloRequest(name=name)


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


# -- calls of every kind ---------------------------------------------------------------------


def test_unary_call_through_generated_servicer_is_answered_and_counted(serve: Serve) -> None:
    running = serve(servicers=[(add_GreeterServicer_to_server, Greeter())], handlers=[])
    labels = {"grpc_type": "unary", "grpc_service": "helloworld.Greeter",
              "grpc_method": "SayHello", "grpc_code": "OK"}
    count_before = metric("component_grpc_handled_total", **labels)
    seconds_before = metric("component_grpc_handled_seconds_count", **labels)

    with running.channel() as ch:
        reply = GreeterStub(ch).SayHello(hello("world"), timeout=5)

    assert reply.message == "Hello, world!"
    assert metric("component_grpc_handled_total", **labels) == count_before + 1
    assert metric("component_grpc_handled_seconds_count", **labels) == seconds_before + 1


def test_all_three_streaming_kinds_work_and_are_counted_as_stream(
    serve: Serve, echo: Echo
) -> None:
    running = serve()
    before = {m: handled("OK", m, kind="stream") for m in ("Count", "Collect", "Chat")}

    with running.channel() as ch:
        stub = EchoStub(ch)
        counted = [r.message for r in stub.Count(hello("3"), timeout=5)]
        collected = stub.Collect(iter([hello("x"), hello("y"), hello("z")]), timeout=5)
        chatted = [r.message for r in stub.Chat(iter([hello("p"), hello("q")]), timeout=5)]

    assert counted == ["1", "2", "3"]
    assert collected.message == "x,y,z"
    assert chatted == ["echo p", "echo q"]
    for name, value in before.items():
        assert handled("OK", name, kind="stream") == value + 1, name


def test_correlation_id_is_taken_from_metadata_or_generated(serve: Serve, echo: Echo) -> None:
    running = serve()
    with running.channel() as ch:
        stub = EchoStub(ch)
        stub.Say(hello("given"), metadata=(("x-correlation-id", "corr-123"),), timeout=5)
        stub.Say(hello("missing"), timeout=5)
        stub.Say(hello("insane"), metadata=(("x-correlation-id", "has space"),), timeout=5)
        list(stub.Count(hello("2"), metadata=(("x-correlation-id", "corr-stream"),), timeout=5))

    by_request = {seen.request: seen.correlation_id for seen in echo.seen}
    assert by_request["given"] == "corr-123"
    for generated in (by_request["missing"], by_request["insane"]):
        assert generated is not None and len(generated) == 36 and generated.count("-") == 4
    assert by_request["2"] == "corr-stream"
    assert correlation.current() is None  # nothing leaked into the test's thread


def test_server_span_continues_the_callers_trace(serve: Serve, echo: Echo, tracer: Any) -> None:
    running = serve()
    with channel(running.address) as ch, tracer.start_active_span("caller") as scope:
        EchoStub(ch).Say(hello("traced"), timeout=5)
        caller = scope.span

    spans = {span.operation_name: span for span in tracer.reporter.get_spans()}
    client = spans["gRPC-client /patron.test.Echo/Say"]
    server = spans["gRPC-server /patron.test.Echo/Say"]
    assert client.context.trace_id == server.context.trace_id == caller.context.trace_id
    assert client.context.parent_id == caller.context.span_id
    assert server.context.parent_id == client.context.span_id
    assert span_tags(server)["span.kind"] == "server"
    assert echo.calls("Say")[0].span is server  # the span was active in the handler


def test_server_span_continues_a_trace_from_raw_jaeger_metadata(
    serve: Serve, tracer: Any
) -> None:
    running = serve()
    header = f"{0xABC123:x}:{0x42:x}:0:1"
    with running.channel() as ch:
        EchoStub(ch).Say(hello(), metadata=(("uber-trace-id", header),), timeout=5)

    (server,) = [s for s in tracer.reporter.get_spans() if s.operation_name.startswith("gRPC-s")]
    assert server.context.trace_id == 0xABC123
    assert server.context.parent_id == 0x42


# -- handlers that fail ----------------------------------------------------------------------


def test_handler_that_raises_answers_internal_without_leaking_its_text(
    serve: Serve, echo: Echo, tracer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="patron.grpc")
    running = serve()
    before = handled("Internal", "Fail")

    with running.channel() as ch:
        stub = EchoStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Fail(hello(), metadata=(("x-correlation-id", "corr-fail"),), timeout=5)
        assert stub.Say(hello("after"), timeout=5).message == "echo after"

    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == INTERNAL_DETAILS
    assert SECRET not in str(info.value.debug_error_string())
    assert handled("Internal", "Fail") == before + 1
    (record,) = [r for r in caplog.records if r.name == "patron.grpc"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert SECRET in caplog.text  # the operator sees what the caller does not
    assert getattr(record, "grpc_method", None) == "Fail"
    assert correlation.current() is None
    (server,) = [s for s in tracer.reporter.get_spans() if s.operation_name.endswith("/Fail")]
    assert span_tags(server)["error"] is True


def test_streaming_handler_that_raises_midway_answers_internal(
    serve: Serve, echo: Echo
) -> None:
    running = serve()
    before = handled("Internal", "CountThenFail", kind="stream")
    received = []
    with running.channel() as ch, pytest.raises(grpc.RpcError) as info:
        for reply in EchoStub(ch).CountThenFail(hello(), timeout=5):
            received.append(reply.message)

    assert received == ["1"]
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == INTERNAL_DETAILS
    assert handled("Internal", "CountThenFail", kind="stream") == before + 1


def test_status_chosen_by_the_handler_is_kept_without_exception_text(serve: Serve) -> None:
    running = serve()
    before = handled("InvalidArgument", "SetCodeRaise")
    with running.channel() as ch:
        stub = EchoStub(ch)
        with pytest.raises(grpc.RpcError) as aborted:
            stub.Abort(hello("thing"), timeout=5)
        with pytest.raises(grpc.RpcError) as set_code:
            stub.SetCodeRaise(hello(), timeout=5)

    assert aborted.value.code() == grpc.StatusCode.NOT_FOUND
    assert aborted.value.details() == "no thing"
    assert set_code.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert SECRET not in (set_code.value.details() or "")
    assert handled("InvalidArgument", "SetCodeRaise") == before + 1


def test_handler_exceeding_the_callers_deadline(serve: Serve, echo: Echo) -> None:
    running = serve()
    before = handled("DeadlineExceeded", "Slow")
    with running.channel() as ch:
        stub = EchoStub(ch)
        assert code_of(lambda: stub.Slow(hello(), timeout=0.3)) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert echo.ended.wait(5), "the handler never learned that its RPC ended"
        wait_for(lambda: handled("DeadlineExceeded", "Slow") == before + 1, timeout=5)
        assert stub.Say(hello("after"), timeout=5).message == "echo after"


def test_client_cancelling_a_server_stream_midway(serve: Serve, echo: Echo) -> None:
    running = serve()
    before = handled("Canceled", "Count", kind="stream")
    with running.channel() as ch:
        stub = EchoStub(ch)
        call = stub.Count(hello("forever"), timeout=10)
        assert [next(call).message for _ in range(3)] == ["1", "2", "3"]
        call.cancel()

        assert echo.closed.wait(5), "the handler's generator was not closed"
        wait_for(lambda: handled("Canceled", "Count", kind="stream") == before + 1, timeout=5)
        assert stub.Say(hello("after"), timeout=5).message == "echo after"


def test_client_cancelling_a_bidi_stream_midway(serve: Serve, echo: Echo) -> None:
    running = serve()
    def ended() -> float:
        # The client's cancel can half-close the request stream before its RST reaches the
        # server, which then ends the RPC with OK itself: either way it is counted once.
        return sum(handled(code, "Chat", kind="stream") for code in ("Canceled", "OK"))

    before = ended()
    outgoing: queue.Queue[HelloRequest | None] = queue.Queue()
    with running.channel() as ch:
        call = EchoStub(ch).Chat(iter(outgoing.get, None), timeout=10)
        outgoing.put(hello("one"))
        assert next(call).message == "echo one"
        outgoing.put(hello("two"))
        assert next(call).message == "echo two"
        call.cancel()

        assert echo.closed.wait(5), "the handler's generator was not closed"
        wait_for(lambda: ended() == before + 1, timeout=5)
        assert EchoStub(ch).Say(hello("after"), timeout=5).message == "echo after"
        outgoing.put(None)  # ends the request generator grpcio's sender thread may still hold


# -- bad input -------------------------------------------------------------------------------


def test_oversized_request_is_rejected_with_resource_exhausted(serve: Serve, echo: Echo) -> None:
    running = serve(max_receive_message_length=1024)
    with running.channel() as ch:
        stub = EchoStub(ch)
        code = code_of(lambda: stub.Say(hello("x" * 4096), timeout=5))
        assert stub.Say(hello("small"), timeout=5).message == "echo small"

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [s.request for s in echo.calls("Say")] == ["small"]


def test_oversized_response_is_rejected_with_resource_exhausted(serve: Serve) -> None:
    running = serve(max_send_message_length=1024)
    with running.channel() as ch:
        stub = EchoStub(ch)
        assert code_of(lambda: stub.Big(hello("4096"), timeout=5)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert len(stub.Big(hello("100"), timeout=5).message) == 100


def test_malformed_request_bytes_are_rejected_and_reach_no_handler(
    serve: Serve, echo: Echo
) -> None:
    running = serve()
    with running.channel() as ch:
        raw = ch.unary_unary(method("Say"))  # no serializer: the bytes go out as they are
        code = code_of(lambda: raw(b"\x0a\xff\x01garbage", timeout=5))
        assert EchoStub(ch).Say(hello("after"), timeout=5).message == "echo after"

    assert code == grpc.StatusCode.INTERNAL
    assert [s.request for s in echo.calls("Say")] == ["after"]


def test_garbage_on_the_connection_is_dropped_and_the_server_keeps_serving(
    serve: Serve,
) -> None:
    running = serve()
    port = running.component.port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
        while sock.recv(4096):  # the server answers what it can, then hangs up
            pass
    with running.channel() as ch:
        assert EchoStub(ch).Say(hello("after"), timeout=5).message == "echo after"


def test_unknown_methods_and_services_are_unimplemented(serve: Serve) -> None:
    running = serve()
    with running.channel() as ch:
        for name in ("/patron.test.Echo/Nope", "/no.such.Service/Method", "nonsense"):
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary(name)(b"", timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, name
        assert EchoStub(ch).Say(hello("after"), timeout=5).message == "echo after"


# -- pool, options, interceptors -------------------------------------------------------------


def test_max_concurrent_rpcs_rejects_the_excess(serve: Serve, echo: Echo) -> None:
    running = serve(max_workers=2, max_concurrent_rpcs=1)
    with running.channel() as ch:
        stub = EchoStub(ch)
        blocked = stub.Block.future(hello("first"), timeout=10)
        assert echo.started.acquire(timeout=5)
        assert code_of(lambda: stub.Say(hello(), timeout=5)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        echo.release.set()
        assert blocked.result(5).message == "released first"


def test_user_interceptors_run_inside_patrons(serve: Serve) -> None:
    seen: list[str | None] = []

    class Recording(grpc.ServerInterceptor):
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = continuation(details)
            if handler is None or handler.unary_unary is None:
                return handler
            inner = handler.unary_unary

            def behavior(request: Any, context: Any) -> Any:
                seen.append(correlation.current())
                return inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                behavior, handler.request_deserializer, handler.response_serializer
            )

    running = serve(interceptors=[Recording()])
    with running.channel() as ch:
        EchoStub(ch).Say(hello(), metadata=(("x-correlation-id", "corr-inner"),), timeout=5)
    assert seen == ["corr-inner"]


def test_tls(serve: Serve, tmp_path: Any) -> None:
    cert, key = _self_signed("localhost")
    running = serve(credentials=grpc.ssl_server_credentials([(key, cert)]))
    credentials = grpc.ssl_channel_credentials(root_certificates=cert)
    override = [("grpc.ssl_target_name_override", "localhost")]
    with channel(running.address, credentials=credentials, options=override) as ch:
        assert EchoStub(ch).Say(hello("tls"), timeout=5).message == "echo tls"
    with running.channel() as plain:
        assert code_of(lambda: EchoStub(plain).Say(hello(), timeout=2)) == (
            grpc.StatusCode.UNAVAILABLE
        )


def _self_signed(host: str) -> tuple[bytes, bytes]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_reflection_lists_the_services_when_enabled(serve: Serve) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    greeter = [(add_GreeterServicer_to_server, Greeter())]
    with_reflection = serve(servicers=greeter, reflection=True)
    without = serve(servicers=greeter)
    with with_reflection.channel() as ch:
        database = ProtoReflectionDescriptorDatabase(ch)
        services = set(database.get_services())
        greeter_file = database.FindFileContainingSymbol("helloworld.Greeter")
    with without.channel() as ch:
        code = code_of(lambda: ProtoReflectionDescriptorDatabase(ch).get_services())

    assert {"helloworld.Greeter", "patron.test.Echo", "grpc.health.v1.Health"} <= services
    assert greeter_file.name == "samples/greeter.proto"
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_a_taken_port_fails_run_with_the_address(serve: Serve) -> None:
    running = serve()
    port = running.component.port
    second = GRPCComponent(port, host="127.0.0.1")
    with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
        second.run(threading.Event())
    assert not second.ready()


def test_run_twice_is_refused(serve: Serve) -> None:
    running = serve()
    with pytest.raises(RuntimeError, match="already ran"):
        running.component.run(threading.Event())


@pytest.mark.parametrize("option", [
    {"port": 70000}, {"max_workers": 0}, {"grace": -1}, {"health_interval": 0},
    {"max_receive_message_length": 0}, {"max_concurrent_rpcs": 0}, {"keepalive_time": 0},
])
def test_bad_options_are_refused_at_construction(option: dict[str, Any]) -> None:
    kwargs = {"port": 0, **option}
    with pytest.raises(ValueError, match=next(iter(option)).split("_")[0]):
        GRPCComponent(**kwargs)

