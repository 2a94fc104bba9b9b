"""What the shipped pytest fixtures share."""

from __future__ import annotations

import os
from typing import NoReturn

__all__ = ["unavailable"]


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it when the environment variable ``CI`` is set:
    under CI a broker that cannot be had is a broken build, not a test to leave out."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: broker-backed tests must run)")
    pytest.skip(reason)
