"""faultd's gRPC errors as Python exceptions, each carrying the daemon's message."""

import grpc


class FaultdError(Exception):
    """A call to faultd failed. `code` is the gRPC status code, `message` faultd's words
    (which name the offending field, e.g. ``target.port: 0 is not a port``)."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidArgument(FaultdError):
    """INVALID_ARGUMENT: the request is malformed; the message names the field."""


class NotFound(FaultdError):
    """NOT_FOUND: no fault with that id (removed, or expired)."""


class Refused(FaultdError):
    """FAILED_PRECONDITION: valid, but not in this state (a delay without sch_fq, a fault on
    faultd's own port, an ended session)."""


class Exhausted(FaultdError):
    """RESOURCE_EXHAUSTED: faultd's fault or rule tables are full."""


class PermissionDenied(FaultdError):
    """PERMISSION_DENIED: this user may not call faultd; the message says how to grant it."""


class Unavailable(FaultdError):
    """UNAVAILABLE: faultd is not reachable at the address."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: Refused,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Exhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def from_rpc_error(error, addr=None):
    """The exception for a grpc.RpcError (any other code: FaultdError)."""
    code = error.code() if hasattr(error, "code") else None
    message = (error.details() if hasattr(error, "details") else None) or str(error)
    if code == grpc.StatusCode.UNAVAILABLE and addr:
        message = f"faultd at {addr}: {message}"
    return _BY_CODE.get(code, FaultdError)(message, code)
