"""The consumer samples refuse invalid settings of their own at start: one line, status 2.

``python -m patron`` prints a :class:`patron.ConfigError` raised while the service is made as
one line and exits with status 2, as for the ``PATRON_*`` variables; no broker is needed, as
the samples check their environment before they make anything.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import ServiceProcess

SAMPLES = ["samples.amqp_consumer", "samples.sqs_consumer", "samples.kafka_consumer"]

CASES = [
    *[(sample, "SAMPLE_CONCURRENCY", value, "a whole number from 1 to 64")
      for sample in SAMPLES for value in ("0", "x", "65")],
    *[(sample, "SAMPLE_DELAY", value, "a duration of at least 0")
      for sample in SAMPLES[:2] for value in ("abc", "-1", "nan")],
]


@pytest.mark.parametrize(("sample", "variable", "value", "accepted"), CASES)
def test_an_invalid_sample_setting_stops_the_start_with_one_line(
    service_process: Callable[..., ServiceProcess], sample: str, variable: str, value: str,
    accepted: str,
) -> None:
    process = service_process(sample, PATRON_HTTP_DEFAULT_PORT="0", **{variable: value})
    assert process.wait(60) == 2
    lines = process.output().splitlines()
    assert len(lines) == 1, lines  # no traceback
    assert lines[0].startswith(f"patron: {variable}={value!r} is invalid: expected {accepted}")
