"""Unary ``SayHello`` calls per second: patron's GRPCComponent against a bare grpcio server.

Run from the repository root: ``python benchmarks/grpc.py`` (about 45 s; ``--long`` for a
longer, steadier run). Two server processes are started once and measured alternately by the
same client, round after round:

* ``patron``: a Service (no default HTTP) running a GRPCComponent with every interceptor
  (recovery, correlation id, tracing with the default Jaeger tracer, logging, metrics) and the
  health service tied to readiness;
* ``bare``: ``grpc.server`` with the Greeter alone.

Both use the same servicer and a worker pool of the same size. The client is ``--clients``
processes (default 2, so that the server, not one client's GIL, is the bottleneck), each with
``--concurrency`` threads making blocking calls. Printed: calls/s per round, the medians, the
server CPU time per call (from /proc, when there is one) and, last,
``RATIO grpc_unary <patron/bare>``.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory comes first on sys.path, and this file is named like
# the grpc package it measures: put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent import futures  # noqa: E402

import grpc  # noqa: E402

from samples import greeter_pb2, greeter_pb2_grpc  # noqa: E402
from samples.grpc_greeter import Greeter  # noqa: E402

SIDES = ("patron", "bare")


def serve_patron(workers: int) -> int:
    from patron import Config, Service
    from patron.grpc import GRPCComponent

    service = Service("bench-grpc", "1.0", default_http=False, config=Config(log_level="WARNING"))
    component = GRPCComponent(
        0, host="127.0.0.1", max_workers=workers, readiness=service.ready,
        servicers=[(greeter_pb2_grpc.add_GreeterServicer_to_server, Greeter())],
    )
    service.add_component(component)

    def announce() -> None:
        if component.wait_started(30):
            print(f"PORT {component.port}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    return service.run()


def serve_bare(workers: int) -> int:
    server = grpc.server(futures.ThreadPoolExecutor(workers), options=[("grpc.so_reuseport", 0)])
    greeter_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"PORT {port}", flush=True)
    stop.wait()
    server.stop(1).wait()
    return 0


class Server:
    """One server process of the benchmark."""

    def __init__(self, side: str, workers: int) -> None:
        self.side = side
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", side, "--workers", str(workers)],
            stdout=subprocess.PIPE, text=True, cwd=_ROOT, start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise SystemExit(f"{side} server did not start: {line!r}")
        self.port = int(line.split()[1])

    def cpu_seconds(self) -> float | None:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def drive(port: int, start: float, seconds: float, concurrency: int) -> int:
    """From wall-clock time ``start``, ``concurrency`` threads call SayHello back to back for
    ``seconds``; return the calls made."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        request = greeter_pb2.HelloRequest(name="bench")
        stub.SayHello(request, timeout=10)  # connected before the clock starts
        time.sleep(max(0.0, start - time.time()))
        deadline = time.monotonic() + seconds
        counts = [0] * concurrency

        def loop(slot: int) -> None:
            calls = 0
            while time.monotonic() < deadline:
                stub.SayHello(request, timeout=10)
                calls += 1
            counts[slot] = calls

        threads = [threading.Thread(target=loop, args=(n,)) for n in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return sum(counts)


def measure(port: int, seconds: float, clients: int, concurrency: int) -> float:
    """Calls per second that ``clients`` client processes got from the server on ``port``."""
    start = time.time() + 1.0  # time for every client to import grpc and connect
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--drive", str(port), "--start",
             repr(start), "--seconds", str(seconds), "--concurrency", str(concurrency)],
            stdout=subprocess.PIPE, text=True, cwd=_ROOT,
        )
        for _ in range(clients)
    ]
    calls = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise SystemExit(f"a client failed with status {proc.returncode}")
        calls += int(out.split()[-1])
    return calls / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--drive", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=10, help="server worker threads")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per client")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.5, help="duration of one measurement")
    parser.add_argument("--long", action="store_true", help="9 rounds of 8 s")
    args = parser.parse_args()
    if args.serve == "patron":
        return serve_patron(args.workers)
    if args.serve == "bare":
        return serve_bare(args.workers)
    if args.drive:
        print(drive(args.drive, args.start, args.seconds, args.concurrency), flush=True)
        return 0
    if args.long:
        args.rounds, args.seconds = 9, 8.0

    servers = {side: Server(side, args.workers) for side in SIDES}
    try:
        for server in servers.values():  # warm up: connections, caches, metric children
            measure(server.port, 1.0, args.clients, args.concurrency)
        rates: dict[str, list[float]] = {side: [] for side in SIDES}
        cpu: dict[str, list[float]] = {side: [] for side in SIDES}
        for round_ in range(args.rounds):
            order = SIDES if round_ % 2 == 0 else SIDES[::-1]
            figures = []
            for side in order:
                server = servers[side]
                cpu_before = server.cpu_seconds()
                rate = measure(server.port, args.seconds, args.clients, args.concurrency)
                cpu_after = server.cpu_seconds()
                rates[side].append(rate)
                if cpu_before is not None and cpu_after is not None and rate:
                    # includes the clients' connection set-up, the same for both sides
                    cpu[side].append((cpu_after - cpu_before) / (rate * args.seconds) * 1e6)
                figures.append(f"{side} {rate:8.0f} calls/s")
            print(f"round {round_ + 1}: " + "   ".join(figures), flush=True)
    finally:
        for server in servers.values():
            server.stop()

    medians = {side: statistics.median(rates[side]) for side in SIDES}
    print(f"workers={args.workers} clients={args.clients}x{args.concurrency} threads "
          f"rounds={args.rounds} seconds={args.seconds}")
    for side in SIDES:
        line = f"median {side:6} {medians[side]:8.0f} calls/s"
        if cpu[side]:
            line += f"   server CPU {statistics.median(cpu[side]):6.1f} us/call"
        print(line)
    print(f"RATIO grpc_unary {medians['patron'] / medians['bare']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
