"""The proxy sidecar: holds client connections, presence, and routes direct and team
messages to the sidecar that owns each recipient. `router` is the pure core; `server`,
`peers` and `app` are the asyncio layer around it."""
