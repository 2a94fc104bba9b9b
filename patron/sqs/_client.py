"""What the SQS consumer and publisher share: client creation, queue resolution, error texts."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import botocore.exceptions
from botocore.config import Config as BotoConfig

from patron.messaging import PermanentError

__all__ = [
    "AUTH_CODES",
    "MISSING_CODES",
    "TRANSIENT_CODES",
    "check_client_options",
    "describe",
    "error_code",
    "is_auth_error",
    "is_missing_queue",
    "is_sender_fault",
    "is_transient",
    "is_url",
    "make_client",
    "permanent_or_same",
    "queue_name",
    "resolve_queue_url",
]

#: error codes meaning the queue does not exist (the JSON and the query protocol spell it apart)
MISSING_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
#: error codes meaning the credentials were refused or do not allow the call
AUTH_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "AuthFailure", "ExpiredToken",
    "ExpiredTokenException", "IncompleteSignature", "InvalidAccessKeyId",
    "InvalidClientTokenId", "InvalidSecurity", "MissingAuthenticationToken",
    "SignatureDoesNotMatch", "UnrecognizedClientException",
})

# moto answers some errors of the JSON protocol with an XML body: dig the code and text out.
_XML_CODE = re.compile(r"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


def check_client_options(client: Any, session: Any, endpoint_url: str | None,
                         region: str | None) -> None:
    """``ValueError`` when a client is given together with what would make one."""
    if client is not None and (session is not None or endpoint_url or region):
        raise ValueError("pass either client, or session / endpoint_url / region")


def make_client(
    *,
    client: Any,
    session: Any,
    endpoint_url: str | None,
    region: str | None,
    config: BotoConfig,
    owner: str,
) -> Any:
    """The injected ``client``, or a new SQS client from ``session`` (or a new boto3 session,
    which reads the usual AWS configuration). Raises ``ValueError`` with a one-line reason on
    an endpoint that is not an http(s) URL, no region, or a configuration boto3 refuses."""
    if client is not None:
        return client
    if endpoint_url is not None:
        parsed = urllib.parse.urlsplit(endpoint_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"{owner}: invalid SQS endpoint {endpoint_url!r}: expected an http(s) URL such "
                "as https://sqs.eu-west-1.amazonaws.com or http://127.0.0.1:5000"
            )
    try:
        if session is None:
            import boto3.session

            session = boto3.session.Session()
        return session.client("sqs", endpoint_url=endpoint_url, region_name=region,
                              config=config)
    except botocore.exceptions.NoRegionError:
        raise ValueError(
            f"{owner}: no AWS region configured: set AWS_REGION or AWS_DEFAULT_REGION, or pass "
            "region="
        ) from None
    except (ValueError, botocore.exceptions.BotoCoreError) as exc:
        raise ValueError(f"{owner}: cannot create the SQS client: {exc}") from exc


def queue_name(queue: str) -> str:
    """The queue's name: ``queue`` itself, or the last path segment of a queue URL."""
    if is_url(queue):
        return urllib.parse.urlsplit(queue).path.rstrip("/").rsplit("/", 1)[-1] or queue
    return queue


def is_url(queue: str) -> bool:
    return queue.startswith(("https://", "http://"))


def error_code(exc: BaseException) -> str:
    if not isinstance(exc, botocore.exceptions.ClientError):
        return ""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    if code.isdigit():  # moto: the HTTP status as code, the real one inside an XML message
        found = _XML_CODE.search(str(error.get("Message", "")))
        if found:
            return found.group(1)
    return code


def describe(exc: BaseException) -> str:
    """A one-line text for an operator: ``Code: message`` for service errors."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        message = str(error.get("Message", ""))
        found = _XML_MESSAGE.search(message)
        if found:
            message = found.group(1)
        return f"{error_code(exc)}: {message}" if message else error_code(exc) or str(exc)
    return str(exc) or type(exc).__name__


def is_missing_queue(exc: BaseException) -> bool:
    return error_code(exc) in MISSING_CODES


def is_auth_error(exc: BaseException) -> bool:
    if isinstance(exc, (botocore.exceptions.NoCredentialsError,
                        botocore.exceptions.PartialCredentialsError)):
        return True
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error_code(exc) in AUTH_CODES or status == 403


#: error codes of a request the service could not serve now, which may work when tried again
TRANSIENT_CODES = frozenset({
    "InternalError", "InternalFailure", "RequestThrottled", "RequestThrottledException",
    "ServiceUnavailable", "Throttling", "ThrottlingException",
})


def is_transient(exc: BaseException) -> bool:
    """A failure worth trying again soon: the endpoint could not be reached (a read that timed
    out is not: it used up its time), throttling, or a server error."""
    if isinstance(exc, botocore.exceptions.ReadTimeoutError):
        return False
    if isinstance(exc, (botocore.exceptions.ConnectionError,
                        botocore.exceptions.ConnectionClosedError)):
        return True
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return error_code(exc) in TRANSIENT_CODES or int(status) >= 500


def is_sender_fault(exc: BaseException) -> bool:
    """Whether the service blamed the request itself (a 4xx): sending it again cannot help."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return 400 <= int(status) < 500


def resolve_queue_url(client: Any, queue: str, owner_account: str | None) -> str:
    """The URL of ``queue`` (a name, or a URL returned as is); botocore's errors propagate."""
    if is_url(queue):
        return queue
    kwargs: dict[str, Any] = {"QueueName": queue}
    if owner_account:
        kwargs["QueueOwnerAWSAccountId"] = owner_account
    return str(client.get_queue_url(**kwargs)["QueueUrl"])


def permanent_or_same(exc: Exception, queue: str, owner: str) -> Exception:
    """A :class:`PermanentError` for a missing queue or refused credentials, else ``exc``."""
    if is_missing_queue(exc):
        return PermanentError(f"{owner}: SQS queue {queue!r} does not exist ({describe(exc)})")
    if is_auth_error(exc):
        return PermanentError(
            f"{owner}: AWS refused the credentials for SQS queue {queue!r} ({describe(exc)}); "
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE and the queue policy"
        )
    return exc
