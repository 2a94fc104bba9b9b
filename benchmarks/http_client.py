"""HTTP client benchmark: patron's HTTPClient against a bare urllib3 PoolManager loop.

Run from the repository root::

    python -m benchmarks.http_client [--duration 2] [--rounds 5] [--warmup 0.5]

A bare waitress server (``python -m benchmarks.http --serve waitress``, a plain WSGI function
answering ``GET /hello/world``) runs in a subprocess on an ephemeral 127.0.0.1 port. In this
process, one thread sends GETs back to back for ``--duration`` seconds on one keep-alive
connection, first with one client then the other (the order alternates between rounds):

* ``patron``: ``HTTPClient()`` with its defaults (timeouts, retries, circuit breaker, a client
  span with OpenTracing's no-op tracer, correlation id, the duration histogram);
* ``urllib3``: ``PoolManager(maxsize=1, retries=False)`` with the same connect/read timeouts
  and ``decode_content``, the status checked, nothing else.

Medians over the rounds are reported; the ratio is patron's requests/s over urllib3's in the
same round, median over the rounds, so slow drifts of a shared machine cancel out. The last line
is ``RATIO patron-client/urllib3 <value>``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence

import urllib3

from benchmarks._util import median
from benchmarks.http import EXPECTED_BODY, HOST, PATH, ServerProcess
from patron.http.client import HTTPClient, Timeout

__all__ = ["main"]

CLIENTS = ("patron", "urllib3")


def _loop(send: Callable[[], None], duration: float) -> float:
    """Requests per second of ``send`` called back to back for ``duration`` seconds."""
    count = 0
    started = time.perf_counter()
    deadline = started + duration
    while True:
        for _ in range(50):
            send()
        count += 50
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_client")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per client per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=0.5)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.duration <= 0 or args.rounds < 1:
        raise SystemExit("benchmarks.http_client: --duration must be > 0 and --rounds >= 1")
    server = ServerProcess("waitress", 4)
    try:
        server.wait_ready()
        server.check()
        url = f"http://{HOST}:{server.port}{PATH}"
        timeout = Timeout(connect=5, read=30)
        patron_client = HTTPClient(timeout=timeout, max_connections_per_host=1)
        pool = urllib3.PoolManager(maxsize=1, retries=False)
        u3_timeout = urllib3.Timeout(connect=timeout.connect, read=timeout.read)

        def patron_get() -> None:
            response = patron_client.get(url)
            if response.status != 200 or response.body != EXPECTED_BODY:
                raise RuntimeError(f"patron client got {response.status} {response.body!r}")

        def urllib3_get() -> None:
            response = pool.request("GET", url, timeout=u3_timeout, decode_content=True)
            if response.status != 200 or response.data != EXPECTED_BODY:
                raise RuntimeError(f"urllib3 got {response.status} {response.data!r}")

        sends = {"patron": patron_get, "urllib3": urllib3_get}
        print(f"HTTP client benchmark: GET {url}, one thread, one keep-alive connection, "
              f"{args.rounds} round(s) x {args.duration} s per client")
        print(f"server: bare waitress (4 threads) in a subprocess; python "
              f"{platform.python_version()}; {os.cpu_count()} CPUs; "
              f"load average {os.getloadavg()[0]:.2f}")
        for name in CLIENTS:
            _loop(sends[name], args.warmup)
        results: dict[str, list[float]] = {name: [] for name in CLIENTS}
        ratios: list[float] = []
        for round_no in range(args.rounds):
            order = CLIENTS if round_no % 2 == 0 else tuple(reversed(CLIENTS))
            this_round = {name: _loop(sends[name], args.duration) for name in order}
            for name, rps in this_round.items():
                results[name].append(rps)
            ratios.append(this_round["patron"] / this_round["urllib3"])
            print(f"round {round_no + 1}: " + ", ".join(
                f"{name} {this_round[name]:.0f} req/s" for name in CLIENTS
            ) + f", ratio {ratios[-1]:.3f}")
        patron_client.close()
        pool.clear()
        for name in CLIENTS:
            rps = median(results[name])
            print(f"{name:8s} median {rps:8.0f} req/s  ({1e6 / rps:6.1f} us/request)")
        overhead = 1e6 / median(results["patron"]) - 1e6 / median(results["urllib3"])
        print(f"patron client overhead per request: {overhead:.1f} us")
        print(f"RATIO patron-client/urllib3 {median(ratios):.3f}")
    finally:
        server.terminate()
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
