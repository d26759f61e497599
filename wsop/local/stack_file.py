"""The members file: the local stack's registry, read by every process of the stack.

`wsop up`/`wsop scale` write it, the LB and every sidecar follow it
(`wsop.discovery.RegistryFileMembership`), `wsop status`/`wsop down` read it. It holds
the admin token (and the JWT secret of a secure stack), so it is created 0600 and
always replaced atomically (temp file + rename): a reader never sees half a document.

    {"version": 3, "algo": "maglev", "insecure": false, "redis_url": "redis://…",
     "admin_token": "…", "secret": "…" | null,
     "lb": {"name": "lb", "url": "ws://127.0.0.1:8765", "pid": 123},
     "sidecars": [{"name": "s0", "url": "ws://127.0.0.1:40001", "pid": 124}, …]}
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from wsop.discovery import normalize_url
from wsop.errors import InputError
from wsop.local.filelock import exclusive
from wsop.local.paths import StackNotRunning, ensure_state_dir, state_dir

_INDEX = re.compile(r"^s(\d+)$")


def members_path() -> Path:
    return state_dir() / "stack.json"


def logs_dir() -> Path:
    return state_dir() / "logs"


@dataclass(frozen=True)
class ProcRecord:
    """One process of the stack: its ring name, its ws base url, its pid."""

    name: str
    url: str
    pid: int

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def http(self) -> str:
        """Base url for its admin HTTP endpoints (same port as the WebSocket)."""
        return "http" + self.url[2:]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str) -> ProcRecord:
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object")
        try:
            name, url, pid = data["name"], data["url"], data["pid"]
        except KeyError as exc:
            raise InputError(f"{where}: missing {exc.args[0]!r}") from None
        if not isinstance(name, str) or not isinstance(url, str) or type(pid) is not int:
            raise InputError(f"{where}: name/url must be strings and pid an integer")
        return cls(name, normalize_url(name, url), pid)


def sidecar_index(name: str) -> int:
    """`s7` -> 7; launcher-named sidecars sort and scale by this number."""
    match = _INDEX.match(name)
    return int(match.group(1)) if match else -1


@dataclass(frozen=True)
class StackRecord:
    """The whole members file."""

    algo: str
    insecure: bool
    redis_url: str
    admin_token: str
    lb: ProcRecord
    secret: str | None = None
    sidecars: tuple[ProcRecord, ...] = field(default_factory=tuple)
    version: int = 1
    quotas: str | None = None
    """The quotas file every sidecar of the stack is started with (absolute path)."""
    ca_file: str | None = None
    """TLS (`wsop up --tls`): the CA of the stack's certificate; its URLs are wss://."""
    history: str = "memory"
    """`wsop up --history`: every sidecar's `--history` (recovery backend)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "algo": self.algo,
            "insecure": self.insecure,
            "redis_url": self.redis_url,
            "admin_token": self.admin_token,
            "secret": self.secret,
            "lb": self.lb.to_json(),
            "sidecars": [s.to_json() for s in self.sidecars],
            "quotas": self.quotas,
            "ca_file": self.ca_file,
            "history": self.history,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "members file") -> StackRecord:
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a JSON object")
        try:
            sidecars = tuple(
                ProcRecord.from_json(s, f"{where}: sidecars[{i}]")
                for i, s in enumerate(data.get("sidecars", []))
            )
            return cls(
                algo=str(data["algo"]),
                insecure=bool(data["insecure"]),
                redis_url=str(data["redis_url"]),
                admin_token=str(data["admin_token"]),
                secret=data.get("secret"),
                lb=ProcRecord.from_json(data["lb"], f"{where}: lb"),
                sidecars=sidecars,
                version=int(data.get("version", 1)),
                quotas=data.get("quotas"),
                ca_file=data.get("ca_file"),
                history=str(data.get("history", "memory")),
            )
        except KeyError as exc:
            raise InputError(f"{where}: missing {exc.args[0]!r}") from None

    def with_sidecars(self, sidecars: list[ProcRecord]) -> StackRecord:
        ordered = tuple(sorted(sidecars, key=lambda s: (sidecar_index(s.name), s.name)))
        return replace(self, sidecars=ordered, version=self.version + 1)

    def all_procs(self) -> list[ProcRecord]:
        return [self.lb, *self.sidecars]


def load(path: Path | None = None) -> StackRecord | None:
    """The members file, or None when there is none."""
    path = path or members_path()
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):  # (a state dir that is a file: none)
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path}: not JSON ({exc}); remove it if no stack runs") from None
    return StackRecord.from_json(data, str(path))


def require(path: Path | None = None) -> StackRecord:
    """The members file, or `StackNotRunning` (exit 1, the one "no local stack" line
    every command shares)."""
    record = load(path)
    if record is None:
        raise StackNotRunning()
    return record


def save(record: StackRecord, path: Path | None = None) -> Path:
    """Write atomically, mode 0600 from the first byte (it holds the admin token)."""
    path = path or members_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(record.to_json(), handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def remove(path: Path | None = None) -> None:
    (path or members_path()).unlink(missing_ok=True)


@contextmanager
def locked() -> Iterator[None]:
    """Serialise up/scale/down: two launchers must not both edit the members file."""
    with exclusive(ensure_state_dir() / "stack.lock"):
        yield
