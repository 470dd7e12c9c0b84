"""Processes the benchmark starts and watches: start, stop by PID, CPU time, metrics.

Every process a configuration consists of is found by walking ``/proc`` from
the PID we started (the supervisor and its descendants: proxy workers, the
vcrypto host and engine-backend, the host's ``workers`` processes) and is
named by its command line, so CPU seconds can be reported per role.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Service:
    """One process we started; ``stop()`` ends it (and only it) by PID."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, cwd: Path, stdout_pipe: bool = False,
                 cpus: set[int] | None = None, env: dict[str, str] | None = None):
        """``cpus``: the CPUs the process may run on, set between fork and exec
        (``os.sched_setaffinity``), so every process it starts inherits them."""
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "w")
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE if stdout_pipe else self.log,
                                     stderr=self.log, text=True, preexec_fn=pin, env=env)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (not its children), or None if it is gone."""
    fields = _stat(pid)
    if fields is None:
        return None
    # after the comm field: state(0) ppid(1) ... utime(11) stime(12)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """CPU of ``root``'s whole process tree so far: utime + stime of every live
    process in it plus cutime + cstime (the children each has reaped, with
    theirs). A process that exited but is not yet reaped is still listed."""
    total = 0
    for pid in descendants(root):
        fields = _stat(pid)
        if fields is not None:  # utime(11) stime(12) cutime(13) cstime(14)
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def role(pid: int) -> str:
    """What a process of a configuration is, from its command line."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "vcproxy worker" in cmd or " worker --config" in cmd:
        return "proxy_worker"
    if "vcrypto.host.resources._worker" in cmd:
        return "host_worker"
    if "vcrypto.host" in cmd:
        return "host"
    if "vcrypto.engine.backend" in cmd:
        return "backend"
    if "_stdlib_proxy" in cmd:
        return "proxy_worker"  # parent and forked workers share the command line; see roles()
    if "_upstream" in cmd:
        return "upstream"
    return "supervisor"


def roles(root: int) -> dict[int, str]:
    out = {pid: role(pid) for pid in descendants(root)}
    if out.get(root) == "proxy_worker":  # the stdlib proxy's parent only waits for its workers
        out[root] = "supervisor"
    return out


def cpu_snapshot(pids: dict[int, str]) -> dict[int, float]:
    out = {}
    for pid in pids:
        cpu = cpu_seconds(pid)
        if cpu is not None:
            out[pid] = cpu
    return out


def cpu_by_role(pids: dict[int, str], before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, summed per role (a process that
    exited in between counts with what it had used at the first snapshot)."""
    out: dict[str, float] = {}
    for pid, r in pids.items():
        if pid in before and pid in after:
            out[r] = out.get(r, 0.0) + after[pid] - before[pid]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$")


def scrape(url: str | None) -> dict[str, float]:
    """Prometheus text -> {name: value summed over labels}; {} if no url or unreachable."""
    if not url:
        return {}
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            continue
        name, labels = m.group(1), m.group(3) or ""
        if name == "vcproxy_tls_handshakes_total":
            result = re.search(r'result="(\w*)"', labels)
            name += "{result=%s,resumed=%s}" % (result.group(1) if result else "",
                                                 "true" if 'resumed="true"' in labels else "false")
        elif name == "vcproxy_crypto_ops_total":
            prov = re.search(r'provider="(\w+)"', labels)
            name += "{provider=%s}" % (prov.group(1) if prov else "")
        try:
            out[name] = out.get(name, 0.0) + float(m.group(4))
        except ValueError:
            pass
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def wait_until(pred, timeout_s: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout_s}s")
