"""The AMQP test fixtures themselves: what happens when a tool they need is missing."""

from __future__ import annotations

import pytest

from tests.amqp import conftest


def test_a_missing_rabbitmqctl_skips_outside_ci_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="rabbitmqctl is needed"):
        conftest._rabbitmqctl("status")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"rabbitmqctl is needed.*CI is set"):
        conftest._rabbitmqctl("status")
