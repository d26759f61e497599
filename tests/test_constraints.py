"""constraints.txt (what CI tested, pinned) agrees with pyproject.toml's ranges: a fresh
`make install` must find a pin for every dependency, inside the range a library user gets."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            found[canonicalize_name(name)] = version.strip()
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return [Requirement(spec) for spec in declared]


def test_every_dependency_is_pinned_inside_its_declared_range() -> None:
    pinned = pins()
    for req in requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} has no pin in constraints.txt (run make lock)"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"{req.name}=={pinned[name]} is outside pyproject's {req.specifier} (run make lock)"
        )


def test_the_image_installs_the_same_pins() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "-c /deps/constraints.txt" in dockerfile
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text()
