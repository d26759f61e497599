"""Micro-benchmark of the wire codec: µs per parse / encode on one core.

The stack's target is 30K msg/s per core, i.e. ~33 µs for everything a message costs;
this shows how much of that budget the pure codec takes.

    .venv/bin/python bench/protocol.py [--n 200000]
"""

from __future__ import annotations

import argparse
import json
import timeit

from wsop.protocol import (
    ProtocolError,
    encode_ack,
    encode_message,
    parse_client_frame,
)
from wsop.sidecar.peer_codec import TO_OWNER, Deliver, decode_batch, encode_batch, encode_item

DATA = {"text": "hello team, the build is green again", "n": 12, "tags": ["ci", "ok"]}
DIRECT = json.dumps({"type": "direct", "to": 4242, "data": DATA, "id": "c1"})
TEAM = json.dumps({"type": "team", "teams": ["eng", "eng.backend", "oncall"], "data": DATA})
BAD = '{"type":"team","teams":[],"data":1,"id":"c9"}'


def _parse_bad() -> None:
    try:
        parse_client_frame(BAD, 65536)
    except ProtocolError:
        return
    raise AssertionError("the invalid frame was accepted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="iterations per case")
    n = parser.parse_args().n
    frame = encode_message(7, DATA, "c1", 1_700_000_000_000, ["eng", "oncall"])
    items = [Deliver("acme", list(range(i, i + 8)), i, TO_OWNER, frame) for i in range(32)]
    batch = encode_batch([encode_item(item) for item in items])
    cases = {
        "json.loads (reference)": lambda: json.loads(DIRECT),
        "parse direct": lambda: parse_client_frame(DIRECT, 65536),
        "parse team (3 teams)": lambda: parse_client_frame(TEAM, 65536),
        "parse invalid -> ProtocolError": _parse_bad,
        "encode message (team)": lambda: encode_message(
            7, DATA, "c1", 1_700_000_000_000, ("eng", "oncall")
        ),
        "encode ack": lambda: encode_ack("c1", 12),
        "peer batch encode (32 items)": lambda: encode_batch([encode_item(i) for i in items]),
        "peer batch decode (32 items)": lambda: decode_batch(batch),
    }
    print(f"{'case':34} {'µs/op':>8} {'ops/s':>12}")
    for name, fn in cases.items():
        per = min(timeit.repeat(fn, number=n // 10, repeat=5)) / (n // 10)
        print(f"{name:34} {per * 1e6:8.2f} {1 / per:12,.0f}")
    print(f"(frame: {len(DIRECT)} B direct, {len(TEAM)} B team; batch {len(batch)} B)")


if __name__ == "__main__":
    main()
