"""The gRPC port: PATRON_GRPC_PORT, read with the other settings, with a clear error."""

from __future__ import annotations

import pytest

from patron.config import Config, ConfigError
from patron.grpc import GRPCComponent
from tests.conftest import free_port
from tests.grpc.helpers import Running


@pytest.mark.parametrize(("value", "port"), [("", 50051), ("  ", 50051), ("0", 0),
                                             ("6000", 6000), (" 65535 ", 65535)])
def test_the_grpc_port_is_a_setting_like_the_others(value: str, port: int) -> None:
    assert Config.from_env({"PATRON_GRPC_PORT": value}).grpc_port == port
    assert Config.from_env({}).grpc_port == Config().grpc_port == 50051


@pytest.mark.parametrize("value", ["-1", "65536", "http", "50051.0", "0x10"])
def test_a_bad_grpc_port_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({"PATRON_GRPC_PORT": value})
    assert str(info.value) == (
        f"PATRON_GRPC_PORT={value!r} is invalid: expected a port number from 0 to 65535"
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
        running.shutdown()


def test_the_port_is_unknown_until_the_server_listens() -> None:
    component = GRPCComponent(0)
    with pytest.raises(RuntimeError, match="not listening yet"):
        _ = component.port
