"""Static files over real HTTP: types, validators, indexes, SPA fallback and traversal."""

from __future__ import annotations

import gzip
import mimetypes
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from patron.http import RouteOptions
from patron.http.static import static_routes
from tests.http.conftest import Running, Serve

SECRET = b"TOP-SECRET-OUTSIDE-THE-DIRECTORY"
INDEX = b"<!doctype html><title>app</title>"
SCRIPT = b"console.log('patron');\n" * 100  # > 1 KB: compressible


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """``tmp_path/site`` (served) beside ``tmp_path/secret.txt`` (never served)."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "index.html").write_bytes(INDEX)
    (root / "app.js").write_bytes(SCRIPT)
    (root / "style.css").write_bytes(b"body { color: red }")
    (root / "docs" / "index.html").write_bytes(b"<p>docs</p>")
    (root / ".env").write_bytes(SECRET)
    (root / "inside-link.js").symlink_to(root / "app.js")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "linkdir").symlink_to(tmp_path)
    return root


@pytest.fixture
def served(serve: Serve, site: Path) -> Running:
    return serve(routes=[
        *static_routes("/static", site),
        *static_routes("/app", site, spa_fallback=True, max_age=60),
    ])


def _raw_get(running: Running, target: bytes) -> tuple[int, bytes]:
    """The status and the whole answer (headers and body) of a GET sent byte for byte."""
    answer = running.raw(b"GET " + target + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    status = int(answer.split(b" ", 2)[1])
    return status, answer


def test_a_file_is_served_with_its_type_length_and_validators(served: Running) -> None:
    reply = served.get("/static/app.js")
    assert reply.status == 200 and reply.body == SCRIPT
    assert reply.headers["Content-Type"].startswith(mimetypes.guess_type("app.js")[0] or "?")
    assert reply.headers["Content-Length"] == str(len(SCRIPT))
    assert reply.headers["ETag"] and reply.headers["Last-Modified"]
    assert reply.headers["Cache-Control"] == "no-cache"  # no max_age: always revalidate
    reply = served.get("/static/style.css")
    assert reply.headers["Content-Type"].startswith("text/css")
    assert reply.body == b"body { color: red }"
    reply = served.get("/static/inside-link.js")  # a symlink that stays inside is fine
    assert reply.status == 200 and reply.body == SCRIPT
    reply = served.request("HEAD", "/static/app.js")
    assert reply.status == 200 and reply.body == b""
    assert reply.headers["Content-Length"] == str(len(SCRIPT))


def test_revalidation_answers_304_until_the_file_changes(served: Running, site: Path) -> None:
    first = served.get("/static/app.js")
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    reply = served.get("/static/app.js", {"If-None-Match": etag})
    assert reply.status == 304 and reply.body == b""
    reply = served.get("/static/app.js", {"If-Modified-Since": modified})
    assert reply.status == 304 and reply.body == b""

    (site / "app.js").write_bytes(SCRIPT + b"// v2\n")
    stat = (site / "app.js").stat()
    os.utime(site / "app.js", (stat.st_atime, stat.st_mtime + 10))
    reply = served.get("/static/app.js", {"If-None-Match": etag})
    assert reply.status == 200 and reply.body == SCRIPT + b"// v2\n"
    assert reply.headers["ETag"] != etag


def test_files_are_compressed_as_they_stream_and_revalidate_weakly(served: Running) -> None:
    reply = served.get("/static/app.js", {"Accept-Encoding": "gzip"})
    assert reply.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(reply.body) == SCRIPT
    etag = reply.headers["ETag"]
    assert etag.startswith("W/")
    reply = served.get("/static/app.js", {"Accept-Encoding": "gzip", "If-None-Match": etag})
    assert reply.status == 304
    reply = served.get("/static/app.js", {"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
    assert reply.status == 206 and reply.body == SCRIPT[:10]  # ranges: identity bytes


def test_a_directory_answers_its_index(served: Running, site: Path) -> None:
    for path in ("/static", "/static/", "/static/index.html"):
        reply = served.get(path)
        assert reply.status == 200 and reply.body == INDEX, path
        assert reply.headers["Content-Type"].startswith("text/html"), path
    for path in ("/static/docs", "/static/docs/"):
        reply = served.get(path)
        assert reply.status == 200 and reply.body == b"<p>docs</p>", path
        assert reply.headers["Content-Type"].startswith("text/html"), path
    assert served.get("/static/empty/").status == 404  # no index, no listing


def test_spa_fallback_answers_the_index_for_unknown_routes(served: Running) -> None:
    for path in ("/app/users/42", "/app/settings/", "/app/empty"):
        reply = served.get(path)
        assert reply.status == 200 and reply.body == INDEX, path
        assert reply.headers["Content-Type"].startswith("text/html"), path
    assert served.get("/app/missing.js").status == 404  # looks like a file: a real 404
    assert served.get("/app/app.js").body == SCRIPT
    reply = served.get("/app/app.js")
    assert "max-age=60" in reply.headers["Cache-Control"]
    assert "public" in reply.headers["Cache-Control"]
    assert served.get("/static/users/42").status == 404  # no fallback there


@pytest.mark.parametrize("target", [
    b"/{p}/../secret.txt",
    b"/{p}/%2e%2e/secret.txt",
    b"/{p}/%2E%2E%2Fsecret.txt",
    b"/{p}/..%2fsecret.txt",
    b"/{p}/docs/../../secret.txt",
    b"/{p}/docs/%2e%2e/%2e%2e/secret.txt",
    b"/{p}/..",
    b"/{p}/%2e%2e",
    b"/{p}/link.txt",               # a symlink to a file outside
    b"/{p}/linkdir/secret.txt",     # through a symlink to a directory outside
    b"/{p}/linkdir",
    b"/{p}/app.js%00.txt",          # a NUL byte
    b"/{p}/%00",
    b"/{p}/.env",                   # a hidden file
    b"/{p}/{abs}",                  # an absolute path
    b"/{p}/..\\secret.txt",
])
@pytest.mark.parametrize("prefix", [b"static", b"app"])  # with and without the SPA fallback
def test_traversal_attempts_get_404_and_never_a_file_outside(
    served: Running, site: Path, target: bytes, prefix: bytes
) -> None:
    absolute = quote(str(site.parent / "secret.txt"), safe="").encode()
    request = target.replace(b"{p}", prefix).replace(b"{abs}", absolute)
    status, answer = _raw_get(served, request)
    if status == 308:  # the router merges the slashes of /prefix//abs/path first
        location = answer.split(b"Location: ", 1)[1].split(b"\r\n", 1)[0]
        assert location.startswith(b"http://test/" + prefix + b"/"), location
        status, answer = _raw_get(served, location[len(b"http://test"):])
    assert status == 404, answer[:200]
    assert SECRET not in answer
    assert INDEX not in answer  # not the SPA fallback either


def test_the_root_prefix_and_route_options(serve: Serve, site: Path) -> None:
    running = serve(routes=static_routes(
        "/", site, options=RouteOptions(compression=False),
    ))
    assert running.get("/").body == INDEX
    reply = running.get("/app.js", {"Accept-Encoding": "gzip"})
    assert reply.body == SCRIPT and reply.headers.get("Content-Encoding") is None
    status, answer = _raw_get(running, b"/../secret.txt")
    assert status == 404 and SECRET not in answer


def test_bad_arguments_fail_when_the_routes_are_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prefix"):
        static_routes("static", tmp_path)
    with pytest.raises(ValueError, match="prefix"):
        static_routes("/static/", tmp_path)
    with pytest.raises(NotADirectoryError):
        static_routes("/static", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="index"):
        static_routes("/static", tmp_path, index=None, spa_fallback=True)
