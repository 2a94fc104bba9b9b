"""Rate limiting of a route: a token bucket, answering 429 when it is empty.

A :class:`RateLimit` goes in :class:`~patron.http.RouteOptions` (``rate_limit=``), on a route or
router-wide. Each route gets a bucket of its own (a router-wide ``RateLimit`` gives every route
its own bucket of the same size, not one bucket shared by all); by default that bucket is shared
by every client of the route: it protects the service, it is not a per-client quota. ``key=``
gives each client (as the key function tells them apart) a bucket of its own, with a bounded
number of buckets per route.

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens per second; each request takes
one. A request that finds less than one token is answered ``429 Too Many Requests`` at once,
with ``Retry-After`` (the whole seconds until a token is back, at least 1), without reaching
authentication, the cache or the handler, and is counted in
``component_http_rate_limited_total{path=<route pattern>}``.

Hand-written rather than taken from the ``limits`` package: ``limits`` implements fixed
window, moving window and sliding window counter strategies over pluggable storages (memory,
Redis, Memcached, MongoDB), which count hits per window; none is a token bucket, where a
client may spend a burst at once and then gets a steady rate. In one process a token bucket is
a few lines under a lock, cheaper than a window counter, with no dependency. The limit lives in
the process: several replicas of a service each enforce their own.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from werkzeug.wrappers import Response

from patron import metrics

if TYPE_CHECKING:
    from patron.http.options import NextHandler
    from patron.http.routes import Request

__all__ = ["RateLimit"]

Clock = Callable[[], float]
KeyFunction = Callable[["Request"], str]

_rate_limited_total = metrics.counter(
    "component_http_rate_limited_total",
    "HTTP requests refused by a route's rate limit (answered 429), by route pattern",
    ("path",),
)

_BODY = b"Too Many Requests: this route's rate limit is exceeded\n"


class _Bucket:
    """Tokens and the time they were counted. Not thread-safe: used under its owner's lock."""

    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now

    def take(self, now: float, rate: float, burst: int) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is one."""
        elapsed = now - self.updated
        if elapsed > 0:  # a clock that goes back (only an injected one can) adds nothing
            self.tokens = min(float(burst), self.tokens + elapsed * rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


class RateLimit:
    """A token bucket per route: ``rate`` tokens per second, at most ``burst`` held.

    ``burst`` defaults to ``max(1, ceil(rate))``: one second's worth of requests at once.
    ``key`` (optional) maps a request to a client identity (say ``lambda r: r.remote_addr``, or
    an API key header), each with a bucket of its own; at most ``max_keys`` buckets are kept per
    route, and when a new client comes past that the least recently seen one is forgotten (it
    starts again with a full bucket when it comes back). ``key`` runs in the server's worker
    thread, under the route's lock: keep it cheap, and an exception it raises answers 500 as any
    handler's would. ``clock`` (seconds, monotonic) is for tests.

    Raises ``ValueError`` for a rate that is not a positive finite number, a burst below 1 or a
    ``max_keys`` below 1.
    """

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        key: KeyFunction | None = None,
        max_keys: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of requests per second: {rate!r}")
        if burst is None:
            burst = max(1, math.ceil(rate))
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be an int of at least 1: {burst!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1: {max_keys!r}")
        self.rate = float(rate)
        self.burst = burst
        self.key = key
        self.max_keys = max_keys
        self.clock = clock

    def __repr__(self) -> str:
        return f"RateLimit(rate={self.rate}, burst={self.burst})"

    def wrap(self, following: NextHandler, pattern: str) -> NextHandler:
        """``following`` behind a bucket of its own (or one per client with ``key``).

        Called once per route when the router is built; the returned callable runs in the
        server's worker threads, concurrently, and takes the route's lock for the few
        arithmetic operations of the bucket (never while calling ``following``).
        """
        rate, burst, clock, key = self.rate, self.burst, self.clock, self.key
        lock = threading.Lock()
        refused = _rate_limited_total.labels(pattern)

        if key is None:
            bucket = _Bucket(float(burst), clock())

            def wait_for_token(request: Request) -> float:
                with lock:
                    return bucket.take(clock(), rate, burst)
        else:
            client_of = key
            max_keys = self.max_keys
            buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()

            def wait_for_token(request: Request) -> float:
                client = client_of(request)
                with lock:
                    now = clock()
                    found = buckets.get(client)
                    if found is None:
                        if len(buckets) >= max_keys:
                            buckets.popitem(last=False)
                        found = buckets[client] = _Bucket(float(burst), now)
                    else:
                        buckets.move_to_end(client)
                    return found.take(now, rate, burst)

        def call(request: Request) -> Response:
            wait = wait_for_token(request)
            if wait == 0.0:
                return following(request)
            refused.inc()
            return Response(
                _BODY,
                status=429,
                content_type="text/plain; charset=utf-8",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

        return call
