"""Seeding and resolution against a real redis-server."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsop.acl import bitmap, keys, seed, synthetic
from wsop.acl.csvload import ParsedTenant
from wsop.acl.dataset import TenantData
from wsop.acl.presence import set_online
from wsop.acl.resolve import resolve
from wsop.acl.store import TenantStore
from wsop.errors import BackendError, NotFound, UsageError

MAX = 1 << 24


def tenant(name: str, teams: dict[str, set[int]], online: set[int] | None) -> TenantData:
    return TenantData(
        tenant=name,
        teams={t: bitmap.encode(sorted(m)) for t, m in teams.items()},
        online=None if online is None else bitmap.encode(sorted(online)),
        memberships=sum(len(m) for m in teams.values()),
        online_count=len(online or ()),
    )


@pytest.fixture
def store(r: redis.Redis) -> TenantStore:
    return TenantStore(r)


def test_resolve_is_union_and_online(store: TenantStore) -> None:
    seed.seed(store, [tenant("acme", {"a": {0, 7, 8}, "b": {8, 9, 100}}, {7, 8, 100, 5})], False)
    result = resolve(store, "acme", ["a", "b"])
    assert result.recipients == [7, 8, 100]
    assert result.count == 3
    assert resolve(store, "acme", ["a", "b"], online_only=False).recipients == [0, 7, 8, 9, 100]


def test_missing_team_is_reported_and_contributes_nothing(store: TenantStore) -> None:
    seed.seed(store, [tenant("acme", {"a": {1, 2}}, {1, 2})], False)
    result = resolve(store, "acme", ["a", "ghost"])
    assert result.recipients == [1, 2]
    assert result.missing_teams == ["ghost"]


def test_tenants_are_isolated(store: TenantStore) -> None:
    seed.seed(
        store,
        [tenant("t1", {"x": {1, 2}}, {1, 2}), tenant("t2", {"x": {3}}, {3, 1})],
        False,
    )
    assert resolve(store, "t1", ["x"]).recipients == [1, 2]
    assert resolve(store, "t2", ["x"]).recipients == [3]


def test_byte_boundaries_and_max(store: TenantStore) -> None:
    ids = {0, 7, 8, 15, 16, MAX - 1}
    seed.seed(store, [tenant("b", {"a": ids}, ids)], False)
    assert resolve(store, "b", ["a"]).recipients == sorted(ids)


def test_unknown_tenant(store: TenantStore) -> None:
    with pytest.raises(NotFound, match="unknown tenant 'nobody'"):
        resolve(store, "nobody", ["a"])


def test_empty_team_list_and_bad_names(store: TenantStore) -> None:
    with pytest.raises(UsageError, match="no team"):
        resolve(store, "acme", [])
    with pytest.raises(UsageError, match="invalid team"):
        resolve(store, "acme", ["a}b"])
    with pytest.raises(UsageError, match="invalid tenant"):
        resolve(store, "ac{me", ["a"])


def test_wrongtype_names_the_key(store: TenantStore, r: redis.Redis) -> None:
    seed.seed(store, [tenant("acme", {"a": {1}}, {1})], False)
    r.hset(keys.team_key("acme", "h"), "x", "1")
    with pytest.raises(BackendError, match=r"teams:\{acme\}:h holds a hash"):
        resolve(store, "acme", ["a", "h"])


def test_replace_drops_old_teams_and_plain_seed_keeps_them(store: TenantStore) -> None:
    seed.seed(store, [tenant("acme", {"a": {1}, "b": {2}}, {1, 2})], False)
    seed.seed(store, [tenant("acme", {"c": {3}}, None)], False)
    assert store.team_names("acme") == ["a", "b", "c"]
    seed.seed(store, [tenant("acme", {"c": {3}}, None)], True)
    assert store.team_names("acme") == ["c"]
    assert resolve(store, "acme", ["a"]).missing_teams == ["a"]
    # presence untouched by a seed without online data
    assert resolve(store, "acme", ["c"], online_only=False).recipients == [3]


def test_failed_swap_leaves_previous_data_and_no_stage_keys(
    store: TenantStore, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed.seed(store, [tenant("acme", {"a": {1, 2}}, {1, 2})], False)
    before = {k: r.dump(k) for k in r.keys("*")}

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # an operator's Ctrl-C between stage and swap

    monkeypatch.setattr(TenantStore, "swap", boom)
    with pytest.raises(KeyboardInterrupt):
        seed.seed(store, [tenant("acme", {"a": {5}, "z": {6}}, {5})], True)
    after = {k: r.dump(k) for k in r.keys("*")}
    assert after == before
    assert resolve(store, "acme", ["a"]).recipients == [1, 2]


def test_stage_keys_expire(store: TenantStore, r: redis.Redis) -> None:
    staged = store.stage("acme", {"team:a": b"\x80"}, "n1")
    assert 0 < r.ttl(staged["team:a"]) <= 3600


def test_string_ids_round_trip(store: TenantStore) -> None:
    users = ["6f1c-aa", "bob", "carol", "dave"]
    parsed = ParsedTenant()
    parsed.teams["eng"].extend(users[:3])
    parsed.teams["ops"].extend(users[2:])
    parsed.online = ["bob", "dave"]
    data = seed.from_parsed(store, "s", parsed, string_ids=True, max_users=MAX)
    seed.seed(store, [data], False)
    assert resolve(store, "s", ["eng", "ops"]).recipients == ["bob", "dave"]
    assert resolve(store, "s", ["eng"], online_only=False).recipients == sorted(users[:3])
    assert set_online(store, "s", ["6f1c-aa"], True, MAX).changed == 1
    assert resolve(store, "s", ["eng"]).recipients == ["6f1c-aa", "bob"]


def test_mixing_id_modes_is_refused(store: TenantStore) -> None:
    seed.seed(store, [tenant("acme", {"a": {1}}, {1})], False)
    parsed = ParsedTenant()
    parsed.teams["a"].append("x")
    data = seed.from_parsed(store, "acme", parsed, string_ids=True, max_users=MAX)
    with pytest.raises(UsageError, match="uses int user ids"):
        seed.seed(store, [data], False)


def test_online_add_remove_counts_changes(store: TenantStore) -> None:
    seed.seed(store, [tenant("acme", {"a": {1, 2, 3}}, set())], False)
    assert set_online(store, "acme", ["1", "2"], True, MAX).changed == 2
    assert set_online(store, "acme", ["2", "3"], True, MAX).changed == 1
    assert resolve(store, "acme", ["a"]).recipients == [1, 2, 3]
    assert set_online(store, "acme", ["2", "9"], False, MAX).changed == 1
    assert resolve(store, "acme", ["a"]).recipients == [1, 3]
    with pytest.raises(UsageError, match="too large"):
        set_online(store, "acme", [str(MAX)], True, MAX)


def test_synthetic_is_deterministic_and_sized(store: TenantStore) -> None:
    spec = synthetic.SyntheticSpec(2, 5000, 10, 500, 0.2, seed=7)
    first = list(synthetic.generate(spec))
    again = list(synthetic.generate(spec))
    assert [d.teams for d in first] == [d.teams for d in again]
    total = sum(d.memberships for d in first)
    assert 0.9 * 2 * 10 * 500 < total < 1.1 * 2 * 10 * 500
    result = seed.seed(store, first, False)
    assert result.tenants == 2 and result.teams == 20
    members = resolve(store, "t0", ["team-0"], online_only=False).recipients
    assert members == bitmap.decode(first[0].teams["team-0"]).tolist()


user_ids = st.one_of(
    st.sampled_from([0, 7, 8, 15, 16, 255, 256, 1023]), st.integers(min_value=0, max_value=4095)
)
team_sets = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]), st.sets(user_ids, max_size=30), min_size=1
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    teams=team_sets,
    online=st.sets(user_ids, max_size=40),
    query=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4),
)
def test_resolve_equals_set_computation(
    r: redis.Redis, teams: dict[str, set[int]], online: set[int], query: list[str]
) -> None:
    r.flushall()
    store = TenantStore(r)
    seed.seed(store, [tenant("p", teams, online)], False)
    union: set[int] = set().union(*(teams.get(t, set()) for t in query))
    assert resolve(store, "p", query).recipients == sorted(union & online)
    assert resolve(store, "p", query, online_only=False).recipients == sorted(union)
    assert resolve(store, "p", query).missing_teams == [
        t for t in dict.fromkeys(query) if t not in teams
    ]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    members=st.dictionaries(
        st.sampled_from(["x", "y"]),
        st.sets(st.text("abcdef0123456789-", min_size=1, max_size=12), max_size=15),
        min_size=1,
    ),
    online_share=st.floats(0, 1),
)
def test_string_ids_equal_set_computation(
    r: redis.Redis, members: dict[str, set[str]], online_share: float
) -> None:
    r.flushall()
    store = TenantStore(r)
    everyone = sorted(set().union(*members.values()))
    online = set(everyone[: int(len(everyone) * online_share)])
    parsed = ParsedTenant()
    for team, users in members.items():
        parsed.teams[team].extend(sorted(users))
    parsed.online = sorted(online)
    seed.seed(store, [seed.from_parsed(store, "s", parsed, True, MAX)], False)
    query = sorted(members)
    union = set().union(*members.values())
    assert resolve(store, "s", query).recipients == sorted(union & online)


def test_decode_handles_large_sparse_result(store: TenantStore) -> None:
    rng = np.random.default_rng(1)
    ids = set(rng.choice(1_000_000, 5000, replace=False).tolist())
    seed.seed(store, [tenant("big", {"a": ids}, ids)], False)
    assert resolve(store, "big", ["a"]).recipients == sorted(ids)
