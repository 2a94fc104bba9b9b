"""The settings the consumer samples share, read from the environment; a bad value stops the
start with one line naming it (:class:`patron.ConfigError`)."""

from __future__ import annotations

import os

from patron import ConfigError
from patron.config import parse_duration

#: more consumers than this would only wait on one another in one process
MAX_CONCURRENCY = 64


def concurrency() -> int:
    """``SAMPLE_CONCURRENCY``: messages handled at once, 1 (the default) to 64."""
    text = os.environ.get("SAMPLE_CONCURRENCY") or "1"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CONCURRENCY:
        raise ConfigError(f"SAMPLE_CONCURRENCY={text!r} is invalid: expected a whole number "
                          f"from 1 to {MAX_CONCURRENCY}")
    return value


def delay() -> float:
    """``SAMPLE_DELAY``: simulated work per message, in seconds (0, the default, for none)."""
    text = os.environ.get("SAMPLE_DELAY") or "0"
    try:
        return parse_duration(text)
    except ValueError:
        raise ConfigError(f"SAMPLE_DELAY={text!r} is invalid: expected a duration of at least 0 "
                          "such as 0.2, 200ms or 1s") from None
