"""Local state in SQLite (WAL): known hosts, run history, sync manifests and the spend ledger.

The ledger holds each cloud host's billable intervals: `compute` from create/start to
stop/destroy at its $/h, `storage` while it is stopped at its disk's $/h. Every host record
vp writes passes through `save_host` / `forget_host`, so a transition is recorded wherever it
happens: a create, start, stop or destroy by vp, or a change vp only observes (`vp ls` finds a
host its watchdog stopped). Times come from `vp.clock.now()`.

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

from vp import clock, paths
from vp.errors import UsageError
from vp.platforms.base import GONE, PENDING, RUNNING, STOPPED, Host

SCHEMA_VERSION = 2  # 2: the ledger table
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
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host_key TEXT NOT NULL,
    project TEXT,
    platform TEXT NOT NULL,
    host_name TEXT,
    kind TEXT NOT NULL,
    rate REAL,
    disk_gb REAL,
    start REAL NOT NULL,
    end REAL
);
CREATE INDEX IF NOT EXISTS ledger_open ON ledger(host_key, end);
CREATE INDEX IF NOT EXISTS ledger_end ON ledger(end);
"""

COMPUTE, STORAGE = "compute", "storage"


@dataclass
class Interval:
    """One billable stretch of one host: `rate` $/h from `start` to `end` (None: still open)."""

    host_key: str
    project: str | None
    platform: str
    host_name: str | None
    kind: str  # compute | storage
    rate: float | None
    disk_gb: float | None
    start: float
    end: float | None = None

    def cost(self, since: float, until: float) -> float:
        """What it billed between `since` and `until` (an open interval runs to `until`)."""
        lo, hi = max(self.start, since), min(self.end if self.end is not None else until, until)
        return max(0.0, hi - lo) / 3600 * (self.rate or 0.0)


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
    status: str = "running"  # running | done | failed | detached | interrupted | preempted
    price: float | None = None
    # Recovery (vp/recover.py): which attempt this is, and the run it re-runs after a
    # preemption (None for a first attempt).
    attempt: int = 1
    parent: str | None = None

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
    """vp's state DB. Safe to share between threads (vp --nodes records hosts and runs from one
    thread per node): each thread talks to SQLite over its own connection, so a transaction
    of one (the ledger's BEGIN ... COMMIT) never meets another's on one connection, and the
    writes of this process go one at a time."""

    def __init__(self, path: Path | None = None):
        self.path = path or paths.ensure_private_dir(paths.state_dir()) / "state.db"
        self._local = threading.local()
        self._lock = threading.RLock()  # one transaction of this process at a time
        if self._x("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            self._x("PRAGMA journal_mode=WAL")
            for statement in filter(str.strip, SCHEMA.split(";")):
                self._x(statement)
            self._x(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._add_columns("runs", {"attempt": "INTEGER DEFAULT 1", "parent": "TEXT"})
        self._manifest_heads()

    def _manifest_heads(self) -> None:
        """A manifest's head (clean, pending, t, stamp: vp/sync/transfer.py) in a table of its
        own, so a warm call reads a few bytes, not megabytes of JSON (nor the overflow pages
        a column stored after them would sit behind). Any write of the manifest row, by this
        vp or by one that knows no heads, drops its head by trigger: a head is never stale,
        at worst missing (then the whole manifest is read)."""
        if self._x("SELECT 1 FROM sqlite_master WHERE name='manifest_heads'").fetchone():
            return
        key = "host_key={0}.host_key AND root={0}.root AND workdir={0}.workdir"
        for statement in (
            "CREATE TABLE IF NOT EXISTS manifest_heads (host_key TEXT, root TEXT, "
            "workdir TEXT, head TEXT NOT NULL, PRIMARY KEY (host_key, root, workdir))",
            "CREATE TRIGGER IF NOT EXISTS manifest_written AFTER INSERT ON manifests BEGIN "
            f"DELETE FROM manifest_heads WHERE {key.format('NEW')}; END",
            "CREATE TRIGGER IF NOT EXISTS manifest_changed AFTER UPDATE ON manifests BEGIN "
            f"DELETE FROM manifest_heads WHERE {key.format('OLD')}; END",
            "CREATE TRIGGER IF NOT EXISTS manifest_gone AFTER DELETE ON manifests BEGIN "
            f"DELETE FROM manifest_heads WHERE {key.format('OLD')}; END",
        ):
            try:
                self._x(statement)
            except sqlite3.OperationalError as exc:  # another vp made it just now
                if "already exists" not in str(exc):
                    raise

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA busy_timeout=30000")
            # WAL without an fsync per commit: a crash of vp loses nothing, a power cut at
            # most the last runs' history; every warm call writes its run record, and waits
            # for none.
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def _add_columns(self, table: str, columns: dict[str, str]) -> None:
        """Columns added after a table was first made, added to an older database in place
        (independent of user_version, which other additions bump)."""
        have = {row[1] for row in self._x(f"PRAGMA table_info({table})").fetchall()}
        for name, decl in columns.items():
            if name not in have:
                try:
                    self._x(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
                except sqlite3.OperationalError as exc:  # another vp added it just now
                    if "duplicate column" not in str(exc):
                        raise

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
    def save_host(self, host: Host, project: str | None, disk_gb: float | None = None) -> None:
        """Record `host` as vp knows it now; a change in what it bills goes into the ledger.
        `disk_gb` (known at create) prices its disk while it is stopped."""
        self._x(
            "INSERT OR REPLACE INTO hosts(key, project, data, updated) VALUES (?,?,?,?)",
            (host.key, project, json.dumps(host.to_dict()), time.time()),
        )
        self.bill(host, project, disk_gb=disk_gb)

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

    def host_projects(self) -> dict[str, str | None]:
        """Host key -> the project vp recorded it for."""
        return dict(self._x("SELECT key, project FROM hosts").fetchall())

    def host(self, key: str) -> Host | None:
        row = self._x("SELECT data FROM hosts WHERE key=?", (key,)).fetchone()
        return Host(**json.loads(row[0])) if row else None

    def forget_host(self, key: str) -> None:
        """The host is gone (destroyed, or found gone): its billing ends now."""
        self._x("DELETE FROM hosts WHERE key=?", (key,))
        self._x("DELETE FROM manifests WHERE host_key=?", (key,))
        self._x("UPDATE ledger SET end=? WHERE host_key=? AND end IS NULL", (clock.now(), key))

    # ledger ----------------------------------------------------------------
    def bill(
        self,
        host: Host,
        project: str | None,
        *,
        disk_gb: float | None = None,
        at: float | None = None,
    ) -> None:
        """Bring the ledger in line with `host.status`: running or pending bills compute at
        its $/h, stopped bills its disk, gone bills nothing. Unchanged: nothing is written."""
        from vp.platforms import PROVIDERS, declaration

        if host.platform not in PROVIDERS:
            return
        decl = declaration(host.platform)
        if decl.kind not in ("vm", "container"):
            return
        billed = {RUNNING: COMPUTE, PENDING: COMPUTE, STOPPED: STORAGE, GONE: None}
        kind = billed.get(host.status, "")
        if kind == "":
            return  # unknown: no evidence of a change
        at = clock.now() if at is None else at
        with self._lock:
            self._ledger_change(host, project, decl, kind, disk_gb, at)

    def _ledger_change(
        self, host: Host, project: str | None, decl: Any, kind: str | None, disk_gb, at: float
    ) -> None:
        """One transaction, under `_lock`: the open interval read and changed together."""
        self._x("BEGIN IMMEDIATE")
        try:
            row = self._x(
                "SELECT id, kind, rate, disk_gb FROM ledger WHERE host_key=? AND end IS NULL"
                " ORDER BY start DESC LIMIT 1",
                (host.key,),
            ).fetchone()
            if disk_gb is None:
                last = self._x(
                    "SELECT disk_gb FROM ledger WHERE host_key=? AND disk_gb IS NOT NULL"
                    " ORDER BY start DESC LIMIT 1",
                    (host.key,),
                ).fetchone()
                disk_gb = last[0] if last else None
            if kind == COMPUTE:
                rate = host.price
            elif decl.storage_price is not None and disk_gb:
                rate = round(decl.storage_price * disk_gb / 730, 6)  # 730 h in a month
            else:
                rate = None
            if row is not None and row[1] == kind:
                if row[2] is None and rate is not None:  # the price arrived after the create
                    self._x(
                        "UPDATE ledger SET rate=?, disk_gb=? WHERE id=?", (rate, disk_gb, row[0])
                    )
                elif row[3] is None and disk_gb is not None:
                    self._x("UPDATE ledger SET disk_gb=? WHERE id=?", (disk_gb, row[0]))
            else:
                if row is not None:
                    self._x("UPDATE ledger SET end=? WHERE id=?", (at, row[0]))
                if kind is not None:
                    self._x(
                        "INSERT INTO ledger(host_key, project, platform, host_name, kind, rate,"
                        " disk_gb, start) VALUES (?,?,?,?,?,?,?,?)",
                        (host.key, project, host.platform, host.name, kind, rate, disk_gb, at),
                    )
            self._x("COMMIT")
        except BaseException:
            self._x("ROLLBACK")
            raise

    def intervals(self, since: float | None = None) -> list[Interval]:
        """Every interval that was open at or after `since` (all of them without it)."""
        cols = [f.name for f in fields(Interval)]
        query = f"SELECT {','.join(cols)} FROM ledger"
        args: list[Any] = []
        if since is not None:
            query += " WHERE end IS NULL OR end >= ?"
            args.append(since)
        return [Interval(*row) for row in self._x(query + " ORDER BY start", args).fetchall()]

    def open_interval(self, key: str) -> Interval | None:
        cols = [f.name for f in fields(Interval)]
        row = self._x(
            f"SELECT {','.join(cols)} FROM ledger WHERE host_key=? AND end IS NULL"
            " ORDER BY start DESC LIMIT 1",
            (key,),
        ).fetchone()
        return Interval(*row) if row else None

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

    def manifest_head(self, host_key: str, root: str, workdir: str) -> dict | None:
        """The manifest's head alone; None when there is no manifest, or it was saved by a
        vp that kept no head (then read the whole one)."""
        row = self._x(
            "SELECT head FROM manifest_heads WHERE host_key=? AND root=? AND workdir=?",
            (host_key, root, workdir),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def save_manifest(
        self, host_key: str, root: str, workdir: str, data: dict, head: dict | None = None
    ) -> None:
        self._x(
            "INSERT OR REPLACE INTO manifests(host_key, root, workdir, data) VALUES (?,?,?,?)",
            (host_key, root, workdir, json.dumps(data, separators=(",", ":"))),
        )
        if head is not None:  # after the row: its trigger dropped the old head
            self._x(
                "INSERT OR REPLACE INTO manifest_heads(host_key, root, workdir, head) "
                "VALUES (?,?,?,?)",
                (host_key, root, workdir, json.dumps(head, separators=(",", ":"))),
            )
