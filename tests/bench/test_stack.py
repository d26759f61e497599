"""bench/stack.py --quick for real: a private stack through its three rows and the idle
figure, every ledger exact (nothing lost, refused or unacked), no process left behind.
No performance figure is checked (the machine is shared; docs/benchmarks.md has them):
this is what would have caught the private stack's quota refusing the bench's own
messages, or a split of the bench that broke an import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_stack_bench_loses_nothing_and_reports_every_row() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "stack.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    rows = {r["row"][:3]: r for r in doc["rows"]}
    assert set(rows) == {"(a)", "(b)", "(c)"}
    for name, row in rows.items():
        ledger = row["ledger"]
        assert ledger["sent"] > 0, name
        assert (ledger["lost"], ledger["errors"], ledger["unacked"]) == (0, 0, 0), (name, ledger)
        assert ledger["delivered"] == ledger["expected_deliveries"], (name, ledger)
    assert rows["(c)"]["ledger"]["expected_deliveries"] == 50 * rows["(c)"]["ledger"]["acked"]
    assert doc["idle"]["connections"] > 0 and doc["idle"]["total_bytes_per_conn"] > 0
    assert {t["target"] for t in doc["targets"] if "nothing lost" in t["target"]} == {
        f"{r} nothing lost, no errors" for r in rows
    }
