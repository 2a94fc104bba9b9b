"""A response cache for ``GET`` and ``HEAD`` routes (see :mod:`patron.http.options`).

Usage::

    from patron.http import Route, RouteOptions
    from patron.http.cache import Cache, MemoryStore

    cache = Cache(MemoryStore(max_entries=10_000), ttl=30)
    Route("GET", "/users/<int:user_id>", get_user, options=RouteOptions(cache=cache))

The cache sits inside compression, rate limiting and authentication and outside the timeout
and the middlewares, so it stores and serves uncompressed answers, only to clients that passed
authentication. Entries are keyed by the route pattern, the method class (``GET`` and ``HEAD``
share entries), the path, the query string with its parameters sorted, and the values of the
request headers named in ``key_headers`` (``Authorization``, say, for per-user answers).

What is stored, and when: after a ``GET`` that the handler answered with a status in
``statuses`` (200 by default), a body of at most ``max_body`` bytes that is not streamed, no
``Set-Cookie``, no ``Cache-Control: no-store``, ``private`` or ``no-cache`` and no ``Vary`` on a
header outside the key. The entry holds the status, the headers (an ``ETag`` added, computed from
the body, when the handler gave none) and the body, for ``ttl`` seconds, or less when the
handler's ``Cache-Control`` says ``s-maxage`` or ``max-age`` (``0``: not stored). ``HEAD``
requests are answered from entries but never store one.

The request's ``Cache-Control`` is honoured: ``no-cache`` (or ``Pragma: no-cache``) skips the
lookup, calls the handler and refreshes the entry; ``no-store`` neither reads nor writes;
``max-age=N`` serves no entry ``N`` seconds old or older (so ``max-age=0`` always reaches the
handler); ``min-fresh=N`` serves no entry that goes stale within ``N`` seconds;
``only-if-cached`` answers 504 when the cache cannot answer. Answers the cache can store, hits
or fresh, carry ``Age`` and, unless the handler set its own, ``Cache-Control: max-age=<seconds
left>``; an ``If-None-Match`` that matches their ``ETag`` gets a 304 without a body.

Concurrent misses on one key are not coalesced: each calls the handler and stores its answer,
the last one written wins. Every entry is complete, so this costs handler calls, never
correctness; coalescing would make a request wait on another's handler, and its timeout.

A store that fails (Redis going away) never fails a request: the handler answers, a warning is
logged when the store starts failing and an info line when it works again (not per request),
and the store is left alone for ``retry_after`` seconds after a failure.

Counted in ``component_http_cache_total{path=<route pattern>, result=...}``, once per ``GET`` or
``HEAD`` request, ``result`` one of ``hit`` (answered from the store), ``miss`` (no usable entry:
none, expired or too old for the request's ``max-age``/``min-fresh``; the handler answered),
``revalidate`` (``no-cache``: the handler answered and the entry was refreshed), ``bypass``
(``no-store``), ``unavailable`` (``only-if-cached`` without an entry: 504) and ``error`` (the
store failed or is being left alone; the handler answered).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import urlencode

from werkzeug.wrappers import Response

from patron import metrics

if TYPE_CHECKING:
    import redis

    from patron.http.options import NextHandler
    from patron.http.routes import Request

__all__ = ["Cache", "CacheStore", "CachedResponse", "MemoryStore", "RedisStore"]

logger = logging.getLogger("patron.http")

_cache_total = metrics.counter(
    "component_http_cache_total",
    "GET and HEAD requests to cached routes, by route pattern and result "
    "(hit, miss, revalidate, bypass, unavailable, error)",
    ("path", "result"),
)
RESULTS = ("hit", "miss", "revalidate", "bypass", "unavailable", "error")

Clock = Callable[[], float]

# Not stored with an entry: recomputed, per connection, or per answer.
_UNSTORED_HEADERS = frozenset({
    "content-length", "connection", "keep-alive", "transfer-encoding", "date", "age",
})
# What a 304 repeats of the 200 it stands for (RFC 9110, 15.4.5).
_NOT_MODIFIED_HEADERS = frozenset({
    "etag", "cache-control", "expires", "vary", "content-location", "last-modified",
})


@dataclasses.dataclass(frozen=True)
class CachedResponse:
    """A stored answer: ``stored_at`` is the cache's clock (wall-clock seconds by default) when
    the handler answered, ``ttl`` the seconds it stays fresh from then."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    ttl: float

    @property
    def size(self) -> int:
        """Roughly the bytes it holds: the body and the headers."""
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers)

    def encode(self) -> bytes:
        """A compact serialisation: one line of JSON (status, headers, times), then the body."""
        head = {"v": 1, "s": self.status, "h": self.headers, "t": self.stored_at, "l": self.ttl}
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> CachedResponse:
        """The entry :meth:`encode` gave; ``ValueError`` when ``data`` is not one."""
        head_bytes, sep, body = data.partition(b"\n")
        if not sep:
            raise ValueError("not a cached response: no header line")
        try:
            head = json.loads(head_bytes)
            if head.get("v") != 1:
                raise ValueError(f"cached response version {head.get('v')!r}")
            return cls(
                status=int(head["s"]),
                headers=tuple((str(k), str(v)) for k, v in head["h"]),
                body=body,
                stored_at=float(head["t"]),
                ttl=float(head["l"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a cached response: {exc!r}") from exc


@runtime_checkable
class CacheStore(Protocol):
    """Where a :class:`Cache` keeps its entries. Called in the server's worker threads,
    concurrently, so it must be thread-safe. Any method may raise: the cache then answers from
    the handler (see the module docstring)."""

    def get(self, key: str) -> CachedResponse | None:
        """The entry stored under ``key``, or ``None`` (never stored, expired or evicted)."""

    def set(self, key: str, entry: CachedResponse, ttl: float) -> None:
        """Store ``entry`` under ``key`` for ``ttl`` seconds (it may be evicted sooner)."""

    def delete(self, key: str) -> None:
        """Forget ``key``, if stored."""


class MemoryStore:
    """An in-process LRU store with expiry, bounded in entries and in bytes (bodies and
    headers). Thread-safe: one lock around every operation, none of which does I/O.

    An entry larger than ``max_bytes`` is not stored. ``clock`` (monotonic seconds by default)
    dates expiry; tests pass a fake one.
    """

    def __init__(
        self,
        max_entries: int = 1024,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (entry, expires at, size); least recently used first
        self._entries: collections.OrderedDict[str, tuple[CachedResponse, float, int]] = (
            collections.OrderedDict()
        )
        self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes(self) -> int:
        """The bytes the stored entries hold (keys included)."""
        with self._lock:
            return self._bytes

    def get(self, key: str) -> CachedResponse | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            entry, expires, _ = found
            if self._clock() >= expires:
                self._remove(key)
                return None
            self._entries.move_to_end(key)
            return entry

    def set(self, key: str, entry: CachedResponse, ttl: float) -> None:
        size = entry.size + len(key)
        with self._lock:
            self._remove(key)
            if size > self.max_bytes or ttl <= 0:
                return
            self._entries[key] = (entry, self._clock() + ttl, size)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._remove(next(iter(self._entries)))

    def delete(self, key: str) -> None:
        with self._lock:
            self._remove(key)

    def _remove(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._bytes -= found[2]


class RedisStore:
    """Entries in Redis, shared by every process that uses the same server and ``prefix``.

    ``client`` is a ``redis.Redis`` (used as it is: its timeouts and retries apply) or a URL
    such as ``redis://localhost:6379/0``, for which a client is made with ``timeout`` as its
    connect and socket timeouts and no retries, so a Redis going away costs a request at most
    about ``timeout``. Needs the ``redis`` package (``pip install patron[redis]``), imported
    here, not when :mod:`patron.http.cache` is.

    Each entry is one string key, ``prefix`` + a SHA-256 of the cache key, holding
    :meth:`CachedResponse.encode` and expiring with the entry. Methods raise
    ``redis.RedisError`` when Redis fails; an unreadable value reads as a miss. Thread-safe:
    the client's connection pool is.
    """

    def __init__(
        self, client: redis.Redis | str, prefix: str = "patron:cache:", timeout: float = 0.5
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if isinstance(client, str):
            client = redis.Redis.from_url(
                client,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        self.client: redis.Redis = client
        self.prefix = prefix

    def redis_key(self, key: str) -> str:
        """The Redis key of the cache key ``key``."""
        return self.prefix + hashlib.sha256(key.encode()).hexdigest()

    def get(self, key: str) -> CachedResponse | None:
        data = self.client.get(self.redis_key(key))
        if not isinstance(data, bytes):
            return None
        try:
            return CachedResponse.decode(data)
        except ValueError:
            return None

    def set(self, key: str, entry: CachedResponse, ttl: float) -> None:
        milliseconds = math.ceil(ttl * 1000)
        if milliseconds > 0:
            self.client.set(self.redis_key(key), entry.encode(), px=milliseconds)

    def delete(self, key: str) -> None:
        self.client.delete(self.redis_key(key))


class Cache:
    """A response cache for ``GET``/``HEAD`` routes: a :class:`~patron.http.options.Layer`
    (see the module docstring for what is stored, served and counted).

    ``store``: a :class:`MemoryStore`, a :class:`RedisStore` or any :class:`CacheStore`.
    ``ttl``: seconds an entry stays fresh (at most; the handler's ``Cache-Control`` may say
    less). ``max_body``: larger bodies are not stored. ``statuses``: the status codes stored.
    ``key_headers``: request headers whose values are part of the key. ``retry_after``: seconds
    the store is left alone after it failed. ``clock``: wall-clock seconds (``time.time``),
    shared with other processes through a shared store; tests pass a fake one.

    One Cache may serve many routes (router-wide): :meth:`wrap` runs once per route when the
    router is built, what it returns runs in the server's worker threads, concurrently.
    """

    def __init__(
        self,
        store: CacheStore,
        ttl: float = 60.0,
        *,
        max_body: int = 1024 * 1024,
        statuses: Collection[int] = (200,),
        key_headers: Sequence[str] = (),
        retry_after: float = 1.0,
        clock: Clock = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.store = store
        self.ttl = ttl
        self.max_body = max_body
        self.statuses = frozenset(statuses)
        self.key_headers = tuple(key_headers)
        self.retry_after = retry_after
        self._clock = clock
        self._varies = frozenset(h.lower() for h in key_headers) | {"accept-encoding"}
        self._lock = threading.Lock()
        self._failing = False
        self._left_until = 0.0

    def wrap(self, following: NextHandler, pattern: str) -> NextHandler:
        counts = {result: _cache_total.labels(pattern, result) for result in RESULTS}

        def call(request: Request) -> Response:
            method = request.method
            if method != "GET" and method != "HEAD":
                return following(request)
            control = request.cache_control
            if control.no_store:
                counts["bypass"].inc()
                return following(request)
            no_cache = bool(control.no_cache) or (
                "Cache-Control" not in request.headers
                and "no-cache" in request.headers.get("Pragma", "").lower()
            )
            key = self.key(request, pattern)
            if no_cache:
                result = "revalidate"
            else:
                now = self._clock()
                entry, failed = self._read(key, now)
                if entry is not None and _usable(entry, control.max_age, control.min_fresh, now):
                    counts["hit"].inc()
                    return self._answer(request, entry, now)
                result = "error" if failed else "miss"
            if control.only_if_cached:
                counts["unavailable"].inc()
                return Response("not in the cache\n", status=504, mimetype="text/plain")
            counts[result].inc()
            response = following(request)
            entry = self._entry(response)
            if entry is None:
                return response
            if method == "GET":
                self._write(key, entry)
            return self._answer(request, entry, entry.stored_at, response)

        return call

    def key(self, request: Request, pattern: str) -> str:
        """The cache key of ``request`` on the route ``pattern``: the method class, the
        pattern, the path, the sorted query and the values of ``key_headers``."""
        query = urlencode(sorted(request.args.items(multi=True)))
        parts = ["GET", pattern, request.path, query]
        parts.extend(request.headers.get(name, "") for name in self.key_headers)
        return "\n".join(parts)

    def _entry(self, response: Response) -> CachedResponse | None:
        """What to store of the handler's ``response``, or ``None`` when it is not storable."""
        if (
            response.status_code not in self.statuses
            or response.is_streamed
            or response.direct_passthrough
            or "Set-Cookie" in response.headers
        ):
            return None
        control = response.cache_control
        if control.no_store or control.private or control.no_cache:
            return None
        if any(
            name.strip().lower() not in self._varies
            for name in response.headers.get("Vary", "").split(",")
            if name.strip()
        ):
            return None
        ttl = self.ttl
        for given in (control.s_maxage, control.max_age):
            if given is not None:
                ttl = min(ttl, float(given))
                break
        if ttl <= 0:
            return None
        body = response.get_data()
        if len(body) > self.max_body:
            return None
        headers = [(k, v) for k, v in response.headers.items()
                   if k.lower() not in _UNSTORED_HEADERS]
        if "ETag" not in response.headers:
            headers.append(("ETag", f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'))
        return CachedResponse(response.status_code, tuple(headers), body, self._clock(), ttl)

    def _answer(
        self, request: Request, entry: CachedResponse, now: float, fresh: Response | None = None
    ) -> Response:
        """The answer for ``entry`` at ``now``: ``fresh`` (the handler's response) or one built
        from the entry, with ``Age`` and ``Cache-Control``; a 304 when ``If-None-Match``
        matches its ``ETag``."""
        age = max(0.0, now - entry.stored_at)
        extra = [("Age", str(int(age)))]
        if not any(k.lower() == "cache-control" for k, _ in entry.headers):
            extra.append(("Cache-Control", f"max-age={max(0, int(entry.ttl - age))}"))
        etag = next((v for k, v in entry.headers if k.lower() == "etag"), None)
        if etag is not None and request.if_none_match and _matches(request, etag):
            headers = [(k, v) for k, v in entry.headers if k.lower() in _NOT_MODIFIED_HEADERS]
            response = Response(status=304, headers=headers + extra)
            del response.headers["Content-Type"]
            return response
        if fresh is None:
            return Response(entry.body, status=entry.status, headers=[*entry.headers, *extra])
        if "ETag" not in fresh.headers and etag is not None:
            fresh.headers["ETag"] = etag
        for name, value in extra:
            fresh.headers[name] = value
        return fresh

    def _read(self, key: str, now: float) -> tuple[CachedResponse | None, bool]:
        """The stored entry (``None`` if none) and whether the store failed or is left alone."""
        if self._failing and now < self._left_until:
            return None, True
        try:
            entry = self.store.get(key)
        except Exception as exc:
            self._failed(exc, now)
            return None, True
        self._worked()
        return entry, False

    def _write(self, key: str, entry: CachedResponse) -> None:
        if self._failing and entry.stored_at < self._left_until:
            return
        try:
            self.store.set(key, entry, entry.ttl)
        except Exception as exc:
            self._failed(exc, entry.stored_at)
            return
        self._worked()

    def _failed(self, exc: Exception, now: float) -> None:
        with self._lock:
            self._left_until = now + self.retry_after
            if self._failing:
                return
            self._failing = True
        logger.warning(
            "response cache: the store %s failed (%r); answering from handlers, trying again "
            "every %ss", type(self.store).__name__, exc, self.retry_after,
        )

    def _worked(self) -> None:
        if not self._failing:
            return
        with self._lock:
            if not self._failing:
                return
            self._failing = False
        logger.info("response cache: the store %s works again", type(self.store).__name__)


def _usable(entry: CachedResponse, max_age: int | None, min_fresh: int | None, now: float) -> bool:
    """Whether ``entry`` is fresh at ``now`` and young enough for the request."""
    age = now - entry.stored_at
    if age >= entry.ttl:
        return False
    if max_age is not None and age >= max_age:
        return False
    return not (min_fresh is not None and entry.ttl - age < min_fresh)


def _matches(request: Request, etag: str) -> bool:
    """Whether the request's ``If-None-Match`` matches ``etag`` (a weak comparison)."""
    value = etag.strip()
    if value.startswith("W/"):
        value = value[2:]
    return request.if_none_match.contains_weak(value.strip('"'))
