"""The server under the HTTP component: bad input, slow clients and the graceful drain."""

from __future__ import annotations

import http.client
import logging
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from patron.http import Request, Route
from tests.conftest import wait_for
from tests.http.conftest import Reply, Running, Serve

MAX_BODY = 1024
MAX_HEADER = 1024


def _echo_length(request: Request) -> str:
    return str(len(request.get_data()))


@pytest.fixture
def limited(serve: Serve) -> Running:
    return serve(
        routes=[Route(("GET", "POST"), "/echo", _echo_length)],
        http_max_body_size=MAX_BODY,
        http_max_header_size=MAX_HEADER,
    )


def _status(raw: bytes) -> int:
    status_line = raw.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1."), raw[:200]
    return int(status_line.split()[1])


def _assert_clean_error(raw: bytes, status: int) -> None:
    assert _status(raw) == status, raw[:300]
    assert b"Traceback" not in raw and b'File "' not in raw, raw


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"\x00\x01\x02\xff\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["garbage", "binary", "header-without-colon", "bad-length", "negative-length",
         "two-lengths", "bad-chunk-size"],
)
def test_malformed_requests_get_400_without_a_traceback(limited: Running, data: bytes) -> None:
    _assert_clean_error(limited.raw(data), 400)
    assert limited.get("/echo").status == 200  # and the server is fine


def test_a_body_over_the_limit_gets_413(limited: Running) -> None:
    big = b"a" * (MAX_BODY * 2)
    declared = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(big) + big
    )
    _assert_clean_error(limited.raw(declared), 413)
    chunked = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n"
    )
    _assert_clean_error(limited.raw(chunked), 413)
    reply = limited.request("POST", "/echo", body=b"a" * (MAX_BODY // 2))
    assert (reply.status, reply.text) == (200, str(MAX_BODY // 2))


def test_a_body_of_exactly_the_limit_is_accepted(limited: Running) -> None:
    reply = limited.request("POST", "/echo", body=b"a" * MAX_BODY)
    assert (reply.status, reply.text) == (200, str(MAX_BODY))
    assert limited.request("POST", "/echo", body=b"a" * (MAX_BODY + 1)).status == 413


def test_headers_over_the_limit_get_431(limited: Running) -> None:
    one_big = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (b"a" * MAX_HEADER * 2)
    _assert_clean_error(limited.raw(one_big), 431)
    many = b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"b" * 30) for i in range(MAX_HEADER // 30 + 5)
    ) + b"\r\n"
    _assert_clean_error(limited.raw(many), 431)


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_slow_clients_are_cut_off_at_the_read_timeout_while_others_are_served(
    serve: Serve,
) -> None:
    read_timeout = 1.0
    running = serve(routes=[Route("GET", "/echo", _echo_length)], http_read_timeout=read_timeout)
    port = running.port
    trickle = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200
    with socket.create_connection(("127.0.0.1", port)) as slow, \
            socket.create_connection(("127.0.0.1", port)) as silent:
        opened = time.monotonic()
        served: list[Reply] = []
        closed_after: float | None = None
        for byte in trickle:  # one byte at a time, 50 ms apart, until the server hangs up
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - opened
                break
            if not served:  # a legitimate client, on its own connection, meanwhile
                served.append(running.get("/echo"))
            readable, _, _ = select.select([slow], [], [], 0.05)
            if readable and _closed_by_peer(slow):
                closed_after = time.monotonic() - opened
                break
        assert closed_after is not None, "the slow client was never cut off"
        assert read_timeout * 0.9 <= closed_after <= read_timeout + 2.0, closed_after
        assert served[0].status == 200
        # A connection that never sends a byte is cut off by the same deadline.
        silent.settimeout(5)
        assert _closed_by_peer(silent)
        assert time.monotonic() - opened <= read_timeout + 2.0
    assert running.get("/echo").status == 200


class _Gate:
    """A handler that blocks until the test opens the gate; tells the test when it started."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def handler(self, request: Request) -> str:
        self.entered.set()
        if not self.release.wait(10):
            raise TimeoutError("the test never released the handler")
        return "finished"


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_lets_a_request_in_flight_finish_and_refuses_new_connections(serve: Serve) -> None:
    gate = _Gate()
    running = serve(routes=[Route("GET", "/slow", gate.handler)])
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(running.get, "/slow")
        assert gate.entered.wait(5)
        running.service.stop()
        wait_for(lambda: _refused(running.port), timeout=5)  # the listener closed
        assert not pending.done()
        gate.release.set()
        reply: Reply = pending.result(5)
    assert (reply.status, reply.text) == (200, "finished")
    # The response finished during the drain, so it tells the client not to reuse the connection.
    assert reply.headers["Connection"] == "close"
    assert running.service.wait(5) == 0


def test_keep_alive_connections_are_closed_after_their_response_during_the_drain(
    serve: Serve,
) -> None:
    gate = _Gate()
    running = serve(routes=[
        Route("GET", "/slow", gate.handler), Route("GET", "/fast", _echo_length),
    ])
    busy = running.connection()
    idle = running.connection()
    try:
        idle.request("GET", "/fast")  # an idle keep-alive connection once this is read
        response = idle.getresponse()
        response.read()
        assert response.getheader("Connection") != "close"

        busy.putrequest("GET", "/slow")
        busy.endheaders()
        assert gate.entered.wait(5)
        running.service.stop()
        assert idle.sock is not None
        idle.sock.settimeout(5)
        assert _closed_by_peer(idle.sock)  # idle connections are closed at once

        gate.release.set()
        response = busy.getresponse()
        assert (response.status, response.read()) == (200, b"finished")
        assert response.getheader("Connection") == "close"
    finally:
        gate.release.set()
        busy.close()
        idle.close()
    assert running.service.wait(5) == 0


def test_a_handler_still_running_at_the_shutdown_deadline_is_cut_and_the_stop_is_clean(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    gate = _Gate()
    running = serve(routes=[Route("GET", "/slow", gate.handler)], shutdown_timeout=1.0)
    conn = running.connection(timeout=10)
    try:
        conn.request("GET", "/slow")
        assert gate.entered.wait(5)
        with caplog.at_level(logging.WARNING, logger="patron"):
            stopping = time.monotonic()
            running.service.stop()
            status = running.service.wait(5)
            took = time.monotonic() - stopping
        # The connection was cut while the handler still ran: no response, not a late one.
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            conn.getresponse()
        assert not gate.release.is_set()
    finally:
        gate.release.set()
        conn.close()
    # The HTTP component bounded its drain by the shutdown deadline and returned in time, so
    # the stop is clean (0), not a component that failed to stop (3), and within the budget.
    assert status == 0, caplog.text
    assert took <= 1.0 + 1.0, took
    assert "1 connection(s) still busy" in caplog.text
    assert "did not stop" not in caplog.text
