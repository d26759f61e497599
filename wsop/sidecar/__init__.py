"""The proxy sidecar (`wsop sidecar`): holds client connections and presence, and routes
direct and team messages to the sidecar that owns each recipient.

    from wsop.sidecar import Sidecar, SidecarConfig
    sidecar = Sidecar(SidecarConfig(name="s0", admin_token=...), acl, members)
    port = await sidecar.start(); ...; await sidecar.stop()

The pure core: `router` (who delivers what), `acks`, `peer_codec`, `framing` (the
client frame reader); the asyncio layer around it: `app` (the server), `client`
(sessions), `messages` (a client's messages to a delivery), `delivery`, `peers` (links
to the other sidecars), `presence`, `admin` (plain HTTP: auth, health, metrics, moves).
Names are loaded on first use, so importing a submodule stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsop.sidecar.app import Sidecar
    from wsop.sidecar.config import SidecarConfig

__all__ = ["Sidecar", "SidecarConfig"]


def __getattr__(name: str) -> Any:
    if name == "Sidecar":
        from wsop.sidecar.app import Sidecar

        return Sidecar
    if name == "SidecarConfig":
        from wsop.sidecar.config import SidecarConfig

        return SidecarConfig
    raise AttributeError(f"module 'wsop.sidecar' has no attribute {name!r}")
