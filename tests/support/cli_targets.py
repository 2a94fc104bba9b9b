"""Attributes that ``python -m patron`` is pointed at by the CLI tests."""

from __future__ import annotations

from patron import Config, Service

NOT_A_SERVICE = 42


def make_idle_service() -> Service:
    return Service("idle", "1", config=Config(), default_http=False)


def needs_arguments(name: str) -> Service:
    return Service(name, "1", config=Config(), default_http=False)
