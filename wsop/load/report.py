"""From the master's results document to the summary users see, the verdict and a plot.

CLI side (no gevent). `summary` is the one result object: the rich table and `--json`
both read it, and `verdict` decides the exit code from it alone.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from wsop.load.chaos import Fault, windows
from wsop.load.tallies import LOSS_CLASSES, WINDOW_FIELDS, new_window, percentiles

SUMMARY_KEYS = (
    "profile", "target_rate", "sent", "expected_deliveries", "delivered", "lost",
    "duplicates", "msgs_per_s", "deliveries_per_s", "latency_ms",
)  # fmt: skip


WINDOW_KEYS = WINDOW_FIELDS
# A worker that had to drop more than this share of its schedule (it was over 1 s
# behind) could not keep up: the generator, not the stack, limited the rate.
BEHIND_LIMIT = 0.01


def generator_summary(generators: list[dict[str, Any]], sent: int) -> dict[str, Any]:
    """What the load generator itself cost over the run phase, and whether it was the limit.

    Per worker: CPU in cores (`cpu_s / wall_s`, from /proc) and the busy share of its
    loop (the time it was not waiting for sockets or for the next send). The generator
    limited the run when a worker fell more than 1 s behind its schedule often enough
    to drop over 1% of it (`behind`); the messages skipped because their user was
    reconnecting (`away`) or because the stack did not read (`blocked`) are the stack's.
    """
    cpu = {str(g["worker"]): round(g["cpu_s"] / g["wall_s"], 3) if g["wall_s"] else 0.0
           for g in generators}  # fmt: skip
    busy = {
        str(g["worker"]): round(1 - g["idle_s"] / g["wall_s"], 3) if g["wall_s"] else 0.0
        for g in generators
    }
    total_cpu = sum(g["cpu_s"] for g in generators)
    return {
        "generator_limited": any(
            g["behind"] > BEHIND_LIMIT * max(1, g["scheduled"]) for g in generators
        ),
        "generator_cpu": cpu,
        "generator_busy": busy,
        "generator_us_per_msg": round(total_cpu / sent * 1e6, 1) if sent else None,
        "generator_behind": sum(g["behind"] for g in generators),
        "generator_blocked": sum(g["blocked"] for g in generators),
        "generator_away": sum(g["away"] for g in generators),
    }


def window_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per fault window: its span, the fault that opened it, its counts."""
    plan = results["plan"]
    faults = [Fault.from_json(f) for f in plan.get("extra", {}).get("chaos", ())]
    duration = sum(s["seconds"] for s in plan["stages"])
    counts = results.get("windows") or []
    rows = []
    for i, span in enumerate(windows(faults, duration)):
        w = counts[i] if i < len(counts) else new_window()
        rows.append(
            {
                **span,
                **{k: w.get(k, 0) for k in WINDOW_KEYS},
                "reconnect_ms": percentiles(w.get("reconnect_ms", [])),
            }
        )
    return rows


def summary(
    results: dict[str, Any], target: str, faults: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The DESIGN.md keys first, then the side counts that explain them."""
    plan, c = results["plan"], results["counters"]
    run_s = results["run_s"] or 0.0
    planned = results["planned_messages"]
    samples = [ms for w in results.get("windows") or () for ms in w.get("reconnect_ms", ())]
    return {
        "profile": plan["profile"],
        "target_rate": plan["rate"],
        "sent": c["sent"],
        "expected_deliveries": c["expected"],
        "delivered": c["delivered"],
        "lost": c["lost"],
        "duplicates": c["duplicates"],
        "msgs_per_s": round(c["sent"] / run_s, 1) if run_s else 0.0,
        "deliveries_per_s": round(c["delivered"] / run_s, 1) if run_s else 0.0,
        "latency_ms": results["latency_ms"],
        "silent_loss": c.get("silent_loss", 0),
        "silent_late": c.get("silent_late", 0),
        "reported_undelivered": c.get("reported_undelivered", 0),
        "lost_disconnected": c.get("lost_disconnected", 0),
        "lost_unacked": c.get("lost_unacked", 0),
        "refused": c.get("refused", 0),
        "refused_codes": results.get("refused_codes", {}),
        "connect_failures": c.get("connect_failures", 0),
        "connect_errors": results.get("connect_errors", {}),
        "cross_tenant": c.get("cross_tenant", 0),
        "reconnects": c["reconnects"],
        "reconnect_ms": percentiles(samples),
        "recovered_messages": c.get("recovered_messages", 0),
        "recovered_late": c.get("recovered_late", 0),
        "recovered_duplicates": c.get("recovered_duplicates", 0),
        "live_after_replay": c.get("live_after_replay", 0),
        "recovery_ok": c.get("recovery_ok", 0),
        "recovery_failed": c.get("recovery_failed", 0),
        "recovery_reasons": results.get("recovery_reasons", {}),
        "not_back": c.get("not_back", 0),
        "silent_examples": results.get("silent_examples", []),
        "faults": faults or [],
        "windows": window_rows(results),
        "target": target,
        "connections": plan["connections"],
        "ready": c["ready"],
        "workers": results["workers"],
        "duration_s": run_s,
        "planned_messages": planned,
        "rate_ratio": round(c["sent"] / planned, 4) if planned else 0.0,
        "direct": c["direct"],
        "team": c["team"],
        "surplus": c["surplus"],
        "late": c["late"],
        "unexpected": c["unexpected"],
        "errors": c["errors"],
        "send_failed": c["send_failed"],
        "acks_missing": c["acks_missing"],
        "ack_undelivered": c["ack_undelivered"],
        "ack_mismatch": c["ack_mismatch"],
        "disconnects": c["disconnects"],
        "workers_settled": results["finals"],
        **generator_summary(results.get("generators") or [], c["sent"]),
    }


def verdict(
    result: dict[str, Any], allow_loss: bool, min_rate_ratio: float, chaos: bool = False
) -> list[str]:
    """Why the run failed (empty list: it passed).

    A chaos run accepts the losses its faults explain (recipient or sender disconnected,
    reported in the ack) but never a silent one; `--allow-loss` accepts every loss.
    Nothing ever excuses a cross-tenant delivery.
    """
    reasons: list[str] = []
    if result["cross_tenant"]:
        reasons.append(f"{result['cross_tenant']} deliveries crossed tenants")
    if chaos and not allow_loss and result["silent_loss"]:
        worst = max(result["windows"], key=lambda w: w["silent_loss"])
        late = result["silent_late"]
        reasons.append(
            f"{result['silent_loss']} silent losses (deliveries to connected users neither "
            f"made nor reported undelivered within the grace period; most after "
            f"{worst['fault'] or 'the start'})"
            + (f"; {late} of them arrived later: raise --grace to tell slow from lost" if late
               else "")
        )  # fmt: skip
    elif result["lost"] and not allow_loss and not chaos:
        share = result["lost"] / max(1, result["expected_deliveries"])
        classes = ", ".join(f"{k} {result[k]}" for k in LOSS_CLASSES if result[k])
        reasons.append(
            f"{result['lost']} of {result['expected_deliveries']} deliveries lost "
            f"({share:.2%}: {classes})"
        )
    failed = [f for f in result["faults"] if not f.get("ok")]
    if failed:
        reasons.append(
            f"{len(failed)} fault(s) did not happen as planned: "
            + "; ".join(f"{f['label']}: {f['detail']}" for f in failed)
        )
    if chaos and result["not_back"]:
        reasons.append(f"{result['not_back']} users never came back after a disconnect")
    if result["rate_ratio"] < min_rate_ratio:
        reasons.append(
            f"achieved {result['sent']} of {result['planned_messages']} planned messages "
            f"({result['rate_ratio']:.1%} < {min_rate_ratio:.0%}; {result['msgs_per_s']} msg/s "
            f"for a {result['target_rate']:g} msg/s target)" + _limit(result)
        )
    if result["workers_settled"] < result["workers"]:
        reasons.append(
            f"only {result['workers_settled']} of {result['workers']} workers reported final counts"
        )
    return reasons


def _limit(result: dict[str, Any]) -> str:
    """Who held the rate down, for the verdict's line."""
    if result.get("generator_limited"):
        cpu = ", ".join(f"worker {w} at {c:.2f} CPU" for w, c in result["generator_cpu"].items())
        return f"; the load generator was the limit ({cpu}): add --workers"
    if result.get("generator_blocked"):
        return f"; the stack stopped reading ({result['generator_blocked']} sends held back)"
    return ""


def plot(results: dict[str, Any], path: Path, faults: list[dict[str, Any]] | None = None) -> Path:
    """Rate (sent vs target) and latency (p50/p95/p99, rolling) over time, as a PNG;
    each fault is a labelled vertical line at the time it actually started.

    Both rates are steps over the second they describe: a point's `msgs_per_s` is the
    rate since the previous point, so it is drawn from that point on (drawn at its own
    time it lagged the target by a second). Latency is drawn only where messages were
    sent (none before the first send, none through the drain) and never as 0 for "no
    sample": locust's rolling 10 s window would otherwise draw the drain as a plateau.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results.get("timeline", [])
    t = [p["t"] for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.step(*sent_steps(points), where="post", label="sent msg/s")
    top.step(t, [p["target_rate"] for p in points], "--", where="post", label="target msg/s")
    top.set_ylabel("msg/s")
    top.legend(loc="upper left")
    top.set_title(f"wsop loadtest — {results['plan']['profile']}")
    for key in ("p50", "p95", "p99"):
        values = [latency_or_gap(p, key) for p in points]
        bottom.plot(t, values, marker=".", markersize=3, label=f"{key} ms")
    bottom.set_ylabel("delivery latency (ms, rolling 10 s)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper left")
    t0 = results.get("run_t0")
    for fault in faults or []:
        at = fault.get("started_s")
        if t0 is None or at is None:
            continue
        color = "tab:red" if fault.get("ok") else "tab:gray"
        for ax in (top, bottom):
            ax.axvline(t0 + at, color=color, linestyle=":", linewidth=1)
        top.annotate(
            fault["label"].split("@")[0], (t0 + at, 1.0), xycoords=("data", "axes fraction"),
            rotation=90, va="top", ha="right", fontsize=8, color=color,
        )  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def sent_steps(points: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """The sent rate as steps: each point's rate (measured since the point before it)
    starts at that earlier point's time, where the target it answers to starts too."""
    return [p["t"] for p in points[:-1]], [p["msgs_per_s"] for p in points[1:]]


def latency_or_gap(point: dict[str, Any], key: str) -> float:
    """A timeline point's latency percentile, or NaN (a gap in the line) when no
    message was sent in the second before it or there is no sample."""
    value = point.get(key)
    if value is None or not point.get("msgs_per_s"):
        return float("nan")
    return float(value)


GLOSSARY = """<section id="wsop-glossary" style="font-family:sans-serif;padding:0.5em 1em;
border-bottom:1px solid #888"><h2>wsop loadtest: how to read this report</h2><ul>
<li><b>message</b>: one frame a load user sent, direct or team (wsop's <i>sent</i>,
<i>msgs_per_s</i>): {sent} in this run.</li>
<li><b>delivery</b>: one recipient receiving one message; a team message to N online members
is N deliveries, the sender's own copy included (wsop's <i>expected_deliveries</i>,
<i>delivered</i>, <i>lost</i>): {delivered} of {expected} here, {lost} lost. Locust's
<b>WS direct</b> and <b>WS team</b> rows count <i>deliveries</i>, not messages: their
# Requests add up to the deliveries, and their response time is the delivery latency
(receive time &minus; send time, end to end).</li>
<li><b>ack</b>: the stack's answer to the sender, counting the recipients reached
(<i>delivered</i>) and not (<i>undelivered</i>); acks are checked, not listed as rows.</li>
<li>Other rows: <b>WS connect</b> (a handshake and its time); failures <b>connect</b>
(grouped by cause: status and the server's reason), <b>hello</b> (connected but not
routable), <b>disconnect</b> (the stack closed the connection), <b>error</b> (an error frame,
by code).</li></ul></section>"""


def annotate_html(report_html: Path, result: dict[str, Any]) -> None:
    """Add wsop's words to locust's report.html: a glossary at the top (locust's rows
    count deliveries, the summary counts messages) and, for a chaos run, the faults
    and the per-window table after its app, so the one file a run leaves is readable."""
    try:
        page = report_html.read_text()
    except OSError:
        return
    glossary = GLOSSARY.format(
        sent=result["sent"], delivered=result["delivered"],
        expected=result["expected_deliveries"], lost=result["lost"],
    )  # fmt: skip
    body = re.search(r"<body[^>]*>(?=\s*<div id=\"root\")", page)
    at = body.end() if body else page.rfind("</body>")
    page = page[:at] + glossary + page[at:] if at >= 0 else glossary + page
    if result["faults"]:
        section = _chaos_section(result)
        at = page.rfind("</body>")
        page = page[:at] + section + page[at:] if at >= 0 else page + section
    report_html.write_text(page)


def _chaos_section(result: dict[str, Any]) -> str:
    cols = ("fault", "from_s", "to_s", *WINDOW_KEYS)
    head = "".join(f"<th>{c}</th>" for c in (*cols, "reconnect p50/p99 ms"))
    rows = []
    for w in result["windows"]:
        cells = "".join(f"<td>{html.escape(str(w[c]))}</td>" for c in cols)
        ms = w["reconnect_ms"]
        rows.append(f"<tr>{cells}<td>{ms['p50']} / {ms['p99']}</td></tr>")
    faults = "".join(
        f"<li>{html.escape(f['label'])}: {'ok' if f['ok'] else 'FAILED'}, started at "
        f"{f['started_s']} s, took {f['duration_s']} s, whole again after "
        f"{f.get('recovered_s')} s ({html.escape(str(f['detail']))})</li>"
        for f in result["faults"]
    )
    return (
        '<section id="wsop-chaos" style="font-family:sans-serif;padding:1em">'
        f"<h2>wsop chaos: faults and windows</h2><ul>{faults}</ul>"
        f'<table border="1" cellpadding="3"><tr>{head}</tr>{"".join(rows)}</table>'
        f"<p>silent_loss {result['silent_loss']} · cross_tenant {result['cross_tenant']} · "
        f"reconnects {result['reconnects']}</p></section>"
    )
