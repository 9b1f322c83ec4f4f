"""grpcio with raw stubs generated from proto/ (grpcio-tools, by the matrix's conftest; on
PYTHONPATH): refuse a port, see it refused, find the fault in the list with root as its
owner, remove it, see the port accept again. Usage: py_raw.py ADDR PORT"""

import sys

import grpc

from common import check, denied, refused, target

from faultd.v1 import faultd_pb2 as pb, faultd_pb2_grpc as pb_grpc  # the generated stubs

addr, port = sys.argv[1], int(sys.argv[2])
check("site-packages" not in pb.__file__, f"the raw stubs, not the client's: {pb.__file__}")
name, options = target(addr)
with grpc.insecure_channel(name, options=options) as channel:
    stub = pb_grpc.FaultServiceStub(channel)
    check(not refused(port), "refused before any fault")
    spec = pb.FaultSpec(
        target=pb.Target(port=port, protocol=pb.PROTOCOL_TCP),
        action=pb.Action(refuse=pb.Refuse(mode=pb.REFUSE_MODE_RST)),
    )
    try:
        fault = stub.AddFault(pb.AddFaultRequest(spec=spec), timeout=10)
    except grpc.RpcError as e:
        denied(e)
    check(refused(port), "the fault does not refuse connections")
    listed = [f for f in stub.ListFaults(pb.ListFaultsRequest(), timeout=10).faults
              if f.id == fault.id]
    check(len(listed) == 1 and listed[0].owner.uid == 0, f"listed with owner root: {listed}")
    stub.RemoveFault(pb.RemoveFaultRequest(id=fault.id), timeout=10)
    check(not refused(port), "still refused after removal")
print("ok")
