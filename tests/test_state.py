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
