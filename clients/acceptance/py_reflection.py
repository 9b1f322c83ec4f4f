"""grpcio with no protos at all: the service is discovered through server reflection
(grpc.reflection.v1), its descriptors loaded into a protobuf DescriptorPool, the requests
built from them (message_factory, json_format) and the calls made by method path. The
reflection messages are grpcio-reflection's (v1alpha's, the same on the wire as v1's).
Adds a refuse fault, sees the port refuse, removes it, sees the port accept.
Usage: py_reflection.py ADDR PORT"""

import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from common import check, denied, refused, target

addr, port = sys.argv[1], int(sys.argv[2])
name, options = target(addr)
channel = grpc.insecure_channel(name, options=options)
info = channel.stream_stream(
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    request_serializer=rpb.ServerReflectionRequest.SerializeToString,
    response_deserializer=rpb.ServerReflectionResponse.FromString,
)


def ask(**request):
    try:
        (response,) = list(info(iter([rpb.ServerReflectionRequest(**request)]), timeout=10))
    except grpc.RpcError as e:
        denied(e)
    return response


services = [s.name for s in ask(list_services="").list_services_response.service]
api = next((s for s in services if s.endswith(".FaultService")), None)
check(api is not None, f"no FaultService among {services}")

pool = descriptor_pool.DescriptorPool()
files = {}
for raw in ask(file_containing_symbol=api).file_descriptor_response.file_descriptor_proto:
    proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
    files[proto.name] = proto


def add(name):
    for dep in files[name].dependency:
        if dep in files:
            add(dep)
    try:
        pool.Add(files[name])
    except TypeError:
        pass  # already added


for file_name in list(files):
    add(file_name)
service = pool.FindServiceByName(api)


def call(method_name, body):
    method = service.methods_by_name[method_name]
    request = json_format.ParseDict(body, message_factory.GetMessageClass(method.input_type)())
    reply_class = message_factory.GetMessageClass(method.output_type)
    rpc = channel.unary_unary(
        f"/{api}/{method_name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=reply_class.FromString,
    )
    try:
        return json_format.MessageToDict(rpc(request, timeout=10))
    except grpc.RpcError as e:
        denied(e)


check(not refused(port), "refused before any fault")
fault = call("AddFault", {"spec": {
    "target": {"port": port, "protocol": "PROTOCOL_TCP"},
    "action": {"refuse": {"mode": "REFUSE_MODE_RST"}},
}})
check(refused(port), "the fault does not refuse connections")
listed = [f for f in call("ListFaults", {}).get("faults", []) if f["id"] == fault["id"]]
check(len(listed) == 1, f"the fault is listed: {listed}")
call("RemoveFault", {"id": fault["id"]})
check(not refused(port), "still refused after removal")
channel.close()
print("ok")
