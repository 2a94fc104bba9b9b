"""The response cache (:mod:`patron.http.cache`) against a real server, over both stores.

Redis is the server at 127.0.0.1:6379 (or ``PATRON_TEST_REDIS_URL``): without it the Redis
cases skip with the reason, unless the environment variable ``CI`` is set: then they fail. Each
Redis case uses a prefix of its own and deletes its keys at teardown. Time is a fake clock
shared by the cache and the memory store; Redis's own expiry is real time, but every entry is
judged fresh or stale by the cache's clock.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.wrappers import Response

from patron.http import Request, Route, RouteOptions
from patron.http.cache import Cache, CachedResponse, CacheStore, MemoryStore, RedisStore
from tests.conftest import free_port
from tests.http.conftest import Running, Serve, sample

REDIS_URL = os.environ.get("PATRON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
METRIC = "component_http_cache_total"


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def _redis_unreachable() -> str | None:
    try:
        import redis
    except ImportError as exc:
        return f"the redis package is not installed: {exc!r}"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {REDIS_URL} is unreachable: {exc!r}"
    return None


def _require_redis_package() -> None:
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the redis package is needed (CI is set): {exc!r}")
        pytest.skip(f"the redis package is not installed: {exc!r}")


def _require_redis() -> str:
    reason = _redis_unreachable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: Redis-backed tests must run)")
        pytest.skip(reason)
    return REDIS_URL


@pytest.fixture(scope="module")
def redis_url() -> str:
    return _require_redis()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[CacheStore]:
    """A MemoryStore on the fake clock, or a RedisStore with a prefix of its own."""
    if request.param == "memory":
        yield MemoryStore(clock=clock)
        return
    url = request.getfixturevalue("redis_url")
    redis_store = RedisStore(url, prefix=f"patron-test:{uuid.uuid4().hex}:")
    yield redis_store
    keys = list(redis_store.client.scan_iter(match=redis_store.prefix + "*"))
    if keys:
        redis_store.client.delete(*keys)
    redis_store.client.close()


class Counted:
    """A handler that counts its calls and answers ``<name> <call number>``."""

    def __init__(self, answer: Callable[[int], Any] | None = None) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        self._answer = answer

    def __call__(self, request: Request, name: str = "") -> Any:
        with self._lock:
            self.calls += 1
            calls = self.calls
        if self._answer is not None:
            return self._answer(calls)
        return f"{name} {calls}"


def _pattern() -> str:
    """A route pattern of the test's own, so its metric samples start at 0."""
    return f"/c{uuid.uuid4().hex[:12]}/<name>"


def _serve(
    serve: Serve, cache: Cache, handler: Counted, methods: str | tuple[str, ...] = "GET"
) -> tuple[Running, str]:
    pattern = _pattern()
    running = serve(routes=[Route(methods, pattern, handler, options=RouteOptions(cache=cache))])
    return running, pattern.replace("<name>", "")


def _count(pattern_prefix: str, result: str) -> float:
    return sample(METRIC, path=pattern_prefix + "<name>", result=result)


# -- hits and keys ---------------------------------------------------------------------------


def test_the_second_get_is_a_hit(serve: Serve, store: CacheStore, clock: FakeClock) -> None:
    handler = Counted()
    running, base = _serve(serve, Cache(store, ttl=60, clock=clock), handler)
    first = running.get(base + "a")
    clock.advance(20)
    second = running.get(base + "a")
    assert (first.status, first.text) == (200, "a 1")
    assert (second.status, second.text) == (200, "a 1")
    assert handler.calls == 1
    assert first.headers["Age"] == "0" and first.headers["Cache-Control"] == "max-age=60"
    assert second.headers["Age"] == "20" and second.headers["Cache-Control"] == "max-age=40"
    assert second.headers["ETag"] == first.headers["ETag"]
    assert second.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert _count(base, "miss") == 1 and _count(base, "hit") == 1


def test_the_path_and_the_sorted_query_make_the_key(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted(lambda calls: f"call {calls}")
    running, base = _serve(serve, Cache(store, clock=clock), handler)
    assert running.get(base + "a?x=1&y=2").text == "call 1"
    assert running.get(base + "a?y=2&x=1").text == "call 1"
    assert running.get(base + "a?x=2&y=2").text == "call 2"
    assert running.get(base + "a").text == "call 3"
    assert running.get(base + "b?x=1&y=2").text == "call 4"
    assert handler.calls == 4


def test_head_is_answered_from_get_entries_but_stores_none(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted()
    running, base = _serve(serve, Cache(store, clock=clock), handler)
    head = running.request("HEAD", base + "a")
    assert (head.status, head.body, handler.calls) == (200, b"", 1)
    assert running.get(base + "a").text == "a 2"
    head = running.request("HEAD", base + "a")
    assert (head.status, head.body, head.headers["Content-Length"]) == (200, b"", "3")
    assert handler.calls == 2
    assert _count(base, "hit") == 1


def test_a_key_header_separates_entries(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted(lambda calls: f"call {calls}")
    running, base = _serve(serve, Cache(store, key_headers=["X-User"], clock=clock), handler)
    assert running.get(base + "a", {"X-User": "ann"}).text == "call 1"
    assert running.get(base + "a", {"X-User": "bob"}).text == "call 2"
    assert running.get(base + "a", {"X-User": "ann"}).text == "call 1"


# -- the request's Cache-Control -------------------------------------------------------------


def test_no_cache_goes_to_the_handler_and_refreshes_the_entry(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted()
    running, base = _serve(serve, Cache(store, clock=clock), handler)
    assert running.get(base + "a").text == "a 1"
    assert running.get(base + "a", {"Cache-Control": "no-cache"}).text == "a 2"
    assert running.get(base + "a", {"Pragma": "no-cache"}).text == "a 3"
    assert running.get(base + "a").text == "a 3"
    assert handler.calls == 3
    assert _count(base, "revalidate") == 2 and _count(base, "hit") == 1


def test_no_store_neither_reads_nor_writes(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted()
    running, base = _serve(serve, Cache(store, clock=clock), handler)
    assert running.get(base + "a", {"Cache-Control": "no-store"}).text == "a 1"
    assert running.get(base + "a").text == "a 2"  # nothing was written
    reply = running.get(base + "a", {"Cache-Control": "no-store"})
    assert reply.text == "a 3"  # the entry is not read
    assert "Age" not in reply.headers
    assert running.get(base + "a").text == "a 2"  # nor overwritten
    assert _count(base, "bypass") == 2


def test_max_age_limits_the_age_of_a_served_entry(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted()
    running, base = _serve(serve, Cache(store, ttl=60, clock=clock), handler)
    assert running.get(base + "a").text == "a 1"
    assert running.get(base + "a", {"Cache-Control": "max-age=0"}).text == "a 2"
    clock.advance(10)
    assert running.get(base + "a", {"Cache-Control": "max-age=20"}).text == "a 2"
    assert running.get(base + "a", {"Cache-Control": "max-age=5"}).text == "a 3"
    assert handler.calls == 3


def test_min_fresh_skips_an_entry_soon_stale(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted()
    running, base = _serve(serve, Cache(store, ttl=60, clock=clock), handler)
    assert running.get(base + "a").text == "a 1"
    clock.advance(50)
    assert running.get(base + "a", {"Cache-Control": "min-fresh=5"}).text == "a 1"
    assert running.get(base + "a", {"Cache-Control": "min-fresh=20"}).text == "a 2"
    assert handler.calls == 2


def test_only_if_cached_is_504_on_a_miss_and_200_on_a_hit(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted()
    running, base = _serve(serve, Cache(store, clock=clock), handler)
    miss = running.get(base + "a", {"Cache-Control": "only-if-cached"})
    assert (miss.status, handler.calls) == (504, 0)
    assert running.get(base + "a").text == "a 1"
    hit = running.get(base + "a", {"Cache-Control": "only-if-cached"})
    assert (hit.status, hit.text, handler.calls) == (200, "a 1", 1)
    assert _count(base, "unavailable") == 1 and _count(base, "hit") == 1


# -- validators ------------------------------------------------------------------------------


def test_if_none_match_gets_a_304_without_a_body(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted(lambda calls: "same body")
    running, base = _serve(serve, Cache(store, clock=clock), handler)
    first = running.get(base + "a")
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10
    hit = running.get(base + "a", {"If-None-Match": etag})
    assert (hit.status, hit.body, hit.headers["ETag"], handler.calls) == (304, b"", etag, 1)
    assert "Cache-Control" in hit.headers and "Content-Type" not in hit.headers
    assert running.get(base + "a", {"If-None-Match": f'W/{etag}, "other"'}).status == 304
    assert running.get(base + "a", {"If-None-Match": '"other"'}).status == 200
    # A fresh answer from the handler is compared too, and its ETag is the same.
    fresh = running.get(base + "a", {"If-None-Match": etag, "Cache-Control": "no-cache"})
    assert (fresh.status, fresh.body, handler.calls) == (304, b"", 2)
    other = running.get(base + "b", {"If-None-Match": etag})
    assert (other.status, other.body, handler.calls) == (304, b"", 3)


def test_a_handlers_etag_and_cache_control_are_kept(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted(lambda calls: Response(
        f"v{calls}", headers={"ETag": '"mine"', "Cache-Control": "public, max-age=5"}
    ))
    running, base = _serve(serve, Cache(store, ttl=60, clock=clock), handler)
    first = running.get(base + "a")
    assert first.headers["ETag"] == '"mine"'
    assert first.headers["Cache-Control"] == "public, max-age=5"
    assert running.get(base + "a", {"If-None-Match": '"mine"'}).status == 304
    clock.advance(5)  # the handler's max-age is shorter than the cache's ttl
    assert running.get(base + "a").text == "v2"


# -- expiry and eviction ---------------------------------------------------------------------


def test_an_entry_expires_after_the_ttl(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted()
    running, base = _serve(serve, Cache(store, ttl=30, clock=clock), handler)
    assert running.get(base + "a").text == "a 1"
    clock.advance(29.5)
    assert running.get(base + "a").text == "a 1"
    clock.advance(0.5)
    assert running.get(base + "a").text == "a 2"
    assert running.get(base + "a").text == "a 2"
    assert _count(base, "miss") == 2 and _count(base, "hit") == 2


def test_memory_store_evicts_the_least_recently_used(clock: FakeClock) -> None:
    store = MemoryStore(max_entries=2, clock=clock)
    entry = CachedResponse(200, (), b"x", clock(), 60)
    store.set("a", entry, 60)
    store.set("b", entry, 60)
    assert store.get("a") == entry  # a is now the most recently used
    store.set("c", entry, 60)
    assert (store.get("a"), store.get("b"), store.get("c")) == (entry, None, entry)
    assert len(store) == 2


def test_memory_store_is_bounded_in_bytes_and_expires(clock: FakeClock) -> None:
    store = MemoryStore(max_bytes=200, clock=clock)
    big = CachedResponse(200, (("Content-Type", "text/plain"),), b"x" * 100, clock(), 60)
    store.set("a", big, 60)
    store.set("b", big, 60)
    assert store.get("a") is None and store.get("b") == big and store.bytes <= 200
    store.set("huge", dataclass_with_body(big, b"y" * 300), 60)
    assert store.get("huge") is None and store.get("b") == big
    clock.advance(60)
    assert store.get("b") is None and len(store) == 0 and store.bytes == 0


def dataclass_with_body(entry: CachedResponse, body: bytes) -> CachedResponse:
    return CachedResponse(entry.status, entry.headers, body, entry.stored_at, entry.ttl)


def test_memory_store_eviction_through_the_server(serve: Serve, clock: FakeClock) -> None:
    handler = Counted()
    running, base = _serve(serve, Cache(MemoryStore(max_entries=2, clock=clock), clock=clock),
                           handler)
    for name in ("a", "b", "a", "c"):  # c evicts b, the least recently used
        running.get(base + name)
    assert handler.calls == 3
    assert running.get(base + "a").text == "a 1"
    assert running.get(base + "b").text == "b 4"


# -- what is not stored ----------------------------------------------------------------------


def test_post_is_never_cached(serve: Serve, store: CacheStore, clock: FakeClock) -> None:
    handler = Counted()
    running, base = _serve(serve, Cache(store, clock=clock), handler, ("GET", "POST"))
    assert running.request("POST", base + "a", body=b"").text == "a 1"
    assert running.request("POST", base + "a", body=b"").text == "a 2"
    assert running.get(base + "a").text == "a 3"
    posted = running.request("POST", base + "a", body=b"")
    assert posted.text == "a 4" and "Age" not in posted.headers
    assert _count(base, "miss") == 1 and _count(base, "hit") == 0


def _streamed(calls: int) -> Response:
    return Response(iter([b"chunk ", str(calls).encode()]))


@pytest.mark.parametrize("answer", [
    pytest.param(lambda c: Response(f"v{c}", headers={"Set-Cookie": "s=1"}), id="set-cookie"),
    pytest.param(lambda c: Response(f"v{c}", headers={"Cache-Control": "no-store"}),
                 id="no-store"),
    pytest.param(lambda c: Response(f"v{c}", headers={"Cache-Control": "private"}), id="private"),
    pytest.param(lambda c: Response(f"v{c}", headers={"Cache-Control": "max-age=0"}),
                 id="max-age-0"),
    pytest.param(lambda c: Response(f"v{c}", headers={"Vary": "Cookie"}), id="vary"),
    pytest.param(lambda c: (f"v{c}", 404), id="404"),
    pytest.param(lambda c: (f"v{c}", 201), id="201"),
    pytest.param(lambda c: f"v{c}" + "x" * 2000, id="over-max-body"),
    pytest.param(_streamed, id="streamed"),
])
def test_responses_that_are_not_stored(
    serve: Serve, store: CacheStore, clock: FakeClock, answer: Callable[[int], Any]
) -> None:
    handler = Counted(answer)
    running, base = _serve(serve, Cache(store, max_body=1000, clock=clock), handler)
    first = running.get(base + "a")
    second = running.get(base + "a")
    assert handler.calls == 2
    assert first.body != second.body
    assert _count(base, "miss") == 2 and _count(base, "hit") == 0


def test_statuses_choose_what_is_stored(
    serve: Serve, store: CacheStore, clock: FakeClock
) -> None:
    handler = Counted(lambda calls: (f"gone {calls}", 404))
    running, base = _serve(serve, Cache(store, statuses=(200, 404), clock=clock), handler)
    assert running.get(base + "a").text == "gone 1"
    hit = running.get(base + "a")
    assert (hit.status, hit.text, handler.calls) == (404, "gone 1", 1)


# -- stores failing --------------------------------------------------------------------------


def test_redis_store_going_away_answers_from_the_handler_and_warns_once(
    serve: Serve, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    _require_redis_package()
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    handler = Counted()
    running, base = _serve(serve, Cache(store, retry_after=5, clock=clock), handler)
    with caplog.at_level(logging.INFO, logger="patron.http"):
        replies = [running.get(base + "a") for _ in range(3)]
        clock.advance(10)  # past retry_after: the store is tried again, and fails again
        replies += [running.get(base + "a") for _ in range(2)]
    assert [(r.status, r.text) for r in replies] == [(200, f"a {n}") for n in range(1, 6)]
    warnings = [r for r in caplog.records if "response cache" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "RedisStore" in warnings[0].getMessage()
    assert _count(base, "error") == 5


class FlakyStore(MemoryStore):
    """A memory store that raises while ``down`` is set."""

    down = False

    def get(self, key: str) -> CachedResponse | None:
        if self.down:
            raise ConnectionError("store down")
        return super().get(key)

    def set(self, key: str, entry: CachedResponse, ttl: float) -> None:
        if self.down:
            raise ConnectionError("store down")
        super().set(key, entry, ttl)


def test_a_store_that_recovers_is_used_again_and_logged_once_each_way(
    serve: Serve, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(clock=clock)
    handler = Counted()
    running, base = _serve(serve, Cache(store, ttl=600, retry_after=1, clock=clock), handler)
    with caplog.at_level(logging.INFO, logger="patron.http"):
        assert running.get(base + "a").text == "a 1"
        store.down = True
        assert running.get(base + "a").text == "a 2"
        assert running.get(base + "a").text == "a 3"
        store.down = False
        assert running.get(base + "a").text == "a 4"  # still left alone for retry_after
        clock.advance(2)
        assert running.get(base + "a").text == "a 1"  # the entry is there again
        assert running.get(base + "a").text == "a 1"
    messages = [(r.levelno, r.getMessage()) for r in caplog.records
                if "response cache" in r.getMessage()]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO]
    assert "works again" in messages[1][1]


def test_redis_entries_are_compact_and_expire_in_redis(redis_url: str, clock: FakeClock) -> None:
    store = RedisStore(redis_url, prefix=f"patron-test:{uuid.uuid4().hex}:")
    entry = CachedResponse(200, (("Content-Type", "text/plain"), ("ETag", '"e"')), b"\x00body\n",
                           clock(), 30)
    try:
        store.set("k", entry, 30)
        raw = store.client.get(store.redis_key("k"))
        assert isinstance(raw, bytes) and raw.endswith(b"\n\x00body\n")
        assert raw.startswith(b'{"v":1,"s":200,')
        assert 0 < int(store.client.pttl(store.redis_key("k"))) <= 30_000
        assert store.get("k") == entry
        store.client.set(store.redis_key("k"), b"not an entry")
        assert store.get("k") is None
        store.delete("k")
        assert store.client.exists(store.redis_key("k")) == 0
    finally:
        store.client.delete(store.redis_key("k"))
        store.client.close()


def test_missing_redis_skips_outside_ci_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(f"{__name__}.REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="unreachable"):
        _require_redis()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"unreachable.*CI is set"):
        _require_redis()
