"""`vp init`: write the project's vp.toml, .vpignore and optional Dockerfile / Makefile snippet."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from vp.commands.context import command_app, globals_of
from vp.errors import UsageError
from vp.ui import UI

app = command_app()
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def template(name: str) -> str:
    return (TEMPLATES / name).read_text()


def init_project(
    root: Path,
    *,
    platform: str | None,
    docker: bool,
    make: bool,
    force: bool,
    ui: UI,
) -> list[Path]:
    from vp.platforms import NAMES

    if platform and platform not in NAMES:
        raise UsageError(f"--platform {platform!r}: choose one of {', '.join(NAMES)}")
    name = re.sub(r"[^a-z0-9-]", "-", root.name.lower()).strip("-") or "project"
    written: list[Path] = []
    from vp.config import HostTable

    files = {
        "vp.toml": template("vp.toml")
        .replace("{name}", name)
        .replace("{platform}", platform or "local")
        .replace("{disk_gb}", str(HostTable.disk_gb)),  # the default, shown as is
        ".vpignore": template("vpignore"),
    }
    # Warn about an existing file only when this call asked for it: `vp init --make` on an
    # initialised project is about the Makefile, not vp.toml.
    asked = set(files) if not make or docker else set()
    if docker:
        files["Dockerfile"] = template("Dockerfile")
        files[".dockerignore"] = template("dockerignore")
        if not (root / "requirements.txt").exists():
            files["requirements.txt"] = ""  # the Dockerfile installs it
    for filename, text in files.items():
        path = root / filename
        if path.exists() and not force:
            if filename in asked or (docker and filename in ("Dockerfile", ".dockerignore")):
                ui.warn(f"{path} exists; left as is (--force overwrites)")
            else:
                ui.debug(f"{path} exists; left as is")
            continue
        if filename == "vp.toml" and docker:
            text = text.replace("enabled = false", "enabled = true", 1)
        path.write_text(text)
        written.append(path)
        ui.info(f"wrote {path}")
    if make:
        makefile = root / "Makefile"
        current = makefile.read_text() if makefile.exists() else ""
        snippet, kept = makefile_snippet(template("Makefile"), current)
        for target in kept if "VP ?=" not in current else []:
            ui.info(f"{makefile} already has a `{target}` target; kept yours")
        if not snippet:
            ui.info(f"{makefile} already has the vp snippet")
        else:
            sep = "\n" if current and not current.endswith("\n\n") else ""
            makefile.write_text(current + sep + snippet)
            written.append(makefile)
            ui.info(f"{'appended to' if current else 'wrote'} {makefile}")
    return written


_TARGET = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)\s*::?(?!=)", re.M)


def makefile_snippet(snippet: str, current: str) -> tuple[str, list[str]]:
    """The part of the vp snippet `current` lacks, and the targets it already has: appending a
    second `train:` would make make print "overriding recipe" and run only the last one."""
    have = set(_TARGET.findall(current))
    kept: list[str] = []
    blocks: list[str] = []
    targets: list[str] = []
    for block in snippet.strip("\n").split("\n\n"):
        m = _TARGET.match(block)
        if block.startswith(".PHONY"):
            continue
        if m and m.group(1) in have:
            kept.append(m.group(1))
            continue
        if not m and "VP ?=" in block and "VP ?=" in current:
            continue
        if m:
            targets.append(m.group(1))
        blocks.append(block)
    if not targets:
        return "", kept
    blocks.append(".PHONY: " + " ".join(targets))
    return "\n\n".join(blocks) + "\n", kept


@app.command(help="Write vp.toml and .vpignore for this project (and optionally more).")
def init(
    ctx: typer.Context,
    platform: str = typer.Option(None, "--platform", help="Platform to write into vp.toml"),
    docker: bool = typer.Option(False, "--docker", help="Also write a GPU Dockerfile"),
    make: bool = typer.Option(False, "--make", help="Append the vp Makefile snippet"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files"),
) -> None:
    g = globals_of(ctx)
    init_project(
        Path.cwd(), platform=platform or g.platform, docker=docker, make=make, force=force, ui=g.ui
    )
