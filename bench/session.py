"""Micro-benchmark of a client connection's frame path: µs per message through
`ClientSession.data_received` (unmasking, framing, UTF-8), without sockets.

The owner parses each message with `wsop.protocol.parse_client_frame` (as the sidecar
does) and answers nothing, so this is the session's share of a message's ~33 µs budget
plus the codec's. Reads are cut the ways TCP cuts them: one message a read, 32 a read,
every message split in two reads, and a 60 KB message arriving in 1 KB reads.

    .venv/bin/python bench/session.py [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from wsop.auth import Identity
from wsop.protocol import parse_client_frame
from wsop.sidecar.client import ClientSession
from wsop.sidecar.outbox import Outbox

MAX = 64 * 1024
DATA = {"text": "hello team, the build is green again", "n": 12, "tags": ["ci", "ok"]}
DIRECT = json.dumps({"type": "direct", "to": 4242, "data": DATA, "id": "c1"}).encode()
BIG = json.dumps({"type": "direct", "to": 1, "data": "x" * 60_000}).encode()


class Owner:
    def __init__(self) -> None:
        self.outbox = Outbox()
        self.count = 0

    def client_frame(self, session: ClientSession, data: Any) -> None:
        parse_client_frame(data, MAX)
        self.count += 1

    def client_gone(self, session: ClientSession) -> None:  # pragma: no cover
        pass

    def client_too_slow(self, session: ClientSession) -> None:  # pragma: no cover
        pass


class NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def session() -> tuple[ClientSession, Owner]:
    owner = Owner()
    protocol = ServerProtocol(state=State.OPEN, max_size=MAX)
    s = ClientSession(protocol, Identity("t", 1), 1, owner)
    s.connection_made(NullTransport())  # type: ignore[arg-type]
    return s, owner


def masked(payload: bytes) -> bytes:
    return Frame(Opcode.TEXT, payload).serialize(mask=True)


def case(chunks: list[bytes], messages: int) -> Callable[[], None]:
    s, owner = session()

    def run() -> None:
        for chunk in chunks:
            s.data_received(chunk)

    run()
    assert owner.count == messages, (owner.count, messages)  # every message got through
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="messages per case")
    n = parser.parse_args().n
    one = masked(DIRECT)
    burst = b"".join(masked(DIRECT) for _ in range(32))
    halves = [part for f in (masked(DIRECT) for _ in range(32)) for part in (f[:40], f[40:])]
    big = masked(BIG)
    big_chunks = [big[i : i + 1024] for i in range(0, len(big), 1024)]
    cases = {
        "parse_client_frame alone (ref)": (lambda: parse_client_frame(DIRECT, MAX), 1),
        "1 message a read": (case([one], 1), 1),
        "32 messages a read": (case([burst], 32), 32),
        "each message in 2 reads": (case(halves, 32), 32),
        "60 KB message in 1 KB reads": (case(big_chunks, 1), 1),
    }
    print(f"{'case':34} {'µs/msg':>8} {'msgs/s':>12}")
    for name, (fn, per_call) in cases.items():
        calls = max(1, n // per_call // 10)
        best = min(timeit.repeat(fn, number=calls, repeat=5)) / (calls * per_call)
        print(f"{name:34} {best * 1e6:8.2f} {1 / best:12,.0f}")
    print(f"(direct frame {len(one)} B, big frame {len(big)} B)")


if __name__ == "__main__":
    main()
