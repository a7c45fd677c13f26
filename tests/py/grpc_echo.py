"""A real gRPC peer (grpcio) for skiff's end-to-end tests.

  grpc_echo.py server [ADDR]   prints its port, serves demo.Echo until killed
                               (on ADDR, default 127.0.0.1:0)
  grpc_echo.py client TARGET   calls Say (unary) and Count (server streaming)
                               through TARGET and prints OK on success
"""
import concurrent.futures
import sys

import grpc


def say(request, context):
    context.set_trailing_metadata((("x-served-by", "grpc-echo"),))
    return b"echo:" + request


def count(request, context):
    for i in range(int(request)):
        yield str(i).encode()


def server(address="127.0.0.1:0"):
    srv = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", handlers),))
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


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(*sys.argv[2:3])
    else:
        client(sys.argv[2])
