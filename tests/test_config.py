from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patron.config import Config, ConfigError, parse_duration, parse_status_codes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("500ms", 0.5), ("1m", 60.0), ("1m30s", 90.0), ("1h", 3600.0),
     ("2.5", 2.5), ("0", 0.0), ("250us", 0.00025), (" 10s ", 10.0)],
)
def test_parse_duration_accepts_go_durations_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "-1s", "-5", "1s2", "inf", "nan", "1m 30s", "ms"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m"]))
def test_parse_duration_scales_units(amount: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]
    assert parse_duration(f"{amount}{unit}") == pytest.approx(amount * factor)


def test_status_codes_single_codes_and_half_open_ranges() -> None:
    codes = parse_status_codes("404;[500,600)")
    assert 404 in codes and 500 in codes and 599 in codes
    assert 600 not in codes and 403 not in codes and 200 not in codes


@pytest.mark.parametrize("text", ["40", "abc", "[500,400)", "[500,600]", "700", "404;;x"])
def test_status_codes_reject_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_status_codes(text)


def test_defaults_follow_the_seed() -> None:
    config = Config.from_env({})
    assert config.http_default_port == 50000
    assert config.http_read_timeout == 30.0
    assert config.http_write_timeout == 60.0
    assert config.log_level == "INFO"
    assert config.jaeger_agent_host == "0.0.0.0"
    assert config.jaeger_agent_port == 6831
    assert config.jaeger_sampler_type == "probabilistic"
    assert config.jaeger_sampler_param == 0.0
    assert 500 in config.http_status_error_logging and 404 not in config.http_status_error_logging


def test_every_variable_is_read() -> None:
    config = Config.from_env({
        "PATRON_HTTP_DEFAULT_PORT": "8080",
        "PATRON_HTTP_READ_TIMEOUT": "5s",
        "PATRON_HTTP_WRITE_TIMEOUT": "1m",
        "PATRON_HTTP_IDLE_TIMEOUT": "90",
        "PATRON_HTTP_THREADS": "4",
        "PATRON_HTTP_MAX_BODY_SIZE": "1024",
        "PATRON_HTTP_MAX_HEADER_SIZE": "2048",
        "PATRON_HTTP_STATUS_ERROR_LOGGING": "404",
        "PATRON_LOG_LEVEL": "debug",
        "PATRON_LOG_FORMAT": "JSON",
        "PATRON_JAEGER_AGENT_HOST": "jaeger",
        "PATRON_JAEGER_AGENT_PORT": "6832",
        "PATRON_JAEGER_SAMPLER_TYPE": "const",
        "PATRON_JAEGER_SAMPLER_PARAM": "1",
        "PATRON_SHUTDOWN_TIMEOUT": "10s",
        "PATRON_DRAIN_DELAY": "3s",
        "PATRON_PROFILING": "off",
        "PATRON_HTTP_MAX_CONNECTIONS": "50",
        "PATRON_GRPC_PORT": "6000",
    })
    assert config == Config(
        http_default_port=8080, http_read_timeout=5.0, http_write_timeout=60.0,
        http_idle_timeout=90.0, http_threads=4, http_max_body_size=1024,
        http_max_header_size=2048, http_status_error_logging=parse_status_codes("404"),
        log_level="DEBUG", log_format="json", jaeger_agent_host="jaeger",
        jaeger_agent_port=6832, jaeger_sampler_type="const", jaeger_sampler_param=1.0,
        shutdown_timeout=10.0, drain_delay=3.0, profiling="off", http_max_connections=50,
        grpc_port=6000,
    )


def test_empty_values_mean_default() -> None:
    assert Config.from_env({"PATRON_LOG_LEVEL": "  ", "PATRON_HTTP_DEFAULT_PORT": ""}) == Config()


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("PATRON_HTTP_DEFAULT_PORT", "http", "port number"),
        ("PATRON_HTTP_DEFAULT_PORT", "70000", "port number"),
        ("PATRON_HTTP_READ_TIMEOUT", "soon", "duration"),
        ("PATRON_HTTP_THREADS", "0", "whole number"),
        ("PATRON_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("PATRON_LOG_FORMAT", "xml", "text or json"),
        ("PATRON_JAEGER_SAMPLER_TYPE", "remote", "const, probabilistic, ratelimiting"),
        ("PATRON_JAEGER_SAMPLER_PARAM", "-1", "number"),
        ("PATRON_JAEGER_SAMPLER_PARAM", "1.5", "0.0 to 1.0"),
        ("PATRON_HTTP_STATUS_ERROR_LOGGING", "5xx", "ranges"),
        ("PATRON_PROFILING", "maybe", "loopback"),
        ("PATRON_DRAIN_DELAY", "-1s", "duration"),
        # A value that cannot work is refused rather than half-honoured.
        ("PATRON_HTTP_READ_TIMEOUT", "0", "above 0"),
        ("PATRON_HTTP_IDLE_TIMEOUT", "0s", "above 0"),
        ("PATRON_HTTP_WRITE_TIMEOUT", "0ms", "above 0"),
        ("PATRON_SHUTDOWN_TIMEOUT", "0", "above 0"),
        ("PATRON_HTTP_THREADS", "20000", "1 to 1024"),
        ("PATRON_HTTP_MAX_HEADER_SIZE", "1", "1024 to 1048576"),
        ("PATRON_HTTP_MAX_CONNECTIONS", "1", "2 to 100000"),
    ],
)
def test_bad_value_is_one_line_naming_variable_value_and_accepted(
    name: str, value: str, accepted: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({name: value})
    message = str(caught.value)
    assert "\n" not in message
    assert name in message and repr(value) in message and accepted in message


def test_const_sampler_needs_zero_or_one() -> None:
    with pytest.raises(ConfigError, match="0 or 1"):
        Config.from_env(
            {"PATRON_JAEGER_SAMPLER_TYPE": "const", "PATRON_JAEGER_SAMPLER_PARAM": "0.5"}
        )


@pytest.mark.parametrize(("value", "mode"), [
    ("loopback", "loopback"), ("LOOPBACK", "loopback"), ("on", "on"), ("true", "on"),
    ("1", "on"), ("off", "off"), ("false", "off"), ("no", "off"),
])
def test_profiling_is_off_loopback_only_or_on(value: str, mode: str) -> None:
    assert Config.from_env({"PATRON_PROFILING": value}).profiling == mode
    assert Config().profiling == "loopback"


def test_sub_second_durations_are_kept_exactly() -> None:
    config = Config.from_env({"PATRON_HTTP_IDLE_TIMEOUT": "500ms",
                              "PATRON_HTTP_READ_TIMEOUT": "1.5s"})
    assert (config.http_idle_timeout, config.http_read_timeout) == (0.5, 1.5)
