"""Tenant access as Redis bitmaps: key layout, ids, seeding and resolution.

Pure pieces (`keys`, `bitmap`, `ids`, `synthetic`, `csvload`) do no I/O; `store` is the
only module that talks to Redis, and `resolve`/`seed` orchestrate the two.
"""
