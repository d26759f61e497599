"""`MoveTarget` over plain HTTP to the local stack's sidecars (`wsop rebalance --local`).

The members file (`state_dir()/stack.json`, see docs/stack.md) lists every sidecar's
`ws://` url and holds the admin token; the same port answers plain HTTP admin requests,
so the token goes in the `Authorization: Bearer` header as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from wsop import adminclient
from wsop.k8s.executor import MemberFailed, SidecarAdmin, sidecar_answer
from wsop.local import stack_file


class LocalStackTarget(SidecarAdmin):
    """The sidecars of the members file, by name."""

    def __init__(
        self,
        urls: dict[str, str],
        admin_token: str | None,
        timeout: float = 5.0,
        ca: str | None = None,
    ):
        self.urls = {name: adminclient.http_base(url) for name, url in urls.items()}
        self.admin_token = admin_token
        self.timeout = timeout
        self.ca = ca

    def _get(self, member: str, path: str, params: list[tuple[str, str]]) -> Any:
        base = self.urls.get(member)
        if base is None:
            raise MemberFailed(member, "not in the members file")
        url = base + path + (f"?{urlencode(params)}" if params else "")
        try:
            reply = adminclient.get(url, self.admin_token, self.timeout, self.ca)
        except adminclient.AdminUnreachable as exc:
            raise MemberFailed(member, f"{path}: unreachable at {base} ({exc.reason})") from None
        return sidecar_answer(member, path, reply.status, reply.body)


def local_stack(path: Path | None = None) -> tuple[stack_file.StackRecord, LocalStackTarget]:
    """The running local stack and a target for its sidecars (`StackNotRunning` if none)."""
    record = stack_file.require(path)
    urls = {s.name: s.url for s in record.sidecars}
    return record, LocalStackTarget(urls, record.admin_token or None, ca=record.ca_file)
