"""The exceptions of the messaging API, shared by every transport."""

from __future__ import annotations

__all__ = ["ConsumerError", "PermanentError", "ProcessingError", "PublishError", "TransportError"]


class PublishError(Exception):
    """A message was not accepted by the broker, for whatever reason (connection, timeout,
    refusal). Every publisher raises a subclass of its own package, so callers can handle a
    failed publish the same way for every broker."""


class ConsumerError(Exception):
    """Base of the errors a consumer raises when it gives up; ``str(error)`` is fit for an
    operator."""


class ProcessingError(ConsumerError):
    """The processor failed on a message and the failure strategy is ``exit``."""


class TransportError(ConsumerError):
    """The broker could not be reached (or kept failing) after every connection retry."""


class PermanentError(ConsumerError):
    """A failure that retrying cannot fix (a missing topic or queue, an invalid client
    configuration); never retried."""
