"""The wire codec, without sockets: every valid shape, every refusal and its error code."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsop import protocol as p
from wsop.protocol import (
    BAD_REQUEST,
    TOO_LARGE,
    DirectMessage,
    ProtocolError,
    TeamMessage,
    encode_ack,
    encode_error,
    encode_message,
    normalize_user_id,
    parse_client_frame,
)

MAX = 4096


def parse(obj: object, max_bytes: int = MAX):
    return parse_client_frame(json.dumps(obj), max_bytes)


def refused(raw: str | bytes, max_bytes: int = MAX) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(raw, max_bytes)
    return info.value


# --- valid shapes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        (0, 0),
        (42, 42),
        (2**63 - 1, 2**63 - 1),
        ("42", 42),
        ("042", "042"),
        ("u-9f3a", "u-9f3a"),
        ("é", "é"),
    ],
)
def test_direct_targets(to, expected):
    msg = parse({"type": "direct", "to": to, "data": {"t": "hi"}, "id": "c1"})
    assert msg == DirectMessage(to=expected, data={"t": "hi"}, id="c1")


@pytest.mark.parametrize("data", [None, 0, "s", [1, [2]], {"a": {"b": None}}, 1.5, True])
def test_data_is_any_json(data):
    assert parse({"type": "direct", "to": 1, "data": data}).data == data
    assert parse({"type": "team", "teams": ["a"], "data": data}).data == data


def test_id_is_optional():
    assert parse({"type": "direct", "to": 1, "data": 1}).id is None
    assert parse({"type": "direct", "to": 1, "data": 1, "id": None}).id is None


def test_team_message():
    msg = parse({"type": "team", "teams": ["a", "eng.backend", "x:y-Z_9"], "data": 3, "id": "c2"})
    assert msg == TeamMessage(teams=("a", "eng.backend", "x:y-Z_9"), data=3, id="c2")


def test_max_teams_and_lengths_accepted():
    teams = [f"t{i}" for i in range(p.MAX_TEAMS)]
    assert parse({"type": "team", "teams": teams, "data": 1}).teams == tuple(teams)
    assert parse({"type": "team", "teams": ["x" * 128], "data": 1, "id": "i" * 128}).id == "i" * 128
    assert parse({"type": "direct", "to": "u" * 256, "data": 1}).to == "u" * 256


def test_unknown_keys_are_ignored():
    assert parse({"type": "direct", "to": 5, "data": 1, "future": [1]}).to == 5


def test_bytes_frame_is_utf8_json():
    raw = json.dumps({"type": "direct", "to": 5, "data": "é"}, ensure_ascii=False).encode()
    assert parse_client_frame(raw, MAX).data == "é"
    assert parse_client_frame(bytearray(raw), MAX).to == 5


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "{",
        "nope",
        '{"type":"direct","to":1,"data":NaN}',
        '{"type":"direct","to":1,"data":Infinity}',
        '{"type":"direct","to":1,"data":' + "1" * 5000 + "}",
        "[" * 3000 + "]" * 3000,
    ],
)
def test_not_json_is_bad_request(raw):
    err = refused(raw, 100_000)
    assert err.code == BAD_REQUEST and err.id is None


@pytest.mark.parametrize("raw", ["[]", "1", '"s"', "null", '[{"type":"direct"}]'])
def test_non_object_is_bad_request(raw):
    assert refused(raw).code == BAD_REQUEST


def test_binary_not_utf8():
    err = refused(b'{"type":"direct","to":1,"data":"\xff"}')
    assert err.code == BAD_REQUEST and "UTF-8" in err.message


def test_binary_utf16_is_not_accepted():
    # json.loads would sniff UTF-16 from bytes; the wire says UTF-8 only.
    raw = json.dumps({"type": "direct", "to": 1, "data": 1}).encode("utf-16")
    assert refused(raw).code == BAD_REQUEST


INVALID = [
    ({"to": 1, "data": 1}, "missing 'type'"),
    ({"type": "broadcast", "data": 1}, "unknown 'type'"),
    ({"type": 3, "data": 1}, "unknown 'type'"),
    ({"type": "direct", "data": 1}, "'to'"),
    ({"type": "direct", "to": -1, "data": 1}, "'to'"),
    ({"type": "direct", "to": True, "data": 1}, "'to'"),
    ({"type": "direct", "to": 1.0, "data": 1}, "'to'"),
    ({"type": "direct", "to": 2**63, "data": 1}, "'to'"),
    ({"type": "direct", "to": "+1", "data": 1}, "'to'"),
    ({"type": "direct", "to": "", "data": 1}, "'to'"),
    ({"type": "direct", "to": "u" * 257, "data": 1}, "'to'"),
    ({"type": "direct", "to": "a\nb", "data": 1}, "'to'"),
    ({"type": "direct", "to": [1], "data": 1}, "'to'"),
    ({"type": "direct", "to": 1}, "missing 'data'"),
    ({"type": "team", "data": 1}, "'teams'"),
    ({"type": "team", "teams": [], "data": 1}, "'teams'"),
    ({"type": "team", "teams": "a", "data": 1}, "'teams'"),
    ({"type": "team", "teams": [f"t{i}" for i in range(65)], "data": 1}, "'teams'"),
    ({"type": "team", "teams": ["a", "a"], "data": 1}, "duplicate"),
    ({"type": "team", "teams": [""], "data": 1}, "team names"),
    ({"type": "team", "teams": ["x" * 129], "data": 1}, "team names"),
    ({"type": "team", "teams": ["{acme}"], "data": 1}, "team names"),
    ({"type": "team", "teams": ["a b"], "data": 1}, "team names"),
    ({"type": "team", "teams": ["ok\n"], "data": 1}, "team names"),
    ({"type": "team", "teams": [1], "data": 1}, "team names"),
    ({"type": "team", "teams": ["a"]}, "missing 'data'"),
]


@pytest.mark.parametrize(("frame", "needle"), INVALID)
def test_invalid_fields_echo_the_id(frame, needle):
    err = refused(json.dumps({**frame, "id": "req-7"}))
    assert err.code == BAD_REQUEST
    assert err.id == "req-7"
    assert needle in err.message
    # ...and the error frame the server sends answers that request.
    assert json.loads(err.to_frame()) == {
        "type": "error",
        "id": "req-7",
        "code": BAD_REQUEST,
        "message": err.message,
    }


@pytest.mark.parametrize(("frame", "needle"), INVALID)
def test_invalid_fields_without_id(frame, needle):
    err = refused(json.dumps(frame))
    assert (err.code, err.id) == (BAD_REQUEST, None)


@pytest.mark.parametrize("bad_id", [7, ["c1"], {"a": 1}, "i" * 129, True])
def test_bad_id_is_refused_and_not_echoed(bad_id):
    err = refused(json.dumps({"type": "direct", "to": 1, "data": 1, "id": bad_id}))
    assert (err.code, err.id) == (BAD_REQUEST, None)
    assert "id" in err.message


def test_too_large_text_and_binary():
    frame = json.dumps({"type": "direct", "to": 1, "data": "x" * 200, "id": "c1"})
    assert parse_client_frame(frame, len(frame)).to == 1
    assert refused(frame, len(frame) - 1).code == TOO_LARGE
    assert refused(frame.encode(), len(frame) - 1).code == TOO_LARGE


def test_too_large_counts_utf8_bytes_not_chars():
    frame = json.dumps({"type": "direct", "to": 1, "data": "é" * 100}, ensure_ascii=False)
    size = len(frame.encode())
    assert size > len(frame)
    assert parse_client_frame(frame, size).data == "é" * 100
    assert refused(frame, size - 1).code == TOO_LARGE


# --- encoders -----------------------------------------------------------------------


def test_encode_message_shape_is_compact():
    text = encode_message(42, {"t": "hi"}, "c1", 1_700_000_000_123)
    assert text == '{"type":"message","from":42,"data":{"t":"hi"},"id":"c1","ts":1700000000123}'
    team = encode_message("u-1", [1], None, 5, teams=("a", "b"))
    assert team == '{"type":"message","from":"u-1","data":[1],"id":null,"ts":5,"teams":["a","b"]}'


def test_encode_ack_and_error():
    assert encode_ack("c2", 3) == '{"type":"ack","id":"c2","delivered":3}'
    assert json.loads(encode_error(None, p.FORBIDDEN, "no")) == {
        "type": "error",
        "id": None,
        "code": "forbidden",
        "message": "no",
    }


def test_error_codes_constants():
    assert {
        "bad_request",
        "forbidden",
        "too_large",
        "not_found",
        "unavailable",
        "internal",
        "rate_limited",
        "too_many_recipients",
        "unauthorized",
    } == p.ERROR_CODES


def test_lone_surrogate_in_data_still_encodes_to_utf8():
    msg = parse_client_frame('{"type":"direct","to":1,"data":"\\ud800x"}', MAX)
    text = encode_message(2, msg.data, msg.id, 1)
    text.encode("utf-8")  # would raise if a raw surrogate leaked into the frame
    assert json.loads(text)["data"] == "\ud800x"


# --- hypothesis ---------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**62), max_value=2**62)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
team_names = st.from_regex(p.TEAM_RE, fullmatch=True)
user_ids = st.integers(min_value=0, max_value=2**63 - 1) | st.text(min_size=1, max_size=256)
frame_ids = st.none() | st.text(max_size=128)


@settings(max_examples=300)
@given(user_ids, json_values, frame_ids, st.integers(min_value=0, max_value=2**53))
def test_encode_message_round_trips(user, data, id, ts):
    assert json.loads(encode_message(user, data, id, ts)) == {
        "type": "message",
        "from": user,
        "data": data,
        "id": id,
        "ts": ts,
    }


@settings(max_examples=300)
@given(st.lists(team_names, min_size=1, max_size=p.MAX_TEAMS, unique=True), json_values, frame_ids)
def test_team_frames_round_trip_through_parse(teams, data, id):
    raw = json.dumps({"type": "team", "teams": teams, "data": data, "id": id})
    msg = parse_client_frame(raw, 10**7)
    assert msg == TeamMessage(tuple(teams), data, id)
    assert json.loads(encode_message(1, msg.data, msg.id, 0, msg.teams))["teams"] == teams


@settings(max_examples=300)
@given(user_ids, json_values, frame_ids)
def test_direct_frames_round_trip_through_parse(to, data, id):
    raw = json.dumps({"type": "direct", "to": to, "data": data, "id": id})
    canonical = normalize_user_id(to)
    if canonical is None:
        assert refused(raw, 10**7).id == id
    else:
        assert parse_client_frame(raw, 10**7) == DirectMessage(canonical, data, id)


@settings(max_examples=300)
@given(st.text(max_size=300) | st.binary(max_size=300), st.integers(min_value=0, max_value=400))
def test_arbitrary_input_only_raises_protocol_error(raw, max_bytes):
    try:
        parse_client_frame(raw, max_bytes)
    except ProtocolError as err:
        assert err.code in (BAD_REQUEST, TOO_LARGE)


frame_dicts = st.fixed_dictionaries(
    {"type": st.sampled_from(["direct", "team", "other"])},
    optional={
        "to": json_values | user_ids,
        "teams": json_values | st.lists(team_names, max_size=3),
        "data": json_values,
        "id": json_values | frame_ids,
    },
)


@settings(max_examples=300)
@given(frame_dicts)
def test_arbitrary_objects_only_raise_protocol_error(obj):
    try:
        parse_client_frame(json.dumps(obj), 10**7)
    except ProtocolError as err:
        assert err.code == BAD_REQUEST
        if isinstance(obj.get("id"), str) and len(obj["id"]) <= 128:
            assert err.id == obj["id"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        ("0", 0),
        ("007", "007"),  # exact: not user 7 (docs/protocol.md, "Identifiers")
        ("9" * 30, "9" * 30),  # too big for an int tenant, a fine string-tenant name
        (" 7", None),
        ("u 7", "u 7"),
        ("-1", None),
        ("+1", None),
        ("-", "-"),
        ("a-1", "a-1"),
        ("٣", "٣"),  # a non-ASCII digit is a string id, not 3
        (-1, None),
        (False, None),
        ("", None),
        ("\x00", None),
        ("\ud800", None),
        (None, None),
        (1.0, None),
    ],
)
def test_normalize_user_id(value, expected):
    assert normalize_user_id(value) == expected


@pytest.mark.parametrize(
    ("name", "tenant_ok", "team_ok"),
    [
        ("acme", True, True),
        ("a.b-c_9", True, True),
        ("a:b", False, True),
        ("x" * 64, True, True),
        ("x" * 65, False, True),
        ("x" * 129, False, False),
        ("acme\n", False, False),
        ("{acme}", False, False),
        ("", False, False),
        (None, False, False),
    ],
)
def test_name_validators(name, tenant_ok, team_ok):
    assert p.is_valid_tenant(name) is tenant_ok
    assert p.is_valid_team(name) is team_ok


# --- what parses must encode (found by tests/fuzz/test_fuzz.py) ----------------------------


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1E400", "-2e308"])
def test_a_number_that_overflows_a_double_is_bad_request(number):
    """`1e999` parsed as `inf`, which encode_message refuses (allow_nan=False): the
    sidecar answered `internal` and logged a traceback for every such frame."""
    err = refused('{"type":"direct","to":1,"data":[1,' + number + "]}")
    assert err.code == BAD_REQUEST and "out of range" in err.message
    assert parse_client_frame('{"type":"direct","to":1,"data":1e308}').data == 1e308


def test_anything_parse_accepts_encodes_however_deep_it_nests():
    """Nesting just under the decoder's recursion limit parsed, then failed to encode
    one level deeper in the stack (RecursionError: `internal` and a traceback)."""
    deepest = 0
    for depth in range(1, 1200):
        for inner in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
            raw = '{"type":"direct","to":1,"data":' + inner + "}"
            try:
                msg = parse_client_frame(raw, 1 << 20)
            except ProtocolError as err:
                assert err.code == BAD_REQUEST
                continue
            deepest = max(deepest, depth)
            assert json.loads(encode_message(7, msg.data, msg.id, 0))["data"] == msg.data
    assert deepest == p.MAX_DEPTH - 1  # the frame's own object is the first level


@given(
    st.one_of(st.integers(0, 2**40), st.text(min_size=1, max_size=20)).filter(
        lambda u: p.normalize_user_id(u) is not None  # (the codec writes what it is given)
    ),
    st.lists(st.sampled_from(["eng", "ops", "a:b"]), min_size=1, max_size=3, unique=True),
    st.none() | st.text(max_size=10),
)
def test_client_frames_written_by_the_codec_parse_back(to, teams, msg_id) -> None:
    """encode_direct/encode_team are the one writer of client frames: what they write,
    the parser reads back as the same message."""
    direct = p.parse_client_frame(p.encode_direct(to, {"x": [1]}, msg_id), 10**6)
    assert (direct.to, direct.data, direct.id) == (
        p.normalize_user_id(to), {"x": [1]}, msg_id
    )  # fmt: skip
    team = p.parse_client_frame(p.encode_team(teams, "hi", msg_id), 10**6)
    assert (team.teams, team.data, team.id) == (tuple(teams), "hi", msg_id)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@given(
    st.integers(min_value=0) | st.text(min_size=1),
    _JSON,
    st.none() | st.text(),
    st.integers(min_value=0),
    st.none() | st.lists(st.text(min_size=1), max_size=3),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=5),
)
def test_spliced_frames_are_what_the_encoder_gives(
    user, data, msg_id, ts, teams, delivered, undelivered
) -> None:
    """encode_message and encode_ack build their frames from parts: byte for byte what
    json-encoding the whole object gives (and what clients parse back)."""

    frame = {"type": "message", "from": user, "data": data, "id": msg_id, "ts": ts}
    if teams is not None:
        frame["teams"] = teams
    plain = json.dumps(frame, separators=(",", ":"), allow_nan=False)
    assert p.encode_message(user, data, msg_id, ts, teams) == plain
    ack = {"type": "ack", "id": msg_id, "delivered": delivered}
    if undelivered:
        ack["undelivered"] = undelivered
    plain_ack = json.dumps(ack, separators=(",", ":"))
    assert p.encode_ack(msg_id, delivered, undelivered) == plain_ack
