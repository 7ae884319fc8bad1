"""The Starlette app: pages, the JSON API and the app proxy, all behind vp.web.auth.

Routes (README "vp ui" documents the API):
  GET  /login, POST /login, POST /logout      the only pages open without a session
  GET  /static/...                            the page's own JS and CSS
  GET  /                                      the control page
  GET  /api/hosts                             `vp ls -o json` rows of every platform in use
  POST /api/hosts/{name}/start|stop|down      `vp start|stop|down NAME` (?platform=P)
  GET  /api/spend                             today's and this month's spend, $/h now
  GET  /api/runs, POST /api/runs              `vp runs -o json`; `vp --detach COMMAND`
  GET  /api/runs/{id}/log                     the log; ?follow=1: Server-Sent Events
  POST /api/keepalive                         mark the project's host busy (idle stop)
  GET  /api/apps                              `[ui] apps` with their proxied URLs
  *    /apps/NAME/...                         API clients (bearer): HTTP and WebSocket to the
                                              app on the host; a browser is sent to the apps
                                              origin below with a one-minute ticket

The apps origin (`create_apps_app`, its own port) serves only /apps/NAME/... A host is run by
a stranger, so its app's JavaScript must never run on the control page's origin: there it
could read the page's CSRF token and start, stop or destroy hosts. On its own origin the
browser's same-origin rule keeps it away from the page and the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
from dataclasses import dataclass
from importlib import resources
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from vp.errors import VpError
from vp.web import core, proxy
from vp.web.auth import (
    APP_COOKIE,
    COOKIE,
    CSRF_HEADER,
    TICKET_SECONDS,
    Keys,
    LoginLimiter,
    Session,
)

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


@dataclass
class Who:
    """An authenticated caller: an API client (bearer) or a browser session."""

    bearer: bool
    session: Session | None = None


def _static(name: str) -> str:
    return resources.files("vp.web").joinpath("static", name).read_text()


def _client(request) -> str:
    return request.client.host if request.client else "?"


def create_app(
    project: core.Project,
    keys: Keys,
    *,
    secure: bool = False,
    apps_port: int | None = None,
    forwards: proxy.AppForwards | None = None,
) -> Starlette:
    """The control page and its API. Browsers reach host apps on `apps_port` (see the module
    docstring); without it only API clients can use the app proxy."""
    limiter = LoginLimiter()
    forwards = forwards or proxy.AppForwards(project)
    tickets = keys.for_purpose(b"ticket", TICKET_SECONDS)

    def who(conn) -> Who | None:
        auth = conn.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return Who(True) if keys.token_ok(auth[7:].strip()) else None
        session = keys.session(conn.cookies.get(COOKIE))
        return Who(False, session) if session else None

    def api_error(exc: VpError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.message, "hint": exc.hint}, status_code=getattr(exc, "status", 400)
        )

    def guard(*, page: bool = False):
        """Authenticate; a browser's state-changing request must carry the CSRF token."""

        def wrap(handler):
            async def endpoint(request: Request):
                caller = who(request)
                if caller is None:
                    if page:
                        target = quote(request.url.path, safe="/")
                        return RedirectResponse(f"/login?next={target}", status_code=303)
                    return JSONResponse({"error": "not logged in"}, status_code=401)
                if not caller.bearer and request.method not in SAFE_METHODS:
                    assert caller.session is not None
                    token_ok = keys.csrf_ok(caller.session, request.headers.get(CSRF_HEADER))
                    if not token_ok:
                        return JSONResponse({"error": "missing CSRF token"}, status_code=403)
                try:
                    return await handler(request, caller)
                except VpError as exc:
                    return api_error(exc)

            return endpoint

        return wrap

    def page(body: str) -> HTMLResponse:
        return HTMLResponse(body, headers=PAGE_HEADERS)

    # ------------------------------------------------------------------ login
    def login_page(error: str = "", next_url: str = "/", status: int = 200) -> HTMLResponse:
        text = (
            _static("login.html")
            .replace("{{error}}", html.escape(error))
            .replace("{{next}}", html.escape(next_url))
        )
        return HTMLResponse(text, status_code=status, headers=PAGE_HEADERS)

    def safe_next(value: str | None) -> str:
        if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
            return value
        return "/"

    async def login_get(request: Request):
        return login_page(next_url=safe_next(request.query_params.get("next")))

    async def login_post(request: Request):
        client = _client(request)
        form = await request.form()
        next_url = safe_next(str(form.get("next") or "/"))
        if not limiter.allowed(client):
            return login_page("Too many attempts; wait a minute.", next_url, 429)
        if not keys.token_ok(str(form.get("token") or "").strip()):
            limiter.failed(client)
            return login_page("That is not the token printed at start.", next_url, 403)
        return _with_session(next_url, COOKIE, keys, secure, "/")

    @guard()
    async def logout(request: Request, caller: Who):
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def static(request: Request):
        name = request.path_params["name"]
        if name not in STATIC:
            return PlainTextResponse("not found", status_code=404)
        return Response(_static(name), media_type=STATIC[name])

    # ------------------------------------------------------------------ page
    @guard(page=True)
    async def index(request: Request, caller: Who):
        csrf = keys.csrf(caller.session) if caller.session else ""
        return page(_static("index.html").replace("{{csrf}}", html.escape(csrf)))

    # ------------------------------------------------------------------ API
    @guard()
    async def hosts(request: Request, caller: Who):
        return JSONResponse(await run_in_threadpool(core.list_hosts, project))

    @guard()
    async def spend(request: Request, caller: Who):
        return JSONResponse(await run_in_threadpool(core.spend))

    def host_action(action: str):
        @guard()
        async def endpoint(request: Request, caller: Who):
            name = request.path_params["name"]
            platform = request.query_params.get("platform")
            await run_in_threadpool(core.host_action, project, name, action, platform)
            return JSONResponse({"ok": True, "host": name, "action": action})

        return endpoint

    @guard()
    async def runs(request: Request, caller: Who):
        if request.method == "GET":
            limit = int(request.query_params.get("limit", "50") or 50)
            return JSONResponse(await run_in_threadpool(core.list_runs, project, limit))
        try:
            body = await request.json()
        except ValueError:
            body = None
        command = body.get("command") if isinstance(body, dict) else None
        if not isinstance(command, str):
            return JSONResponse({"error": 'send JSON {"command": "..."}'}, status_code=400)
        run_id = await run_in_threadpool(core.start_run, project, command)
        return JSONResponse({"id": run_id}, status_code=201)

    @guard()
    async def run_log(request: Request, caller: Who):
        run_id = request.path_params["run_id"]
        if request.query_params.get("follow") not in ("1", "true", "yes"):
            data = await run_in_threadpool(core.run_log, project, run_id)
            return PlainTextResponse(data.decode("utf-8", "replace"))
        follower = await run_in_threadpool(core.LogFollower, project, run_id)

        async def events():
            decoder = json.JSONEncoder()
            try:
                async for chunk in iterate_in_threadpool(follower.chunks()):
                    text = chunk.decode("utf-8", "replace")
                    yield f"data: {decoder.encode(text)}\n\n"
                yield "event: end\ndata: {}\n\n"
            finally:
                await run_in_threadpool(follower.close)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @guard()
    async def keepalive(request: Request, caller: Who):
        return JSONResponse(await run_in_threadpool(core.keepalive, project))

    @guard()
    async def apps_list(request: Request, caller: Who):
        cfg = await run_in_threadpool(project.load)
        return JSONResponse(
            [
                {"name": n, "port": p, "url": f"{proxy.prefix(n)}/"}
                for n, p in core.apps(cfg).items()
            ]
        )

    # ------------------------------------------------------------------ app proxy
    touch, touch_loop = _keepers(project)

    async def app_http(request: Request):
        caller = who(request)
        name, path = request.path_params["name"], request.path_params["path"]
        if caller is None:
            target = quote(request.url.path, safe="/")
            return RedirectResponse(f"/login?next={target}", status_code=303)
        if caller.bearer:
            return await proxy.http(request, forwards, name, path, touch)
        # A browser: the app runs on its own origin, never on this one.
        if request.method not in ("GET", "HEAD") or apps_port is None:
            return JSONResponse({"error": "apps open on their own origin"}, status_code=403)
        host = request.url.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if secure else "http"
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        ticket = tickets.new_session()
        return RedirectResponse(
            f"{scheme}://{host}:{apps_port}{ENTER}?ticket={quote(ticket)}&next={quote(target)}",
            status_code=303,
        )

    async def app_root(request: Request):
        return RedirectResponse(f"{proxy.prefix(request.path_params['name'])}/", status_code=307)

    async def app_ws(ws: WebSocket):
        caller = who(ws)
        if caller is None or not caller.bearer:  # browsers use the apps origin
            await ws.close(code=1008)
            return
        await proxy.websocket(
            ws, forwards, ws.path_params["name"], ws.path_params["path"], touch_loop
        )

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Route("/api/hosts", hosts, methods=["GET"]),
        Route("/api/spend", spend, methods=["GET"]),
        *(
            Route(f"/api/hosts/{{name}}/{a}", host_action(a), methods=["POST"])
            for a in core.HOST_ACTIONS
        ),
        Route("/api/runs", runs, methods=["GET", "POST"]),
        Route("/api/runs/{run_id}/log", run_log, methods=["GET"]),
        Route("/api/keepalive", keepalive, methods=["POST"]),
        Route("/api/apps", apps_list, methods=["GET"]),
        Route("/apps/{name}", app_root, methods=methods),
        Route("/apps/{name}/{path:path}", app_http, methods=methods),
        WebSocketRoute("/apps/{name}/{path:path}", app_ws),
    ]

    return Starlette(routes=routes, lifespan=_lifespan(forwards))


ENTER = "/vp-enter"


def _with_session(target: str, cookie: str, keys: Keys, secure: bool, path: str) -> Response:
    """A redirect to `target` that sets a new signed session: HttpOnly, SameSite=Strict,
    expiring, sent only over TLS when the server has it."""
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        cookie,
        keys.new_session(),
        max_age=int(keys.lifetime),
        httponly=True,
        samesite="strict",
        secure=secure,
        path=path,
    )
    return response


def _same_origin(conn, secure: bool) -> bool:
    """The request comes from a page of this origin (an app's own form or script)."""
    origin = conn.headers.get("origin")
    if origin is None:
        return conn.headers.get("sec-fetch-site", "same-origin") == "same-origin"
    scheme = "https" if secure else "http"
    return origin == f"{scheme}://{conn.headers.get('host', '')}"


def _keepers(project: core.Project):
    """`touch()`: an app request keeps the host awake (keepalive throttles the ssh calls);
    `touch_loop()`: the same for as long as an app's WebSocket is open."""

    def touch() -> None:
        def run() -> None:
            with contextlib.suppress(Exception):
                core.keepalive(project)

        asyncio.get_running_loop().run_in_executor(None, run)

    async def touch_loop() -> None:
        while True:
            try:
                state = await run_in_threadpool(core.keepalive, project)
            except Exception:  # noqa: BLE001 - keep relaying; the next try may work
                state = {}
            limit = state.get("idle_stop_s") or 120
            await asyncio.sleep(max(1.0, min(30.0, limit / 3)))

    return touch, touch_loop


def _lifespan(forwards: proxy.AppForwards):
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        import httpx

        timeout = httpx.Timeout(None, connect=30)
        # The proxy's own connections to host apps: never a proxy from the environment
        # (HTTP_PROXY would see every request and the apps' answers) and no .netrc.
        app.state.http = httpx.AsyncClient(timeout=timeout, trust_env=False)
        # A retry after an app dropped a kept-alive connection goes out on a new one.
        app.state.http_fresh = httpx.AsyncClient(
            timeout=timeout, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )
        try:
            yield
        finally:
            await app.state.http.aclose()
            await app.state.http_fresh.aclose()
            await run_in_threadpool(forwards.close)

    return lifespan


def create_apps_app(
    project: core.Project, keys: Keys, forwards: proxy.AppForwards, *, secure: bool = False
) -> Starlette:
    """The apps origin: /apps/NAME/... only, for a browser that came from the control page with
    a ticket (it gets this origin's own cookie), or an API client with the bearer token."""
    tickets = keys.for_purpose(b"ticket", TICKET_SECONDS)
    app_keys = keys.for_purpose(b"app", keys.lifetime)
    touch, touch_loop = _keepers(project)

    def allowed(conn) -> bool:
        auth = conn.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return keys.token_ok(auth[7:].strip())
        return app_keys.session(conn.cookies.get(APP_COOKIE)) is not None

    denied = PlainTextResponse(
        "open this app through its link on the control page", status_code=401
    )

    async def enter(request: Request):
        target = request.query_params.get("next") or "/"
        if tickets.session(request.query_params.get("ticket")) is None or not (
            target.startswith("/apps/") and "\\" not in target and "//" not in target
        ):
            return denied
        return _with_session(target, APP_COOKIE, app_keys, secure, "/apps/")

    async def app_http(request: Request):
        if not allowed(request):
            return denied
        if request.method not in SAFE_METHODS and not _same_origin(request, secure):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        name, path = request.path_params["name"], request.path_params["path"]
        return await proxy.http(request, forwards, name, path, touch)

    async def app_root(request: Request):
        return RedirectResponse(f"{proxy.prefix(request.path_params['name'])}/", status_code=307)

    async def app_ws(ws: WebSocket):
        if not allowed(ws) or not _same_origin(ws, secure):
            await ws.close(code=1008)
            return
        await proxy.websocket(
            ws, forwards, ws.path_params["name"], ws.path_params["path"], touch_loop
        )

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [
        Route(ENTER, enter, methods=["GET"]),
        Route("/apps/{name}", app_root, methods=methods),
        Route("/apps/{name}/{path:path}", app_http, methods=methods),
        WebSocketRoute("/apps/{name}/{path:path}", app_ws),
    ]
    return Starlette(routes=routes, lifespan=_lifespan(forwards))
