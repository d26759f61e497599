"""Exact identities, without sockets: one rule per tenant id mode (wsop/names.py).

Issue 11 found that ids collapsed: in a string-id tenant a token for "007" was user 7, a
direct message to "007" reached the holder of "7", and a seeded member "42" never got
team messages (the connection was registered as the int 42, team resolution returned
the string "42"). Here every path an id takes — a token's `sub` (string or int),
`?user=`, a frame's `to`, the seed files, the directory, team resolution — is run
through the same functions the servers use, for both modes, and checked to name exactly
one user: its text.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from urllib.parse import quote

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsop.auth import identity_from_request, mint_token, verify_token
from wsop.errors import UsageError
from wsop.names import (
    IdMode,
    canonical_user_id,
    check_string_id,
    int_id,
    parse_int_id,
)
from wsop.protocol import BAD_REQUEST, DirectMessage, ProtocolError, parse_client_frame
from wsop.ring import build
from wsop.sidecar.router import Router

SECRET = "s" * 32
MAX_USERS = 1 << 24
NODES = ["s0", "s1", "s2"]


def text(value: object) -> str:
    """A user's identity: its text (an integer n is written str(n))."""
    return str(value)


def direct(to: object, mode: IdMode | None) -> DirectMessage:
    msg = parse_client_frame(json.dumps({"type": "direct", "to": to, "data": 1}), 4096, mode)
    assert isinstance(msg, DirectMessage)
    return msg


# --- the rule, by example ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "as_int", "as_string"),
    [
        (7, 7, "7"),
        ("7", 7, "7"),
        ("007", None, "007"),
        ("0", 0, "0"),
        ("00", None, "00"),
        ("+7", None, None),
        ("-7", None, None),
        (" 7", None, None),
        ("7 ", None, None),
        ("7.0", None, "7.0"),
        ("1_000", None, "1_000"),
        ("٣", None, "٣"),  # a non-ASCII digit is a name, never 3
        ("u-1", None, "u-1"),
        (True, None, None),
        (7.0, None, None),
        (-1, None, None),
        (2**63, None, None),
        ("9" * 30, None, "9" * 30),
        ("", None, None),
    ],
)
def test_one_rule_per_mode(value, as_int, as_string):
    assert canonical_user_id(value, IdMode.INT) == as_int
    assert canonical_user_id(value, IdMode.STRING) == as_string


def test_seeding_takes_exactly_the_ids_connections_can_use():
    """A seed file saying "007" in an int tenant would seed a user no token can name."""
    assert parse_int_id("7", MAX_USERS) == 7
    for bad in ("007", "+7", " 7", "1_000", "٣"):
        with pytest.raises(UsageError, match="is not"):
            parse_int_id(bad, MAX_USERS)
    with pytest.raises(UsageError, match="too large"):
        parse_int_id("9" * 30, MAX_USERS)
    assert check_string_id("007") == "007"
    for bad in (" 7", "7 ", "-1", ""):  # never trimmed into another user
        with pytest.raises(UsageError, match="string user id"):
            check_string_id(bad)


@pytest.mark.parametrize(
    ("to", "mode", "expected"),
    [
        ("007", IdMode.STRING, "007"),
        ("7", IdMode.STRING, "7"),
        (7, IdMode.STRING, "7"),  # the int 7 is the name "7", never "007"
        ("7", IdMode.INT, 7),  # a canonical digit string is accepted in int tenants
        (7, IdMode.INT, 7),
    ],
)
def test_direct_to_per_mode(to, mode, expected):
    assert direct(to, mode).to == expected


@pytest.mark.parametrize("to", ["007", "+7", " 7", "u-1", "7.0", True])
def test_int_tenants_refuse_non_canonical_targets(to):
    raw = json.dumps({"type": "direct", "to": to, "data": 1, "id": "c1"})
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(raw, 4096, IdMode.INT)
    assert (info.value.code, info.value.id) == (BAD_REQUEST, "c1")
    assert "without sign, spaces or leading zeros" in info.value.message


def test_tokens_and_query_keep_the_spelling():
    """Neither the LB nor a token knows the tenant's mode: "007" must stay "007"."""
    token = mint_token(SECRET, "acme", "007", ttl_s=60)
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["sub"] == "007"
    assert verify_token(SECRET, token).user == "007"
    assert identity_from_request("/ws?tenant=acme&user=007", {}, None, True).user == "007"
    assert identity_from_request("/ws?tenant=acme&user=7", {}, None, True).user == 7


# --- properties over mixed ids ------------------------------------------------------------

small = st.integers(min_value=0, max_value=10**4)
raw_ids = st.one_of(
    small,
    small.map(str),
    st.tuples(st.integers(1, 3), small).map(lambda t: "0" * t[0] + str(t[1])),
    small.map(lambda n: f"+{n}"),
    small.map(lambda n: f" {n}"),
    st.integers(min_value=-5, max_value=-1),
    st.text(min_size=1, max_size=6),
    st.sampled_from(["7", "07", "007", 7, "42", 42, "u-1", "٣", "7 ", True, 7.0, 2**63]),
)
modes = st.sampled_from(list(IdMode))


@settings(max_examples=500)
@given(modes, raw_ids, raw_ids)
def test_no_two_names_reach_one_user(mode, a, b):
    """Two accepted ids are one user exactly when they are one text; the canonical id's
    type is the mode; and what the LB routes by (the raw id's text) is the sidecar's."""
    ca, cb = canonical_user_id(a, mode), canonical_user_id(b, mode)
    for raw, canonical in ((a, ca), (b, cb)):
        if canonical is None:
            continue
        assert IdMode.of(canonical) is mode
        assert text(canonical) == text(raw)
        seen_by_lb = canonical_user_id(raw, None)
        assert seen_by_lb is not None and text(seen_by_lb) == text(raw)
        assert canonical_user_id(seen_by_lb, mode) == canonical  # LB, then sidecar
    if ca is not None and cb is not None:
        assert (ca == cb) == (text(a) == text(b)), (a, b, ca, cb)


class Tenant:
    """A seeded tenant as the stack sees it: ids validated by the seeding rule, string
    ids mapped through a directory (as DIRECTORY_LUA does), one `Router` per sidecar."""

    def __init__(self, mode: IdMode, raw_members: list[object]) -> None:
        self.mode = mode
        self.members: list[int | str] = []
        for raw in raw_members:
            try:
                member = check_string_id(raw) if mode is IdMode.STRING else parse_int_id(raw, 99)
            except UsageError:
                continue
            if member not in self.members:
                self.members.append(member)
        self.index = {m: i for i, m in enumerate(self.members)}  # the directory
        self.owner = build("rendezvous", NODES).owner
        self.routers = {n: Router(n, self.owner) for n in NODES}

    def resolve_team(self) -> list[int | str]:
        """What team resolution returns: bit indices, mapped back to names if string ids
        (LiveAcl.names_for decodes the directory's strings)."""
        bits = sorted(self.index.values()) if self.mode is IdMode.STRING else self.members
        if self.mode is IdMode.STRING:
            names = {i: m for m, i in self.index.items()}
            return [str(names[i]) for i in bits]
        return [int(b) for b in bits]

    def deliver(self, sender: str, users: list[int | str]) -> Counter[str]:
        """The connections a message for `users` reaches (sender → owner → holder)."""
        got: Counter[str] = Counter()

        def fan_out(router: Router, plan) -> None:
            assert not plan.unreachable, plan.unreachable
            for where, local in [(router, plan.local)] + [
                (self.routers[h], held) for h, held in plan.holders.items()
            ]:
                for user in local:
                    got.update(where.connections("acme", user))

        plan = self.routers[sender].plan("acme", users)
        fan_out(self.routers[sender], plan)
        for owner, owned in plan.peers.items():
            fan_out(self.routers[owner], self.routers[owner].plan("acme", owned, True))
        return got


def spellings(member: int | str) -> list[object]:
    """Every way a client may name `member` on the wire (JSON int or string)."""
    number = int_id(member)
    return [member, str(member)] + ([number] if number is not None else [])


def paths(member: int | str) -> list[str]:
    """Handshakes naming `member`: a minted token, an int `sub`, `?user=`."""
    token = mint_token(SECRET, "acme", member, ttl_s=600)
    found = [f"/ws?token={token}", f"/ws?tenant=acme&user={quote(str(member), safe='')}"]
    number = int_id(member)
    if number is not None:
        int_sub = {"tenant": "acme", "sub": number, "exp": int(time.time()) + 600}
        found.append(f"/ws?token={jwt.encode(int_sub, SECRET, algorithm='HS256')}")
    return found


@settings(max_examples=150, deadline=None)
@given(modes, st.lists(raw_ids, min_size=1, max_size=8), st.data())
def test_every_seeded_member_is_reachable_by_exactly_its_name(mode, raw_members, data):
    tenant = Tenant(mode, raw_members)
    conns: dict[str, int | str] = {}
    for n, member in enumerate(tenant.members):
        path = data.draw(st.sampled_from(paths(member)))
        ident = identity_from_request(path, {}, SECRET, insecure=True)  # LB and sidecar
        user = canonical_user_id(ident.user, mode)  # the sidecar, knowing the mode
        assert user == member, (path, ident.user, member)
        # the LB placed it where the sidecars look for it
        assert tenant.owner(("acme", ident.user)) == tenant.owner(("acme", user))
        where = data.draw(st.sampled_from(NODES))
        _, change = tenant.routers[where].connect("acme", user, f"c{n}")
        if change is not None:
            tenant.routers[change.owner].holder(change, where)
        conns[f"c{n}"] = member
    if not tenant.members:
        return
    # a team message reaches every member once, whatever type resolution returns
    assert tenant.deliver("s0", tenant.resolve_team()) == Counter(list(conns))
    # a direct message, in any spelling of a member's name, reaches that member only
    for member in tenant.members:
        for spelling in spellings(member):
            to = direct(spelling, mode).to
            got = tenant.deliver("s1", [to])
            assert got == Counter({c: 1 for c, m in conns.items() if m == member}), spelling
