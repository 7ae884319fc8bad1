"""A tiny app for the app-proxy test: HTTP pages and a WebSocket echo on one port, as ComfyUI
and Jupyter serve both. `python -m tests.webapp_server PORT` (loopback only)."""

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


async def main(port: int) -> None:
    async with serve(echo, "127.0.0.1", port, process_request=process_request):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
