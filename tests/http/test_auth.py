"""Route authentication (patron.http.auth) over real HTTP."""

from __future__ import annotations

import hmac
import logging

import pytest
from werkzeug.exceptions import Forbidden

from patron.http import Request, Route, RouteOptions
from patron.http.auth import PRINCIPAL, APIKeyAuth, Authentication, principal
from tests.http.conftest import Running, Serve

KEYS = {"billing": "k-billing-0123456789", "search": "k-search-9876543210"}


def whoami(request: Request) -> str:
    return f"hello {principal(request)}"


def served(serve: Serve, auth: Authentication) -> Running:
    return serve(routes=[Route("GET", "/private", whoami, options=RouteOptions(auth=auth))])


def test_a_right_key_is_let_in_and_its_name_is_the_principal(serve: Serve) -> None:
    running = served(serve, APIKeyAuth(KEYS))

    reply = running.get("/private", headers={"X-API-Key": KEYS["search"]})
    assert (reply.status, reply.text) == (200, "hello search")
    reply = running.get("/private", headers={"Authorization": f"Apikey {KEYS['billing']}"})
    assert (reply.status, reply.text) == (200, "hello billing")
    reply = running.get("/private", headers={"Authorization": f"APIKEY {KEYS['billing']}"})
    assert reply.status == 200  # the scheme is case-insensitive


def test_keys_without_names_are_numbered(serve: Serve) -> None:
    running = served(serve, APIKeyAuth(["first", "second"]))
    reply = running.get("/private", headers={"X-API-Key": "second"})
    assert (reply.status, reply.text) == (200, "hello key-2")


@pytest.mark.parametrize("headers", [
    {},
    {"X-API-Key": "wrong"},
    {"X-API-Key": KEYS["search"] + "x"},
    {"X-API-Key": KEYS["search"][:-1]},
    {"Authorization": f"Bearer {KEYS['search']}"},  # not the scheme this route reads
    {"Authorization": "Apikey"},
])
def test_a_missing_or_wrong_key_is_answered_401_with_a_challenge(
    serve: Serve, headers: dict[str, str]
) -> None:
    calls: list[Request] = []

    def handler(request: Request) -> str:
        calls.append(request)
        return "secret"

    auth = APIKeyAuth(KEYS, realm="orders")
    running = serve(routes=[Route("GET", "/private", handler, options=RouteOptions(auth=auth))])
    reply = running.get("/private", headers=headers)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'Apikey realm="orders"'
    assert b"secret" not in reply.body
    assert calls == []


def test_the_header_and_scheme_can_be_chosen(serve: Serve) -> None:
    running = served(serve, APIKeyAuth(["t0ken"], header=None, scheme="Bearer"))
    assert running.get("/private", headers={"Authorization": "Bearer t0ken"}).status == 200
    reply = running.get("/private", headers={"X-API-Key": "t0ken"})
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="patron"'

    running = served(serve, APIKeyAuth(["t0ken"], header="X-Token", scheme=None))
    assert running.get("/private", headers={"X-Token": "t0ken"}).status == 200
    reply = running.get("/private", headers={"Authorization": "Apikey t0ken"})
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'APIKey realm="patron"'


def test_every_key_is_compared_in_constant_time(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"key-number-{n}" for n in range(5)]
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    running = served(serve, APIKeyAuth(keys))

    for presented, status in ((keys[0], 200), (keys[3], 200), ("nope", 401)):
        compared.clear()
        assert running.get("/private", headers={"X-API-Key": presented}).status == status
        # Against every key, a match early in the list included, and on digests of one length.
        assert len(compared) == len(keys)
        assert {len(a) for a, _ in compared} | {len(b) for _, b in compared} == {32}


def test_a_raising_authenticator_answers_500_and_is_logged_once(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def authenticate(self, request: Request) -> object | None:
            raise ConnectionError("key store unreachable")

    running = served(serve, Authentication(Broken()))
    with caplog.at_level(logging.ERROR, logger="patron.http"):
        reply = running.get("/private", headers={"X-API-Key": "sent-by-the-client"})
    assert reply.status == 500
    assert b"key store" not in reply.body
    failures = [r for r in caplog.records if r.exc_info is not None]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[0] is ConnectionError
    assert "/private" in failures[0].getMessage()
    assert "Broken" in failures[0].getMessage()
    assert "sent-by-the-client" not in caplog.text


def test_a_custom_authenticator_gives_its_principal_or_its_answer(serve: Serve) -> None:
    class Users:
        def authenticate(self, request: Request) -> object | None:
            user = request.headers.get("X-User")
            if user == "mallory":
                raise Forbidden("banned")
            return {"name": user} if user else None

    seen: list[object] = []

    def handler(request: Request) -> str:
        seen.append(request.environ[PRINCIPAL])
        return "ok"

    auth = Authentication(Users(), challenge='Custom realm="users"')
    running = serve(routes=[Route("GET", "/u", handler, options=RouteOptions(auth=auth))])
    assert running.get("/u", headers={"X-User": "alice"}).status == 200
    assert seen == [{"name": "alice"}]
    reply = running.get("/u")
    assert (reply.status, reply.headers["WWW-Authenticate"]) == (401, 'Custom realm="users"')
    assert running.get("/u", headers={"X-User": "mallory"}).status == 403
    assert len(seen) == 1


def test_a_router_wide_auth_applies_to_routes_and_false_turns_it_off(serve: Serve) -> None:
    running = serve(
        routes=[
            Route("GET", "/private", whoami),
            Route("GET", "/public", whoami, options=RouteOptions(auth=False)),
        ],
        route_options=RouteOptions(auth=APIKeyAuth(["k"])),
    )
    assert running.get("/private").status == 401
    assert running.get("/private", headers={"X-API-Key": "k"}).status == 200
    reply = running.get("/public")
    assert (reply.status, reply.text) == (200, "hello None")


def test_bad_configurations_are_refused() -> None:
    for keys in ([], [""], {"a": ""}):
        with pytest.raises(ValueError):
            APIKeyAuth(keys)
    with pytest.raises(ValueError):
        APIKeyAuth(["k"], header=None, scheme=None)
    with pytest.raises(ValueError):
        APIKeyAuth(["k"], realm='a"b')
    assert "k3y" not in repr(APIKeyAuth(["k3y"]))
