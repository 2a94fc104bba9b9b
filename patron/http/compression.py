"""Compression of route answers: gzip, deflate and, when ``brotli`` is installed, br.

:class:`Compression` is a route option (see :mod:`patron.http.options`), on by default for user
routes and never applied to the management routes or to mounted WSGI apps. What runs where:

* :meth:`Compression.apply` runs in the server's worker thread that served the request, once
  the route's chain produced its response: it negotiates a coding from ``Accept-Encoding`` and,
  for a buffered body, compresses it there and then (``Content-Length`` is updated).
* A streamed body (``response.is_streamed``: a generator, a file) is not read by ``apply``: its
  iterable is replaced by one that compresses each chunk as the server pulls it (still in the
  worker thread that writes the response) and flushes the compressor after every chunk, so
  each chunk reaches the client as soon as it is produced. ``Content-Length`` is removed (the
  server sends the body chunked, or until it closes the connection).

The choice follows RFC 9110 §12.5.3: a coding's q-value is its own entry, else ``*``'s, else 0;
``q=0`` excludes; among equal q-values the server's order wins (br, gzip, deflate by default).
No ``Accept-Encoding`` header means no compression. When no coding can be used and identity
is excluded (``identity;q=0``, or ``*;q=0`` without an ``identity`` entry), a successful
response becomes 406 Not Acceptable; other statuses are sent as they are.

Not compressed: ``HEAD``, statuses without a body (1xx, 204, 304), 206 (ranges), responses
that already have a ``Content-Encoding``, ``Cache-Control: no-transform``, content types that
are compressed already (images, audio, video, archives, fonts: :data:`ALREADY_COMPRESSED`),
and bodies shorter than ``min_size`` (a streamed body of unknown length is compressed). Every
response that goes through ``apply`` on a compressing route gets ``Vary: Accept-Encoding``
(appended to the response's own), so caches keep each variant apart. A compressed body's
strong ``ETag`` becomes weak (``W/"..."``): the bytes differ, the content does not, and
werkzeug's conditional requests compare weakly for ``If-None-Match``.

A :class:`Compression` holds no mutable state: one instance serves every thread at once;
each response gets a compressor of its own.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from werkzeug.exceptions import NotAcceptable
from werkzeug.wrappers import Response

if TYPE_CHECKING:
    from patron.http.routes import Request

_brotli: Any
try:  # brotli is optional (and untyped): br is offered only when it is importable
    _brotli = importlib.import_module("brotli")
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None

__all__ = ["ALREADY_COMPRESSED", "CODINGS", "Compression", "choose_coding"]

#: the codings this module can produce, in the default order of preference
CODINGS: tuple[str, ...] = ("br", "gzip", "deflate") if _brotli is not None else ("gzip", "deflate")

#: content types sent as they are: their bytes are compressed already. ``major/*`` matches a
#: whole major type; parameters (``; charset=...``) are ignored.
ALREADY_COMPRESSED: frozenset[str] = frozenset({
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/heic",
    "image/heif", "image/jxl", "audio/*", "video/*", "font/woff", "font/woff2",
    "application/zip", "application/gzip", "application/x-gzip", "application/x-bzip2",
    "application/x-xz", "application/x-7z-compressed", "application/x-rar-compressed",
    "application/vnd.rar", "application/zstd", "application/x-zstd", "application/x-brotli",
})

_NO_BODY = frozenset({204, 304})
_ALIASES = {"x-gzip": "gzip"}  # RFC 9110 §8.4.1.3: x-gzip is gzip


class _Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...   # what is pending, the stream kept open (a sync flush)
    def finish(self) -> bytes: ...  # what is pending and the end of the stream


class _ZlibEncoder:
    def __init__(self, level: int, wbits: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, wbits)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _BrotliEncoder:
    def __init__(self, quality: int) -> None:
        assert _brotli is not None
        self._b = _brotli.Compressor(quality=quality)

    def compress(self, data: bytes) -> bytes:
        return bytes(self._b.process(data))

    def flush(self) -> bytes:
        return bytes(self._b.flush())

    def finish(self) -> bytes:
        return bytes(self._b.finish())


def _parse_accept_encoding(value: str) -> dict[str, float]:
    """``{coding: q}`` for each entry of an ``Accept-Encoding`` value (lowercase codings; a
    malformed q counts as 0, so a broken entry never enables a coding)."""
    entries: dict[str, float] = {}
    for item in value.split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, raw = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(raw.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        coding = _ALIASES.get(coding, coding)
        # The same coding twice: the higher q counts.
        entries[coding] = max(q, entries.get(coding, 0.0))
    return entries


def choose_coding(accept_encoding: str | None, codings: Sequence[str]) -> str | None:
    """The coding to use for a request's ``Accept-Encoding`` value among ``codings`` (in the
    server's order of preference): a coding, ``"identity"`` (send as is) or ``None`` when
    nothing is acceptable, identity included (406). Pure; any thread."""
    if accept_encoding is None:
        return "identity"
    entries = _parse_accept_encoding(accept_encoding)
    star = entries.get("*")
    best, best_q = "identity", 0.0
    for coding in codings:
        q = entries.get(coding, star if star is not None else 0.0)
        if q > best_q:  # strictly greater: among equal q-values the earlier coding wins
            best, best_q = coding, q
    if best_q > 0:
        return best
    identity_q = entries.get("identity", star if star is not None else 1.0)
    return "identity" if identity_q > 0 else None


def _media_type(content_type: str | None) -> str:
    return (content_type or "").partition(";")[0].strip().lower()


class Compression:
    """gzip, deflate (and brotli when installed), chosen by the request's ``Accept-Encoding``.

    ``min_size``: bodies shorter than this many bytes are sent as they are (a streamed body
    of unknown length is always compressed). ``level``: the zlib level (1-9) for gzip and
    deflate, and the brotli quality (0-11, the level capped at 11). ``codings``: the codings
    offered, in the server's order of preference; those this process cannot produce (br
    without ``brotli``) are dropped. ``skip_types``: media types never compressed (``major/*``
    for a whole major type), :data:`ALREADY_COMPRESSED` by default.

    Raises ``ValueError`` for an unknown coding, a level out of range or a negative
    ``min_size``. Immutable once built, so one instance is shared by every worker thread.
    """

    def __init__(
        self,
        min_size: int = 1024,
        level: int = 6,
        codings: Sequence[str] = ("br", "gzip", "deflate"),
        skip_types: Collection[str] = ALREADY_COMPRESSED,
    ) -> None:
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0, not {min_size}")
        if not 1 <= level <= 9:
            raise ValueError(f"level must be 1..9, not {level}")
        unknown = [c for c in codings if c not in ("br", "gzip", "deflate")]
        if unknown:
            raise ValueError(f"unknown codings {unknown}: br, gzip and deflate are supported")
        self.min_size = min_size
        self.level = level
        self.codings: tuple[str, ...] = tuple(
            dict.fromkeys(c for c in codings if c in CODINGS)
        )
        types = {t.lower() for t in skip_types}
        self._skip_exact = frozenset(t for t in types if not t.endswith("/*"))
        self._skip_major = frozenset(t[:-2] for t in types if t.endswith("/*"))

    def __repr__(self) -> str:
        return (f"Compression(min_size={self.min_size}, level={self.level}, "
                f"codings={self.codings!r})")

    def apply(self, request: Request, response: Response) -> Response:
        """The response, compressed when the request accepts a coding and the response is
        worth it (or 406 when the request accepts none that can be sent). Called in the worker
        thread serving the request; a streamed body is compressed later, as it is sent.
        Raises nothing of its own (a handler's generator may raise while it streams)."""
        if "Content-Encoding" in response.headers:
            return response  # the handler encoded it: its headers are its own
        _add_vary(response)
        coding = choose_coding(request.headers.get("Accept-Encoding"), self.codings)
        status = response.status_code
        if coding is None:
            if 200 <= status < 300:
                return self._not_acceptable(request)
            return response
        if coding == "identity" or not self._compressible(request, response):
            return response
        if status in _NO_BODY:
            _weaken_etag(response)  # the same validator the compressed 200 carries
            return response
        # A file (send_file's wsgi.file_wrapper) is passed through and may well have a len().
        if response.is_streamed or response.direct_passthrough:
            length = response.content_length
            if length is not None and length < self.min_size:
                return response
            _compress_streamed(response, self._encoder(coding))
        else:
            data = response.get_data()
            if len(data) < self.min_size:
                return response
            encoder = self._encoder(coding)
            response.set_data(encoder.compress(data) + encoder.finish())
        response.headers["Content-Encoding"] = coding
        response.headers.pop("Accept-Ranges", None)  # ranges of the identity bytes only
        _weaken_etag(response)
        return response

    def _compressible(self, request: Request, response: Response) -> bool:
        """Whether this response may carry a coding at all, whatever its size."""
        status = response.status_code
        if request.method == "HEAD" or status < 200 or status == 206:
            return False
        if response.cache_control.no_transform:
            return False
        media = _media_type(response.content_type)
        return not (
            media in self._skip_exact or media.partition("/")[0] in self._skip_major
        )

    def _encoder(self, coding: str) -> _Encoder:
        if coding == "br":
            return _BrotliEncoder(min(self.level, 11))
        # gzip: a gzip header and trailer (wbits 16+15); deflate: the zlib format (RFC 9110
        # §8.4.1.2 "deflate" is zlib-wrapped, not raw deflate).
        return _ZlibEncoder(self.level, 31 if coding == "gzip" else 15)

    def _not_acceptable(self, request: Request) -> Response:
        response = NotAcceptable(
            "identity is not acceptable and no other coding offered "
            f"({', '.join(self.codings) or 'none'}) is"
        ).get_response(request.environ)
        _add_vary(response)
        return response


def _add_vary(response: Response) -> None:
    if "*" not in response.vary:
        response.vary.add("Accept-Encoding")  # case-insensitive, keeps what is there


def _weaken_etag(response: Response) -> None:
    etag, weak = response.get_etag()
    if etag is not None and not weak:
        response.set_etag(etag, weak=True)


def _compress_streamed(response: Response, encoder: _Encoder) -> None:
    """Replace a streamed body by its compression, chunk by chunk (see the module docstring)."""
    body: Iterable[Any] = response.response
    response.response = _compressing(body, encoder, "utf-8")  # as werkzeug encodes str
    response.direct_passthrough = False  # werkzeug closes the new body, which closes the old
    response.headers.pop("Content-Length", None)


def _compressing(body: Iterable[Any], encoder: _Encoder, charset: str) -> Iterator[bytes]:
    close: Callable[[], object] | None = getattr(body, "close", None)
    try:
        for chunk in body:
            if isinstance(chunk, str):
                chunk = chunk.encode(charset)
            if not chunk:
                continue
            out = encoder.compress(chunk) + encoder.flush()
            if out:
                yield out
        yield encoder.finish()
    finally:
        if close is not None:
            close()
