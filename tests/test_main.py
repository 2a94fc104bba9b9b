"""``python -m patron``: usage errors are one line and status 2; a real service runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from patron import __version__
from tests.conftest import ROOT


def patron(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "patron", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz", "patron: cannot import module 'no_such_module_xyz': no such module"),
        ("samples.hello:nope", "patron: module 'samples.hello' has no attribute 'nope'"),
        ("samples.hello:hello", "samples.hello:hello is function, not a patron Service"),
        ("tests.support.cli_targets:needs_arguments", "is function, not a patron Service"),
        ("tests.support.cli_targets:NOT_A_SERVICE", "is int, not a patron Service"),
        (":service", "names no module"),
    ],
)
def test_bad_targets_are_one_line_and_status_2(target: str, message: str) -> None:
    result = patron(target)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_environment_is_one_line_and_status_2() -> None:
    result = patron("samples.hello", PATRON_LOG_LEVEL="LOUD")
    assert result.returncode == 2
    assert result.stderr == (
        "patron: PATRON_LOG_LEVEL='LOUD' is invalid: expected one of "
        "DEBUG, INFO, WARNING, ERROR, CRITICAL\n"
    )


def test_version_and_help() -> None:
    assert patron("--version").stdout.strip() == f"patron {__version__}"
    help_text = patron("--help").stdout
    assert "MODULE[:ATTR]" in help_text and "PATRON_" in help_text


def test_console_script_is_installed() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "patron")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == f"patron {__version__}"


def test_a_callable_returning_a_service_is_accepted() -> None:
    from patron.__main__ import load

    service = load("tests.support.cli_targets:make_idle_service")
    assert service.name == "idle"
