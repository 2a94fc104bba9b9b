"""The gRPC port: PATRON_GRPC_PORT (or another variable) with a clear error on bad values."""

from __future__ import annotations

import pytest

from patron.config import ConfigError
from patron.grpc import DEFAULT_PORT, GRPCComponent, port_from_env
from tests.conftest import free_port
from tests.grpc.helpers import Running


@pytest.mark.parametrize(("value", "port"), [("", DEFAULT_PORT), ("  ", DEFAULT_PORT),
                                             ("0", 0), ("6000", 6000), (" 65535 ", 65535)])
def test_port_from_env_accepts_ports_and_defaults_when_unset(value: str, port: int) -> None:
    assert port_from_env(environ={"PATRON_GRPC_PORT": value}) == port
    assert port_from_env(environ={}) == DEFAULT_PORT


@pytest.mark.parametrize("value", ["-1", "65536", "http", "50051.0", "0x10"])
def test_port_from_env_names_the_variable_on_a_bad_value(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        port_from_env("GRPC_PORT", environ={"GRPC_PORT": value})
    assert str(info.value) == (
        f"GRPC_PORT={value!r} is invalid: expected a port number from 0 to 65535"
    )


def test_component_reads_patron_grpc_port_when_no_port_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATRON_GRPC_PORT", "nope")
    with pytest.raises(ConfigError, match="PATRON_GRPC_PORT='nope'"):
        GRPCComponent()
    port = free_port()
    monkeypatch.setenv("PATRON_GRPC_PORT", str(port))
    running = Running(GRPCComponent(host="127.0.0.1"))
    try:
        assert running.component.wait_started(10)
        assert running.component.port == port
    finally:
        running.stop()
