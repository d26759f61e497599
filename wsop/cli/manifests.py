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

from wsop.checks import check_member_name
from wsop.cli.options import JsonOpt
from wsop.cli.output import err_console
from wsop.errors import InputError, UsageError
from wsop.k8s.discovery import DEFAULT_PORT
from wsop.k8s.manifests import DEFAULT_IMAGE, WEBHOOK, WEBHOOK_CERTS_DIR, Settings

ImageOpt = Annotated[
    str, typer.Option("--image", help="wsop container image (default: what `make image` builds).")
]
PortOpt = Annotated[int, typer.Option("--port", help="The sidecar's port (named 'wsop').")]
AlgoOpt = Annotated[str, typer.Option("--algo", help="Ring algorithm of the stack.")]


def settings_from_flags(
    namespace: str | None,
    image: str,
    port: int,
    algo: str,
    lb_tls_secret: str | None = None,
    port_flag: str = "--port",
) -> Settings:
    """`port_flag`: the flag `port` came from (`wsop webhook serve` calls it --sidecar-port:
    its own --port is the webhook's)."""
    from wsop.ring import PLACEMENTS

    if not 1 <= port <= 65535:
        raise UsageError(f"{port_flag} must be 1–65535, got {port}")
    if not image.strip():
        raise UsageError("--image must not be empty")
    if algo not in PLACEMENTS:
        raise UsageError(f"unknown --algo {algo!r}; choose one of: {', '.join(PLACEMENTS)}")
    if namespace is not None:  # goes into every object and the kubectl lines we print
        check_member_name(namespace, "--namespace")
    return Settings(
        namespace=namespace, image=image, sidecar_port=port, algo=algo, lb_tls_secret=lb_tls_secret
    )


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
    result = inject(text, settings_from_flags(None, image, port, algo), source)
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
    rebalancer: Annotated[
        bool,
        typer.Option(
            "--rebalancer/--no-rebalancer",
            help="The watch-driven rebalancer Deployment (leader-elected) and its RBAC.",
        ),
    ] = True,
    webhook: Annotated[
        bool,
        typer.Option(
            "--webhook", help="The sidecar-injecting admission webhook (needs --namespace)."
        ),
    ] = False,
    webhook_ca: Annotated[
        Path,
        typer.Option(
            "--webhook-ca",
            metavar="FILE",
            help="PEM CA of the webhook's certificate, for caBundle (`wsop webhook certs`).",
        ),
    ] = Path(WEBHOOK_CERTS_DIR) / "ca.crt",
    with_locust_workers: Annotated[
        bool, typer.Option("--with-locust-workers", help="Add a locust worker Deployment.")
    ] = False,
    lb_tls_secret: Annotated[
        str | None,
        typer.Option(
            "--lb-tls-secret",
            metavar="SECRET",
            help="A kubernetes.io/tls Secret: the LB serves wss:// with it (Service port 443).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """LB Deployment + Service, headless sidecar Service, RBAC and ConfigMap, the
    rebalancer and optionally the webhook, as YAML."""
    from wsop.k8s.manifests import render

    settings = settings_from_flags(namespace, image, port, algo, lb_tls_secret)
    ca = _webhook_ca(webhook_ca, namespace) if webhook else None
    _write(render(settings, with_locust_workers, rebalancer, ca), as_json)


def _webhook_ca(path: Path, namespace: str | None) -> bytes:
    """The CA for caBundle; when the serving certificate sits beside it (as `wsop webhook
    certs` leaves them), check it names the Service in this namespace: a mismatch would
    only show up as failing pod creations."""
    from wsop.k8s.certs import read_ca_bundle, serving_names

    if not namespace:
        raise UsageError("--webhook needs --namespace (the webhook Service lives in one)")
    ca = read_ca_bundle(path)
    names = serving_names(path.parent / "tls.crt")
    expected = f"{WEBHOOK}.{namespace}.svc"
    if names is not None and expected not in names:
        raise UsageError(
            f"{path.parent / 'tls.crt'} is for {', '.join(names) or 'no DNS name'}, not "
            f"{expected}: run `wsop webhook certs -n {namespace} --out {path.parent}`"
        )
    return ca
