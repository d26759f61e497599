"""Rendering shared by every command: one `--json` path and one human path per result."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console

console = Console()
err_console = Console(stderr=True)

JSON_OPTION_HELP = "Print one JSON document on stdout instead of tables."


def emit(payload: dict[str, Any], as_json: bool, render: Callable[[Console], None]) -> None:
    """Print `payload` as JSON, or call `render` for the human form.

    Both paths read the same result, so the table can never disagree with `--json`.
    """
    if as_json:
        sys.stdout.write(json.dumps(payload, sort_keys=False) + "\n")
        sys.stdout.flush()
    else:
        render(console)
