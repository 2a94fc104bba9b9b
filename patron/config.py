"""Configuration from ``PATRON_*`` environment variables.

Every variable is parsed and validated once, when a :class:`Config` is built. A bad value raises
:class:`ConfigError` whose message is one line naming the variable, the value and what is
accepted; ``python -m patron`` prints that line and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_HOST",
    "Config",
    "ConfigError",
    "StatusCodes",
    "parse_duration",
    "parse_status_codes",
]

#: the address the HTTP and gRPC components listen on unless told otherwise
DEFAULT_HOST = "0.0.0.0"
#: seconds in-flight requests and RPCs get to finish once a server component is told to stop
DEFAULT_GRACE = 10.0

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value was rejected. ``str(error)`` is one line fit for an operator."""


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Seconds from a Go-style duration (``500ms``, ``30s``, ``1m30s``) or plain seconds (``2.5``).

    Raises ``ValueError`` for anything else, including negative or non-finite values.
    """
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos == 0 or pos != len(text):
            raise ValueError(f"not a duration: {text!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {text!r}")
    return seconds


@dataclasses.dataclass(frozen=True)
class StatusCodes:
    """A set of HTTP status codes given as single codes and half-open ranges."""

    codes: frozenset[int] = frozenset()
    ranges: tuple[tuple[int, int], ...] = ()

    def __contains__(self, status: object) -> bool:
        if not isinstance(status, int):
            return False
        return status in self.codes or any(low <= status < high for low, high in self.ranges)


_RANGE = re.compile(r"^\[(\d{3}),(\d{3})\)$")


def parse_status_codes(text: str) -> StatusCodes:
    """Parse ``404;[500,600)``: ``;``-separated codes and half-open ``[low,high)`` ranges."""
    codes: set[int] = set()
    ranges: list[tuple[int, int]] = []
    for raw in text.split(";"):
        item = raw.replace(" ", "")
        if not item:
            continue
        match = _RANGE.match(item)
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            if not 100 <= low < high <= 600:
                raise ValueError(f"bad range {item!r}")
            ranges.append((low, high))
        elif item.isdigit() and len(item) == 3 and 100 <= int(item) <= 599:
            codes.add(int(item))
        else:
            raise ValueError(f"bad status code {item!r}")
    return StatusCodes(frozenset(codes), tuple(ranges))


def _parse_port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return port


def _parse_positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def _positive_duration(text: str) -> float:
    """A duration above 0: a timeout of 0 would cut off every connection at once."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(text)
    return seconds


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


def _choice(options: Iterable[str], upper: bool = False) -> Callable[[str], str]:
    allowed = tuple(options)

    def parse(text: str) -> str:
        value = text.strip().upper() if upper else text.strip().lower()
        if value not in allowed:
            raise ValueError(text)
        return value

    return parse


PROFILING_MODES = ("off", "loopback", "on")
#: ``PATRON_TRACING``: Jaeger's client (the default), the OpenTelemetry SDK, or no spans at all
TRACING_BACKENDS = ("jaeger", "otel", "off")


def _parse_profiling(text: str) -> str:
    lowered = text.strip().lower()
    if lowered in PROFILING_MODES:
        return lowered
    return "on" if _parse_bool(lowered) else "off"


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SAMPLER_TYPES = ("const", "probabilistic", "ratelimiting")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a Service, with the defaults used when a variable is unset or empty."""

    http_default_port: int = 50000
    http_read_timeout: float = 30.0
    http_write_timeout: float = 60.0
    http_idle_timeout: float = 240.0
    http_threads: int = 16
    http_max_body_size: int = 10 * 1024 * 1024
    http_max_header_size: int = 64 * 1024
    http_max_connections: int = 1000
    http_status_error_logging: StatusCodes = StatusCodes(ranges=((500, 600),))
    log_level: str = "INFO"
    log_format: str = "text"
    tracing: str = "jaeger"
    jaeger_agent_host: str = "0.0.0.0"
    jaeger_agent_port: int = 6831
    jaeger_sampler_type: str = "probabilistic"
    jaeger_sampler_param: float = 0.0
    # With the span flush inside it, the default shutdown fits Kubernetes' default grace period
    # of 30 s (terminationGracePeriodSeconds) with room to spare: the last components and the
    # flush may take up to 1.5 s past it when the others used it all.
    shutdown_timeout: float = 25.0
    drain_delay: float = 0.0
    profiling: str = "loopback"
    grpc_port: int = 50051

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read every ``PATRON_*`` variable; raise :class:`ConfigError` on the first bad one."""
        env = os.environ if environ is None else environ
        defaults = cls()
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            spec = _VARIABLES[field.name]
            raw = env.get(spec.name, "")
            if raw.strip() == "":
                continue
            try:
                values[field.name] = spec.parse(raw)
            except (ValueError, OverflowError):
                raise ConfigError(
                    f"{spec.name}={raw!r} is invalid: expected {spec.accepted}"
                ) from None
        config = dataclasses.replace(defaults, **values)  # type: ignore[arg-type]
        config._check_sampler(env)
        return config

    def _check_sampler(self, env: Mapping[str, str]) -> None:
        param, kind = self.jaeger_sampler_param, self.jaeger_sampler_type
        if (kind == "probabilistic" and param > 1) or (kind == "const" and param not in (0, 1)):
            accepted = "0 or 1" if kind == "const" else "a number from 0.0 to 1.0"
            raw = env.get("PATRON_JAEGER_SAMPLER_PARAM", "")
            raise ConfigError(
                f"PATRON_JAEGER_SAMPLER_PARAM={raw!r} is invalid: expected {accepted} "
                f"for sampler type {kind!r}"
            )


@dataclasses.dataclass(frozen=True)
class _Variable:
    name: str
    parse: Callable[[str], object]
    accepted: str


_DURATION_TEXT = "a duration such as 500ms, 30s, 1m or plain seconds"
_TIMEOUT_TEXT = "a duration above 0 such as 500ms, 30s, 1m or plain seconds"
#: bounds of the HTTP worker threads and the header size: beyond them the server cannot work
#: (thousands of threads; a limit below what a health probe's request takes)
MAX_HTTP_THREADS = 1024
MIN_HEADER_SIZE, MAX_HEADER_SIZE = 1024, 1024 * 1024
MAX_CONNECTIONS = 100_000
_VARIABLES = {
    "http_default_port": _Variable(
        "PATRON_HTTP_DEFAULT_PORT", _parse_port, "a port number from 0 to 65535"
    ),
    "http_read_timeout": _Variable(
        "PATRON_HTTP_READ_TIMEOUT", _positive_duration, _TIMEOUT_TEXT
    ),
    "http_write_timeout": _Variable(
        "PATRON_HTTP_WRITE_TIMEOUT", _positive_duration, _TIMEOUT_TEXT
    ),
    "http_idle_timeout": _Variable(
        "PATRON_HTTP_IDLE_TIMEOUT", _positive_duration, _TIMEOUT_TEXT
    ),
    "http_threads": _Variable(
        "PATRON_HTTP_THREADS", _int_between(1, MAX_HTTP_THREADS),
        f"a whole number from 1 to {MAX_HTTP_THREADS}",
    ),
    "http_max_body_size": _Variable(
        "PATRON_HTTP_MAX_BODY_SIZE", _parse_positive_int, "a size in bytes >= 1"
    ),
    "http_max_header_size": _Variable(
        "PATRON_HTTP_MAX_HEADER_SIZE", _int_between(MIN_HEADER_SIZE, MAX_HEADER_SIZE),
        f"a size in bytes from {MIN_HEADER_SIZE} to {MAX_HEADER_SIZE}",
    ),
    "http_max_connections": _Variable(
        "PATRON_HTTP_MAX_CONNECTIONS", _int_between(2, MAX_CONNECTIONS),
        f"a whole number from 2 to {MAX_CONNECTIONS}",
    ),
    "http_status_error_logging": _Variable(
        "PATRON_HTTP_STATUS_ERROR_LOGGING",
        parse_status_codes,
        "';'-separated status codes and [low,high) ranges such as 404;[500,600)",
    ),
    "log_level": _Variable(
        "PATRON_LOG_LEVEL", _choice(LOG_LEVELS, upper=True), "one of " + ", ".join(LOG_LEVELS)
    ),
    "log_format": _Variable("PATRON_LOG_FORMAT", _choice(("text", "json")), "text or json"),
    "tracing": _Variable(
        "PATRON_TRACING", _choice(TRACING_BACKENDS), "one of " + ", ".join(TRACING_BACKENDS)
    ),
    "jaeger_agent_host": _Variable("PATRON_JAEGER_AGENT_HOST", str.strip, "a host name"),
    "jaeger_agent_port": _Variable(
        "PATRON_JAEGER_AGENT_PORT", _parse_port, "a port number from 0 to 65535"
    ),
    "jaeger_sampler_type": _Variable(
        "PATRON_JAEGER_SAMPLER_TYPE", _choice(SAMPLER_TYPES), "one of " + ", ".join(SAMPLER_TYPES)
    ),
    "jaeger_sampler_param": _Variable(
        "PATRON_JAEGER_SAMPLER_PARAM", _finite_float, "a number >= 0"
    ),
    "shutdown_timeout": _Variable("PATRON_SHUTDOWN_TIMEOUT", _positive_duration, _TIMEOUT_TEXT),
    "drain_delay": _Variable("PATRON_DRAIN_DELAY", parse_duration, _DURATION_TEXT),
    "profiling": _Variable(
        "PATRON_PROFILING", _parse_profiling,
        "loopback (only local clients), on or true (every client), off or false",
    ),
    "grpc_port": _Variable("PATRON_GRPC_PORT", _parse_port, "a port number from 0 to 65535"),
}
