"""PeerLinks: answers to a peer we have no link to yet wait for the membership naming it;
anything else to an unknown peer is reported lost at once (no sockets needed: the links
are inspected before they ever dial)."""

from __future__ import annotations

import asyncio

import pytest

from wsop.sidecar import peers as peers_module
from wsop.sidecar.peer_codec import TO_OWNER, Ack, Deliver, PeerItem
from wsop.sidecar.peers import PeerLinks


def queued(links: PeerLinks, name: str) -> list[PeerItem]:
    return [item for _, item in links._links[name]._queue if item is not None]


def test_answers_to_a_peer_that_just_joined_wait_for_its_membership() -> None:
    async def scenario() -> tuple[list[PeerItem], list[PeerItem]]:
        lost: list[PeerItem] = []
        links = PeerLinks("s0", None, lambda peer, items: lost.extend(items))
        await links.update({"s0": "ws://127.0.0.1:9", "s1": "ws://127.0.0.1:9"})
        deliver = Deliver("t", [1], 5, TO_OWNER, "{}")
        links.send("s3", Ack(7, 1, 0))  # s3 forwarded to us before we knew it
        links.send("s3", deliver)  # a delivery to an unknown peer: lost, reported
        assert lost == [deliver]
        await links.update({"s0": "ws://a", "s1": "ws://127.0.0.1:9", "s3": "ws://127.0.0.1:9"})
        got = queued(links, "s3")
        await links.close()
        return got, lost

    got, lost = asyncio.run(scenario())
    assert got == [Ack(7, 1, 0)]


def test_parked_answers_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers_module, "PARK_S", 0.01)

    async def scenario() -> list[PeerItem]:
        links = PeerLinks("s0", None, lambda peer, items: None)
        links.send("s3", Ack(7, 1, 0))
        await asyncio.sleep(0.05)
        await links.update({"s3": "ws://127.0.0.1:9"})
        got = queued(links, "s3")
        await links.close()
        return got

    assert asyncio.run(scenario()) == []


def test_what_waits_for_an_unreachable_peer_is_lost_at_once_when_it_leaves() -> None:
    """A killed peer's link fails to dial; when the membership drops the peer, what
    waits for it is handed back now (to be re-routed), not after the link's give-up."""

    async def scenario() -> tuple[list[PeerItem], list[PeerItem]]:
        lost: list[PeerItem] = []
        links = PeerLinks("s0", None, lambda peer, items: lost.extend(items))
        await links.update({"s0": "ws://127.0.0.1:9", "s1": "ws://127.0.0.1:9"})
        deliver = Deliver("t", [1], 5, TO_OWNER, "{}")
        links.send("s1", deliver)
        for _ in range(100):  # until its first dial failed
            if links._links["s1"].unreachable:
                break
            await asyncio.sleep(0.02)
        before = list(lost)
        await links.update({"s0": "ws://127.0.0.1:9"})
        after = list(lost)
        await links.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert before == [] and after == [Deliver("t", [1], 5, TO_OWNER, "{}")]
