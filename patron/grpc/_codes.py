"""Status-code names and method-name helpers shared by the server and client interceptors."""

from __future__ import annotations

import grpc

__all__ = ["CODE_NAMES", "STREAM", "UNARY", "code_name", "split_method"]

UNARY = "unary"
STREAM = "stream"

# Go's codes.Code.String() spellings, the values Patron's Go interceptors put in the grpc_code
# label, so existing dashboards keep matching.
CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def code_name(code: grpc.StatusCode | None) -> str:
    """The ``grpc_code`` label value for ``code`` (``None`` counts as ``OK``)."""
    if code is None:
        return "OK"
    return CODE_NAMES.get(code, "Unknown")


def split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → ``("pkg.Service", "Method")``; ``("unknown", "unknown")`` else."""
    service, sep, method = full_method.lstrip("/").partition("/")
    if not sep or not service or not method:
        return "unknown", "unknown"
    return service, method
