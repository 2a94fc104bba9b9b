"""HTTP benchmark: patron's HTTP component against bare waitress and werkzeug's dev server.

Run from the repository root::

    python -m benchmarks.http [--duration 3] [--rounds 3] [--threads N] [--load python]

First ``python -m patron samples.hello`` is started several times, one after the other, to time
its first ``200`` from ``/ready`` and read its idle RSS (``VmRSS``). Then three servers answer
``GET /hello/world`` with ``Hello, world!`` (the handler of ``samples/hello.py``), each in a
subprocess of its own on an ephemeral 127.0.0.1 port:

* ``patron``: a Service with the HTTP component and its full chain (recovery, correlation id,
  tracing with the default sampler, probabilistic 0.0, request logging with the log level at
  INFO, metrics) and the management routes, ``PATRON_HTTP_THREADS`` worker threads;
* ``waitress``: ``waitress.create_server`` with a plain WSGI function and the same thread count;
* ``werkzeug``: ``werkzeug.serving.make_server(threaded=True)`` with the same function, as
  shipped (it logs every request to its stderr, which goes to a file here).

Each is driven by the same load generator (wrk ``-t1 --latency`` when installed, else a Python
keep-alive client, named in the output) at 1 and 32 connections, in several short rounds that
interleave the servers (in a different order each round), after a short warm-up. Medians over
the rounds are reported with the server's CPU time per request. A ratio is patron's requests/s
over a baseline's in the same round, median over the rounds, so slow drifts of a shared
machine cancel out.

Then the route options, on the same patron server at 32 connections, each row against its own
baseline in the same round: ``/big/world`` (16 KiB of text) with ``Accept-Encoding: gzip`` (so
compressed, the default for user routes) against the same route asked without it, and
``/cached/world`` (a cache hit of a ``MemoryStore``) against ``/render/world``, the same handler
(a 200-item JSON document) without a cache.

With ``--tracing``, three more patron servers run the same rounds, to price the tracing
backends (``PATRON_TRACING``): ``patron-jaeger-on`` (Jaeger, every request sampled and sent to
a UDP sink), ``patron-otel-off`` (OpenTelemetry, ``parentbased_always_off``) and
``patron-otel-on`` (OpenTelemetry, every request sampled and exported over OTLP/HTTP to a sink
in this process); ``patron`` itself is Jaeger with the default sampler (nothing sampled). Each
prints ``RATIO <server>/waitress``.

The last line is ``RATIO patron/waitress <value>`` (requests/s at 32 connections).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from benchmarks._util import (
    ROOT,
    LoadResult,
    cpu_seconds,
    free_port,
    http_get,
    median,
    rss_kib,
    run_load,
    wrk_path,
    wrk_version,
)

__all__ = ["main"]

HOST = "127.0.0.1"
PATH = "/hello/world"
EXPECTED_BODY = b"Hello, world!\n"
SERVERS = ("patron", "waitress", "werkzeug")
TRACING_SERVERS = ("patron-jaeger-on", "patron-otel-off", "patron-otel-on")
START_TIMEOUT = 30.0
STARTUP_POLL = 0.005
IDLE_SETTLE = 0.5  # seconds after the first 200 before reading the idle RSS

TARGET_WAITRESS = 0.8
TARGET_WERKZEUG = 2.0
TARGET_STARTUP = 1.0


# -- the servers (run in subprocesses: python -m benchmarks.http --serve NAME) ---------------


def hello(request: object, name: str) -> str:
    """The handler of samples/hello.py (copied: importing the sample builds its Service)."""
    return f"Hello, {name}!\n"


BIG_BODY = ("All work and no play makes Jack a dull boy. " * 400)[:16384]
OPTION_CONNECTIONS = 32
#: (row, path, request headers, the row it is compared with)
OPTION_ROWS = (
    ("gzip", "/big/world", ("Accept-Encoding: gzip",), "identity"),
    ("identity", "/big/world", (), None),
    ("cache hit", "/cached/world", (), "uncached"),
    ("uncached", "/render/world", (), None),
)


def big(request: object, name: str) -> str:
    return BIG_BODY


def render(request: object, name: str) -> dict[str, Any]:
    """Some work worth caching: a document of 200 items."""
    return {"name": name, "items": [{"id": i, "label": f"item {i}", "tags": ["a", "b"]}
                                    for i in range(200)]}


def raw_hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The same answer as a bare WSGI function, for the baselines."""
    path = environ.get("PATH_INFO", "")
    if not path.startswith("/hello/"):
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    body = f"Hello, {path[7:]}!\n".encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _announce(port: int) -> None:
    print(port, flush=True)


def _serve_patron(threads: int) -> int:
    from patron import Service
    from patron.config import Config
    from patron.http import Cache, HTTPComponent, MemoryStore, Route, RouteOptions

    # The tracing of a --tracing server comes from the environment its parent gave it.
    cfg = dataclasses.replace(Config.from_env(), http_default_port=0, http_threads=threads,
                              log_level="INFO")
    service = Service("bench-http", "1.0.0", default_http=False, config=cfg)
    # The default HTTP component, bound to loopback instead of every interface.
    cached = RouteOptions(cache=Cache(MemoryStore(), ttl=3600))
    routes = [
        Route("GET", "/hello/<name>", hello),
        Route("GET", "/big/<name>", big),
        Route("GET", "/render/<name>", render),
        Route("GET", "/cached/<name>", render, options=cached),
    ]
    component = HTTPComponent.default(cfg, service, routes, host=HOST)
    service.add_component(component)
    threading.Thread(
        target=lambda: component.wait_started(START_TIMEOUT) and _announce(component.port),
        daemon=True
    ).start()
    return service.run()  # SIGTERM stops it


def _serve_waitress(threads: int) -> int:
    import waitress

    server = waitress.create_server(raw_hello, host=HOST, port=0, threads=threads)
    _announce(int(server.effective_port))
    server.run()
    return 0


def _serve_werkzeug(threads: int) -> int:
    from werkzeug.serving import make_server

    server = make_server(HOST, 0, raw_hello, threaded=True)
    _announce(server.server_port)
    server.serve_forever()
    return 0


_SERVE = {
    "patron": _serve_patron, "waitress": _serve_waitress, "werkzeug": _serve_werkzeug,
    **{name: _serve_patron for name in TRACING_SERVERS},
}


class _Sinks:
    """Where the sampled servers send their spans: a UDP socket for Jaeger (never read: the
    kernel drops what does not fit) and an OTLP/HTTP endpoint answering 200 to every export."""

    def __init__(self) -> None:
        import http.server

        class Accept(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((HOST, 0))
        self.otlp = http.server.ThreadingHTTPServer((HOST, 0), Accept)
        threading.Thread(target=self.otlp.serve_forever, name="otlp-sink", daemon=True).start()

    def environ(self, server: str) -> dict[str, str]:
        """The environment of the ``server`` subprocess: its tracing backend and sampler."""
        jaeger = {"PATRON_TRACING": "jaeger", "PATRON_JAEGER_SAMPLER_TYPE": "probabilistic",
                  "PATRON_JAEGER_SAMPLER_PARAM": "0", "PATRON_JAEGER_AGENT_HOST": HOST,
                  "PATRON_JAEGER_AGENT_PORT": str(self.udp.getsockname()[1])}
        otel = {"PATRON_TRACING": "otel",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{self.otlp.server_port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        return {
            "patron-jaeger-on": {**jaeger, "PATRON_JAEGER_SAMPLER_TYPE": "const",
                                 "PATRON_JAEGER_SAMPLER_PARAM": "1"},
            "patron-otel-off": {**otel, "OTEL_TRACES_SAMPLER": "parentbased_always_off"},
            "patron-otel-on": {**otel, "OTEL_TRACES_SAMPLER": "always_on"},
        }.get(server, jaeger)

    def close(self) -> None:
        self.otlp.shutdown()
        self.otlp.server_close()
        self.udp.close()


class ServerProcess:
    """One server subprocess; its stderr goes to a temporary file shown when it fails.

    Built in two steps so several servers start in parallel: the constructor spawns the
    process, :meth:`wait_ready` reads its port. :meth:`terminate` then :meth:`close` stop it.
    """

    def __init__(self, name: str, threads: int, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = 0
        self.idle_rss_kib = 0
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.http", "--serve", name, "--threads", str(threads)],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )

    def wait_ready(self) -> None:
        """Read the port the server announces; raise ``RuntimeError`` when it does not."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            raise RuntimeError(f"{self.name} server did not start:\n{self.log_tail()}")
        self.port = int(line)
        self.idle_rss_kib = rss_kib(self.proc.pid)

    def log_tail(self, size: int = 4000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-size:]

    def check(self) -> None:
        """Fail unless the server answers the benchmark request as expected."""
        status, body = http_get(HOST, self.port, PATH)
        if status != 200 or body != EXPECTED_BODY:
            raise RuntimeError(f"{self.name} answered {status} {body!r}")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Wait for the process (killing it after 10 s) and release its pipes."""
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


# -- measuring --------------------------------------------------------------------------------


@dataclasses.dataclass
class Runs:
    results: list[LoadResult] = dataclasses.field(default_factory=list)
    cpu_us_per_request: list[float] = dataclasses.field(default_factory=list)

    @property
    def rps(self) -> float:
        return median([r.requests_per_s for r in self.results])

    @property
    def p99(self) -> float:
        return median([r.p99_ms for r in self.results])

    @property
    def cpu(self) -> float:
        return median(self.cpu_us_per_request)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results)


def _measure(
    server: ServerProcess, connections: int, duration: int, wrk: str | None, path: str = PATH,
    headers: Sequence[str] = (),
) -> tuple[LoadResult, float]:
    cpu_before = server.cpu()
    result = run_load(HOST, server.port, path, connections, duration, wrk, headers)
    cpu_used = server.cpu() - cpu_before
    if server.proc.poll() is not None:
        raise RuntimeError(f"{server.name} server exited:\n{server.log_tail()}")
    return result, cpu_used / max(result.requests, 1) * 1e6


def _startup(runs: int) -> tuple[list[float], int]:
    """Seconds from spawning ``python -m patron samples.hello`` to its first 200 from /ready,
    for each run, and the RSS in KiB of the last one once idle. Runs one at a time; each stops
    in the background while the next starts."""
    times: list[float] = []
    rss = 0
    stopping: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(runs):
            port = free_port()
            env = {**os.environ, "PATRON_HTTP_DEFAULT_PORT": str(port), "PATRON_LOG_LEVEL": "INFO"}
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "patron", "samples.hello"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            stopping.append(proc)
            deadline = started + START_TIMEOUT
            while True:
                try:
                    status, _ = http_get(HOST, port, "/ready")
                except OSError:
                    status = 0
                if status == 200:
                    break
                if proc.poll() is not None or time.perf_counter() > deadline:
                    raise RuntimeError(f"python -m patron samples.hello never got ready ({status})")
                time.sleep(STARTUP_POLL)
            times.append(time.perf_counter() - started)
            if len(times) == runs:
                time.sleep(IDLE_SETTLE)  # let start-up work settle before reading the idle RSS
                rss = rss_kib(proc.pid)
            proc.send_signal(signal.SIGTERM)
    finally:
        for proc in stopping:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in stopping:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    return times, rss


def _warm_up(servers: Sequence[ServerProcess], connections: int, seconds: int,
             wrk: str | None) -> None:
    """Load every server at once for ``seconds`` (results discarded): warm-up only needs each
    code path run many times, not a quiet machine."""
    errors: list[BaseException] = []

    def load(server: ServerProcess) -> None:
        try:
            run_load(HOST, server.port, PATH, connections, seconds, wrk)
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(s,), name=f"warm-up {s.name}")
               for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _option_rounds(server: ServerProcess, rounds: int, duration: int, wrk: str | None,
                   runs: dict[str, Runs]) -> None:
    """The route option rows on the patron server, in an order rotated every round."""
    for row, path, _headers, _ in OPTION_ROWS:
        status, _body = http_get(HOST, server.port, path)
        if status != 200:
            raise RuntimeError(f"patron answered {status} for {path} ({row})")
    for round_no in range(rounds):
        shift = round_no % len(OPTION_ROWS)
        for row, path, headers, _ in OPTION_ROWS[shift:] + OPTION_ROWS[:shift]:
            result, cpu_us = _measure(server, OPTION_CONNECTIONS, duration, wrk, path, headers)
            entry = runs.setdefault(row, Runs())
            entry.results.append(result)
            entry.cpu_us_per_request.append(cpu_us)
            print(f"  round {round_no + 1} c={OPTION_CONNECTIONS:<3} patron {row:<10}"
                  f"{result.requests_per_s:9.0f} req/s  p99 {result.p99_ms:7.2f} ms  "
                  f"cpu {cpu_us:6.0f} us/req  errors {result.errors}", flush=True)


def _report_options(runs: dict[str, Runs]) -> dict[str, float]:
    """Print the route option rows and return each ratio to its baseline row."""
    if not runs:
        return {}
    print(f"route options at c={OPTION_CONNECTIONS}, medians (ratio: the row's req/s over its "
          "baseline's in the same round, median over rounds):")
    ratios: dict[str, float] = {}
    for row, path, _, baseline in OPTION_ROWS:
        entry = runs[row]
        line = (f"  {row:<10} GET {path:<14} {entry.rps:8.0f} req/s  p99 {entry.p99:7.2f} ms  "
                f"cpu {entry.cpu:6.0f} us/req  errors {entry.errors}")
        if baseline is not None:
            value = ratios[f"{row.replace(' ', '-')}/{baseline}"] = median([
                _ratio(mine.requests_per_s, theirs.requests_per_s)
                for mine, theirs in zip(entry.results, runs[baseline].results, strict=True)
            ])
            line += f"   {row}/{baseline} {value:.2f}"
        print(line)
    return ratios


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _parse_list(text: str, allowed: Iterable[str] | None = None) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if allowed is not None:
        bad = [item for item in items if item not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(bad)}")
    return items


def _default_threads() -> int:
    from patron.config import Config, ConfigError

    try:
        return Config.from_env().http_threads
    except ConfigError as exc:
        raise SystemExit(f"benchmarks.http: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per run (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="seconds of load on all servers at once before the rounds "
                        "(default 1, 0: none)")
    parser.add_argument("--threads", type=int, default=None,
                        help="worker threads of patron and waitress (default PATRON_HTTP_THREADS "
                        "or patron's default)")
    parser.add_argument("--connections", default="1,32",
                        help="comma-separated connection counts (default 1,32)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        type=lambda text: _parse_list(text, SERVERS),
                        help="comma-separated subset of " + ",".join(SERVERS))
    parser.add_argument("--startup-runs", type=int, default=5,
                        help="start-up measurements of samples.hello (default 5, 0: none)")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk if installed (auto), or force one")
    parser.add_argument("--tracing", action="store_true",
                        help="also run " + ", ".join(TRACING_SERVERS) + " (see above)")
    parser.add_argument("--serve", choices=SERVERS + TRACING_SERVERS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    threads = args.threads if args.threads is not None else _default_threads()
    if args.serve:
        return _SERVE[args.serve](threads)
    try:
        connections = [int(c) for c in _parse_list(args.connections)]
    except ValueError:
        raise SystemExit("benchmarks.http: --connections takes numbers such as 1,32") from None
    if args.duration < 1 or args.rounds < 1 or not connections or min(connections) < 1:
        raise SystemExit("benchmarks.http: --duration, --rounds and connections must be >= 1")

    wrk = wrk_path() if args.load in ("auto", "wrk") else None
    if args.load == "wrk" and wrk is None:
        raise SystemExit("benchmarks.http: --load wrk but wrk is not installed")
    if wrk is not None:
        tool = f"{wrk_version(wrk)} (-t1 --latency)"
    else:
        why = "forced with --load python" if args.load == "python" else "wrk not found on PATH"
        tool = (f"PYTHON FALLBACK keep-alive client ({why}); "
                "figures are not comparable with wrk runs")
    servers_wanted: list[str] = args.servers
    print(f"HTTP benchmark: GET {PATH}, {args.rounds} round(s) x {args.duration} s "
          f"per server and connection count, warm-up {args.warmup} s")
    print(f"load generator: {tool}")
    print(f"threads (patron, waitress): {threads}; python {platform.python_version()}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")

    startup_times: list[float] = []
    startup_rss = 0
    if args.startup_runs > 0:
        startup_times, startup_rss = _startup(args.startup_runs)

    servers: list[ServerProcess] = []
    runs: dict[tuple[str, int], Runs] = {}
    option_runs: dict[str, Runs] = {}
    sinks = _Sinks()
    if args.tracing:
        servers_wanted = [*servers_wanted, *TRACING_SERVERS]
    try:
        for name in servers_wanted:
            servers.append(ServerProcess(name, threads, sinks.environ(name)))
        for server in servers:
            server.wait_ready()
        for server in servers:
            server.check()
        if args.warmup > 0:
            _warm_up(servers, max(connections), args.warmup, wrk)
        for round_no in range(args.rounds):
            for conns in connections:
                # Rotate the order every round so no server always follows the same one.
                shift = round_no % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    result, cpu_us = _measure(server, conns, args.duration, wrk)
                    entry = runs.setdefault((server.name, conns), Runs())
                    entry.results.append(result)
                    entry.cpu_us_per_request.append(cpu_us)
                    print(f"  round {round_no + 1} c={conns:<3} {server.name:<9}"
                          f"{result.requests_per_s:9.0f} req/s  p99 {result.p99_ms:7.2f} ms  "
                          f"cpu {cpu_us:6.0f} us/req  errors {result.errors}", flush=True)
        patron_server = next((s for s in servers if s.name == "patron"), None)
        if patron_server is not None:
            _option_rounds(patron_server, args.rounds, args.duration, wrk, option_runs)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.close()
        sinks.close()

    print()
    print(f"medians over {args.rounds} round(s):")
    print(f"{'conns':>5}  {'server':<9} {'req/s':>8} {'p99 ms':>8} {'cpu us/req':>10} "
          f"{'errors':>6}  {'idle RSS MiB':>12}")
    for conns in connections:
        for server in servers:
            entry = runs[(server.name, conns)]
            print(f"{conns:>5}  {server.name:<9} {entry.rps:8.0f} {entry.p99:8.2f} "
                  f"{entry.cpu:10.0f} {entry.errors:6d}  {server.idle_rss_kib / 1024:12.1f}")
    print()
    names = {s.name for s in servers}
    ratios: dict[tuple[str, int], float] = {}
    if "patron" in names and len(names) > 1:
        print("ratios: patron req/s / baseline req/s measured in the same round, median over "
              "rounds (cpu: baseline CPU per request / patron's)")
    for conns in connections:
        if "patron" not in names:
            break
        patron = runs[("patron", conns)]
        for baseline in ("waitress", "werkzeug"):
            if baseline not in names:
                continue
            other = runs[(baseline, conns)]
            per_round = [
                _ratio(mine.requests_per_s, theirs.requests_per_s)
                for mine, theirs in zip(patron.results, other.results, strict=True)
            ]
            value = ratios[(baseline, conns)] = median(per_round)
            rounds = " ".join(f"{r:.2f}" for r in per_round)
            cpu = _ratio(other.cpu, patron.cpu)
            print(f"  c={conns:<3} patron/{baseline:<9} {value:5.2f}   rounds {rounds}   "
                  f"cpu {cpu:.2f}   p99 {patron.p99:.2f} ms vs {other.p99:.2f} ms")
    tracing_ratios: dict[str, float] = {}
    if "waitress" in names:
        for name in TRACING_SERVERS:
            if name not in names:
                continue
            mine_runs = runs[(name, max(connections))].results
            theirs_runs = runs[("waitress", max(connections))].results
            value = tracing_ratios[name] = median([
                _ratio(mine.requests_per_s, theirs.requests_per_s)
                for mine, theirs in zip(mine_runs, theirs_runs, strict=True)
            ])
            print(f"  c={max(connections):<3} {name}/waitress {value:5.2f}   cpu "
                  f"{runs[(name, max(connections))].cpu:.0f} us/req")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other work on the machine "
          "makes single rounds noisy; compare ratios, not absolute figures)")

    checks = []
    if ("waitress", 32) in ratios:
        checks.append(("patron/waitress at c=32", ratios[("waitress", 32)], TARGET_WAITRESS, ">="))
    if ("werkzeug", 32) in ratios:
        checks.append(("patron/werkzeug at c=32", ratios[("werkzeug", 32)], TARGET_WERKZEUG, ">="))
    if startup_times:
        print(f"start-up: python -m patron samples.hello to the first 200 from /ready: median "
              f"{median(startup_times):.3f} s over {len(startup_times)} runs "
              f"(min {min(startup_times):.3f}, max {max(startup_times):.3f}); idle RSS "
              f"{startup_rss / 1024:.1f} MiB (VmRSS {IDLE_SETTLE:g} s after ready)")
        checks.append(("start-up median seconds", median(startup_times), TARGET_STARTUP, "<="))
    option_ratios = _report_options(option_runs)
    for label, value, target, op in checks:
        ok = value >= target if op == ">=" else value <= target
        print(f"target {label}: {value:.3f} {op} {target:g}: {'met' if ok else 'MISSED'}")
    for row, value in option_ratios.items():
        print(f"RATIO {row} {value:.2f}")
    for name, value in tracing_ratios.items():
        print(f"RATIO {name}/waitress {value:.2f}")
    if ("werkzeug", 32) in ratios:
        print(f"RATIO patron/werkzeug {ratios[('werkzeug', 32)]:.2f}")
    if ("waitress", 32) in ratios:
        print(f"RATIO patron/waitress {ratios[('waitress', 32)]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
