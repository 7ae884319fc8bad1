"""`vp init`: write the project's vp.toml, .vpignore and optional Dockerfile / Makefile snippet."""

from __future__ import annotations

import re
from pathlib import Path

from vp.errors import UsageError
from vp.ui import UI

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
    files = {
        "vp.toml": template("vp.toml")
        .replace("{name}", name)
        .replace("{platform}", platform or "local"),
        ".vpignore": template("vpignore"),
    }
    if docker:
        files["Dockerfile"] = template("Dockerfile")
        files[".dockerignore"] = template("dockerignore")
        if not (root / "requirements.txt").exists():
            files["requirements.txt"] = ""  # the Dockerfile installs it
    for filename, text in files.items():
        path = root / filename
        if path.exists() and not force:
            ui.warn(f"{path} exists; left as is (--force overwrites)")
            continue
        if filename == "vp.toml" and docker:
            text = text.replace("enabled = false", "enabled = true", 1)
        path.write_text(text)
        written.append(path)
        ui.info(f"wrote {path}")
    if make:
        makefile = root / "Makefile"
        snippet = template("Makefile")
        current = makefile.read_text() if makefile.exists() else ""
        if "VP ?=" in current:
            ui.warn(f"{makefile} already has the vp snippet")
        else:
            sep = "\n" if current and not current.endswith("\n\n") else ""
            makefile.write_text(current + sep + snippet)
            written.append(makefile)
            ui.info(f"{'appended to' if current else 'wrote'} {makefile}")
    return written
