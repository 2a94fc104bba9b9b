"""Logging through the standard library, with service and correlation fields on every record.

:func:`setup` installs a log-record factory that stamps each record with ``srv``, ``ver``,
``host``, ``correlationID`` (the current correlation id, or ``""``) and, inside a span,
``trace_id`` and ``span_id`` (lower-case hex, as Grafana and Kibana join them with the traces;
``""`` outside a span), so a host application's
own handlers and formatters keep working and may use those fields. A handler with patron's text
or JSON formatter is added to the root logger only when the root has none, so an application
that configured logging itself keeps its configuration.
"""

from __future__ import annotations

import datetime
import json
import logging
import socket
import sys
import threading
from collections.abc import Mapping

from patron import correlation, tracing

__all__ = ["JSONFormatter", "TextFormatter", "setup"]

RESERVED_FIELDS = ("srv", "ver", "host", "correlationID", "trace_id", "span_id")

_fields: dict[str, str] = {}
_factory_lock = threading.Lock()
_factory_installed = False
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", *RESERVED_FIELDS,
}


def _install_record_factory() -> None:
    global _factory_installed
    with _factory_lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            record.__dict__.update(_fields)
            record.correlationID = correlation.current() or ""
            ids = tracing.current_ids()
            record.trace_id, record.span_id = ids if ids is not None else ("", "")
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


class TextFormatter(logging.Formatter):
    """``time LEVEL logger message key=value ...`` on one line; tracebacks follow it."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {name: getattr(record, name, "") for name in RESERVED_FIELDS}
        fields.update(_extras(record))
        pairs = " ".join(f"{k}={v}" for k, v in fields.items() if v != "")
        line = f"{_timestamp(record)} {record.levelname} {record.name} {record.getMessage()}"
        if pairs:
            line = f"{line} {pairs}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, msg, the service fields and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in RESERVED_FIELDS:
            value = getattr(record, name, "")
            if value:
                payload[name] = value
        payload.update(_extras(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup(
    name: str,
    version: str,
    level: str = "INFO",
    fmt: str = "text",
    fields: Mapping[str, str] | None = None,
) -> None:
    """Stamp records with the service fields; give the root logger a handler if it has none.

    ``fields`` adds constant fields to every record; it may not use a reserved name
    (``srv``, ``ver``, ``host``, ``correlationID``). Safe to call more than once: the latest
    call's fields win.
    """
    extra = dict(fields or {})
    clash = sorted(set(extra) & set(RESERVED_FIELDS))
    if clash:
        raise ValueError(f"log fields may not use reserved names: {', '.join(clash)}")
    _fields.clear()
    _fields.update(extra, srv=name, ver=version, host=socket.gethostname())
    _install_record_factory()
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
        root.addHandler(handler)
        root.setLevel(level)
