"""The memory a /debug/profile costs a real service process under light load.

Before samples were aggregated, a 3 s profile of ``tests.support.services:busy`` with four
clients raised the process's peak RSS by about 150 MB (a 30 s one by 1.5 GB) and answered
14 MB of HTML; aggregated, both stay at a few MB whatever the duration.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable

import pytest

from tests.conftest import ServiceProcess, free_port, http_status, wait_for

pytestmark = pytest.mark.slow

PROFILE_SECONDS = 3
CLIENTS = 4
PEAK_GROWTH_LIMIT = 40 * 1024 * 1024
ANSWER_LIMIT = 2 * 1024 * 1024



def _peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process has had, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_a_profile_under_load_keeps_peak_memory_and_answer_small(
    service_process: Callable[..., ServiceProcess],
) -> None:
    port = free_port()
    process = service_process(
        "tests.support.services:busy",
        PATRON_HTTP_DEFAULT_PORT=str(port),
        PATRON_LOG_LEVEL="WARNING",  # not a log line per request
    )
    wait_for(lambda: http_status(port, "/ready") == 200, timeout=15)

    stop = threading.Event()
    served = [0] * CLIENTS

    def client(index: int) -> None:
        # Keep-alive requests that each hold a worker thread for a while, back to back.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while not stop.is_set():
                conn.request("GET", f"/work/{served[index]}")
                conn.getresponse().read()
                served[index] += 1
        finally:
            conn.close()

    clients = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: all(count >= 5 for count in served), timeout=15)
        before = _peak_rss(process.proc.pid)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROFILE_SECONDS + 60)
        conn.request("GET", f"/debug/profile?seconds={PROFILE_SECONDS}&format=html")
        response = conn.getresponse()
        body = response.read()
        conn.close()
        after = _peak_rss(process.proc.pid)
    finally:
        stop.set()
        for thread in clients:
            thread.join(15)

    assert response.status == 200, body[:500]
    assert f"all threads for {PROFILE_SECONDS}s".encode() in body
    assert "thread waitress-" in body.decode()  # the busy workers were sampled
    growth = after - before
    assert growth < PEAK_GROWTH_LIMIT, f"peak RSS grew by {growth / 2**20:.0f} MB"
    assert len(body) < ANSWER_LIMIT, f"the answer is {len(body) / 2**20:.1f} MB"
