"""patron: a thread-based microservice framework.

A :class:`Service` runs :class:`Component` objects, each in its own thread, with logging,
Prometheus metrics, Jaeger tracing, health checks and graceful shutdown set up for them.
Transports live in their own packages (``patron.http``, ``patron.grpc``, ``patron.kafka``,
``patron.amqp``, ``patron.sqs``) and are imported only when used.
"""

from patron.component import Component
from patron.config import Config, ConfigError
from patron.service import EXIT_FAILURE, EXIT_OK, EXIT_TIMEOUT, Service

__version__ = "0.1.0"

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "Component",
    "Config",
    "ConfigError",
    "Service",
    "__version__",
]
