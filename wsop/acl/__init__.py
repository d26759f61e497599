"""Tenant access as Redis bitmaps: key layout, seeding and resolution, presence.

Pure pieces (`keys`, `bitmap`, `synthetic`, `csvload`, `dataset`, `pipeline`) do no I/O.
Three modules talk to Redis: `store` (the synchronous store the CLI and seeding use),
`live` (the asyncio adapter of the sidecars' message path) and `leases` (the presence
heartbeat's scripts); `scripts` holds the Lua they share, `resolve`/`seed`/`presence`
orchestrate. User-id rules live below this package, in `wsop.names`.
"""
