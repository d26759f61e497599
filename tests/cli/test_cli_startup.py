"""`wsop` starts fast because each command imports only its own world (wsop.cli.lazy),
and its help reads like any Unix tool's (wsop.cli.helpfmt)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.conftest import ROOT, run_wsop
from wsop.cli.main import COMMANDS, app

HEAVY = ("numpy", "redis", "websockets", "locust", "gevent", "kubernetes", "matplotlib")
runner = CliRunner()


def modules_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has loaded after running `code`."""
    probe = (
        "import atexit, json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "atexit.register(lambda: sys.__stderr__.write('MODULES ' + json.dumps("
        "sorted(m for m in heavy if m in sys.modules)) + '\\n'))\n" + code
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    line = [x for x in done.stderr.splitlines() if x.startswith("MODULES ")]
    assert line, done.stderr
    return json.loads(line[-1].removeprefix("MODULES "))


def test_importing_the_cli_imports_no_heavy_library() -> None:
    assert modules_after("import wsop.cli.main") == []


@pytest.mark.parametrize("argv", [["--version"], ["--help"], []])
def test_version_and_help_import_no_command(argv: list[str]) -> None:
    code = f"sys.argv = ['wsop', *{argv!r}]\nfrom wsop.cli.main import main\nmain()\n"
    assert modules_after(code) == []


def test_a_command_pays_only_for_its_own_imports() -> None:
    code = "sys.argv = ['wsop', 'status', '--help']\nfrom wsop.cli.main import main\nmain()\n"
    assert modules_after(code) == []  # the local stack's CLI needs none of them to start


def test_root_help_lists_commands_in_the_order_of_the_work() -> None:
    result = run_wsop("--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    panels = [m.group(1).strip() for m in re.finditer(r"╭─ ([^─]+) ─", out)]
    assert panels == [
        "Options",
        "Tenant access (ACL bitmaps)",
        "Placement",
        "Local stack and servers",
        "Kubernetes and live moves",
        "Load tests",
    ]
    listed = re.findall(r"^│ (\w+) ", out, flags=re.M)
    assert listed == [c.name for c in COMMANDS]
    assert "Usage: wsop " in out


def test_no_command_prints_the_help_and_nothing_else() -> None:
    for args in ((), ("seed",)):
        result = run_wsop(*args)
        assert result.returncode == 2 and "Usage: wsop" in result.stdout
        assert result.stderr == ""  # (it used to get a stray blank line)


def test_version() -> None:
    result = run_wsop("--version")
    assert result.returncode == 0 and re.fullmatch(r"wsop \d+\.\d+\.\d+\n", result.stdout)


@pytest.mark.parametrize("spec", COMMANDS, ids=lambda c: c.name)
def test_every_command_loads_and_its_help_uses_standard_metavars(spec) -> None:
    result = runner.invoke(app, [spec.name, "--help"])
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(bool|str|int|float|path|list\[\w+\])>", result.stdout)
    assert "{" + spec.name not in result.stdout
    assert len(spec.summary) <= 80 and "\n" not in spec.summary


def test_usage_and_types_in_click_style() -> None:
    out = runner.invoke(app, ["seed", "load", "--help"]).stdout
    assert "Usage: wsop seed load [OPTIONS] MEMBERS" in " ".join(out.split())
    assert re.search(r"--max-users\s+INTEGER", out)
    assert re.search(r"--json\s+Print one JSON", out)  # a flag shows no type
    out = runner.invoke(app, ["online", "add", "--help"]).stdout
    assert "USERS..." in out


def test_help_paragraphs_are_not_cut_mid_sentence() -> None:
    out = run_wsop("drain", "--help", env={"COLUMNS": "200"}).stdout
    line = next(x for x in out.splitlines() if "Ask a sidecar" in x)
    assert "then wait until it holds none" in line
