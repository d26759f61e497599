"""`wsop loadtest`: locust users, shapes, loss accounting, and the runner around them.

Two worlds live here and must not mix:

- the gevent world (`locustfile`, `user`, `shape`): imported only inside locust
  processes, which monkey-patch the standard library before anything else runs;
- the CLI world (`runner`, `localstack`, `report`, `nemesis`): plain Python that starts
  locust as subprocesses and reads back their files, never importing gevent.

`profiles`, `ledger`, `layout` and `failures` are pure and shared by both. Nothing here imports
the asyncio servers (`wsop.sidecar`, `wsop.lb`) or `websockets`.
"""
