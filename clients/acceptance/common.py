"""What every Python client program of the acceptance matrix shares: the exit codes the
matrix reads, and what an application observes of a `refuse` fault (a listener's port that
refuses new connections)."""

import socket
import sys

# Exit codes: 0 the case held; 3 faultd refused the caller (PERMISSION_DENIED, its message on
# stderr); anything else a failure.
PERMISSION_DENIED = 3


def refused(port):
    """Whether a new connection to 127.0.0.1:port is refused (ECONNREFUSED) while a
    listener is there, as a refuse fault makes it."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(4)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return False
        except ConnectionRefusedError:
            return True


def target(addr):
    """The grpcio target and channel options for faultd's address (host:port or unix:/path)."""
    if addr.startswith("unix:"):
        return addr, [("grpc.default_authority", "localhost")]
    return addr, []


def denied(error):
    """Exits with PERMISSION_DENIED's code when `error` (a grpc.RpcError) is one."""
    import grpc

    if error.code() == grpc.StatusCode.PERMISSION_DENIED:
        print(error.details(), file=sys.stderr)
        sys.exit(PERMISSION_DENIED)
    raise error


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
