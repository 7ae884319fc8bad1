"""Start the page's server: check where it may listen, make or read the token, run uvicorn."""

from __future__ import annotations

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
) -> None:
    tls = check_listen(bind, cert, key, insecure)
    try:
        import uvicorn

        from vp.web.app import create_app
    except ImportError as exc:
        raise VpError(
            f"the web page needs the ui extra ({exc.name} is not installed)",
            hint="pip install 'vp-runner[ui]'",
        ) from None
    token, source = load_token()
    app = create_app(project, Keys(token), secure=tls)
    host = f"[{bind}]" if ":" in bind else bind
    say(f"serving the page on {'https' if tls else 'http'}://{host}:{port}/")
    if source == TOKEN_ENV:
        say(f"log in with the token in {TOKEN_ENV}")
    else:
        say(f"log in with the token: {token}  (kept in {source})")
    sys.stderr.flush()
    uvicorn.run(
        app,
        host=bind,
        port=port,
        ssl_certfile=str(cert) if cert else None,
        ssl_keyfile=str(key) if key else None,
        log_level="warning",
        ws="websockets-sansio",
        lifespan="on",
    )
