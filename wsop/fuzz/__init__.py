"""Protocol fuzzing and RFC 6455 probing of a running stack (tests and bench/fuzz.py).

`frames` builds client frames byte by byte (any bit, any length field) and reads what a
server writes back, with no I/O; `raw` speaks the HTTP upgrade over a plain socket and
then sends whatever bytes it is given; `mutate` makes the fuzz corpus; `campaign` runs
fuzzers and well-behaved clients against a stack (`stack`) and keeps the ledger.
"""
