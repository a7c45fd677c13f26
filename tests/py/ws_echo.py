"""A real WebSocket peer (the websockets package) for skiff's tests.

  ws_echo.py server        prints its port, echoes every message until killed
  ws_echo.py client URL    sends 100 text and binary messages, checks the echoes, prints OK
  ws_echo.py client URL CA the same over wss://, trusting the CA file
"""
import asyncio
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def server():
    async with serve(echo, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


async def client(url, cafile=None):
    tls = ssl.create_default_context(cafile=cafile) if cafile else None
    async with connect(url, open_timeout=10, proxy=None, ssl=tls) as ws:
        for i in range(100):
            await ws.send(f"message {i}")
            assert await ws.recv() == f"message {i}"
        payload = bytes(range(256)) * 256
        await ws.send(payload)
        assert await ws.recv() == payload
    print("OK", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server())
    else:
        asyncio.run(client(*sys.argv[2:4]))
