"""`wsop inject` and `wsop manifests`: YAML for a cluster, on stdout (pipe to kubectl).

`--json` prints the same objects as one `v1/List` document (kubectl applies it too).
What was injected, and any note, goes to stderr so stdout stays applyable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from wsop.cli.options import JsonOpt
from wsop.cli.output import err_console
from wsop.errors import InputError, UsageError
from wsop.k8s.discovery import DEFAULT_PORT
from wsop.k8s.manifests import DEFAULT_IMAGE, Settings

ImageOpt = Annotated[str, typer.Option("--image", help="wsop container image.")]
PortOpt = Annotated[int, typer.Option("--port", help="The sidecar's port (named 'wsop').")]
AlgoOpt = Annotated[str, typer.Option("--algo", help="Ring algorithm of the stack.")]


def _settings(namespace: str | None, image: str, port: int, algo: str) -> Settings:
    from wsop.ring import PLACEMENTS

    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be 1–65535, got {port}")
    if not image.strip():
        raise UsageError("--image must not be empty")
    if algo not in PLACEMENTS:
        raise UsageError(f"unknown --algo {algo!r}; choose one of: {', '.join(PLACEMENTS)}")
    return Settings(namespace=namespace, image=image, sidecar_port=port, algo=algo)


def _write(documents: list, as_json: bool) -> None:
    if as_json:
        doc = {"apiVersion": "v1", "kind": "List", "items": documents}
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        from wsop.k8s.inject import dump_all

        sys.stdout.write(dump_all(documents))
    sys.stdout.flush()


def inject_cmd(
    file: Annotated[str, typer.Argument(help="Multi-document YAML file, or - for stdin.")],
    image: ImageOpt = DEFAULT_IMAGE,
    port: PortOpt = DEFAULT_PORT,
    algo: AlgoOpt = "maglev",
    as_json: JsonOpt = False,
) -> None:
    """Add the wsop sidecar to every Deployment labelled ws.operator/enabled: "true"."""
    from wsop.k8s.inject import inject

    if file == "-":
        text, source = sys.stdin.read(), "<stdin>"
    else:
        path = Path(file)
        try:
            text, source = path.read_text(), str(path)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read ({exc})") from None
    result = inject(text, _settings(None, image, port, algo), source)
    _write(result.documents, as_json)
    for name in result.injected:
        err_console.print(
            f"injected wsop-sidecar into Deployment {name}", highlight=False, soft_wrap=True
        )
    for name in result.unchanged:
        err_console.print(f"Deployment {name} already up to date", highlight=False, soft_wrap=True)
    if not result.injected and not result.unchanged:
        err_console.print(
            'no Deployment labelled ws.operator/enabled: "true" in the input; nothing injected',
            highlight=False,
            soft_wrap=True,
        )
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def manifests_cmd(
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Namespace to put every object in.")
    ] = None,
    image: ImageOpt = DEFAULT_IMAGE,
    port: PortOpt = DEFAULT_PORT,
    algo: AlgoOpt = "maglev",
    with_locust_workers: Annotated[
        bool, typer.Option("--with-locust-workers", help="Add a locust worker Deployment.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """LB Deployment + Service, headless sidecar Service, RBAC and ConfigMap, as YAML."""
    from wsop.k8s.manifests import render

    _write(render(_settings(namespace, image, port, algo), with_locust_workers), as_json)
