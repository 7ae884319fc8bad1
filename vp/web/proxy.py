"""`/apps/NAME/...`: a host app (ComfyUI, Jupyter) proxied through an SSH forward.

The browser only ever talks to `vp ui`; `vp ui` reaches the app through a forward from
`vp.tunnel` (sshtunnel in process, or OpenSSH's shared master), opened on first use and
reopened when the link drops, so the host exposes nothing. An app that expects to live at `/`
still works: the prefix is stripped on the way in, `Location` headers, cookie paths and
root-relative links in HTML are prefixed on the way out, and `X-Forwarded-Prefix` tells apps
that honour it. vp's own cookie and the Authorization header never reach the host (a rented
host is untrusted), and a host cannot set or clear vp's session cookie.

Many apps close a connection after an answer, or when idle, without saying so; through a
forward that close reaches vp late, so the next request can go out on a connection that is
already closing and come back with nothing. A GET, HEAD or OPTIONS without a body is then
asked again on a new connection, as nginx does, instead of failing as a 502 (a page whose
script failed that way never opened its WebSocket). These connections go to loopback: a
proxy from the environment (HTTP_PROXY, ALL_PROXY) never carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Callable

from vp.tunnel import Forward, Tunnels, connect
from vp.web import core
from vp.web.auth import APP_COOKIE, COOKIE, CSRF_HEADER

HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
# Never forwarded to the host: vp's credentials.
PRIVATE_HEADERS = {"authorization", CSRF_HEADER}
WS_SKIP = (
    HOP_HEADERS
    | PRIVATE_HEADERS
    | {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "cookie",
        "origin",
    }
)
# Sent again on a new connection when the app dropped the reused one before answering.
REPLAYABLE = {"GET", "HEAD", "OPTIONS"}
ROOT_LINK = re.compile(rb"""(\s(?:src|href|action)\s*=\s*["'])/(?!/)""", re.IGNORECASE)


def prefix(name: str) -> str:
    return f"/apps/{name}"


class AppForwards:
    """One forward per (host, app port), kept open while the server runs."""

    def __init__(self, project: core.Project):
        self.project = project
        self._open: dict[tuple[str, int], Tunnels] = {}
        self._lock = threading.Lock()

    def port_of(self, name: str) -> int | None:
        return core.apps(self.project.load()).get(name)

    def local_port(self, name: str) -> int:
        """The local port that reaches app `name` on the project's host (blocking)."""
        remote = self.port_of(name)
        if remote is None:
            raise core.CoreError(f"no app {name!r} in [ui] apps", status=404)
        host, transport = core.project_host(self.project)
        key = (host.key, remote)
        with self._lock:
            tunnels = self._open.get(key)
            if tunnels is not None and tunnels.alive():
                return tunnels.forwards[0].local
            if tunnels is not None:
                tunnels.close()
            tunnels = connect(host, transport, [Forward(remote, 0)], in_process=True)
            self._open[key] = tunnels
            return tunnels.forwards[0].local

    def close(self) -> None:
        with self._lock:
            for tunnels in self._open.values():
                with contextlib.suppress(Exception):
                    tunnels.close()
            self._open.clear()


def _without_our_cookie(value: str) -> str:
    parts = [p for p in value.split(";") if p.strip().split("=", 1)[0] not in (COOKIE, APP_COOKIE)]
    return ";".join(parts).strip()


def request_headers(headers, name: str, skip: set[str] = HOP_HEADERS | PRIVATE_HEADERS):
    out = []
    for key, value in headers.items():
        k = key.lower()
        if k in skip:
            continue
        if k == "cookie":
            value = _without_our_cookie(value)
            if not value:
                continue
        out.append((key, value))
    out.append(("X-Forwarded-Prefix", prefix(name)))
    return out


def rewrite_location(value: str, name: str, upstream: str) -> str:
    """An app's redirect to `/x` (or to its own address) stays under /apps/NAME/."""
    for base in (upstream, upstream.replace("127.0.0.1", "localhost")):
        if value.startswith(base):
            value = value[len(base) :] or "/"
            break
    if value.startswith("/") and not value.startswith("//"):
        return prefix(name) + value
    return value


def rewrite_cookie(value: str, name: str) -> str | None:
    """Scope an app's cookie to its prefix; refuse one that would replace vp's session."""
    if value.split("=", 1)[0].strip() in (COOKIE, APP_COOKIE):
        return None
    out = re.sub(r"(?i)(;\s*path=)/", lambda m: m.group(1) + prefix(name) + "/", value)
    if not re.search(r"(?i);\s*path=", out):
        out += f"; Path={prefix(name)}/"
    return out


def rewrite_html(body: bytes, name: str) -> bytes:
    """Root-relative src/href/action in HTML point under the prefix."""
    return ROOT_LINK.sub(lambda m: m.group(1) + prefix(name).encode() + b"/", body)


async def http(request, forwards: AppForwards, name: str, path: str, touch: Callable[[], None]):
    import httpx
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, Response, StreamingResponse

    try:
        port = await run_in_threadpool(forwards.local_port, name)
    except core.VpError as exc:
        return JSONResponse(
            {"error": exc.message, "hint": exc.hint}, status_code=getattr(exc, "status", 502)
        )
    touch()
    upstream = f"http://127.0.0.1:{port}"
    url = f"{upstream}/{path}" + (f"?{request.url.query}" if request.url.query else "")
    client: httpx.AsyncClient = request.app.state.http
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    req = client.build_request(
        request.method,
        url,
        headers=request_headers(request.headers, name),
        content=request.stream() if has_body else None,
    )
    try:
        try:
            resp = await client.send(req, stream=True)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            if has_body or request.method not in REPLAYABLE:
                raise
            # The app closed the pooled connection as this request went out on it: ask again
            # on a new one (what nginx does for an idempotent request).
            fresh: httpx.AsyncClient = request.app.state.http_fresh
            retry = fresh.build_request(req.method, req.url, headers=req.headers)
            resp = await fresh.send(retry, stream=True)
    except httpx.HTTPError as exc:
        return JSONResponse({"error": f"app {name} did not answer: {exc}"}, status_code=502)
    headers: list[tuple[str, str]] = []
    for key, value in resp.headers.multi_items():
        k = key.lower()
        if k in HOP_HEADERS or k in ("server", "date"):  # uvicorn sends its own
            continue
        if k == "location":
            value = rewrite_location(value, name, upstream)
        elif k == "set-cookie":
            cookie = rewrite_cookie(value, name)
            if cookie is None:
                continue
            value = cookie
        headers.append((key, value))
    if resp.headers.get("content-type", "").startswith("text/html"):
        body = rewrite_html(await resp.aread(), name)  # decoded: drop the encoding header
        await resp.aclose()
        kept = [(k, v) for k, v in headers if k.lower() != "content-encoding"]
        out = Response(body, status_code=resp.status_code)
        out.raw_headers = [(k.lower().encode(), v.encode()) for k, v in kept] + [
            (b"content-length", str(len(body)).encode())
        ]
        return out

    async def body():
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            await resp.aclose()

    out = StreamingResponse(body(), status_code=resp.status_code)
    out.raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers]
    return out


async def websocket(ws, forwards: AppForwards, name: str, path: str, touch_loop) -> None:
    """Relay a WebSocket both ways; the host is kept awake while it is open."""
    from starlette.concurrency import run_in_threadpool
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    try:
        port = await run_in_threadpool(forwards.local_port, name)
    except core.VpError:
        await ws.close(code=1011)
        return
    query = ws.url.query
    url = f"ws://127.0.0.1:{port}/{path}" + (f"?{query}" if query else "")
    protocols = [
        p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()
    ]
    try:
        upstream = await ws_connect(
            url,
            additional_headers=request_headers(ws.headers, name, WS_SKIP),
            subprotocols=protocols or None,  # type: ignore[arg-type]
            max_size=None,
            open_timeout=30,
            proxy=None,  # the forward is on loopback: never through HTTP_PROXY/ALL_PROXY
        )
    except (OSError, InvalidHandshake, TimeoutError):
        await ws.close(code=1011)
        return
    await ws.accept(subprotocol=upstream.subprotocol)
    keeper = asyncio.create_task(touch_loop())

    async def browser_to_app() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") is not None:
                await upstream.send(msg["text"])
            elif msg.get("bytes") is not None:
                await upstream.send(msg["bytes"])

    async def app_to_browser() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for msg in upstream:
                if isinstance(msg, str):
                    await ws.send_text(msg)
                else:
                    await ws.send_bytes(msg)

    tasks = [asyncio.create_task(browser_to_app()), asyncio.create_task(app_to_browser())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in [*tasks, keeper]:
            t.cancel()
        await upstream.close()
        with contextlib.suppress(Exception):
            await ws.close()
