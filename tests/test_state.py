"""The state DB under concurrency: many `vp` processes start at the same instant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, time
from pathlib import Path
from vp.state import RunRecord, State
start = float(sys.argv[2])
while time.time() < start:
    pass
s = State(Path(sys.argv[1]))
s.add_run(RunRecord(id=sys.argv[3], project="p", host_key="local:local", platform="local",
                    host_name="local", command="true", workdir="/w", started=time.time()))
s.finish_run(sys.argv[3], 0, "done")
"""


def test_many_processes_create_and_write_the_db_at_once(tmp_path: Path) -> None:
    import time

    db = tmp_path / "state.db"
    start = time.time() + 1.5  # all children past their imports, then go together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), str(start), f"run{i:02d}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(12)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 12, errors
    from vp.state import State

    runs = State(db).runs(limit=100)
    assert sorted(r.id for r in runs) == [f"run{i:02d}" for i in range(12)]
    assert all(r.exit_code == 0 for r in runs)


def test_one_state_used_from_many_threads_at_once(tmp_path: Path) -> None:
    """vp --nodes records hosts and runs from one thread per node through one State: a
    ledger transaction of one thread must never meet another's ("cannot start a transaction
    within a transaction")."""
    import threading

    from vp.platforms.base import Host
    from vp.state import RunRecord, State

    state = State(tmp_path / "state.db")
    go = threading.Barrier(8)
    errors: list[BaseException] = []

    def node(i: int) -> None:
        try:
            go.wait(timeout=60)
            for step in range(40):
                status = "running" if step % 2 == 0 else "stopped"
                host = Host(id=str(i), name=f"vp-p-{i}", platform="vast", status=status)
                state.save_host(host, "p", disk_gb=10)
                run_id = f"r{i}-{step}"
                state.add_run(
                    RunRecord(id=run_id, project="p", host_key=host.key, platform="vast",
                              host_name=host.name, command="true", workdir="/w", started=0.0)
                )  # fmt: skip
                state.finish_run(run_id, 0, "done")
                state.hosts("p")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(state.runs("p", limit=1000)) == 8 * 40
    # Each host's ledger alternates compute/storage with exactly one interval open.
    for i in range(8):
        spans = [s for s in state.intervals() if s.host_key == f"vast:{i}"]
        assert len(spans) == 40 and [s.end is None for s in spans].count(True) == 1
