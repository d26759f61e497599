"""Fuzzing a real stack (2 sidecars behind the LB) while honest clients keep talking.

At least 10^5 mutated frames (`wsop.fuzz.mutate`: bit flips and truncations of valid
frames, random bytes, random splits of the stream, JSON of every wrong shape, invalid
UTF-8 in text and binary frames, bad close frames…) over two tenants, through the LB and
straight to each sidecar, from 24 connections at a time that reconnect whenever a
server closes one. Meanwhile 8 honest clients (4 per tenant, on the LB and on each
sidecar) exchange direct and team messages. The run must leave:

- every server process running, and no "Traceback" in any server's log;
- 0 cross-tenant deliveries (honest payloads name their tenant; fuzz senders' ids are
  per tenant, and `from` is set by the server);
- every honest message acked with `delivered` = its recipients, and received exactly
  once by each of them (nothing missing, duplicated or stray);
- no close code that only a server fault can explain (1011 internal error, 1012 a
  sidecar that vanished behind the LB), and no masked server frame.

The seed is fixed (printed with the summary): a failure reproduces with
`bench/fuzz.py --frames 100000 --seed N`. The long run is `bench/fuzz.py --frames
2000000` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from wsop.fuzz.campaign import run_on_new_stack
from wsop.fuzz.report import Config

FRAMES = 100_000


def test_fuzzing_crashes_nothing_leaks_nothing_and_loses_no_honest_message(
    redis_server: str, tmp_path: Path
) -> None:
    config = Config(frames=FRAMES, max_seconds=90)
    report = run_on_new_stack(config, redis_server, tmp_path)
    summary = report.as_dict()
    print(json.dumps({k: summary[k] for k in ("seed", "frames", "seconds", "frames_per_s",
                                              "closes", "errors", "honest")}))  # fmt: skip
    assert report.problems() == [], f"seed {config.seed}: see {tmp_path} for the server logs"
    assert summary["frames"] >= FRAMES
    assert summary["honest"]["delivered"] == summary["honest"]["expected_deliveries"] > 0
