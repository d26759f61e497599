"""`wsop webhook serve` and `wsop webhook certs`: the sidecar injector as an admission webhook.

`serve` injects exactly what `wsop inject` would (same flags: --image, --sidecar-port,
--algo), into pods at creation; `certs` makes the CA and serving certificate it needs
(`wsop manifests --webhook` puts the CA into the MutatingWebhookConfiguration).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from wsop.cli.app import new_app
from wsop.cli.manifests import AlgoOpt, ImageOpt, settings_from_flags
from wsop.cli.options import JsonOpt
from wsop.cli.output import emit
from wsop.errors import UsageError
from wsop.k8s.discovery import DEFAULT_PORT
from wsop.k8s.manifests import DEFAULT_IMAGE, NAME, WEBHOOK, WEBHOOK_CERTS_DIR, WEBHOOK_PORT

app = new_app("The sidecar injector as a mutating admission webhook (HTTPS).")

SidecarPortOpt = Annotated[
    int, typer.Option("--sidecar-port", help="The injected sidecar's port (named 'wsop').")
]


@app.command("serve")
def serve_cmd(
    cert: Annotated[
        Path, typer.Option("--cert", metavar="FILE", help="Serving certificate (PEM).")
    ] = Path(WEBHOOK_CERTS_DIR) / "tls.crt",
    key: Annotated[Path, typer.Option("--key", metavar="FILE", help="Its private key (PEM).")] = (
        Path(WEBHOOK_CERTS_DIR) / "tls.key"
    ),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option("--port", help="HTTPS port (0: any free port).")] = (
        WEBHOOK_PORT
    ),
    image: ImageOpt = DEFAULT_IMAGE,
    sidecar_port: SidecarPortOpt = DEFAULT_PORT,
    algo: AlgoOpt = "maglev",
) -> None:
    """Serve AdmissionReview v1 on https://HOST:PORT/mutate: add the wsop sidecar to every
    pod it is asked about (as `wsop inject` does), as a JSONPatch; GET /healthz for probes."""
    from wsop.k8s.webhook_server import WebhookServer

    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0–65535, got {port}")
    settings = settings_from_flags(None, image, sidecar_port, algo, port_flag="--sidecar-port")
    server = WebhookServer((host, port), settings, cert, key)
    print(
        f"webhook listening on https://{host}:{server.port}/mutate (image {settings.image})",
        flush=True,
    )

    def stop(signum: int, frame: object) -> None:  # shutdown() waits for serve_forever
        threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


@app.command("certs")
def certs_cmd(
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Namespace of the webhook Service.")
    ] = "default",
    out: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Where to write the four PEM files.")
    ] = Path(WEBHOOK_CERTS_DIR),
    service: Annotated[str, typer.Option("--service", help="The webhook Service's name.")] = (
        WEBHOOK
    ),
    days: Annotated[int, typer.Option("--days", help="Validity of the serving certificate.")] = 365,
    extra: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            help="Another DNS name or IP address for the certificate (repeatable).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a CA and a serving certificate for the webhook Service (ca.crt, ca.key,
    tls.crt, tls.key); print the kubectl command that stores them as a Secret."""
    from wsop.k8s.certs import issue

    issued = issue(out, service, namespace, days, tuple(extra or ()))
    secret = f"{WEBHOOK}-tls"
    command = (
        f"kubectl -n {namespace} create secret tls {secret} "
        f"--cert={out / 'tls.crt'} --key={out / 'tls.key'}"
    )
    payload = {**issued.to_json(), "secret": secret, "kubectl": command}

    def render(console) -> None:
        console.print(f"wrote ca.crt, ca.key, tls.crt, tls.key to {out}", highlight=False)
        console.print(
            f"valid for {', '.join(issued.dns_names + issued.ip_addresses)} "
            f"until {issued.not_after:%Y-%m-%d}",
            highlight=False,
            soft_wrap=True,
        )
        console.print("next:", highlight=False)
        console.print(f"  {command}", highlight=False, soft_wrap=True)
        console.print(
            f"  {NAME} manifests -n {namespace} --webhook --webhook-ca={out / 'ca.crt'} "
            "| kubectl apply -f -",
            highlight=False,
            soft_wrap=True,
        )

    emit(payload, as_json, render)
