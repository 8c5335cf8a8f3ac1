"""A gRPC client written elsewhere (Python, grpcio's C core) for tests/tests/grpc_python.rs.

Calls every method of tests/proto/echo.proto through an mc-proxy L7 route over TLS and prints
one JSON object per call, which the Rust test checks.

usage: grpc_client.py TARGET AUTHORITY CA_PEM PROTO_DIR
"""

import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

target, authority, ca_pem, proto_dir = sys.argv[1:5]
out = tempfile.mkdtemp()
rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                  os.path.join(proto_dir, "echo.proto")])
if rc != 0:
    sys.exit(f"protoc failed: {rc}")
sys.path.insert(0, out)
import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402

MiB = 1 << 20
creds = grpc.ssl_channel_credentials(open(ca_pem, "rb").read())
channel = grpc.secure_channel(target, creds, options=[
    ("grpc.ssl_target_name_override", authority),
    ("grpc.default_authority", authority),
    ("grpc.max_receive_message_length", 16 * MiB),
    ("grpc.max_send_message_length", 16 * MiB),
])
stub = echo_pb2_grpc.EchoStub(channel)
Msg = echo_pb2.Msg


def report(call, **fields):
    print(json.dumps({"call": call, **fields}), flush=True)


def status(err):
    return {"code": err.code().name, "details": err.details()}


report("unary", text=stub.Unary(Msg(text="hi"), timeout=10).text)
report("server_stream", texts=[m.text for m in stub.ServerStream(Msg(text="s", count=3), timeout=10)])
r = stub.ClientStream(iter([Msg(text="a", payload=b"x" * 10), Msg(text="b", payload=b"y" * (8 * MiB))]),
                      timeout=30)
report("client_stream", text=r.text, count=r.count, bytes=r.sleep_ms)
report("bidi", texts=[m.text for m in stub.Bidi(iter([Msg(text=t) for t in "xyz"]), timeout=10)])
try:
    stub.Unary(Msg(text="not here", fail_code=5), timeout=10)
except grpc.RpcError as e:
    report("trailers_only_error", **status(e))
try:
    list(stub.ServerStream(Msg(text="t", count=2, fail_code=8), timeout=10))
except grpc.RpcError as e:
    report("error_after_data", **status(e))
try:
    stub.Unary(Msg(text="slow", sleep_ms=10_000), timeout=1.5)
except grpc.RpcError as e:
    report("deadline", **status(e))
big = stub.Unary(Msg(text="big", payload=b"z" * (8 * MiB)), timeout=30)
report("big_unary", bytes=len(big.payload))
