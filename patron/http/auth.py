"""Authentication of a route's requests: 401 for a client that is not let in.

What goes in :class:`~patron.http.RouteOptions` (``auth=``) is an :class:`Authentication`: the
layer that asks an :class:`Authenticator` about each request. :class:`APIKeyAuth` is one,
ready to use::

    RouteOptions(auth=APIKeyAuth(["k1", "k2"]))           # X-API-Key or Authorization: Apikey
    RouteOptions(auth=Authentication(MyTokenChecker(), challenge='Bearer realm="api"'))

The authenticator runs in the server's worker thread, before the cache, the timeout, the
middlewares and the handler (and after the rate limit). Its answer decides:

* a principal (anything but ``None`` and ``False``): the request goes on, and the handler finds
  the principal in ``request.environ["patron.principal"]`` (:func:`principal`);
* ``None`` or ``False``: ``401 Unauthorized`` with a ``WWW-Authenticate`` challenge;
* an ``HTTPException`` (a 403, say): that answer, as from a handler;
* any other exception: ``500 Internal Server Error``, logged once with its traceback on the
  ``patron.http`` logger (the route, not the request's headers) — never a 401, so a broken key
  store is not mistaken for a wrong key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

if TYPE_CHECKING:
    from patron.http.options import NextHandler
    from patron.http.routes import Request

__all__ = ["PRINCIPAL", "APIKeyAuth", "Authentication", "Authenticator", "principal"]

logger = logging.getLogger("patron.http")

#: the WSGI environ key of the principal an authenticator returned
PRINCIPAL = "patron.principal"

_UNAUTHORIZED = b"Unauthorized\n"
_INTERNAL_ERROR = b"Internal Server Error"


def principal(request: Request) -> object | None:
    """The principal the route's authenticator returned for ``request`` (``None`` without
    authentication)."""
    return request.environ.get(PRINCIPAL)


@runtime_checkable
class Authenticator(Protocol):
    """Tells who sent a request, or that nobody known did."""

    def authenticate(self, request: Request) -> object | None:
        """The principal (any object but ``None``/``False``: a user, a client name, ``True``)
        of an authenticated request, else ``None`` or ``False``. Runs in the server's worker
        threads, concurrently: it must be thread-safe. May raise an ``HTTPException`` to answer
        with it; any other exception answers 500."""


class Authentication:
    """The layer: ``authenticator`` asked for every request of the route.

    ``challenge`` is the ``WWW-Authenticate`` value of a 401 (RFC 9110 requires one).
    """

    def __init__(
        self, authenticator: Authenticator, challenge: str = 'Bearer realm="patron"'
    ) -> None:
        self.authenticator = authenticator
        self.challenge = challenge

    def wrap(self, following: NextHandler, pattern: str) -> NextHandler:
        """``following`` behind the authenticator. Called once per route when the router is
        built; the returned callable runs in the server's worker threads."""
        authenticate = self.authenticator.authenticate
        challenge = self.challenge
        authenticator_name = type(self.authenticator).__name__

        def call(request: Request) -> Response:
            try:
                found = authenticate(request)
            except HTTPException:
                raise
            except Exception:
                # Only the route and the authenticator's type: never the request's headers.
                logger.exception(
                    "%s %s: authenticator %s failed", request.method, pattern, authenticator_name
                )
                return Response(_INTERNAL_ERROR, status=500, content_type="text/plain")
            if found is None or found is False:
                return Response(
                    _UNAUTHORIZED,
                    status=401,
                    content_type="text/plain; charset=utf-8",
                    headers={"WWW-Authenticate": challenge},
                )
            request.environ[PRINCIPAL] = found
            return following(request)

        return call


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class APIKeyAuth(Authentication):
    """Static API keys, compared in constant time.

    ``keys`` is an iterable of keys, or a mapping from a client's name to its key. The principal
    is that name (``"key-1"``, ``"key-2"``… in the iterable's order without names): never the
    key itself, so a handler that logs the principal logs no secret.

    The key is read from ``Authorization: <scheme> <key>`` (``scheme`` compared
    case-insensitively; ``"Apikey"`` by default, as Go Patron's API key authenticator; say
    ``scheme="Bearer"`` for bearer tokens, ``None`` not to read ``Authorization``) and else from
    the ``header`` (``X-API-Key`` by default, the raw key; ``None`` not to read it). A 401
    carries ``WWW-Authenticate: <scheme> realm="<realm>"`` (``APIKey realm=...`` when ``scheme``
    is ``None``): API keys have no registered HTTP authentication scheme, so this names the
    scheme the route reads rather than following a standard.

    The presented key and every configured key are hashed (SHA-256) and compared with
    ``hmac.compare_digest``, against every key without stopping at a match, so neither the time
    taken nor an early exit tells how much of a key, or which key, matched, nor a key's length.

    Raises ``ValueError`` without keys, with an empty key, or with neither a header nor a scheme.
    """

    def __init__(
        self,
        keys: Iterable[str] | Mapping[str, str],
        header: str | None = "X-API-Key",
        scheme: str | None = "Apikey",
        realm: str = "patron",
    ) -> None:
        named = (
            list(keys.items()) if isinstance(keys, Mapping)
            else [(f"key-{n}", key) for n, key in enumerate(keys, 1)]
        )
        if not named:
            raise ValueError("APIKeyAuth needs at least one key")
        if any(not key for _, key in named):
            raise ValueError("APIKeyAuth: an API key is empty")
        if header is None and scheme is None:
            raise ValueError("APIKeyAuth needs a header or an Authorization scheme to read")
        if '"' in realm or "\\" in realm:
            raise ValueError(f"APIKeyAuth: the realm cannot hold quotes or backslashes: {realm!r}")
        self._keys = [(name, _digest(key.encode())) for name, key in named]
        self._environ_key = (
            None if header is None else "HTTP_" + header.upper().replace("-", "_")
        )
        self._scheme = None if scheme is None else scheme.lower()
        super().__init__(self, challenge=f'{scheme or "APIKey"} realm="{realm}"')

    def __repr__(self) -> str:  # never the keys
        return f"APIKeyAuth({len(self._keys)} keys)"

    def _presented(self, request: Request) -> str | None:
        """The key the request carries, or ``None``."""
        environ = request.environ
        if self._scheme is not None:
            authorization = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() == self._scheme and credentials.strip():
                return str(credentials.strip())
        if self._environ_key is not None:
            value = environ.get(self._environ_key)
            if value:
                return str(value)
        return None

    def authenticate(self, request: Request) -> str | None:
        """The name of the key the request carries, or ``None`` (worker threads)."""
        presented = self._presented(request)
        if presented is None:
            return None
        # WSGI strings carry the header's bytes as latin-1 code points.
        digest = _digest(presented.encode("latin-1", errors="replace"))
        found: str | None = None
        for name, key in self._keys:
            if hmac.compare_digest(digest, key) and found is None:
                found = name
        return found
