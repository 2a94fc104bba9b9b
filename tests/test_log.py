from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator

import pytest

from patron import correlation, log


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def host_handler() -> Iterator[_Capture]:
    """A handler the 'host application' installed before patron set logging up."""
    root = logging.getLogger()
    handler = _Capture()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def test_host_handlers_keep_working_and_see_the_service_fields(host_handler: _Capture) -> None:
    handlers_before = list(logging.getLogger().handlers)
    log.setup("svc", "1.2.3", fields={"team": "core"})
    assert logging.getLogger().handlers == handlers_before  # no handler added over the host's
    with correlation.correlation_id("cid-1"):
        logging.getLogger("any.module").info("hello")
    record = host_handler.records[-1]
    assert (record.srv, record.ver, record.host) == ("svc", "1.2.3", socket.gethostname())
    assert record.correlationID == "cid-1"
    assert record.team == "core"


def test_reserved_field_names_are_refused() -> None:
    with pytest.raises(ValueError, match="srv"):
        log.setup("svc", "1", fields={"srv": "other"})


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("t").makeRecord("t", logging.WARNING, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def test_json_formatter_emits_one_object_with_fields_and_extras() -> None:
    log.setup("svc", "1")
    with correlation.correlation_id("abc"):
        record = _record("disk %s", user="bob")
    record.args = ("full",)
    payload = json.loads(log.JSONFormatter().format(record))
    assert payload["msg"] == "disk full"
    assert payload["level"] == "WARNING"
    assert payload["srv"] == "svc" and payload["correlationID"] == "abc"
    assert payload["user"] == "bob"
    assert payload["time"].endswith("Z")


def test_text_formatter_is_one_line_with_key_values() -> None:
    log.setup("svc", "1")
    line = log.TextFormatter().format(_record("hello", user="bob"))
    assert "\n" not in line
    assert " WARNING t hello " in line and "srv=svc" in line and "user=bob" in line
    assert "correlationID" not in line  # empty fields are left out


def test_text_formatter_appends_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info()
        )
    text = log.TextFormatter().format(record)
    assert " ERROR t failed" in text.splitlines()[0]
    assert "RuntimeError: boom" in text
