"""The fuzz corpus: client frames, pre-built and pre-masked, from one seeded generator.

Two pools per tenant. *Safe* frames keep a connection open on a correct server: JSON of
every wrong shape (wrong types, huge numbers, deep nesting, unknown keys, NaN/Infinity
literals, lone surrogates, not-an-object…) in text and binary frames, some of them
valid messages; binary frames of invalid UTF-8 or with flipped payload bits; messages
cut into fragments (code points split across them) with control frames in between;
pings and unsolicited pongs; non-minimal length fields. *Killers* should end it: flipped
header bits, truncated frames (then more frames, or the end of the stream), random
bytes, reserved bits and opcodes, unmasked frames, control frames that are too long or
fragmented, broken fragmentation, bad close frames, invalid UTF-8 in text, oversize
frames — and some clean closes.

Everything is built once from `random.Random(seed)`, so a failing run is reproduced by
its seed; a batch is a slice of safe frames joined with one killer. No I/O here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

from wsop.fuzz.frames import BINARY, CLOSE, CONT, PING, PONG, TEXT, client_frame, close_payload

HONEST_USERS: Final = (1, 2, 3, 4)
"""Well-behaved users: the same ids in every tenant (their payloads name their tenant)."""
FUZZ_USERS_PER_TENANT: Final = 64
HONEST_TEAM: Final = "team-0"
FUZZ_TEAM: Final = "fz"
MAX_FRAME: Final = 64 * 1024
"""The sidecars' default frame limit (`wsop.protocol.DEFAULT_MAX_FRAME_BYTES`)."""


def fuzz_users(tenant_index: int) -> range:
    """Fuzzing users of a tenant: ids no other tenant uses, so a delivered message's
    `from` (set by the server, never by the client) names the sender's tenant."""
    base = 1000 * (tenant_index + 1)
    return range(base, base + FUZZ_USERS_PER_TENANT)


_NUMBERS: Final = (
    "0", "-1", "42", "1.5", "-0.0", "1e308", "1e999", "-1e999", "1e-999", "NaN", "Infinity",
    "-Infinity", str(2**63), str(2**64), "0.1e1", "-", "01", "1.", ".5", "0x10", "+1",
    "123456789012345678901234567890",
)  # fmt: skip
_STRINGS: Final = (
    '"x"', '"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', '"é"', '"\\"', '"\u2028"',
    '"\\uD83D\\uDE00"', '"\x01"', '"-1"', '" 1"', '"fz"', '"{T}"',
)  # fmt: skip
_HUGE: Final = (
    "1" + "0" * 400, "9" * 5000, '"' + "a" * 300 + '"', "-" + "9" * 4300, "1e" + "9" * 400,
)  # fmt: skip
"""Scalars big enough to hit a limit (Python's 4300-digit int parsing, for one): rare,
they would make most of the bytes otherwise."""
_KEYS: Final = ("type", "to", "teams", "data", "id", "x", "", "__proto__", "type ", "TO")


class Shapes:
    """Random JSON *text* (not `json.dumps`: it must be able to lie)."""

    def __init__(self, rng: random.Random, own: range) -> None:
        self.rng = rng
        self.own = own

    def scalar(self) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.02:
            return rng.choice(_HUGE)
        if pick < 0.35:
            return rng.choice(_NUMBERS)
        if pick < 0.7:
            return rng.choice(_STRINGS)
        if pick < 0.9:
            return rng.choice(("true", "false", "null"))
        return (
            '"'
            + "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(8))
            .replace("\\", "/")
            .replace('"', "'")
            + '"'
        )

    def value(self, depth: int = 0) -> str:
        rng = self.rng
        pick = rng.random()
        if depth > 3 or pick < 0.5:
            return self.scalar()
        if pick < 0.53 and depth == 0:  # deep nesting around the limits (ours, the codec's)
            d = rng.choice((20, 99, 100, 101, 500, 990, 1000, 1100, 5000))
            return "[" * d + "]" * d if rng.random() < 0.5 else '{"a":' * d + "1" + "}" * d
        if pick < 0.8:
            return "[" + ",".join(self.value(depth + 1) for _ in range(rng.randrange(5))) + "]"
        items = (
            f"{self.key()}:{self.value(depth + 1)}" for _ in range(rng.randrange(5))
        )  # fmt: skip
        return "{" + ",".join(items) + "}"

    def key(self) -> str:
        return f'"{self.rng.choice(_KEYS)}"'

    def user(self) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.4:
            return str(rng.choice(self.own))
        if pick < 0.55:
            return str(rng.choice(HONEST_USERS))
        if pick < 0.65:
            return f'"{rng.choice(self.own)}"'  # a digit string is the same user
        if pick < 0.75:
            return str(rng.randrange(5000, 10**6))  # nobody online
        return self.value()

    def teams(self) -> str:
        rng = self.rng
        options = (
            f'["{FUZZ_TEAM}"]', f'["{HONEST_TEAM}"]', '["nope"]', "[]", f'"{FUZZ_TEAM}"',
            "[1]", f'["{FUZZ_TEAM}","{FUZZ_TEAM}"]', "[" + ",".join(['"t"'] * 65) + "]",
            '["a{b}"]', '["' + "t" * 129 + '"]', f'["{FUZZ_TEAM}","{HONEST_TEAM}"]',
        )  # fmt: skip
        return rng.choice(options) if rng.random() < 0.9 else self.value()

    def message(self) -> str:
        """One client message, sometimes valid, mostly not."""
        rng = self.rng
        pick = rng.random()
        if pick < 0.08:  # not an object, or not JSON at all
            return rng.choice(
                ("[]", '"direct"', "1", "null", "", "   ", "{", "}{", '{"a":1}{"b":2}',
                 "{'type':'direct'}", self.value(), "\ufeff{}", '{"type":"direct",}')
            )  # fmt: skip
        fields = []
        kind = rng.choice(('"direct"', '"team"', '"direct"', '"team"', self.scalar()))
        if rng.random() < 0.95:
            fields.append(f'"type":{kind}')
        if "direct" in kind or rng.random() < 0.1:
            fields.append(f'"to":{self.user()}')
        if "team" in kind or rng.random() < 0.1:
            fields.append(f'"teams":{self.teams()}')
        if rng.random() < 0.9:
            fields.append(f'"data":{self.value()}')
        if rng.random() < 0.7:
            ident = rng.choice(('"f1"', "7", '"' + "i" * 129 + '"', "null", '"\\ud800"'))
            fields.append(f'"id":{ident}')
        for _ in range(rng.choice((0, 0, 1, 3))):
            fields.append(f"{self.key()}:{self.value()}")  # unknown (or repeated) keys
        rng.shuffle(fields)
        return "{" + ",".join(fields) + "}"


def flip_bits(data: bytes, rng: random.Random, start: int, end: int, flips: int = 1) -> bytes:
    """`data` with `flips` random bits flipped in [start, end)."""
    out = bytearray(data)
    for _ in range(flips):
        if end > start:
            pos = rng.randrange(start, end)
            out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def header_size(frame: bytes) -> int:
    """Length of a client frame's header, mask key included."""
    n = frame[1] & 0x7F
    return (2 if n < 126 else 4 if n == 126 else 10) + (4 if frame[1] & 0x80 else 0)


@dataclass
class Corpus:
    """One tenant's pre-built frames (see the module docstring)."""

    safe: list[bytes] = field(default_factory=list)
    killers: list[tuple[str, bytes]] = field(default_factory=list)


class Builder:
    """Builds a tenant's `Corpus`: `safe_frame` and `killer` draw one of each."""

    def __init__(self, rng: random.Random, own: range) -> None:
        self.rng = rng
        self.shapes = Shapes(rng, own)

    def frame(self, opcode: int, payload: bytes, fin: bool = True, **kw: object) -> bytes:
        width = self.rng.choice((0, 0, 0, 0, 16, 64)) if len(payload) < 1 << 16 else 64
        return client_frame(opcode, payload, fin=fin, key=self.rng.randbytes(4), width=width, **kw)  # type: ignore[arg-type]

    def payload(self) -> bytes:
        text = self.shapes.message()
        return text.encode("utf-8", "surrogatepass")[:MAX_FRAME]

    def control(self) -> bytes:
        rng = self.rng
        return self.frame(rng.choice((PING, PONG)), rng.randbytes(rng.choice((0, 1, 16, 125))))

    def fragmented(self, payload: bytes, opcode: int) -> bytes:
        rng = self.rng
        cuts = sorted(rng.randrange(len(payload) + 1) for _ in range(rng.randrange(1, 4)))
        parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        out = []
        for i, part in enumerate(parts):
            if i and rng.random() < 0.3:
                out.append(self.control())  # control frames may sit between fragments
            out.append(self.frame(CONT if i else opcode, part, fin=i == len(parts) - 1))
        return b"".join(out)

    def safe_frame(self) -> bytes:
        rng = self.rng
        pick = rng.random()
        if pick < 0.1:
            return self.control()
        payload = self.payload()
        if pick < 0.6:
            return self.frame(TEXT, payload)
        if pick < 0.75:
            return self.frame(BINARY, payload)
        if pick < 0.82:  # invalid UTF-8 in a binary frame: an error frame, not a close
            bad = bytearray(payload or b"{}")
            bad.insert(rng.randrange(len(bad) + 1), rng.choice((0xFF, 0xC0, 0xED, 0x80)))
            return self.frame(BINARY, bytes(bad))
        if pick < 0.87:
            frame = self.frame(BINARY, payload)
            return flip_bits(frame, rng, header_size(frame), len(frame), rng.randrange(1, 4))
        if pick < 0.998:
            return self.fragmented(payload, TEXT if rng.random() < 0.7 else BINARY)
        big = b'{"type":"direct","to":1,"data":"' + b"x" * rng.randrange(10_000, 60_000) + b'"}'
        return self.frame(rng.choice((TEXT, BINARY)), big)

    def killer(self) -> tuple[str, bytes]:
        """(kind, bytes) of something a correct server closes on (or a clean close)."""
        rng = self.rng
        valid = self.frame(TEXT, self.payload())
        kind = rng.choice(_KILLERS)
        if kind == "header-flip":
            data = flip_bits(valid, rng, 0, 2, rng.randrange(1, 3))
        elif kind == "length-flip":
            data = flip_bits(valid, rng, 1, header_size(valid) - 4 or 2)
        elif kind == "text-payload-flip":
            data = flip_bits(valid, rng, header_size(valid), len(valid), rng.randrange(1, 8))
        elif kind == "truncated":  # the server is out of step with the stream from here
            data = valid[: rng.randrange(1, len(valid))] + self.safe_frame() + self.safe_frame()
        elif kind == "truncated-eof":  # then the stream ends (the batch's EOF follows)
            data = valid[: rng.randrange(1, len(valid))]
        elif kind == "random-bytes":
            data = rng.randbytes(rng.randrange(1, 300))
        elif kind == "rsv":
            data = self.frame(rng.choice((TEXT, BINARY, PING)), b"{}", rsv=rng.randrange(1, 8))
        elif kind == "reserved-opcode":
            data = self.frame(rng.choice((3, 4, 5, 6, 7, 11, 12, 13, 14, 15)), b"{}")
        elif kind == "unmasked":
            data = client_frame(TEXT, self.payload(), mask=False)
        elif kind == "control-too-long":
            data = self.frame(rng.choice((PING, PONG, CLOSE)), rng.randbytes(126))
        elif kind == "control-fragmented":
            data = self.frame(rng.choice((PING, PONG, CLOSE)), b"", fin=False)
        elif kind == "orphan-continuation":
            data = self.frame(CONT, b"{}")
        elif kind == "data-in-fragmented":
            data = self.frame(TEXT, b"{", fin=False) + self.frame(BINARY, b"}")
        elif kind == "bad-close":
            code = rng.choice((0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535))
            data = self.frame(CLOSE, rng.choice((close_payload(code), b"\x03")))
        elif kind == "close-bad-utf8":
            data = self.frame(CLOSE, close_payload(1000, b"bye \xff"))
        elif kind == "close":
            code = rng.choice((1000, 1001, 1003, 1008, 3000, 4999))
            data = self.frame(CLOSE, close_payload(code, b"ok"))
        elif kind == "text-bad-utf8":
            data = self.frame(TEXT, b'{"type":"direct","to":1,"data":"\xed\xa0\x80"}')
        elif kind == "text-bad-utf8-split":
            data = self.frame(TEXT, b'{"d":"\xe2\x82', fin=False) + self.frame(CONT, b'("}')
        elif kind == "oversize":
            size = rng.choice((MAX_FRAME + 1, 1 << 20, (1 << 63) + 5))
            data = client_frame(rng.choice((TEXT, BINARY)), b"x" * 100, length=size, width=64)
        else:  # pragma: no cover
            raise AssertionError(kind)
        return kind, data


_KILLERS: Final = (
    "header-flip", "length-flip", "text-payload-flip", "truncated", "truncated-eof",
    "random-bytes", "rsv", "reserved-opcode", "unmasked", "control-too-long",
    "control-fragmented", "orphan-continuation", "data-in-fragmented", "bad-close",
    "close-bad-utf8", "close", "text-bad-utf8", "text-bad-utf8-split", "oversize",
)  # fmt: skip


def build_corpus(seed: int, tenant_index: int, safe: int = 3000, killers: int = 1000) -> Corpus:
    """A tenant's corpus, the same for the same (seed, tenant_index)."""
    builder = Builder(random.Random(f"{seed}/{tenant_index}"), fuzz_users(tenant_index))
    corpus = Corpus()
    corpus.safe = [builder.safe_frame() for _ in range(safe)]
    corpus.killers = [builder.killer() for _ in range(killers)]
    return corpus


def cut(data: bytes, rng: random.Random, pieces: int) -> list[bytes]:
    """`data` in up to `pieces` chunks cut at random offsets (anywhere: inside headers,
    mask keys, payloads), for writes that split the stream where TCP might."""
    if pieces <= 1 or len(data) < 2:
        return [data]
    cuts = sorted(set(rng.randrange(1, len(data)) for _ in range(pieces - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
