"""The supervisor: what ``vcproxy run`` is.

Theory of operation. ``Supervisor.run`` starts, in order: the metrics
endpoint, the vcrypto daemons (``daemon_plan`` decides their argv and host
config from the proxy config; each must show its socket before the next
starts), the demo upstream, then the workers; it is ready (``ready`` event,
sd_notify READY=1) once every worker reported listening. It then waits on
signals and child exits: a dead child is restarted with backoff (a daemon
that exited 78 is not: restarting cannot free its metrics port), SIGHUP and
the config watch validate the new config here and forward it, SIGUSR1
reopens logs everywhere, SIGTERM drains the workers before stopping the
daemons. Children are ``ChildProcess`` objects (spawned with SIGUSR1 ignored
until they install their own handler). The module stays one file (~650
lines): start-up order, restart policy and shutdown order are one state the
reader should see together.

It owns everything that must outlive a worker:

- the runtime directory (metrics files, vcrypto sockets, generated daemon
  config, and ``vcrypto.json``: where the daemons' admin sockets are, which
  ``vcrypto status`` reads);
- port reservations: a listener with ``port: 0`` gets a port here, held by a
  bound, non-listening SO_REUSEPORT socket, so a restarted worker rebinds the
  same port and no other process can take it meanwhile (the kernel only
  hands connections to *listening* members of a reuseport group);
- the vcrypto daemons (``python -m vcrypto.host``, ``python -m
  vcrypto.engine.backend``) when ``crypto.provider: vcrypto`` and
  ``vcrypto.manage``; the demo upstream when ``demo_upstream.enabled``;
- the N workers (``python -m vcproxy worker``), each reporting readiness on a
  pipe; a worker that dies is restarted (backoff 0.2 s doubling to 5 s);
- the metrics endpoint (``vcproxy.metrics_endpoint``): ``metrics.path``
  merging every worker's multiprocess files with the supervisor's own
  metrics, ``/healthz`` and ``/readyz``.

Signals: SIGTERM/SIGINT -> workers drain, then the daemons stop; SIGHUP ->
the config is validated here first (a broken file, certificate, or a change
that needs a restart never reaches a worker), counted once in
``vcproxy_config_reloads_total{result}``, then each worker reloads. With
``reload.watch_config`` a change of the config file or of a certificate/key
file it names takes the same path as SIGHUP (``vcproxy._config_watch``: a
Kubernetes ConfigMap update needs no signal). SIGUSR1 -> the log files are
reopened here, in every worker and in the vcrypto daemons (which write to the
same error log file: the supervisor passes it as their ``--log``); a child
starts with SIGUSR1 ignored, so one that is still starting is not killed.

Readiness is logged as one error-log event ``ready`` carrying the resolved
listener and metrics addresses (tests and scripts read it from there); under
systemd ``Type=notify`` the supervisor also sends ``READY=1`` then (every
worker listening) and ``STOPPING=1`` when it starts to stop. Its children
never see ``$NOTIFY_SOCKET``: only the unit's main process may notify.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket as stdsocket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import trio
import yaml

from vcproxy import _log
from vcproxy._config_watch import ConfigWatch, file_identities, watched_paths
from vcproxy.config import Config, ConfigError, load_config
from vcproxy.proxy import certificate_not_after, check_files, reload_problems
from vcproxy.metrics import ENV_DIR, mark_process_dead, multiprocess_registry
from vcproxy.metrics_endpoint import MetricsEndpoint, SupervisorCollector, SupervisorState
from vcrypto.metrics_endpoint import EXIT_METRICS_UNAVAILABLE
from vcrypto import admin, sdnotify

READY_TIMEOUT_S = 60.0
DAEMON_SOCKET_TIMEOUT_S = 20.0


class SupervisorError(Exception):
    """Start-up cannot proceed (a daemon missing or dead, a port taken...);
    ``exit_status``: what ``vcproxy run`` exits with."""

    exit_status = 1


class DaemonCannotStart(SupervisorError):
    """A daemon exited with EXIT_METRICS_UNAVAILABLE: no restart fixes it, and
    ``vcproxy run`` exits with that same status (so a unit's
    ``RestartPreventExitStatus=78`` stops its restarts too)."""

    exit_status = EXIT_METRICS_UNAVAILABLE


@dataclass(eq=False)
class _Child:
    name: str
    argv: list[str]
    process: "ChildProcess | None" = None
    restarts: int = 0
    started_s: float = 0.0
    ready: bool = False        # a worker: reported ready since its last start
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DaemonPlan:
    """What the supervisor starts for ``crypto.provider: vcrypto``: the host's
    generated config and both daemons' command lines, from the ``vcrypto``
    and ``crypto`` sections (every setting the daemons take comes from there:
    the pool, FIFO, both polling layers, the stall timeout)."""

    host_config: dict
    host_argv: list[str]
    backend_argv: list[str]


def daemon_plan(cfg: Config, host_socket: str, backend_socket: str, host_config_path: str) -> DaemonPlan:
    vc = cfg.vcrypto
    host_config: dict = {"fifo": vc.fifo, "poll": vc.host_poll.host_yaml(),
                         "socket_mode": str(vc.socket_mode)}
    if vc.socket_group is not None:
        host_config["socket_group"] = vc.socket_group
    if vc.pool is not None:
        host_config["pool"] = vc.pool_yaml()
    if vc.keys_dir is not None:  # keyless: only the host reads the keys
        host_config["keys_dir"] = os.path.abspath(vc.keys_dir)
    host_argv = [sys.executable, "-m", "vcrypto.host", "--socket", host_socket, "--config", host_config_path]
    # the daemons write the supervisor's error log, in the same format (and
    # reopen it on the SIGUSR1 the supervisor forwards)
    logs = ["--log", cfg.logging.error_log, "--log-level", cfg.logging.level]
    host_argv += logs
    if vc.host_metrics:
        host_argv += ["--metrics", str(vc.host_metrics)]
    backend_argv = [sys.executable, "-m", "vcrypto.engine.backend", "--host-socket", host_socket,
                    "--socket", backend_socket, "--socket-mode", str(vc.socket_mode),
                    "--stall-timeout-s", str(cfg.crypto.stall_timeout_s),
                    "--poll-budget-us", str(vc.backend_poll.budget_us),
                    "--inflight-hold-us", str(vc.backend_poll.inflight_hold_us),
                    "--batch-deadline-us", str(vc.batch_deadline_us), *logs]
    if vc.socket_group is not None:
        backend_argv += ["--socket-group", vc.socket_group]
    if vc.backend_metrics:
        backend_argv += ["--metrics", str(vc.backend_metrics)]
    return DaemonPlan(host_config, host_argv, backend_argv)


class Supervisor:
    def __init__(self, config_path: str, overrides: list[str], config: Config) -> None:
        self.config_path = config_path
        self.overrides = overrides
        self.config = config
        self.stopping = False
        self.workers: list[_Child] = []
        self.daemons: list[_Child] = []
        self.reservations: list[stdsocket.socket] = []
        self.ports: dict[int, int] = {}
        self.started = False       # every worker reported ready once (the `ready` event)
        self.state = SupervisorState(
            worker_restarts=lambda: sum(w.restarts for w in self.workers),
            daemon_restarts=lambda: {d.name: d.restarts for d in self.daemons})
        self.state.set_certificates(certificate_not_after(config))
        # taken right after the config was read, not once everything runs: a
        # change during start-up (daemons, workers) is seen by the first poll
        self._watched = watched_paths(config_path, config)
        self._config_watch = ConfigWatch(file_identities(self._watched))
        self.runtime_file: str | None = None   # vcrypto.json, when the daemons are in use

    # ------------------------------------------------------------ start-up

    def _reserve_ports(self) -> None:
        for i, lis in enumerate(self.config.listeners):
            family = stdsocket.AF_INET6 if ":" in lis.address else stdsocket.AF_INET
            sock = stdsocket.socket(family, stdsocket.SOCK_STREAM)
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
            try:
                sock.bind((lis.address, lis.port))
            except OSError as exc:
                sock.close()
                raise SupervisorError(f"listeners[{i}]: cannot bind {lis.address}:{lis.port}: {exc.strerror}") from exc
            self.reservations.append(sock)
            self.ports[i] = sock.getsockname()[1]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[ENV_DIR] = self.metrics_dir
        env.pop(sdnotify.ENV, None)  # systemd accepts READY=1 from the main process only
        return env

    async def _start_child(self, child: _Child, pass_fds: tuple[int, ...] = ()) -> None:
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which then
        # stops the children in order (workers drain first, daemons after).
        child.process = ChildProcess.spawn(child.argv, self._env(), pass_fds)
        child.started_s = time.monotonic()

    def _worker_argv(self, index: int, ready_fd: int) -> list[str]:
        argv = [sys.executable, "-m", "vcproxy", "worker", "--config", self.config_path,
                "--index", str(index), "--ready-fd", str(ready_fd)]
        for i, port in self.ports.items():
            argv += ["--port", f"{i}={port}"]
        for item in self.overrides:
            argv += ["--set", item]
        if self.backend_socket:
            argv += ["--backend-socket", self.backend_socket]
        argv += ["--ticket-keys", self.ticket_keys_file]
        return argv

    def _write_ticket_keys(self, rotate: bool) -> None:
        """Shared session-ticket keys (newest first): every worker seals with the
        first and opens with all, so tickets resume on any worker. SIGHUP rotates:
        a new first key, the previous one kept so issued tickets stay valid."""
        keys = [os.urandom(32).hex()]
        if rotate and os.path.exists(self.ticket_keys_file):
            with open(self.ticket_keys_file, encoding="ascii") as f:
                keys += [line.strip() for line in f if line.strip()][:1]
        fd = os.open(self.ticket_keys_file + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write("\n".join(keys) + "\n")
        os.replace(self.ticket_keys_file + ".new", self.ticket_keys_file)

    async def _start_worker(self, child: _Child) -> None:
        read_fd, write_fd = os.pipe()
        child.argv = self._worker_argv(int(child.name.rsplit("-", 1)[1]), write_fd)
        try:
            await self._start_child(child, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        stream = trio.lowlevel.FdStream(read_fd)
        try:
            with trio.move_on_after(READY_TIMEOUT_S):
                ready = await stream.receive_some(1)
                if ready == b"R":
                    child.ready = True
                    return
            raise SupervisorError(f"{child.name} did not become ready (exit status {child.process.poll()})")
        finally:
            await stream.aclose()

    async def _start_daemons(self) -> None:
        cfg = self.config
        if cfg.demo_upstream.enabled:
            child = _Child("demo-upstream", [sys.executable, "-m", "vcproxy", "demo-upstream",
                                             "--address", cfg.demo_upstream.address,
                                             "--port", str(cfg.demo_upstream.port)])
            await self._start_child(child)
            self.daemons.append(child)
        self.backend_socket = None
        if cfg.crypto.provider != "vcrypto":
            return
        vc = cfg.vcrypto
        host_socket = vc.host_socket or os.path.join(self.runtime_dir, "host.sock")
        self.backend_socket = vc.backend_socket or os.path.join(self.runtime_dir, "backend.sock")
        # Where `vcrypto status` finds the daemons: their admin sockets sit
        # next to their sockets (the daemons' default), managed or not.
        self.runtime_file = admin.write_runtime_file(self.runtime_dir, {
            name: {"socket": sock, "admin_socket": admin.admin_socket_path(sock)}
            for name, sock in (("vcrypto-host", host_socket),
                               ("vcrypto-engine-backend", self.backend_socket))})
        if not vc.manage:
            _check_external_socket(self.backend_socket)
            return
        host_config = os.path.join(self.runtime_dir, "vcrypto-host.yaml")
        plan = daemon_plan(cfg, host_socket, self.backend_socket, host_config)
        with open(host_config, "w", encoding="utf-8") as f:
            yaml.safe_dump(plan.host_config, f)
        host_argv, backend_argv = plan.host_argv, plan.backend_argv
        for name, argv, sock, key in (("vcrypto-host", host_argv, host_socket, "host_metrics"),
                                      ("vcrypto-engine-backend", backend_argv, self.backend_socket,
                                       "backend_metrics")):
            child = _Child(name, argv, extra={"socket": sock, "metrics": (f"vcrypto.{key}", getattr(vc, key))})
            _unlink_stale(sock)
            await self._start_child(child)
            self.daemons.append(child)
            await self._wait_socket(child, sock)

    async def _wait_socket(self, child: _Child, path: str) -> None:
        with trio.move_on_after(DAEMON_SOCKET_TIMEOUT_S):
            while not os.path.exists(path):
                if child.process.poll() is not None:
                    if child.process.returncode == EXIT_METRICS_UNAVAILABLE:
                        raise DaemonCannotStart(_metrics_unavailable(child))
                    raise SupervisorError(f"{child.name} exited with status {child.process.returncode} at start")
                await trio.sleep(0.05)
            return
        raise SupervisorError(f"{child.name} did not create {path} within {DAEMON_SOCKET_TIMEOUT_S}s")

    def _start_metrics(self) -> str | None:
        mc = self.config.metrics
        if not mc.enabled:
            return None
        registry = multiprocess_registry()
        registry.register(SupervisorCollector(self.state))
        self._metrics_server = MetricsEndpoint(mc.address, mc.port, mc.path, registry, self.readiness)
        host = f"[{mc.address}]" if ":" in mc.address else mc.address
        return f"http://{host}:{self._metrics_server.port}{mc.path}"

    def readiness(self) -> tuple[bool, str]:
        """``/readyz``: (ready, why not). Called from the endpoint's thread."""
        if self.stopping:
            return False, "draining"
        if not self.started:
            return False, "starting"
        running = [w for w in self.workers if w.ready and w.process is not None and w.process.returncode is None]
        if not running:
            return False, "no worker running"
        crypto = self.config.crypto
        keyless = any(c.key_ref is not None for lis in self.config.listeners if lis.tls.enabled
                      for c in lis.tls.certificates)
        if crypto.provider == "vcrypto" and (crypto.fallback == "none" or keyless):
            # No in-process fallback: every serving worker needs its engine.
            attached = _engine_attached_workers()
            if attached < len(running):
                return False, (f"vcrypto attached in {attached} of {len(running)} workers and "
                               + ("keyless certificates" if keyless else "crypto.fallback: none")
                               + " allow no in-process crypto")
        return True, "ready"

    async def run(self) -> int:
        self.runtime_dir = self.config.vcrypto.runtime_dir or tempfile.mkdtemp(prefix="vcproxy-")
        os.makedirs(self.runtime_dir, exist_ok=True)
        self.metrics_dir = tempfile.mkdtemp(prefix="metrics-", dir=self.runtime_dir)
        self.ticket_keys_file = os.path.join(self.runtime_dir, f"tickets-{os.getpid()}.keys")
        self._write_ticket_keys(rotate=False)
        os.environ[ENV_DIR] = self.metrics_dir  # for multiprocess_registry() in this process
        try:
            return await self._run()
        finally:
            for sock in self.reservations:
                sock.close()
            server = getattr(self, "_metrics_server", None)
            if server is not None:
                server.shutdown()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            for path in (self.ticket_keys_file, self.runtime_file):
                if path and os.path.exists(path):
                    os.unlink(path)
            if self.config.vcrypto.runtime_dir is None:
                shutil.rmtree(self.runtime_dir, ignore_errors=True)

    async def _run(self) -> int:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1) as signals:
            try:
                self._reserve_ports()
                metrics_url = self._start_metrics()
                await self._start_daemons()
                for i in range(self.config.workers):
                    child = _Child(f"worker-{i}", [])
                    self.workers.append(child)
                    await self._start_worker(child)
            except (SupervisorError, OSError) as exc:
                _log.error_log.error("start_failed", error=str(exc))
                await self._stop_all()
                return exc.exit_status if isinstance(exc, SupervisorError) else 1
            self.started = True
            listeners = {self.config.listener_name(i): f"{lis.address}:{self.ports[i]}"
                         for i, lis in enumerate(self.config.listeners)}
            _log.error_log.info("ready", listeners=listeners, metrics=metrics_url,
                                workers=[w.process.pid for w in self.workers],
                                provider=self.config.crypto.provider,
                                runtime_dir=self.runtime_dir,
                                daemons={d.name: d.process.pid for d in self.daemons})
            _notify("READY=1", f"STATUS=serving {', '.join(listeners.values())}")
            async with trio.open_nursery() as nursery:
                for child in self.workers:
                    nursery.start_soon(self._watch_worker, child)
                for child in self.daemons:
                    nursery.start_soon(self._watch_daemon, child)
                if self.config.reload.watch_config:
                    nursery.start_soon(self._watch_config, self.config.reload.watch_interval_s)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        self._reload()
                        continue
                    if signum == signal.SIGUSR1:
                        self._reopen_logs()
                        continue
                    self.stopping = True
                    _log.error_log.info("stopping", signal=signal.Signals(signum).name)
                    _notify("STOPPING=1")
                    await self._stop_all()
                    nursery.cancel_scope.cancel()
                    break
        _log.error_log.info("stopped")
        return 0

    # ------------------------------------------------------------ running

    async def _watch_worker(self, child: _Child) -> None:
        backoff_s = 0.2
        while True:
            status = await child.process.wait()
            child.ready = False
            if self.stopping:
                return
            mark_process_dead(child.process.pid, self.metrics_dir)
            _log.error_log.error("worker_died", worker=child.name, pid=child.process.pid, status=status)
            if time.monotonic() - child.started_s > 10:
                backoff_s = 0.2
            await trio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 5.0)
            child.restarts += 1
            try:
                await self._start_worker(child)
            except (SupervisorError, OSError) as exc:
                _log.error_log.error("worker_restart_failed", worker=child.name, error=str(exc))
                continue
            _log.error_log.info("worker_restarted", worker=child.name, pid=child.process.pid)

    async def _watch_daemon(self, child: _Child) -> None:
        """Restart a daemon that died, except one that cannot start at all.

        A daemon whose metrics address is taken (``EXIT_METRICS_UNAVAILABLE``)
        would fail the same way every time: it is left down with one error
        event, and the workers go on as ``crypto.fallback`` says for an
        engine that is away (per_op / startup: in-process crypto; none: TLS
        handshakes fail). At start-up the same status fails the start.
        """
        while True:
            status = await child.process.wait()
            if self.stopping:
                return
            if status == EXIT_METRICS_UNAVAILABLE:
                _log.error_log.error("daemon_not_restarted", daemon=child.name, pid=child.process.pid,
                                     status=status, error=_metrics_unavailable(child))
                return
            _log.error_log.error("daemon_died", daemon=child.name, pid=child.process.pid, status=status)
            await trio.sleep(0.5)
            child.restarts += 1
            sock = child.extra.get("socket")
            if sock:
                _unlink_stale(sock)  # a killed daemon leaves its socket file behind
            await self._start_child(child)
            if sock:
                try:
                    await self._wait_socket(child, sock)
                except SupervisorError as exc:
                    if child.process.returncode != EXIT_METRICS_UNAVAILABLE:  # that one is logged once, above
                        _log.error_log.error("daemon_restart_failed", daemon=child.name, error=str(exc))
                    continue
            _log.error_log.info("daemon_restarted", daemon=child.name, pid=child.process.pid)

    async def _watch_config(self, interval_s: float) -> None:
        """Poll the files a reload reads; a change reloads as SIGHUP does."""
        paths, watch = self._watched, self._config_watch
        while True:
            await trio.sleep(interval_s)
            current = file_identities(paths)
            changed = watch.observe(current)
            if not changed or self.stopping:
                continue
            _log.error_log.info("config_changed", files=changed)
            self._reload()
            # The reloaded config may name other certificate files. The ones
            # seen before the reload keep the identity observed then, so a
            # write that landed while the reload read them is caught next poll.
            paths = watched_paths(self.config_path, self.config)
            watch.rebase({**file_identities(paths), **{p: current[p] for p in paths if p in current}})

    def _reload(self) -> None:
        """One SIGHUP: validate here, count once (ok or rejected), then let
        each worker build its new runtime."""
        try:
            config = load_config(self.config_path, self.overrides)
            warnings = check_files(config)
            problems = reload_problems(self.config, config)
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            self.state.reloads["rejected"] += 1
            self.state.last_reload_ok = False
            _log.error_log.error("reload_rejected", problems=exc.problems)
            return
        _log_warnings(warnings)
        if config.workers != len(self.workers):
            _log.error_log.warning("reload_partial", problem="workers changed: restart to apply")
        self.config = config
        self.state.reloads["ok"] += 1
        self.state.last_reload_ok = True
        self.state.last_reload_success_s = time.time()
        self.state.set_certificates(certificate_not_after(config))
        self._write_ticket_keys(rotate=True)
        for child in self.workers:
            if child.process is not None and child.process.returncode is None:
                child.process.send_signal(signal.SIGHUP)
        _log.error_log.info("reload_sent", workers=len(self.workers))

    def _reopen_logs(self) -> None:
        """SIGUSR1 (logrotate): reopen here, then in every child that writes a
        log file (workers; the vcrypto daemons; not the demo upstream, which
        logs to stdout and would die of the signal)."""
        _log.reopen_logs(supervisor=True)
        for child in self.workers + [d for d in self.daemons if d.name != "demo-upstream"]:
            if child.process is not None and child.process.returncode is None:
                child.process.send_signal(signal.SIGUSR1)

    async def _stop_all(self) -> None:
        self.stopping = True
        deadline_s = self.config.limits.drain_timeout_s + 5
        await _terminate([w.process for w in self.workers if w.process], deadline_s)
        # One by one, dependents first: the engine-backend lets go of the host
        # before the host goes away.
        for daemon in reversed(self.daemons):
            if daemon.process:
                await _terminate([daemon.process], 5.0)


try:  # loaded before any fork: a child between fork and exec must not import
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children just will not follow a killed supervisor
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


class ChildProcess:
    """A child process started from the supervisor's *main thread*.

    Why not ``trio.lowlevel.open_process``: it forks in a worker thread, and
    Linux's PR_SET_PDEATHSIG fires when the forking *thread* exits, so trio's
    idle thread cache would SIGTERM every child a few seconds after start.
    Forking here is a few milliseconds; waiting stays async through a pidfd.

    Each child gets its own session (a terminal's Ctrl-C reaches only the
    supervisor, which stops the children in order) and PR_SET_PDEATHSIG, so
    a SIGKILLed supervisor leaves no orphan holding a port.
    """

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._pidfd = os.pidfd_open(popen.pid)
        self._waiting: trio.Event | None = None

    @classmethod
    def spawn(cls, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> "ChildProcess":
        parent = os.getpid()

        def preexec() -> None:  # between fork and exec: no imports, no locks
            # SIGUSR1 (log reopen, forwarded to every running child) kills by
            # default: ignored (inherited across exec) until the child installs
            # its handler, so a rotation during a (re)start does not kill it.
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            if _PRCTL is not None:
                _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
                if os.getppid() != parent:  # the supervisor died before prctl took effect
                    os.kill(os.getpid(), signal.SIGTERM)

        return cls(subprocess.Popen(argv, env=env, pass_fds=pass_fds, start_new_session=True,
                                    preexec_fn=preexec))

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def poll(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        """The exit status, once the child has exited; any number of tasks may wait."""
        while self.popen.poll() is None:
            if self._waiting is None:  # trio allows one waiter per fd: the others wait on an Event
                self._waiting = trio.Event()
                try:
                    await trio.lowlevel.wait_readable(self._pidfd)
                finally:
                    event, self._waiting = self._waiting, None
                    event.set()
            else:
                await self._waiting.wait()
        self.close()
        return self.popen.returncode

    def send_signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        if self._pidfd >= 0 and self._waiting is None:
            fd, self._pidfd = self._pidfd, -1
            os.close(fd)


def _engine_attached_workers() -> int:
    """Workers whose engine frontend is attached (their livesum gauge
    ``vcproxy_crypto_engine_attached``, from the multiprocess files)."""
    for fam in multiprocess_registry().collect():
        if fam.name == "vcproxy_crypto_engine_attached":
            return int(sum(s.value for s in fam.samples))
    return 0


def _metrics_unavailable(child: _Child) -> str:
    """One line for a daemon that exited with EXIT_METRICS_UNAVAILABLE: the
    address and the key that asked for it (the daemon's own line says why)."""
    key, address = child.extra.get("metrics", ("its --metrics", None))
    return (f"{child.name} cannot serve its metrics on {address} ({key}): the address is in use or not "
            f"this machine's (free the port or change {key}); restarting cannot fix that")


def _log_warnings(warnings: list[tuple[str, str]]) -> None:
    """check-config's warnings (a certificate about to expire, a route no
    request reaches), one ``config_warning`` event each."""
    for path, message in warnings:
        _log.error_log.warning("config_warning", path=path, problem=message)


def _check_external_socket(path: str) -> None:
    """With daemons the supervisor does not manage (another user's, another
    unit's), say at start-up when the workers could not attach: they would
    serve, but with every operation done in-process. ``connect(2)`` needs
    write permission on the socket file (``os.access`` checks it for our real
    uid and groups, without connecting)."""
    if not os.path.exists(path):
        _log.error_log.warning("vcrypto_socket_missing", socket=path,
                               hint="the engine-backend is not running (yet): workers compute in-process "
                                    "until it is")
    elif not os.access(path, os.W_OK):
        _log.error_log.warning("vcrypto_socket_denied", socket=path, uid=os.getuid(), groups=os.getgroups(),
                               hint="this user may not connect (write permission): set the daemons' "
                                    "socket_mode / socket_group, or add this user to the socket's group; "
                                    "workers compute in-process meanwhile")


def _notify(*assignments: str) -> None:
    """sd_notify (a no-op outside systemd); a failed send is logged, never fatal."""
    sdnotify.notify_or_warn(*assignments,
                            warn=lambda message: _log.error_log.warning("sd_notify_failed", error=message))


def _unlink_stale(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def _terminate(processes: list[ChildProcess], deadline_s: float) -> None:
    for proc in processes:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(deadline_s):
        for proc in processes:
            await proc.wait()
    for proc in processes:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def run(config_path: str, overrides: list[str]) -> int:
    # The same validation as check-config: what it refuses, run refuses.
    try:
        config = load_config(config_path, overrides)
        warnings = check_files(config)
    except ConfigError as exc:
        for kind, problems in (("warning: ", exc.warnings), ("", exc.problems)):
            for path, message in problems:
                print(f"vcproxy: {config_path}: {kind}{path + ': ' if path else ''}{message}", file=sys.stderr)
        return 2
    _log.configure(config.logging.access_log, config.logging.error_log, config.logging.level)
    _log_warnings(warnings)
    return trio.run(Supervisor(config_path, overrides, config).run)
