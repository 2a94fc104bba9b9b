"""Go Patron's per-state message counter, shared by the AMQP and SQS consumers."""

from __future__ import annotations

from typing import Any

from patron import metrics
from patron.messaging._loop import Counts, Outcome

__all__ = ["StateCounter"]

_STATES = {Outcome.RECEIVED: "FETCHED", Outcome.ACKED: "ACK", Outcome.NACKED: "NACK"}


class StateCounter:
    """``component_<transport>_message_counter{queue, state, hasError}``: messages ``FETCHED``,
    ``ACK`` (acknowledged) and ``NACK`` (given back); ``hasError`` is ``true`` when the
    processor failed on them. Failed messages left unacknowledged (``exit``) are not counted."""

    def __init__(self, transport: str) -> None:
        self._metric = metrics.counter(
            f"component_{transport}_message_counter",
            f"{transport.upper()} messages by state (FETCHED, ACK, NACK) and whether the "
            "processor failed on them",
            ["queue", "state", "hasError"],
        )
        self._children: dict[tuple[str, Outcome, bool], Any] = {}

    def record(self, counts: Counts) -> None:
        """Add ``counts`` (from :meth:`patron.messaging._loop.Transport.record`)."""
        for key, n in counts.items():
            child = self._children.get(key)
            if child is None:
                queue, outcome, failed = key
                state = _STATES.get(outcome)
                if state is None:
                    continue
                child = self._children[key] = self._metric.labels(
                    queue, state, "true" if failed else "false"
                )
            child.inc(n)
