"""The load balancer (`wsop lb`): authenticate, pick the ring owner, relay raw bytes.

    from wsop.lb import LBConfig, LoadBalancer, Relay
    lb = LoadBalancer(LBConfig(host, port, source, algo="maglev"))
    await lb.start(); ...; await lb.stop()

`Relay.switch_to(owner, url)` moves one live client to another sidecar at a message
boundary (the rebalancer's seam); see docs/stack.md.
"""

from wsop.lb.config import LBConfig
from wsop.lb.relay import Relay, RelayClosed
from wsop.lb.server import LoadBalancer, run

__all__ = ["LBConfig", "LoadBalancer", "Relay", "RelayClosed", "run"]
