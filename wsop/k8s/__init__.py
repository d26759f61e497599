"""wsop on Kubernetes: discovery, rebalance planning and execution, inject and manifests.

- `discovery` — sidecar pods by label selector (and EndpointSlices), their readiness,
  and a `MembershipSource` for the in-cluster stack;
- `plan` — the pure rebalance planner (no I/O: every edge case is a unit test);
- `executor` — gathers `/connections` and applies moves through a small `MoveTarget`
  protocol; `proxy` implements it over the API server's pods/proxy, `local` over plain
  HTTP to the local stack;
- `inject`, `manifests`, `deploy` — YAML for a cluster; `webhook` (the admission
  decision, pure) and `webhook_server` inject the sidecar at pod creation;
- `watch`, `lease`, `operator` — the watch-driven rebalancer and its leader election.

Only the modules that talk to the API server import the `kubernetes` client, so the
planner and the YAML tools stay importable (and fast) without it.
"""
