"""How the LB opens a client's sidecar leg: a TCP WebSocket of its own, or a channel on
a trunk to that sidecar (`wsop.lb.trunks`) — the same handshake either way."""

from __future__ import annotations

import ssl
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

from websockets.asyncio.client import connect
from websockets.http11 import Request

from wsop import lbsignal
from wsop.auth import Identity
from wsop.lb.handshake import LBClientConnection
from wsop.lb.relay import Dial
from wsop.lb.trunks import LBTrunks

WS_PATH = "/ws"


def dialer(
    request: Request,
    identity: Identity,
    *,
    admin_token: str | None,
    open_timeout: float,
    client_ssl: ssl.SSLContext | None,
    trunks: LBTrunks | None = None,
    peer: str = "",
) -> Dial:
    """Dial a sidecar with the client's own query string and Authorization header,
    and the LB's signed word (`wsop.lbsignal`) that an LB holds this client and, on
    a move, which sidecar it comes from. A client can set neither: it never reaches
    a sidecar's handshake through us, and `moved_from` in its query is stripped (old
    sidecars read it there). With `trunks`, the leg is a channel on a trunk to that
    sidecar (`peer`, the client's address, goes with it), unless none is up."""
    auth = request.headers.get("Authorization")
    url = urlsplit(request.path)
    params = parse_qsl(url.query, keep_blank_values=True)
    kept = [(k, v) for k, v in params if k != "moved_from"]
    query = url.query if len(kept) == len(params) else urlencode(kept)
    target = f"{WS_PATH}?{query}" if query else WS_PATH

    async def dial(base_url: str, moved_from: str | None = None) -> LBClientConnection:
        headers = {**({"Authorization": auth} if auth else {})}
        if admin_token:
            signal = lbsignal.sign(
                admin_token, identity.tenant, identity.user, moved_from, time.time()
            )
            headers[lbsignal.HEADER] = signal
        if trunks is not None:
            trunk = await trunks.pick(base_url)
            if trunk is not None:
                return await trunks.open_leg(trunk, f"{base_url}{target}", headers, peer)
        conn = await connect(
            f"{base_url}{target}",
            ssl=client_ssl if base_url.startswith("wss://") else None,
            additional_headers=headers,
            compression=None,  # frames pass through raw: no extension may be negotiated
            open_timeout=open_timeout,
            ping_interval=None,  # pings pass through end to end
            proxy=None,
            user_agent_header=None,
            create_connection=LBClientConnection,
        )
        assert isinstance(conn, LBClientConnection)
        return conn

    return dial
