"""Helpers shared by the benchmarks: medians, HTTP load generation, process figures.

Load generation prefers wrk (``wrk -t1 --latency``); without it, :func:`python_load` is a
single-threaded, selector-driven keep-alive client. Its figures are lower and noisier than wrk's
(it shares the machine's cores and the GIL with nothing but itself, yet Python parses every
response), so results carry the name of the tool that produced them and must only be compared
with results of the same tool.

Everything here runs in the calling thread; the functions raise ``RuntimeError`` when a tool
fails or its output cannot be read.
"""

from __future__ import annotations

import dataclasses
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "ROOT",
    "LoadResult",
    "cpu_seconds",
    "free_port",
    "http_get",
    "median",
    "parse_wrk",
    "python_load",
    "rss_kib",
    "run_load",
    "run_wrk",
    "wrk_path",
    "wrk_version",
]

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """One load run: throughput, tail latency and everything that went wrong."""

    tool: str
    connections: int
    duration: float
    requests: int
    requests_per_s: float
    p99_ms: float
    errors: int  # socket errors, timeouts and non-2xx/3xx responses


def median(values: Sequence[float]) -> float:
    """The median of ``values``; raises ``ValueError`` when there are none."""
    if not values:
        raise ValueError("median of nothing")
    return float(statistics.median(values))


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now (for servers that need a fixed one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(host: str, port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """``(status, body)`` of one HTTP/1.0 GET; raises ``OSError`` when it cannot connect."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("ascii"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP response: {raw[:80]!r}") from None
    return status, body


# -- process figures (Linux /proc) ------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """The process's resident set size (``VmRSS``) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


# -- wrk --------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_P99 = re.compile(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)


def wrk_path() -> str | None:
    """Where wrk is, or None when it is not installed."""
    return shutil.which("wrk")


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0].split(" [")[0] if first else "wrk"


def parse_wrk(text: str, connections: int) -> LoadResult:
    """Read a ``wrk --latency`` report; raises ``RuntimeError`` when a figure is missing."""
    rps, p99, total = _RPS.search(text), _P99.search(text), _TOTAL.search(text)
    if rps is None or p99 is None or total is None:
        raise RuntimeError(f"cannot read wrk's report:\n{text}")
    errors = 0
    if (non_2xx := _NON_2XX.search(text)) is not None:
        errors += int(non_2xx.group(1))
    if (socket_errors := _SOCKET_ERRORS.search(text)) is not None:
        errors += sum(int(n) for n in socket_errors.groups())
    return LoadResult(
        tool="wrk",
        connections=connections,
        duration=float(total.group(2)) * _UNITS[total.group(3)] / 1e3,
        requests=int(total.group(1)),
        requests_per_s=float(rps.group(1)),
        p99_ms=float(p99.group(1)) * _UNITS[p99.group(2)],
        errors=errors,
    )


def run_wrk(
    url: str, connections: int, duration: int, wrk: str = "wrk", headers: Sequence[str] = ()
) -> LoadResult:
    """``wrk -t1 -c<connections> -d<duration>s --latency url`` (one load thread, as §8 of the
    design measured); ``duration`` is whole seconds because wrk takes no fractions."""
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, int(duration))}s", "--latency", url]
    for header in headers:
        cmd[1:1] = ["-H", header]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return parse_wrk(out.stdout, connections)


# -- the Python fallback ----------------------------------------------------------------------


class _Conn:
    __slots__ = ("buf", "sent_at", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.sent_at = 0.0


def _response_length(head: bytes) -> tuple[int, int, bool]:
    """``(status, content_length, close)`` from a response head; raises ``ValueError``."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, close = -1, lines[0].startswith(b"HTTP/1.0")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    if length < 0:
        raise ValueError("response without Content-Length")
    return status, length, close


def python_load(
    host: str, port: int, path: str, connections: int, duration: float,
    headers: Sequence[str] = (),
) -> LoadResult:
    """Keep ``connections`` keep-alive connections busy with GET ``path`` for ``duration`` s.

    One request in flight per connection, like wrk. Responses need a Content-Length; a
    connection the server closes (or that fails) is counted as an error and reopened.
    """
    extra = "".join(f"{header}\r\n" for header in headers)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode("ascii")
    selector = selectors.DefaultSelector()
    latencies: list[float] = []
    errors = 0

    def open_conn() -> None:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _Conn(sock)
        selector.register(sock, selectors.EVENT_READ, conn)
        conn.sent_at = time.perf_counter()
        sock.send(request)

    def drop(conn: _Conn) -> None:
        selector.unregister(conn.sock)
        conn.sock.close()

    for _ in range(connections):
        open_conn()
    started = time.perf_counter()
    deadline = started + duration
    try:
        while (now := time.perf_counter()) < deadline:
            for key, _ in selector.select(deadline - now):
                conn: _Conn = key.data
                try:
                    data = conn.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    errors += 1
                    drop(conn)
                    open_conn()
                    continue
                conn.buf += data
                end = conn.buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                try:
                    status, length, close = _response_length(conn.buf[:end])
                except (ValueError, IndexError):
                    errors += 1
                    drop(conn)
                    open_conn()
                    continue
                if len(conn.buf) < end + 4 + length:
                    continue
                done = time.perf_counter()
                latencies.append(done - conn.sent_at)
                if not 200 <= status < 400:
                    errors += 1
                conn.buf = conn.buf[end + 4 + length:]
                if close:
                    drop(conn)
                    open_conn()
                else:
                    conn.sent_at = done
                    conn.sock.send(request)
    finally:
        elapsed = time.perf_counter() - started
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3 if latencies else 0.0
    return LoadResult(
        tool="python",
        connections=connections,
        duration=elapsed,
        requests=len(latencies),
        requests_per_s=len(latencies) / elapsed,
        p99_ms=p99,
        errors=errors,
    )


def run_load(
    host: str, port: int, path: str, connections: int, duration: int, wrk: str | None,
    headers: Sequence[str] = (),
) -> LoadResult:
    """wrk when ``wrk`` (its path) is given, else the Python fallback, on the same terms;
    ``headers`` (``"Name: value"``) are sent with every request."""
    if wrk is not None:
        return run_wrk(f"http://{host}:{port}{path}", connections, duration, wrk, headers)
    return python_load(host, port, path, connections, duration, headers)
