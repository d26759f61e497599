"""An incremental WebSocket frame-header scanner: where frames begin and end, nothing more.

The LB relays raw bytes after both handshakes (client frames arrive masked, exactly what
a client-side connection must send; sidecar frames arrive unmasked, exactly what a
server-side connection must send), so it never needs to decode, unmask or re-frame a
payload. It still has to know a little about the stream:

- where messages end, to count them and to switch upstreams or interleave two upstreams
  into one client stream only between messages (never inside a frame or a fragmented
  message);
- close frames (to tear down like a WebSocket endpoint would);
- the sidecar's NUL-prefixed control text frames (``"\\x00wsop:move NAME URL"``), which
  are never forwarded.

`FrameScanner.feed` parses 2–14 byte headers and skips payloads by arithmetic: a chunk
that holds only payload costs one comparison, a chunk of small frames one header parse
per frame, and the bytes are handed on (`emit`) as slices of the chunk — usually the
chunk itself. Bytes it cannot judge yet (a header split across reads, or a close/control
frame not yet complete; ≤ 139 bytes except for control frames) are held back until the
next chunk, so the emitted stream always stops at a header boundary or inside a payload
whose header was already emitted.
"""

from __future__ import annotations

from typing import Final

from websockets.frames import Close, Frame, Opcode

from wsop.protocol import close_reason

OP_TEXT: Final = 0x1  # plain ints: comparing IntEnum members costs more per frame
OP_CLOSE: Final = 0x8
MAX_CONTROL_PAYLOAD: Final = 125
"""RFC 6455 §5.5: control frames carry at most 125 bytes (longer ones are passed on and
left to the endpoint to refuse, never buffered here)."""


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR a (small) masked payload with its 4-byte key."""
    return bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """(code, reason) of a close frame's unmasked payload; None when it carries no code."""
    if len(payload) < 2:
        return None, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


def close_frame(code: int, reason: str, *, mask: bool) -> bytes:
    """A close frame the LB writes itself: masked towards sidecars (it is their client),
    unmasked towards clients (it is their server)."""
    payload = Close(code, close_reason(reason)).serialize()
    return Frame(Opcode.CLOSE, payload).serialize(mask=mask, extensions=[])


def text_frame(text: str, *, mask: bool) -> bytes:
    """One unfragmented text frame (tests and the sidecar-side tooling build them)."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=mask, extensions=[])


class FrameScanner:
    """Tracks frame boundaries in one direction of a byte stream; subclasses get hooks.

    `intercept` turns on the control-frame hook: an unfragmented text frame whose first
    payload byte is NUL goes to `on_control` instead of `emit`. `want_boundary` asks for
    `on_boundary` at the next message boundary (between frames, outside a fragmented
    message): that is where a relay may change where `emit` sends the bytes.
    """

    __slots__ = ("skip", "held", "in_message", "want_boundary", "intercept")

    def __init__(self, intercept: bool = False) -> None:
        self.skip = 0
        """Payload bytes of the current frame still to come (they pass through unread)."""
        self.held = b""
        """Bytes held back at a frame start (partial header, or an incomplete close or
        control frame): not emitted yet."""
        self.in_message = False
        """Inside a fragmented data message (a non-final data frame has been seen)."""
        self.want_boundary = False
        self.intercept = intercept

    # --- hooks ------------------------------------------------------------------------
    def emit(self, chunk: bytes) -> None:
        """Pass bytes on (always whole headers; payloads may be split)."""
        raise NotImplementedError

    def on_close(self, frame: bytes, payload: bytes) -> None:
        """A complete close frame (`payload` already unmasked); it is NOT emitted: the
        hook decides whether to forward `frame`."""
        raise NotImplementedError

    def on_control(self, payload: bytes) -> None:
        """A complete NUL-prefixed text frame (intercept mode); never emitted."""
        raise NotImplementedError

    def on_boundary(self) -> None:
        """Called at a message boundary while `want_boundary` is set, after everything
        before it has been emitted; usually clears `want_boundary`."""
        raise NotImplementedError

    @property
    def at_boundary(self) -> bool:
        """The emitted stream ends between messages: another stream may be spliced in."""
        return self.skip == 0 and not self.in_message

    # --- the scanner ------------------------------------------------------------------
    def feed(self, data: bytes) -> int:
        """Scan one chunk, emit what can be passed on; returns data messages completed."""
        held = self.held
        if held:
            data = held + data
            self.held = b""
        n = len(data)
        i = self.skip
        if i > n:  # the whole chunk is payload of a frame whose header went out already
            self.skip = i - n
            if n:
                self.emit(data)
            return 0
        # (i == n: the payload ends with this chunk; the loop still reports the boundary)
        self.skip = 0
        out = 0  # data[out:i] is scanned but not emitted yet
        messages = 0
        in_message = self.in_message
        while True:
            # i is at a frame start (or at n)
            if self.want_boundary and not in_message:
                if i > out:
                    self.emit(data[out:i])
                    out = i
                self.in_message = in_message
                self.on_boundary()
            left = n - i
            if left < 2:
                break
            b1 = data[i + 1]
            length = b1 & 0x7F
            if length < 126:
                head = 2
            elif length == 126:
                if left < 4:
                    break
                length = (data[i + 2] << 8) | data[i + 3]
                head = 4
            else:
                if left < 10:
                    break
                length = int.from_bytes(data[i + 2 : i + 10], "big")
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            if left < head:
                break
            b0 = data[i]
            op = b0 & 0x0F
            if op < 8:  # data frame: text, binary or continuation
                if b0 & 0x80:
                    if op == OP_TEXT and length and self.intercept:
                        if left == head:
                            break  # cannot see the first payload byte yet: hold the header
                        first = data[i + head]
                        if masked:
                            first ^= data[i + head - 4]
                        if first == 0:  # a control frame: never forwarded
                            end = i + head + length
                            if end > n:
                                break
                            if i > out:
                                self.emit(data[out:i])
                            payload = data[i + head : end]
                            if masked:
                                payload = unmask(payload, data[i + head - 4 : i + head])
                            out = i = end
                            self.in_message = in_message
                            self.on_control(payload)
                            continue
                    messages += 1
                    in_message = False
                else:
                    in_message = True
            elif op == OP_CLOSE and length <= MAX_CONTROL_PAYLOAD and b0 & 0x80:
                # (a fragmented close frame is no close: it goes on, for the endpoint to fail)
                end = i + head + length
                if end > n:
                    break
                if i > out:
                    self.emit(data[out:i])
                payload = data[i + head : end]
                if masked:
                    payload = unmask(payload, data[i + head - 4 : i + head])
                frame = data[i:end]
                out = i = end
                self.in_message = in_message
                self.on_close(frame, payload)
                continue
            i += head + length
            if i > n:  # mid-payload: the rest of this frame arrives in later chunks
                self.skip = i - n
                i = n
                break
        if i < n:
            self.held = data[i:]
        if i > out:
            self.emit(data if out == 0 and i == n else data[out:i])
        self.in_message = in_message
        return messages
