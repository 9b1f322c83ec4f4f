#!/usr/bin/env python3
"""gRPC's connection-backoff interop client procedure, with grpcio (gRPC's C core).

1. Start on the control port (plaintext), naming the client's maximum backoff.
2. On a TLS channel to the retry port, whose server closes every connection, a
   wait-for-ready call with a deadline: the channel reconnects with backoff until the
   deadline, and the call must fail with DEADLINE_EXCEEDED.
3. Stop on the control port; the server judges the gaps between the reconnections.

Prints one JSON object (the retry call's status, the server's verdict, the gaps) and
exits 0 only when the call timed out as it should and the server says passed.

The stubs come from proto/grpc/testing/reconnect.proto, generated at test time with
`python3 -m grpc_tools.protoc` into the directory given by --stubs.
"""

import argparse
import json
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--retry-port", type=int, required=True)
    p.add_argument(
        "--max-backoff-ms",
        type=int,
        default=0,
        help="the channel's grpc.max_reconnect_backoff_ms, also sent in Start (0: gRPC's default)",
    )
    p.add_argument("--deadline-s", type=float, default=540.0)
    p.add_argument("--stubs", required=True, help="directory with reconnect_pb2*.py")
    p.add_argument(
        "--root-cert",
        help="PEM root certificate for the TLS channel (default: grpcio's bundled roots); "
        "the handshake never completes, it only has to be attempted",
    )
    return p.parse_args()


def main():
    args = parse_args()
    sys.path.insert(0, args.stubs)
    import grpc
    import reconnect_pb2
    import reconnect_pb2_grpc

    control = reconnect_pb2_grpc.ReconnectServiceStub(
        grpc.insecure_channel(f"{args.host}:{args.control_port}")
    )
    control.Start(
        reconnect_pb2.ReconnectParams(max_reconnect_backoff_ms=args.max_backoff_ms),
        timeout=120,
    )

    root = open(args.root_cert, "rb").read() if args.root_cert else None
    options = []
    if args.max_backoff_ms:
        options.append(("grpc.max_reconnect_backoff_ms", args.max_backoff_ms))
    retry_channel = grpc.secure_channel(
        f"{args.host}:{args.retry_port}",
        grpc.ssl_channel_credentials(root_certificates=root),
        options=options,
    )
    retry = reconnect_pb2_grpc.ReconnectServiceStub(retry_channel)
    began = time.monotonic()
    try:
        retry.Start(
            reconnect_pb2.ReconnectParams(),
            timeout=args.deadline_s,
            wait_for_ready=True,
        )
        retry_status = "OK"
    except grpc.RpcError as e:
        retry_status = e.code().name
    waited = time.monotonic() - began
    retry_channel.close()

    info = control.Stop(reconnect_pb2.Empty(), timeout=120)
    result = {
        "retry_status": retry_status,
        "retry_waited_s": round(waited, 3),
        "passed": info.passed,
        "backoff_ms": list(info.backoff_ms),
    }
    print(json.dumps(result))
    ok = retry_status == "DEADLINE_EXCEEDED" and info.passed
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
