"""Render data for `-o text|json|yaml|table`: only data on stdout, nothing else."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

FORMATS = ("text", "json", "yaml", "table")


def human_size(n: float) -> str:
    """Bytes as a short decimal size for progress lines and messages: 512B, 1.9MB, 12.3GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}GB"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 or value == 0 else f"{value:.4f}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


# Column headers that are not just the key in capitals.
HEADERS = {"per_hour": "$/H", "cost": "COST $"}


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[HEADERS.get(c, c.upper()) for c in columns]] + [
        [_cell(r.get(c)) for c in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def render(data: Any, fmt: str, columns: Sequence[str] | None = None) -> None:
    """Print `data` (a dict or a list of dicts) in `fmt` to stdout."""
    if fmt == "json":
        text = json.dumps(data, indent=2, default=str)
    elif fmt == "yaml":
        import yaml

        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip()
    elif isinstance(data, list):
        cols = list(columns or (data[0].keys() if data else []))
        text = table(data, cols) if data else ""
    elif isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        text = "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in data.items())
    else:
        text = str(data)
    if text:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
