"""`vp ui`: the web control page (vp/web/). starlette and uvicorn load only when it runs."""

from __future__ import annotations

from pathlib import Path

import typer

from vp.commands.context import command_app, globals_of

app = command_app()


@app.command("ui", help="Serve the web control page: hosts, runs, live logs, host apps.")
def ui_cmd(
    ctx: typer.Context,
    port: int = typer.Option(8765, "--port", help="Port to listen on"),
    bind: str = typer.Option("127.0.0.1", "--bind", help="Address to listen on"),
    cert: Path = typer.Option(None, "--cert", help="TLS certificate (PEM), with --key"),
    key: Path = typer.Option(None, "--key", help="TLS private key (PEM), with --cert"),
    apps_port: int = typer.Option(
        None,
        "--apps-port",
        help="Port of the apps origin, where host apps open (default: --port + 1; 0: off)",
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Allow plain HTTP on a non-loopback --bind"
    ),
) -> None:
    from vp.web.core import Project
    from vp.web.serve import serve

    g = globals_of(ctx)
    g.load()  # a broken vp.toml is said now, in one line, not on the first page load
    project = Project(Path.cwd(), config=g.config, platform=g.platform)
    serve(
        project,
        port=port,
        bind=bind,
        cert=cert,
        key=key,
        insecure=insecure,
        say=g.ui.info,
        apps_port=apps_port,
    )
