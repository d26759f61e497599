"""`quiet_gc`: what the servers and load workers call once they are ready."""

from __future__ import annotations

import subprocess
import sys


def test_quiet_gc_freezes_what_is_alive_and_spaces_young_collections() -> None:
    # in a child: freezing this test process would outlive the test
    code = (
        "import gc\n"
        "from wsop.gcpolicy import SERVER_YOUNG, quiet_gc\n"
        "assert gc.get_freeze_count() == 0\n"
        "quiet_gc(SERVER_YOUNG)\n"
        "print(gc.get_threshold()[0], gc.get_freeze_count() > 1000)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["20000", "True"]
