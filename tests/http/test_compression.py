"""Compression of route answers, over real HTTP: codings, negotiation, what is left alone."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator

import brotli
import pytest
from werkzeug.wrappers import Response

from patron.http import Request, Route, RouteOptions
from patron.http.compression import Compression
from tests.http.conftest import Running, Serve

TEXT = ("patron compresses what is worth compressing. " * 200).encode()  # ~9 KB


def _text(request: Request) -> Response:
    return Response(TEXT, content_type="text/plain; charset=utf-8")


def _decode(coding: str, body: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "deflate":
        return zlib.decompress(body)  # the zlib format, as HTTP's "deflate" means
    if coding == "br":
        return bytes(brotli.decompress(body))
    raise AssertionError(coding)


def _vary(reply_headers: object) -> set[str]:
    values = reply_headers.get_all("Vary") or []  # type: ignore[attr-defined]
    return {v.strip().lower() for value in values for v in value.split(",")}


@pytest.fixture
def text_service(serve: Serve) -> Running:
    return serve(routes=[
        Route("GET", "/text", _text),
        Route("GET", "/plain", lambda request: TEXT.decode()),  # a plain str result
    ])


@pytest.mark.parametrize("coding", ["br", "gzip", "deflate"])
def test_each_coding_round_trips(text_service: Running, coding: str) -> None:
    for path in ("/text", "/plain"):
        reply = text_service.get(path, {"Accept-Encoding": coding})
        assert reply.status == 200
        assert reply.headers["Content-Encoding"] == coding
        assert int(reply.headers["Content-Length"]) == len(reply.body) < len(TEXT) // 5
        assert _decode(coding, reply.body) == TEXT
        assert "accept-encoding" in _vary(reply.headers)


@pytest.mark.parametrize(("accept", "expected"), [
    ("gzip, deflate, br", "br"),             # equal q: the server's order
    ("deflate, gzip", "gzip"),
    ("gzip;q=0.5, deflate", "deflate"),      # the higher q wins
    ("br;q=0.2, gzip;q=0.8, deflate;q=0.5", "gzip"),
    ("*", "br"),
    ("*;q=0.5, deflate", "deflate"),          # an explicit entry beats *
    ("br;q=0, *", "gzip"),                   # q=0 excludes
    ("x-gzip", "gzip"),                      # the alias
    ("GZIP;Q=1", "gzip"),                    # case-insensitive
    ("gzip;q=0, deflate;q=0, br;q=0", None),  # identity is still acceptable
    ("identity", None),
    ("compress, zstd", None),                # nothing we produce
    ("", None),                              # empty: no coding wanted
    ("gzip;q=oops", None),                   # a malformed q enables nothing
])
def test_the_coding_follows_the_q_values(
    text_service: Running, accept: str, expected: str | None
) -> None:
    reply = text_service.get("/text", {"Accept-Encoding": accept})
    assert reply.status == 200
    assert reply.headers.get("Content-Encoding") == expected
    assert (reply.body == TEXT) if expected is None else _decode(expected, reply.body) == TEXT
    assert "accept-encoding" in _vary(reply.headers)  # sent as is because of the request


def test_no_accept_encoding_header_sends_identity_but_varies(text_service: Running) -> None:
    conn = text_service.connection()
    try:
        conn.putrequest("GET", "/text", skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200 and body == TEXT
    assert response.headers.get("Content-Encoding") is None
    assert "accept-encoding" in _vary(response.headers)


def test_identity_excluded_and_nothing_else_acceptable_is_406(serve: Serve) -> None:
    def missing(request: Request) -> Response:
        return Response(TEXT, status=404)

    running = serve(routes=[Route("GET", "/text", _text), Route("GET", "/missing", missing)])
    for accept in ("identity;q=0", "*;q=0", "compress, identity;q=0",
                   "gzip;q=0, identity;q=0, br;q=0, deflate;q=0"):
        reply = running.get("/text", {"Accept-Encoding": accept})
        assert reply.status == 406, accept
        assert TEXT not in reply.body
        assert "accept-encoding" in _vary(reply.headers)
        assert running.request("HEAD", "/text", headers={"Accept-Encoding": accept}).status == 406
    # identity allowed again by its own entry, or a coding acceptable: no 406
    reply = running.get("/text", {"Accept-Encoding": "*;q=0, identity"})
    assert reply.status == 200 and reply.body == TEXT
    reply = running.get("/text", {"Accept-Encoding": "identity;q=0, deflate"})
    assert reply.status == 200 and _decode("deflate", reply.body) == TEXT
    # an error is sent as it is rather than hidden behind a 406
    reply = running.get("/missing", {"Accept-Encoding": "identity;q=0"})
    assert reply.status == 404 and reply.body == TEXT


def test_bodies_below_min_size_are_sent_as_they_are(serve: Serve) -> None:
    small = b"s" * 1023

    def small_response(request: Request) -> Response:
        return Response(small, content_type="text/plain")

    def sized_stream(request: Request) -> Response:  # a streamed body of known, small length
        return Response(iter([small[:500], small[500:]]), content_type="text/plain",
                        headers={"Content-Length": str(len(small))})

    running = serve(routes=[
        Route("GET", "/small", small_response),
        Route("GET", "/small-plain", lambda request: small),
        Route("GET", "/sized-stream", sized_stream),
        Route("GET", "/exact", lambda request: Response(b"e" * 1024, content_type="text/plain")),
    ])
    headers = {"Accept-Encoding": "gzip"}
    for path in ("/small", "/small-plain", "/sized-stream"):
        reply = running.get(path, headers)
        assert reply.status == 200 and reply.body == small, path
        assert reply.headers.get("Content-Encoding") is None, path
    assert "accept-encoding" in _vary(running.get("/small", headers).headers)
    reply = running.get("/exact", headers)  # min_size itself is compressed
    assert reply.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(reply.body) == b"e" * 1024


def test_min_size_and_level_and_codings_are_options(serve: Serve) -> None:
    running = serve(
        routes=[Route("GET", "/tiny", lambda request: "tiny")],
        route_options=RouteOptions(compression=Compression(min_size=0, level=9,
                                                           codings=("deflate", "gzip"))),
    )
    reply = running.get("/tiny", {"Accept-Encoding": "br, gzip, deflate"})
    assert reply.headers["Content-Encoding"] == "deflate"  # br not offered; deflate preferred
    assert zlib.decompress(reply.body) == b"tiny"
    with pytest.raises(ValueError, match="unknown codings"):
        Compression(codings=("zstd",))
    with pytest.raises(ValueError, match="level"):
        Compression(level=10)


def test_head_is_never_compressed(text_service: Running) -> None:
    headers = {"Accept-Encoding": "gzip"}
    reply = text_service.request("HEAD", "/text", headers=headers)
    assert reply.status == 200 and reply.body == b""
    assert reply.headers.get("Content-Encoding") is None
    assert reply.headers["Content-Length"] == str(len(TEXT))
    assert "accept-encoding" in _vary(reply.headers)
    assert text_service.get("/text", headers).headers["Content-Encoding"] == "gzip"


def test_already_encoded_and_precompressed_types_are_left_alone(serve: Serve) -> None:
    encoded = gzip.compress(TEXT)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20

    running = serve(routes=[
        Route("GET", "/encoded", lambda request: Response(
            encoded, content_type="text/plain", headers={"Content-Encoding": "gzip"})),
        Route("GET", "/png", lambda request: Response(png, content_type="image/png")),
        Route("GET", "/svg", lambda request: Response(TEXT, content_type="image/svg+xml")),
        Route("GET", "/no-transform", lambda request: Response(
            TEXT, content_type="text/plain", headers={"Cache-Control": "no-transform"})),
    ])
    headers = {"Accept-Encoding": "br, gzip"}
    reply = running.get("/encoded", headers)
    assert reply.headers["Content-Encoding"] == "gzip" and reply.body == encoded  # not twice
    reply = running.get("/png", headers)
    assert reply.headers.get("Content-Encoding") is None and reply.body == png
    reply = running.get("/no-transform", headers)
    assert reply.headers.get("Content-Encoding") is None and reply.body == TEXT
    reply = running.get("/svg", headers)  # an image type that is text: compressed
    assert reply.headers["Content-Encoding"] == "br" and _decode("br", reply.body) == TEXT


@pytest.mark.parametrize("status", [204, 206, 304])
def test_statuses_without_a_full_body_are_not_compressed(serve: Serve, status: int) -> None:
    def answer(request: Request) -> Response:
        response = Response(TEXT if status == 206 else b"", status=status,
                            content_type="text/plain")
        if status == 206:
            response.headers["Content-Range"] = f"bytes 0-{len(TEXT) - 1}/{len(TEXT) * 2}"
        return response

    running = serve(routes=[Route("GET", "/answer", answer), Route("GET", "/text", _text)])
    reply = running.get("/answer", {"Accept-Encoding": "gzip"})
    assert reply.status == status
    assert reply.headers.get("Content-Encoding") is None
    assert reply.body == (TEXT if status == 206 else b"")
    assert running.get("/text", {"Accept-Encoding": "gzip"}).headers["Content-Encoding"]


def test_vary_is_appended_and_strong_etags_become_weak(serve: Serve) -> None:
    def tagged(request: Request) -> Response:
        response = Response(TEXT, content_type="text/plain", headers={"Vary": "Cookie"})
        response.set_etag("v1")
        return response

    running = serve(routes=[Route("GET", "/tagged", tagged)])
    reply = running.get("/tagged", {"Accept-Encoding": "gzip"})
    assert reply.headers["Content-Encoding"] == "gzip"
    assert _vary(reply.headers) == {"cookie", "accept-encoding"}
    assert reply.headers["ETag"] == 'W/"v1"'
    reply = running.get("/tagged", {"Accept-Encoding": "identity"})
    assert reply.body == TEXT and reply.headers["ETag"] == '"v1"'  # the same bytes: strong
    assert _vary(reply.headers) == {"cookie", "accept-encoding"}


def test_a_streamed_body_is_compressed_as_it_streams(serve: Serve) -> None:
    release = threading.Event()
    finished = threading.Event()
    first, second = b"first chunk " * 50, b"second chunk " * 50

    def stream(request: Request) -> Response:
        def body() -> Iterator[bytes]:
            try:
                yield first
                release.wait(10)
                yield second
            finally:
                finished.set()

        return Response(body(), content_type="text/plain")

    running = serve(routes=[Route("GET", "/stream", stream)])
    conn = running.connection(timeout=5)
    try:
        conn.request("GET", "/stream", headers={"Accept-Encoding": "gzip"})
        response = conn.getresponse()
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers.get("Content-Length") is None
        decoder = zlib.decompressobj(31)
        received = b""
        while len(received) < len(first):  # the generator is still blocked on `release`
            data = response.read1(65536)
            assert data, "the body ended early"
            received += decoder.decompress(data)
        assert received == first
        assert not finished.is_set()
        release.set()
        received += decoder.decompress(response.read())
        assert decoder.eof  # the gzip stream was finished
        assert received == first + second
    finally:
        release.set()
        conn.close()
    assert finished.wait(5)


def test_compression_is_per_route_and_off_for_management_routes(serve: Serve) -> None:
    running = serve(
        routes=[
            Route("GET", "/on", _text),
            Route("GET", "/off", _text, options=RouteOptions(compression=False)),
            Route("GET", "/tiny", lambda request: "tiny"),
        ],
        route_options=RouteOptions(compression=Compression(min_size=0)),
    )
    headers = {"Accept-Encoding": "gzip"}
    reply = running.get("/on", headers)
    assert reply.headers["Content-Encoding"] == "gzip"
    reply = running.get("/tiny", headers)  # the router-wide min_size=0
    assert reply.headers["Content-Encoding"] == "gzip" and gzip.decompress(reply.body) == b"tiny"
    reply = running.get("/off", headers)
    assert reply.headers.get("Content-Encoding") is None and reply.body == TEXT
    assert "accept-encoding" not in _vary(reply.headers)
    # prometheus_client gzips /metrics itself when asked; br would be patron's doing
    for path in ("/metrics", "/ready", "/alive"):
        assert running.get("/on", {"Accept-Encoding": "br"}).headers["Content-Encoding"] == "br"
        reply = running.get(path, {"Accept-Encoding": "br"})
        assert reply.status == 200, path
        assert reply.headers.get("Content-Encoding") is None, path
        assert "accept-encoding" not in _vary(reply.headers), path
    assert b"http_" in running.get("/metrics", {"Accept-Encoding": "br"}).body  # plain text
