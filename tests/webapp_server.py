"""A tiny app for the app-proxy test: HTTP pages and a WebSocket echo on one port, as ComfyUI
and Jupyter serve both. `python -m tests.webapp_server PORT [DROP_PORT]` (loopback only).

Like many small servers (this one is `websockets`' own HTTP), it closes each connection after
one response without saying `Connection: close`. DROP_PORT serves the sharp end of that
every time: it answers the first request on a connection as if keeping it alive, then drops
the connection when the next request arrives on it, unanswered, as a server whose keep-alive
timer fired does when a request crosses its close."""

from __future__ import annotations

import asyncio
import http
import sys

from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

# Root-relative links and a script, as an app that expects to live at / writes them.
PAGE = b"""<!doctype html><html><head><title>echo app</title>
<script src="/app.js"></script></head>
<body><h1 id="app-title">echo app</h1><a id="next" href="/next">next</a>
<p id="ws-result">waiting</p></body></html>"""
SCRIPT = b"""window.addEventListener("load", () => {
  const url = new URL("ws", location.href); url.protocol = url.protocol.replace("http", "ws");
  const ws = new WebSocket(url);
  ws.onopen = () => ws.send("ping from the page");
  ws.onmessage = (e) => { document.getElementById("ws-result").textContent = e.data; };
});"""


def respond(status: int, body: bytes, ctype: str, extra: dict | None = None) -> Response:
    headers = Headers({"Content-Type": ctype, "Content-Length": str(len(body)), **(extra or {})})
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def process_request(connection, request):
    path = request.path.split("?")[0]
    if path == "/ws":
        return None  # the WebSocket handshake
    if path == "/":
        return respond(200, PAGE, "text/html; charset=utf-8", {"Set-Cookie": "appsid=1; Path=/"})
    if path == "/app.js":
        return respond(200, SCRIPT, "text/javascript")
    if path == "/next":
        return respond(200, b"next page", "text/plain")
    if path == "/go-home":
        return respond(302, b"", "text/plain", {"Location": "/"})
    if path == "/headers":
        seen = "\n".join(f"{k}: {v}" for k, v in request.headers.raw_items())
        return respond(200, seen.encode(), "text/plain")
    return respond(404, b"not found", "text/plain")


async def echo(ws) -> None:
    async for message in ws:
        await ws.send(f"echo: {message}")


async def _request(reader: asyncio.StreamReader) -> bytes:
    """One request's head (the requests sent here have no body)."""
    return await reader.readuntil(b"\r\n\r\n")


async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await _request(reader)
        path = head.split(b" ", 2)[1]
        body = b"answered " + path
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        await _request(reader)  # the next request on this connection: dropped
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, drop_port: int | None) -> None:
    async with serve(echo, "127.0.0.1", port, process_request=process_request):
        if drop_port is not None:
            await asyncio.start_server(answer_once, "127.0.0.1", drop_port)
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None))
