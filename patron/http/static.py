"""Static files: routes that serve a directory, safely, with caching validators.

Usage::

    from patron import Service
    from patron.http.static import static_routes

    service = Service("site", "1.0", routes=[
        *static_routes("/assets", "./dist", max_age=3600),
        *static_routes("/app", "./spa", spa_fallback=True),
    ])

The work is werkzeug's where werkzeug does it: :func:`werkzeug.security.safe_join` rejects
``..``, absolute paths and (on Windows) device names, and :func:`werkzeug.utils.send_file`
streams the file (through the server's ``wsgi.file_wrapper``), sets ``Content-Type`` (from
:mod:`mimetypes`), ``Content-Length``, ``ETag`` (mtime, size and a hash of the path),
``Last-Modified`` and ``Cache-Control``, and answers ``If-None-Match`` / ``If-Modified-Since``
with 304 and ``Range`` with 206. This module adds what ``safe_join`` leaves out: the real path
(symlinks resolved) must stay inside the real directory, NUL bytes and, unless ``dotfiles``,
hidden files (``.env``, ``.git/...``) are refused, and only regular files are served. Every
refusal is a plain 404, never a file outside the directory, and never the SPA fallback.

The handler runs in the server's worker thread that serves the request: it resolves and
stats the path there; the file is opened there and read as the body is sent, still in that
thread. Route options apply as to any route, compression included (a file is compressed as
it streams, its ``ETag`` made weak; images and archives are sent as they are).
"""

from __future__ import annotations

import mimetypes
import os
import posixpath
import stat
from typing import TYPE_CHECKING

from werkzeug.exceptions import NotFound
from werkzeug.security import safe_join
from werkzeug.utils import send_file
from werkzeug.wrappers import Response

from patron.http.options import NO_OPTIONS, RouteOptions
from patron.http.routes import Middleware, Route

if TYPE_CHECKING:
    from collections.abc import Sequence

    from patron.http.routes import Request

__all__ = ["StaticFiles", "static_routes"]


class StaticFiles:
    """The handler of :func:`static_routes`: ``handler(request, path="")`` answers the file
    at ``path`` under ``directory`` (see the module docstring). Immutable once built and
    shared by every worker thread.

    Raises ``NotADirectoryError`` when built on something that is not a directory; when
    called, raises werkzeug's ``NotFound`` (a 404 answer) for anything it will not serve.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        index: str | None = "index.html",
        spa_fallback: bool = False,
        max_age: int | None = None,
        dotfiles: bool = False,
    ) -> None:
        root = os.path.realpath(directory)
        if not os.path.isdir(root):
            raise NotADirectoryError(f"static files: {os.fspath(directory)!r} is not a directory")
        if spa_fallback and not index:
            raise ValueError("spa_fallback needs an index file to fall back to")
        self.directory = root
        self.index = index
        self.spa_fallback = spa_fallback
        self.max_age = max_age
        self.dotfiles = dotfiles

    def __call__(self, request: Request, path: str = "") -> Response:
        found = self._resolve(path)
        if found is None:
            raise NotFound()
        real, name = found
        return send_file(
            real,
            request.environ,
            mimetype=mimetypes.guess_type(name)[0] or mimetypes.guess_type(real)[0],
            download_name=name,
            conditional=True,
            etag=True,
            max_age=self.max_age,
        )

    def _resolve(self, path: str) -> tuple[str, str] | None:
        """``(real path, name for the content type)`` of the file to send, or None (404)."""
        if "\x00" in path:
            return None
        parts = [p for p in path.split("/") if p]
        if not self.dotfiles and any(p.startswith(".") and p not in (".", "..") for p in parts):
            return None
        joined = safe_join(self.directory, path) if path else self.directory
        if joined is None:
            return None  # a traversal attempt: no fallback either
        real = self._inside(joined)
        if real is None and os.path.lexists(joined):
            return None  # exists, but resolves outside the directory (a symlink): refused
        name = parts[-1] if parts else ""
        if real is not None and stat.S_ISDIR(_mode(real)) and self.index:
            index = self._inside(os.path.join(real, self.index))
            if index is not None and stat.S_ISREG(_mode(index)):
                return index, self.index
        elif real is not None and stat.S_ISREG(_mode(real)):
            return real, name
        if self.spa_fallback and self.index and not posixpath.splitext(name)[1]:
            index = self._inside(os.path.join(self.directory, self.index))
            if index is not None and stat.S_ISREG(_mode(index)):
                return index, self.index
        return None

    def _inside(self, path: str) -> str | None:
        """The real path of ``path`` when it exists inside the directory, else None."""
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError):
            return None
        if real != self.directory and not real.startswith(self.directory.rstrip(os.sep) + os.sep):
            return None
        return real if os.path.exists(real) else None


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):
        return 0


def static_routes(
    prefix: str,
    directory: str | os.PathLike[str],
    *,
    index: str | None = "index.html",
    spa_fallback: bool = False,
    max_age: int | None = None,
    dotfiles: bool = False,
    middlewares: Sequence[Middleware] = (),
    options: RouteOptions = NO_OPTIONS,
) -> list[Route]:
    """The ``GET`` (and so ``HEAD``) routes serving ``directory`` under ``prefix``:
    ``prefix`` itself (the directory's ``index``) and ``prefix/<path:path>``.

    ``prefix``: ``""`` or ``"/"`` for the root, else starting but not ending with ``/``.
    ``index``: the file answered for a directory (``None``: a directory is a 404; there is no
    listing). ``spa_fallback``: a path that is not found and whose last segment has no
    extension (``/app/users/42``, not ``/app/main.js``) is answered with the root ``index``,
    so a single-page app's router sees every deep link. ``max_age``: ``Cache-Control:
    public, max-age=...``; ``None`` sends ``no-cache`` (always revalidate, which the ETag makes
    cheap). ``dotfiles``: serve files and directories whose name starts with ``.``.
    ``middlewares`` and ``options`` as for any :class:`~patron.http.Route`.

    Called once, when the routes are built; raises ``ValueError`` for a bad prefix and
    ``NotADirectoryError`` when ``directory`` is not one.
    """
    if prefix == "/":
        prefix = ""
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ValueError(f"static prefix {prefix!r} must start but not end with '/'")
    handler = StaticFiles(
        directory, index=index, spa_fallback=spa_fallback, max_age=max_age, dotfiles=dotfiles
    )
    return [
        Route("GET", prefix or "/", handler, middlewares=middlewares, options=options),
        Route("GET", f"{prefix}/<path:path>", handler, middlewares=middlewares, options=options),
    ]
