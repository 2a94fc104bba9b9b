"""A TCP proxy for fault injection with real sockets: a broker or endpoint that stops answering.

:class:`Proxy` listens on 127.0.0.1 and forwards every connection to a target address, until
:meth:`Proxy.freeze` stops forwarding in both directions while keeping every connection open:
to the client, the server went silent without closing anything (a hung broker, a network path
that dropped), which only timeouts can tell. Nothing is read while frozen, so the bytes wait
in the kernel's buffers.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType

__all__ = ["Proxy"]

_SLICE = 0.05  # seconds per select(): how late a freeze or close is seen by the pumps


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``target`` (host, port); a context manager."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._gates: list[threading.Lock] = []  # one per pump, held while it forwards
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def freeze(self) -> None:
        """Stop forwarding, both ways, on every connection, present and future: once this
        returns, not one more byte goes through."""
        self._frozen.set()
        with self._lock:
            gates = list(self._gates)
        for gate in gates:  # wait for a forwarding in progress to end
            with gate:
                pass

    def close(self) -> None:
        """Close the listener and every connection (the peers see them closed)."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name="test-proxy",  # type: ignore[arg-type]
                                  daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], _SLICE)
                if not ready:
                    continue
                client, _address = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            self._start(self._pump, client, upstream)
            self._start(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        gate = threading.Lock()
        with self._lock:
            self._gates.append(gate)
        while not self._closed.is_set():
            with gate:
                if not self._frozen.is_set():
                    try:
                        ready, _, _ = select.select([source], [], [], _SLICE)
                        if ready:
                            data = source.recv(65536)
                            if not data:
                                sink.shutdown(socket.SHUT_WR)
                                return
                            sink.sendall(data)
                    except OSError:
                        return
                    continue
            self._closed.wait(_SLICE)  # frozen
