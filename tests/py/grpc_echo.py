"""A real gRPC peer (grpcio) for skiff's end-to-end tests.

  grpc_echo.py server [ADDR] [NAME]
      prints its port, serves demo.Echo until killed (on ADDR, default
      127.0.0.1:0); every other method answers a JSON reply naming NAME,
      the method called and the metadata received
  grpc_echo.py client TARGET
      calls Say (unary) and Count (server streaming) through TARGET and
      prints OK on success
  grpc_echo.py calls TARGET AUTHORITY METHOD N [NAME=VALUE...]
      makes N unary calls of METHOD (`/pkg.Service/Method`) with that
      metadata and `:authority`, and prints one JSON line: how many
      replies came from each server, the status codes of the failures,
      and the last reply
"""
import collections
import concurrent.futures
import json
import sys

import grpc


def say(request, context):
    context.set_trailing_metadata((("x-served-by", "grpc-echo"),))
    return b"echo:" + request


def count(request, context):
    for i in range(int(request)):
        yield str(i).encode()


class Who(grpc.GenericRpcHandler):
    """Every method outside demo.Echo: says who answered what."""

    def __init__(self, name):
        self.name = name

    def service(self, details):
        if details.method.startswith("/demo.Echo/"):
            return None

        def who(request, context):
            received = {k: v for k, v in context.invocation_metadata()}
            reply = {"server": self.name, "method": details.method, "metadata": received}
            return json.dumps(reply).encode()

        return grpc.unary_unary_rpc_method_handler(who)


def server(address="127.0.0.1:0", name="grpc-echo"):
    srv = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    srv.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("demo.Echo", handlers), Who(name))
    )
    port = srv.add_insecure_port(address)
    srv.start()
    print(port, flush=True)
    srv.wait_for_termination()


def client(target):
    with grpc.insecure_channel(target, options=(("grpc.enable_http_proxy", 0),)) as channel:
        say_rpc = channel.unary_unary("/demo.Echo/Say")
        reply, call = say_rpc.with_call(b"hello", timeout=10)
        assert reply == b"echo:hello", reply
        trailers = dict(call.trailing_metadata())
        assert trailers.get("x-served-by") == "grpc-echo", trailers
        count_rpc = channel.unary_stream("/demo.Echo/Count")
        items = [m.decode() for m in count_rpc(b"100", timeout=10)]
        assert items == [str(i) for i in range(100)], items
        # A failing status travels in trailers too.
        missing = channel.unary_unary("/demo.Echo/Missing")
        try:
            missing(b"x", timeout=10)
            raise AssertionError("unknown method succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e.code()
    print("OK", flush=True)


def calls(target, authority, method, n, *metadata):
    pairs = tuple(tuple(m.split("=", 1)) for m in metadata)
    options = (("grpc.enable_http_proxy", 0), ("grpc.default_authority", authority))
    servers, codes, last = collections.Counter(), collections.Counter(), None
    with grpc.insecure_channel(target, options=options) as channel:
        rpc = channel.unary_unary(method)
        for _ in range(int(n)):
            try:
                last = json.loads(rpc(b"", metadata=pairs, timeout=10))
                servers[last["server"]] += 1
            except grpc.RpcError as e:
                codes[e.code().name] += 1
                last = {"code": e.code().name, "details": e.details()}
    print(json.dumps({"servers": servers, "codes": codes, "last": last}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(*sys.argv[2:4])
    elif sys.argv[1] == "calls":
        calls(*sys.argv[2:])
    else:
        client(sys.argv[2])
