"""How long `wsop` takes to start, against `python -c "import typer"` in the same run.

Every command is a whole process, timed from outside (fork to exit, output to
/dev/null). Rounds interleave the commands, so a machine that slows down mid-run
slows every command alike; each ratio is the median of the per-round ratios to the
baseline of the same round. The target: `wsop --version` and `wsop --help` within 5x
the baseline (typer is the floor: the CLI cannot start without it).

    .venv/bin/python bench/startup.py [--runs 21] [--root DIR] [--json]

`--root DIR` times another checkout's `wsop` (e.g. an older commit unpacked with
`git archive`) with this interpreter, for before/after numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import machine_note  # noqa: E402

BASELINE = "python -c 'import typer'"
COMMANDS = {
    BASELINE: ["-c", "import typer"],
    "python -c pass": ["-c", "pass"],
    "wsop --version": ["-m", "wsop.cli.main", "--version"],
    "wsop --help": ["-m", "wsop.cli.main", "--help"],
    "wsop status --help": ["-m", "wsop.cli.main", "status", "--help"],
    "wsop token --help": ["-m", "wsop.cli.main", "token", "--help"],
    "wsop ring locate --nodes a,b 1": ["-m", "wsop.cli.main", "ring", "locate", "--nodes", "a,b",
                                       "1"],
}  # fmt: skip
TARGET = 5.0


def time_once(argv: list[str], root: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(root), "WSOP_STATE_DIR": "/nonexistent-wsop-bench"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *argv], cwd=root, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed: {done.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def measure(root: Path, runs: int) -> dict[str, dict[str, float]]:
    for argv in COMMANDS.values():  # warm the page cache and .pyc files first
        time_once(argv, root)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, argv in COMMANDS.items():
            times[name].append(time_once(argv, root))
    base = times[BASELINE]
    out = {}
    for name, samples in times.items():
        ratios = [t / b for t, b in zip(samples, base, strict=True)]
        out[name] = {
            "median_ms": round(statistics.median(samples) * 1000, 1),
            "min_ms": round(min(samples) * 1000, 1),
            "max_ms": round(max(samples) * 1000, 1),
            "x_typer": round(statistics.median(ratios), 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="rounds (each runs every command)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--json", action="store_true", help="one JSON document")
    args = parser.parse_args()
    results = measure(args.root.resolve(), args.runs)
    if args.json:
        print(json.dumps({"root": str(args.root), "runs": args.runs, "results": results}))
        return
    print(f"# wsop start-up, {args.runs} interleaved rounds · {machine_note()}")
    print(f"# root {args.root.resolve()}")
    print("| command | median ms | min ms | max ms | × typer import |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        mark = ""
        if name in ("wsop --version", "wsop --help"):
            mark = " ✓" if r["x_typer"] <= TARGET else f" ✗ (target ≤ {TARGET:g}×)"
        print(
            f"| `{name}` | {r['median_ms']} | {r['min_ms']} | {r['max_ms']} | "
            f"{r['x_typer']}{mark} |"
        )


if __name__ == "__main__":
    main()
