"""RFC 6455 rules as probes: the bytes a client sends, and what any conforming server
must do with them. Used by tests/fuzz/test_rfc6455.py against three servers.

Each `Rule` names its section and paraphrases the requirement. `close` is the code of
the server's close frame: the failure code for a violation, the echo of our own close
frame for close rules, 1000 (the echo of the probe's final close) for data the server
must accept. `survives`: the connection must outlive `data` (the probe's ping after it
is answered). `replies`: data frames the server sends in answer to `data`, one per
message — an echo from websockets' server, a JSON error frame from wsop (the messages
here are not JSON on purpose: always exactly one answer, never a delivery).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wsop.fuzz.frames import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    client_frame,
    close_payload,
)

MAX_FRAME = 64 * 1024  # what the three servers are configured to take


@dataclass(frozen=True)
class Rule:
    id: str
    says: str
    data: bytes
    close: int
    survives: bool = False
    replies: int = 0
    pongs: tuple[bytes, ...] = ()
    echo: bytes | None = None
    """The exact close payload the server must send back (close rules)."""
    probe: dict[str, object] = field(default_factory=dict)
    """Extra `wsop.fuzz.raw.probe` arguments (early, chunk, answer_close)."""
    reference_bug: str = ""
    """Why websockets' own server gets this rule wrong (its test is a strict xfail)."""


def f(opcode: int, payload: bytes = b"", **kw: object) -> bytes:
    return client_frame(opcode, payload, **kw)  # type: ignore[arg-type]


def ok(rule_id: str, says: str, data: bytes, replies: int = 1, **kw: object) -> Rule:
    """A rule for data the server must take: connection open, one reply per message."""
    return Rule(rule_id, says, data, 1000, survives=True, replies=replies, **kw)  # type: ignore[arg-type]


def fails(rule_id: str, says: str, data: bytes, code: int = 1002, **kw: object) -> Rule:
    return Rule(rule_id, says, data, code, **kw)  # type: ignore[arg-type]


def echoed(code: int, reason: bytes = b"bye", label: str = "") -> Rule:
    payload = close_payload(code, reason)
    return Rule(
        f"7.4-close-{code}-echoed{label}",
        "a close frame with a valid code is answered with a close frame (§5.5.1); "
        "websockets and wsop send the same code and reason back",
        f(CLOSE, payload),
        code,
        echo=payload,
    )


def bad_close_code(code: int) -> Rule:
    return fails(
        f"7.4-close-code-{code}-invalid",
        "codes outside 1000-1003, 1007-1014, 3000-4999 (and 1004/1005/1006/1015, which are "
        "never sent) are a protocol error (§7.4.1, §7.4.2)",
        f(CLOSE, close_payload(code)),
    )


def _rules() -> list[Rule]:
    emoji = "😀".encode()
    return [
        # §5.1 / §5.2 framing -----------------------------------------------------------
        fails("5.1-unmasked", "a client frame must be masked; else 1002 (§5.1)",
              f(TEXT, b"hello", mask=False)),
        fails("5.2-rsv1", "reserved bits must be 0 without an extension (§5.2)",
              f(TEXT, b"hello", rsv=4)),
        fails("5.2-rsv2", "(as above)", f(TEXT, b"hello", rsv=2)),
        fails("5.2-rsv3", "(as above)", f(TEXT, b"hello", rsv=1)),
        fails("5.2-rsv-on-ping", "(as above, on a control frame)", f(PING, b"p", rsv=4)),
        fails("5.2-rsv-on-continuation", "(as above, on a continuation frame)",
              f(TEXT, b"he", fin=False) + f(CONT, b"llo", rsv=2)),
        fails("5.2-opcode-3", "reserved non-control opcodes fail the connection (§5.2)",
              f(3, b"hello")),
        fails("5.2-opcode-7", "(as above)", f(7, b"hello")),
        fails("5.2-opcode-B", "reserved control opcodes fail the connection (§5.2)",
              f(0xB, b"hello")),
        fails("5.2-opcode-F", "(as above)", f(0xF, b"")),
        ok("5.2-length-7", "lengths up to 125 fit the 7-bit field (§5.2)", f(TEXT, b"x" * 125)),
        ok("5.2-length-16", "126-65535 bytes use the 16-bit length (§5.2)", f(TEXT, b"x" * 200)),
        ok("5.2-length-64", "larger frames use the 64-bit length; here the largest the "
           "servers take (64 KiB)", f(TEXT, b"x" * MAX_FRAME)),
        ok("5.2-length-16-wider-than-needed", "a sender must use the minimal length field; "
           "receivers (websockets, and so wsop) accept a wider one", f(TEXT, b"hi", width=16)),
        ok("5.2-length-64-wider-than-needed", "(as above)", f(TEXT, b"hi", width=64)),
        fails("5.2-length-64-msb-set", "the 64-bit length's top bit must be 0 (§5.2): "
              "a broken frame, not a big one, so 1002 (§7.4.1), not the size's 1009",
              f(TEXT, b"x" * 20, width=64, length=(1 << 63) | 20), 1002,
              reference_bug="websockets 17.4 checks its size limit first and closes 1009"),
        ok("5.3-zero-mask-key", "a zero masking key is still a masked frame (§5.3)",
           f(TEXT, b"hello", key=bytes(4))),
        fails("10.4-over-the-size-limit", "a frame over the server's limit: 1009 (§7.4.1, "
              "§10.4), from its header alone", f(BINARY, b"x" * 100, length=1 << 20), 1009),
        fails("10.4-fragments-over-the-size-limit", "(as above, for a fragmented message)",
              f(TEXT, b"x" * 40_000, fin=False) + f(CONT, b"x" * 40_000), 1009),
        # §5.4 fragmentation --------------------------------------------------------------
        fails("5.4-continuation-without-start", "a continuation frame needs a message "
              "to continue (§5.4)", f(CONT, b"hello")),
        fails("5.4-continuation-after-final", "(as above, after a complete message, which "
              "may be answered first)", f(TEXT, b"hello") + f(CONT, b"more"), replies=1),
        fails("5.4-text-inside-fragmented", "a new data frame inside a fragmented message "
              "(§5.4)", f(TEXT, b"he", fin=False) + f(TEXT, b"llo")),
        fails("5.4-binary-inside-fragmented", "(as above)",
              f(BINARY, b"he", fin=False) + f(BINARY, b"llo")),
        ok("5.4-fragmented-message", "fragments make one message (§5.4)",
           f(TEXT, b"he", fin=False) + f(CONT, b"l", fin=False) + f(CONT, b"lo")),
        ok("5.4-empty-fragments", "(empty fragments included)",
           f(TEXT, b"", fin=False) + f(CONT, b"", fin=False) + f(CONT, b"x")),
        ok("5.4-many-fragments", "(100 one-byte fragments)",
           f(BINARY, b"x", fin=False) + f(CONT, b"x", fin=False) * 98 + f(CONT, b"x")),
        ok("5.4-ping-between-fragments", "control frames may be injected between fragments "
           "and are answered at once (§5.4)",
           f(TEXT, b"he", fin=False) + f(PING, b"p1") + f(CONT, b"llo"), 2, pongs=(b"p1",)),
        ok("5.4-pong-between-fragments", "(as above, an unsolicited pong)",
           f(TEXT, b"he", fin=False) + f(PONG, b"p1") + f(CONT, b"llo")),
        fails("5.4-close-between-fragments", "control frames may come between fragments "
              "(§5.4) and nothing makes an unfinished message at the close an error, but "
              "websockets' protocol fails it with 1002 'incomplete fragmented message', and "
              "wsop runs that protocol: stricter than the RFC, recorded as is",
              f(TEXT, b"he", fin=False) + f(CLOSE, close_payload(1000, b"bye"))),
        # §5.5 control frames -------------------------------------------------------------
        fails("5.5-ping-126-bytes", "control frames carry at most 125 bytes (§5.5)",
              f(PING, b"p" * 126)),
        fails("5.5-pong-126-bytes", "(as above)", f(PONG, b"p" * 126)),
        fails("5.5-close-126-bytes", "(as above)", f(CLOSE, close_payload(1000, b"r" * 124))),
        fails("5.5-ping-fragmented", "control frames must not be fragmented (§5.5)",
              f(PING, b"p", fin=False) + f(CONT, b"p")),
        fails("5.5-close-fragmented", "(as above)", f(CLOSE, b"\x03", fin=False)),
        ok("5.5.2-ping-pong-same-payload", "a ping is answered by a pong with the same "
           "payload (§5.5.2, §5.5.3)", f(PING, b"hello"), 1, pongs=(b"hello",)),
        ok("5.5.2-ping-125-bytes", "(the largest payload)", f(PING, bytes(range(125))), 1,
           pongs=(bytes(range(125)),)),
        ok("5.5.2-ping-empty", "(an empty payload)", f(PING), 1, pongs=(b"",)),
        ok("5.5.2-pings-answered-in-order", "(several, each answered)",
           f(PING, b"1") + f(PING, b"2") + f(PING, b"3"), 3, pongs=(b"1", b"2", b"3")),
        ok("5.5.3-unsolicited-pong", "an unsolicited pong is ignored (§5.5.3)",
           f(PONG, b"hello"), 0),
        # §8.1 UTF-8 ----------------------------------------------------------------------
        fails("8.1-invalid-utf8-text", "a text message must be valid UTF-8, else 1007 (§8.1)",
              f(TEXT, b"hello \xff"), 1007),
        fails("8.1-overlong-encoding", "(overlong encodings are invalid)",
              f(TEXT, b"\xc0\xaf"), 1007),
        fails("8.1-utf16-surrogate", "(surrogates are invalid)", f(TEXT, b"\xed\xa0\x80"), 1007),
        fails("8.1-above-u10ffff", "(code points above U+10FFFF are invalid)",
              f(TEXT, b"\xf4\x90\x80\x80"), 1007),
        fails("8.1-truncated-code-point", "(a message ending inside a code point)",
              f(TEXT, b"caf\xc3"), 1007),
        fails("8.1-invalid-in-a-later-fragment", "(the whole message is checked)",
              f(TEXT, b"hello", fin=False) + f(CONT, b" \xff"), 1007),
        fails("8.1-fragmented-ending-inside-code-point", "(the last fragment cuts a code point)",
              f(TEXT, b"caf", fin=False) + f(CONT, b"\xc3"), 1007),
        ok("8.1-code-point-split-across-fragments", "a code point may be split across "
           "fragments: only the message must be valid (§8.1)",
           f(TEXT, b"caf\xc3", fin=False) + f(CONT, b"\xa9")),
        ok("8.1-4-byte-code-point-in-3-fragments", "(a 4-byte one over three fragments, a "
           "ping in between)", f(TEXT, emoji[:1], fin=False) + f(PING, b"p") +
           f(CONT, emoji[1:3], fin=False) + f(CONT, emoji[3:]), 2, pongs=(b"p",)),
        ok("8.1-binary-is-not-utf8", "binary frames carry any bytes (§5.6)",
           f(BINARY, b"\xff\xfe\xed\xa0\x80")),
        # §5.5.1 / §7 closing -------------------------------------------------------------
        *(echoed(code) for code in (1000, 1001, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999)),
        Rule("7.1.5-close-without-code", "a close frame with no payload is answered; the "
             "answer has no code either (1005: none received, §7.1.5)", f(CLOSE), 1005, echo=b""),
        echoed(1000, "àçé ok".encode(), "-utf8-reason"),
        *(bad_close_code(c) for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)),
        fails("5.5.1-close-payload-1-byte", "a close payload holds a 2-byte code or "
              "nothing (§5.5.1)", f(CLOSE, b"\x03")),
        fails("7.1.6-close-reason-invalid-utf8", "the close reason must be UTF-8 (§5.5.1, "
              "§8.1): 1007", f(CLOSE, close_payload(1000, b"bye \xff")), 1007),
        Rule("5.5.1-nothing-after-close", "after its close frame a client sends no data; "
             "what comes anyway is not handled (§5.5.1)",
             f(CLOSE, close_payload(1000, b"bye")) + f(TEXT, b"late") + f(PING, b"late"),
             1000, echo=close_payload(1000, b"bye")),
        fails("7.1.7-fail-closes-tcp", "after failing the connection the server closes TCP "
              "without waiting for the client's close frame (§7.1.7)",
              f(TEXT, b"hello", rsv=4), probe={"answer_close": False}),
        # the same rules, over unusual delivery -------------------------------------------
        ok("4.1-frames-sent-with-the-upgrade", "frames in the same segment as the upgrade "
           "request are read once the connection is open (§4.1: a client should wait)",
           f(PING, b"early") + f(TEXT, b"x"), 2, pongs=(b"early",), probe={"early": True},
           reference_bug="websockets 17.4's asyncio server parses frames that arrive with "
           "the request while still CONNECTING and writes the pong *before* its HTTP 101 "
           "(the client reads b'\\x8a\\x05earlyHTTP/1.1 101'); wsop's servers hold such "
           "bytes until the 101 is out"),
        fails("4.1-violation-sent-with-the-upgrade", "(a violation among them fails it)",
              f(TEXT, b"\xff"), 1007, probe={"early": True}),
        ok("5.4-frames-cut-byte-by-byte", "frame boundaries do not depend on TCP segments",
           f(TEXT, b"he", fin=False) + f(PING, b"p") + f(CONT, b"llo") + f(PONG, b"x"), 2,
           pongs=(b"p",), probe={"chunk": 1}),
        Rule("5.5.1-close-cut-byte-by-byte", "(a close frame in one-byte segments)",
             f(CLOSE, close_payload(1001, b"bye")), 1001, echo=close_payload(1001, b"bye"),
             probe={"chunk": 1}),
        fails("8.1-invalid-utf8-cut-byte-by-byte", "(invalid UTF-8 in one-byte segments)",
              f(TEXT, b"caf", fin=False) + f(CONT, b"\xc3(", fin=True), 1007,
              probe={"chunk": 1}),
    ]  # fmt: skip


RULES = _rules()
assert len({r.id for r in RULES}) == len(RULES), "rule ids must be unique"
