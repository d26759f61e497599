"""`make demo` (examples/demo.py --quick): every command it shows is followed by what
that command printed, it says how to stop what it leaves running, and it leaves no
temporary file and no stack behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_demo_shows_real_output_and_cleans_up(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--quick"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    lines = done.stdout.splitlines()
    shown = [i for i, line in enumerate(lines) if line.startswith("$ wsop ")]
    assert len(shown) >= 10
    for i in shown:
        following = lines[i + 1] if i + 1 < len(lines) else ""
        assert following.strip() and not following.startswith(("$ ", "──")), lines[i]
        if "--json" in lines[i].split():
            json.loads(following)  # a --json command is followed by its JSON
    commands = [lines[i] for i in shown]
    assert any(c.startswith("$ wsop token ") for c in commands)
    assert commands[-1] == "$ wsop down"
    assert done.stdout.rstrip().splitlines()[-3:-1] == ["  wsop redis stop", ""]
    assert "Still running: the embedded Redis" in done.stdout
    assert list(tmp.iterdir()) == []  # no temporary file left (loadtest's work dir included)
    assert not (Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").exists()
