"""Local state in SQLite (WAL): known hosts, run history, and sync manifests.

Several `vp` processes may run at once against one project, so every write is a short
transaction and the database runs in WAL mode with a busy timeout.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vp import paths
from vp.errors import UsageError
from vp.platforms.base import Host

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    key TEXT PRIMARY KEY,
    project TEXT,
    data TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    project TEXT,
    host_key TEXT,
    platform TEXT,
    host_name TEXT,
    command TEXT,
    workdir TEXT,
    started REAL,
    ended REAL,
    exit_code INTEGER,
    status TEXT,
    price REAL
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started);
CREATE TABLE IF NOT EXISTS manifests (
    host_key TEXT,
    root TEXT,
    workdir TEXT,
    data TEXT NOT NULL,
    PRIMARY KEY (host_key, root, workdir)
);
"""


@dataclass
class RunRecord:
    id: str
    project: str
    host_key: str
    platform: str
    host_name: str
    command: str
    workdir: str
    started: float
    ended: float | None = None
    exit_code: int | None = None
    status: str = "running"  # running | done | failed | detached | interrupted
    price: float | None = None

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    @property
    def cost(self) -> float | None:
        if self.price is None or self.duration is None:
            return None
        return round(self.price * self.duration / 3600, 4)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["duration"] = self.duration
        d["cost"] = self.cost
        return d


class State:
    def __init__(self, path: Path | None = None):
        path = path or paths.ensure_private_dir(paths.state_dir()) / "state.db"
        # A multi-node run (vp/nodes.py) records its hosts from one thread per node.
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._x("PRAGMA busy_timeout=30000")
        if self._x("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            self._x("PRAGMA journal_mode=WAL")
            for statement in filter(str.strip, SCHEMA.split(";")):
                self._x(statement)
            self._x(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _x(self, sql: str, args: tuple | list = ()) -> sqlite3.Cursor:
        """Execute, riding out the moments another vp holds the lock.

        busy_timeout covers most waits, but SQLite answers some at once (switching to WAL
        while another process opens the file, a schema change racing a reader), and two
        `vp` runs on one project start at the same instant often enough.
        """
        deadline = time.monotonic() + 30
        while True:
            try:
                with self._lock:
                    return self.db.execute(sql, args)
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    # hosts -----------------------------------------------------------------
    def save_host(self, host: Host, project: str | None) -> None:
        self._x(
            "INSERT OR REPLACE INTO hosts(key, project, data, updated) VALUES (?,?,?,?)",
            (host.key, project, json.dumps(host.to_dict()), time.time()),
        )

    def hosts(self, project: str | None = None, platform: str | None = None) -> list[Host]:
        rows = self._x("SELECT data, project FROM hosts ORDER BY updated DESC").fetchall()
        out = []
        for data, proj in rows:
            host = Host(**json.loads(data))
            if project is not None and proj != project:
                continue
            if platform is not None and host.platform != platform:
                continue
            out.append(host)
        return out

    def host(self, key: str) -> Host | None:
        row = self._x("SELECT data FROM hosts WHERE key=?", (key,)).fetchone()
        return Host(**json.loads(row[0])) if row else None

    def forget_host(self, key: str) -> None:
        self._x("DELETE FROM hosts WHERE key=?", (key,))
        self._x("DELETE FROM manifests WHERE host_key=?", (key,))

    # runs ------------------------------------------------------------------
    def add_run(self, run: RunRecord) -> None:
        cols = [f.name for f in fields(RunRecord)]
        self._x(
            f"INSERT INTO runs({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
            [getattr(run, c) for c in cols],
        )

    def finish_run(self, run_id: str, exit_code: int | None, status: str) -> None:
        self._x(
            "UPDATE runs SET ended=?, exit_code=?, status=? WHERE id=?",
            (time.time(), exit_code, status, run_id),
        )

    def set_run_status(self, run_id: str, status: str) -> None:
        self._x("UPDATE runs SET status=? WHERE id=?", (status, run_id))

    def runs(self, project: str | None = None, limit: int = 50) -> list[RunRecord]:
        cols = [f.name for f in fields(RunRecord)]
        query = f"SELECT {','.join(cols)} FROM runs"
        args: list[Any] = []
        if project:
            query += " WHERE project=?"
            args.append(project)
        query += " ORDER BY started DESC LIMIT ?"
        args.append(limit)
        return [RunRecord(*row) for row in self._x(query, args).fetchall()]

    def run(self, run_id: str) -> RunRecord:
        """Find a run by id or unique prefix; a bad id is a usage error naming it."""
        if not run_id or not all(c.isalnum() or c == "-" for c in run_id) or len(run_id) > 64:
            raise UsageError(f"'{run_id}' is not a run id", hint="see `vp runs` for run ids")
        cols = [f.name for f in fields(RunRecord)]
        # An exact id wins over longer ones it prefixes (a multi-node run's RUN and RUN-1).
        rows = self._x(f"SELECT {','.join(cols)} FROM runs WHERE id=?", (run_id,)).fetchall()
        rows = (
            rows
            or self._x(
                f"SELECT {','.join(cols)} FROM runs WHERE id LIKE ? LIMIT 2", (run_id + "%",)
            ).fetchall()
        )
        if not rows:
            raise UsageError(f"no run '{run_id}'", hint="see `vp runs` for run ids")
        if len(rows) > 1:
            raise UsageError(f"run id '{run_id}' is ambiguous", hint="type more of it")
        return RunRecord(*rows[0])

    # manifests ---------------------------------------------------------------
    def manifest(self, host_key: str, root: str, workdir: str) -> dict[str, list] | None:
        row = self._x(
            "SELECT data FROM manifests WHERE host_key=? AND root=? AND workdir=?",
            (host_key, root, workdir),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def save_manifest(self, host_key: str, root: str, workdir: str, data: dict) -> None:
        self._x(
            "INSERT OR REPLACE INTO manifests(host_key, root, workdir, data) VALUES (?,?,?,?)",
            (host_key, root, workdir, json.dumps(data, separators=(",", ":"))),
        )
