"""Load generators, each bounded in time, all against 127.0.0.1.

- handshakes: ``openssl s_time`` processes, one connection at a time each,
  one ``GET / HTTP/1.0`` per connection. ``-new`` makes every connection a
  full handshake; ``-reuse`` resumes the first connection's session (TLS 1.3
  ticket); ``-tls1_2`` for the TLS 1.2 rows. h2load and wrk cannot do full handshakes: on reconnect both
  resume the session they hold (seen on vcproxy's ``resumed`` label).
- keep-alive requests and bulk downloads: ``h2load --h1`` for a duration.
- latency at a fixed rate: ``bench/_client.py`` (open loop, see there).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLACK_S = 30.0  # a load generator still running this long after its duration is killed


class LoadError(RuntimeError):
    pass


def _spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen], timeout_s: float) -> list[str]:
    """Wait for every process (killing by PID what overstays); their outputs."""
    deadline = time.monotonic() + timeout_s
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            out += "\n[killed: overstayed]"
        outs.append(out)
    return outs


class Handshakes:
    """``procs`` concurrent ``openssl s_time`` loops for ``seconds``; start() returns at once."""

    def __init__(self, port: int, procs: int, seconds: float, resume: bool, tls12: bool = False):
        self.seconds = seconds
        self.t0 = time.perf_counter()
        argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-reuse" if resume else "-new",
                "-time", str(max(1, round(seconds))), "-www", "/"]
        if tls12:  # TLS 1.2 (s_time's default cipher list: ECDHE + AES-GCM first)
            argv.append("-tls1_2")
        self.procs = [_spawn(argv) for _ in range(procs)]

    def result(self) -> dict:
        outs = _finish(self.procs, self.seconds + SLACK_S)
        wall = time.perf_counter() - self.t0
        total, failed, read = 0, 0, 0
        # s_time prints one mark per connection: 'r' if the session was resumed, '*' if not
        marks = "".join(line for out in outs for line in out.splitlines() if set(line) <= {"*", "r"})
        for out in outs:
            m = re.search(r"(\d+) connections in [\d.]+s; [\d.]+ connections/user sec, bytes read (\d+)", out)
            if m:
                total += int(m.group(1))
                read += int(m.group(2))
            else:
                failed += 1
        if failed == len(outs):
            raise LoadError(f"s_time produced no count: {outs[0][-500:]}")
        if total and read < total * 64:  # every connection must have carried a response
            raise LoadError(f"s_time: {total} connections read only {read} bytes: no HTTP responses")
        return {"handshakes": total, "seconds": wall, "per_s": total / wall, "clients_failed": failed,
                "bytes_per_conn": read / max(total, 1),
                "resumed_share": marks.count("r") / max(1, len(marks)), "sample_output": outs[0][-300:] if failed else ""}


_BYTES = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}


def h2load(port: int, conns: int, seconds: float, path: str = "/", warmup_s: float = 0.5,
           http2: bool = False, streams: int = 1) -> dict:
    """h2load for a duration: HTTP/1.1 keep-alive (``--h1``) unless ``http2``;
    ``streams`` requests in flight per connection (``-m``: HTTP/2 streams)."""
    argv = ["h2load", *(() if http2 else ("--h1",)), "-m", str(streams), "-c", str(conns),
            "-D", str(max(1, round(seconds))),
            "--warm-up-time", f"{int(warmup_s * 1000)}ms", f"https://127.0.0.1:{port}{path}"]
    (out,) = _finish([_spawn(argv)], seconds + warmup_s + SLACK_S)
    m = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", out)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    t = re.search(r"traffic: [\d.]+\w+ \((\d+)\) total", out)
    if not (m and r and t):
        raise LoadError(f"h2load output not understood: {' '.join(argv)}\n{out[-800:]}")
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    succeeded, failed = int(r.group(4)), int(r.group(5)) + int(r.group(6)) + int(r.group(7))
    return {"requests": succeeded, "failed": failed, "seconds": secs, "per_s": succeeded / secs,
            "bytes": int(t.group(1)), "mb_per_s": int(t.group(1)) / secs / 1e6}


class FixedRate:
    """bench/_client.py in a subprocess (its CPU stays out of the configuration's)."""

    def __init__(self, port: int, rate: float, seconds: float, conns: int):
        self.seconds = seconds
        self.proc = _spawn([sys.executable, str(ROOT / "bench" / "_client.py"), "--port", str(port),
                            "--rate", str(rate), "--seconds", str(seconds), "--conns", str(conns)])

    def result(self) -> dict:
        (out,) = _finish([self.proc], self.seconds + SLACK_S)
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise LoadError(f"latency client failed: {out[-800:]}")
