"""What ``python -m patron.testing.<emulator>`` programs share: announce, then wait to be told."""

from __future__ import annotations

import signal
import sys
import threading

__all__ = ["run_until_told"]


def run_until_told(address: str) -> None:
    """Print ``address`` on its own line, then block until stdin closes, SIGTERM or SIGINT.

    A parent process reads the first line to learn where the emulator listens, and ends it by
    closing the pipe or sending a signal. Call it from the main thread.
    """
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: done.set())

    def watch_stdin() -> None:
        try:
            while sys.stdin.read(4096):
                pass
        except (OSError, ValueError):
            pass
        done.set()

    print(address, flush=True)
    threading.Thread(target=watch_stdin, name="patron-stdin-watch", daemon=True).start()
    while not done.wait(1.0):  # wake up now and then so signals are handled promptly
        pass
