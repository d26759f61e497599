"""Which receiver got which message, for the whole run. Pure: no sockets, no clock.

While a message is pending, the ledger's entry tells a duplicate (its arrival bits).
Once it is settled the entry is gone, yet a copy that arrives later must still count as
a duplicate, not as a late delivery: this is the memory that outlives the entries.

A delivered direct message — nearly all of a chat load — is remembered as its one
receiver's slot in an array per sender, indexed by sequence number (4 bytes a message,
one append, no hashing). Everything else (team messages, arrivals outside the pending
window, unexpected receivers) goes into a roaring bitmap per receiver: exact and
compact, but ~10x the cost of the append, which is why it is not the common path.
"""

from __future__ import annotations

from array import array

from pyroaring import BitMap64

SEQ_BITS = 32
SEQ_MASK = (1 << SEQ_BITS) - 1
MAX_GAP = 4096  # a sequence number this far past the array's end goes to the bitmaps
_NONE = -1
ROW_MAX = 1 << 31  # a receiver slot an array row can hold


class Arrivals:
    def __init__(self) -> None:
        self.rows: dict[int, array] = {}  # sender slot -> receiver slot by seq (-1: none)
        self._bitmaps: dict[int, BitMap64] = {}  # receiver slot -> keys it got

    def add(self, receiver: int, key: int) -> None:
        bitmap = self._bitmaps.get(receiver)
        if bitmap is None:
            bitmap = self._bitmaps[receiver] = BitMap64()
        bitmap.add(key)

    def add_direct(self, receiver: int, key: int) -> None:
        """`receiver` got `key`, a message with no other expected receiver."""
        sender, seq = key >> SEQ_BITS, key & SEQ_MASK
        row = self.rows.get(sender)
        if row is None:
            row = self.rows[sender] = array("i")
        n = len(row)
        if seq == n and 0 <= receiver < ROW_MAX:
            row.append(receiver)
        elif seq < n and row[seq] == _NONE and 0 <= receiver < ROW_MAX:
            row[seq] = receiver
        elif n < seq <= n + MAX_GAP and 0 <= receiver < ROW_MAX:
            row.extend([_NONE] * (seq - n))
            row.append(receiver)
        else:
            self.add(receiver, key)

    def seen(self, receiver: int, key: int) -> bool:
        row = self.rows.get(key >> SEQ_BITS)
        if row is not None and receiver >= 0:
            seq = key & SEQ_MASK
            if seq < len(row) and row[seq] == receiver:
                return True
        bitmap = self._bitmaps.get(receiver)
        return bitmap is not None and key in bitmap
