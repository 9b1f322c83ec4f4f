"""grpcio's health client (grpcio-health-checking): the server and faultd's API report
SERVING. Usage: py_health.py ADDR"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import check, denied, target

name, options = target(sys.argv[1])
with grpc.insecure_channel(name, options=options) as channel:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "faultd.v1.FaultService"]:
        try:
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        except grpc.RpcError as e:
            denied(e)
        check(status.status == health_pb2.HealthCheckResponse.SERVING, f"{service!r}: {status}")
print("ok")
