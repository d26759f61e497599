"""Parsing membership and presence CSV files, with errors that name the file and line.

Everything is parsed and validated before anything is written, so a bad row on line
90,000 leaves Redis exactly as it was.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wsop.acl import keys
from wsop.errors import InputError, UsageError
from wsop.names import check_string_id, parse_int_id

MEMBERS_HEADER = ("tenant", "team", "user")
ONLINE_HEADER = ("tenant", "user")

UserId = int | str


@dataclass
class ParsedTenant:
    """One tenant's rows: team → user ids, and the online ids if an online file was given."""

    teams: dict[str, list[UserId]] = field(default_factory=lambda: defaultdict(list))
    online: list[UserId] | None = None


def _rows(path: Path, header: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    try:
        # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark before the header
        handle = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            first = next(reader, None)
            if first is None:
                raise InputError(f"{path}: empty file (expected header {','.join(header)})")
            got = tuple(c.strip().lower() for c in first)
            if got != header:
                raise InputError(
                    f"{path}:1: header is {','.join(first)!r}, expected {','.join(header)!r}"
                )
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise InputError(
                        f"{path}:{reader.line_num}: expected {len(header)} fields "
                        f"({','.join(header)}), got {len(row)}"
                    )
                yield reader.line_num, [c.strip() for c in row]
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise InputError(f"{path}:{reader.line_num}: {exc}") from None


def _user(raw: str, string_ids: bool, max_users: int) -> UserId:
    return check_string_id(raw) if string_ids else parse_int_id(raw, max_users)


def _at(path: Path, line: int, exc: UsageError) -> InputError:
    return InputError(f"{path}:{line}: {exc}")


def parse(
    members: Path, online: Path | None, *, string_ids: bool, max_users: int
) -> dict[str, ParsedTenant]:
    """All tenants of the files, validated; raises InputError naming file:line."""
    tenants: dict[str, ParsedTenant] = defaultdict(ParsedTenant)
    for line, (tenant, team, user) in _rows(members, MEMBERS_HEADER):
        try:
            keys.check_tenant(tenant)
            keys.check_team(team)
            uid = _user(user, string_ids, max_users)
        except InputError:
            raise
        except UsageError as exc:
            raise _at(members, line, exc) from None
        tenants[tenant].teams[team].append(uid)
    if online is not None:
        for parsed in tenants.values():
            parsed.online = []
        for line, (tenant, user) in _rows(online, ONLINE_HEADER):
            try:
                keys.check_tenant(tenant)
                uid = _user(user, string_ids, max_users)
            except UsageError as exc:
                raise _at(online, line, exc) from None
            parsed = tenants[tenant]
            if parsed.online is None:
                parsed.online = []
            parsed.online.append(uid)
    return dict(tenants)
