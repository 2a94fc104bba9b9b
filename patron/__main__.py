"""``python -m patron MODULE[:ATTR]``: import a Service and run it until it stops.

ATTR (default ``service``) names a :class:`patron.Service` or a zero-argument callable that
returns one. Usage errors and bad configuration print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Sequence

from patron import __version__
from patron.config import ConfigError
from patron.service import EXIT_TIMEOUT, Service

__all__ = ["main"]

EXIT_USAGE = 2


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patron",
        description="Run a patron Service until SIGTERM or SIGINT, or until a component fails.",
        epilog="Configuration comes from PATRON_* environment variables (see the README).",
    )
    parser.add_argument(
        "target",
        metavar="MODULE[:ATTR]",
        help="the module holding the service, and the attribute naming it (default: service)",
    )
    parser.add_argument("--version", action="version", version=f"patron {__version__}")
    return parser


def load(target: str) -> Service:
    """The Service named by ``MODULE[:ATTR]``; raises ``_UsageError`` with a one-line reason."""
    module_name, _, attr = target.partition(":")
    attr = attr or "service"
    if not module_name:
        raise _UsageError(f"{target!r} names no module")
    # Like `python -m`, look in the current directory first.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise _UsageError(f"cannot import module {module_name!r}: no such module") from None
        raise
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise _UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Service) and _callable_without_arguments(obj):
        obj = obj()
    if not isinstance(obj, Service):
        raise _UsageError(
            f"{module_name}:{attr} is {type(obj).__name__}, not a patron Service "
            "or a callable returning one"
        )
    return obj


def _callable_without_arguments(obj: object) -> bool:
    if not callable(obj):
        return False
    try:
        inspect.signature(obj).bind()
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (some builtins): let the call decide
        return True
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        service = load(args.target)
    except (_UsageError, ConfigError) as exc:
        print(f"patron: {exc}", file=sys.stderr)
        return EXIT_USAGE
    code = service.run()
    if code == EXIT_TIMEOUT:
        # The abandoned threads may not be daemons (grpcio's workers are not): the interpreter
        # would wait for them at exit, so leave without waiting, as the log already said.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
