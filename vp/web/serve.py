"""Start the page's server: check where it may listen, make or read the token, run uvicorn."""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from pathlib import Path

from vp.errors import UsageError, VpError
from vp.web.auth import TOKEN_ENV, Keys, load_token


def is_loopback(bind: str) -> bool:
    if bind.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(bind: str, cert: Path | None, key: Path | None, insecure: bool) -> bool:
    """Refuse to put the page on a network without TLS unless asked; True when TLS is on."""
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together", hint="pass both, or neither")
    for path in (cert, key):
        if path is not None and not path.is_file():
            raise UsageError(f"no such file: {path}")
    tls = cert is not None
    if not is_loopback(bind) and not tls and not insecure:
        raise UsageError(
            f"--bind {bind} would serve the page and its token over plain HTTP to the network",
            hint="pass --cert FILE --key FILE for TLS, or --insecure if the network is yours",
        )
    return tls


def serve(
    project,
    *,
    port: int,
    bind: str,
    cert: Path | None,
    key: Path | None,
    insecure: bool,
    say,
    apps_port: int | None = None,
) -> None:
    tls = check_listen(bind, cert, key, insecure)
    try:
        import uvicorn

        from vp.web.app import create_app, create_apps_app
        from vp.web.proxy import AppForwards
    except ImportError as exc:
        raise VpError(
            f"the web page needs the ui extra ({exc.name} is not installed)",
            hint="pip install 'vp-runner[ui]'",
        ) from None
    token, source = load_token()
    keys = Keys(token)
    forwards = AppForwards(project)
    apps_port = port + 1 if apps_port is None else apps_port
    main = create_app(project, keys, secure=tls, apps_port=apps_port or None, forwards=forwards)
    host = f"[{bind}]" if ":" in bind else bind
    scheme = "https" if tls else "http"
    say(f"serving the page on {scheme}://{host}:{port}/")
    if apps_port:
        say(f"host apps open on their own origin, {scheme}://{host}:{apps_port}/apps/NAME/")
    if source == TOKEN_ENV:
        say(f"log in with the token in {TOKEN_ENV}")
    else:
        say(f"log in with the token: {token}  (kept in {source})")
    sys.stderr.flush()
    common = dict(
        host=bind,
        ssl_certfile=str(cert) if cert else None,
        ssl_keyfile=str(key) if key else None,
        log_level="warning",
        ws="websockets-sansio",
        lifespan="on",
    )
    servers = [uvicorn.Server(uvicorn.Config(main, port=port, **common))]
    if apps_port:
        apps = create_apps_app(project, keys, forwards, secure=tls)
        servers.append(uvicorn.Server(uvicorn.Config(apps, port=apps_port, **common)))
    asyncio.run(_serve_all(servers))


async def _serve_all(servers) -> None:
    """Run the servers together; when one stops (Ctrl-C, SIGTERM: each server takes the signal
    handlers, so only the last one started sees them) the others stop too."""

    async def watch() -> None:
        while not any(s.should_exit for s in servers):
            await asyncio.sleep(0.2)
        for s in servers:
            s.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*(s.serve() for s in servers))
    finally:
        watcher.cancel()
