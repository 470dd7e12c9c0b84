"""The Kubernetes layouts run as their manifests say, without a cluster.

deploy/kubernetes/ is taken at its word: the split DaemonSet's two commands,
the proxy Deployments' arguments and ConfigMaps, run as the pods' uid/gid
10001 with no capabilities and no new privileges, on a read-only root
filesystem, in a private mount namespace that lays out what the kubelet
would mount: a tmpfs as the node's /run/vcrypto (prepared 0770 10001:10001,
as the README tells the node admin), an emptyDir for the host's socket, a
tmpfs /tmp, and the socket directory read-only for the proxy. Only the
config and host-config paths (under /etc in the pods) and the addresses
(loopback, free ports, the test's upstream and certificate) are overridden.

Shown: split, both daemons start there and the probes' `test -S` sees
their sockets, and the proxy attaches and offloads its handshakes; single
pod, the supervisor starts its daemons in /tmp and offloads. `crypto.fallback:
none` is set for the test, so a handshake that vcrypto did not do fails.
Needs root (mount namespace, setpriv); CI runs as root.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from proxy_testkit import client_context, scrape, total

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent
UID = 10001
START_TIMEOUT_S = 60.0

pytestmark = [
    pytest.mark.daemons,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"),
                       reason="needs root, unshare and setpriv (a private mount namespace, uid 10001)"),
]


def _docs(path: Path) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(path.read_text()) if d}


def _as_pod_user(argv: list[str]) -> str:
    """A shell word list running argv as the pods run it: uid/gid 10001, no
    capabilities (none inherited, an empty bounding set), no new privileges."""
    prefix = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--inh-caps=-all",
              "--bounding-set=-all", "--no-new-privs"]
    return " ".join(_quote(a) for a in prefix + argv)


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def _replace(argv: list[str], old: str, new: str) -> list[str]:
    assert old in argv, (old, argv)
    return [new if a == old else a for a in argv]


def _expose_interpreter() -> str:
    """Shell lines that let uid 10001 run this interpreter when it lives under
    a directory only root may enter (pyenv in /root): in the namespace, that
    directory is replaced by a tmpfs holding just the interpreter's prefix.
    In the image the interpreter is in /usr/local, readable by everyone."""
    prefix = Path(sys.base_prefix).resolve()
    closed = next((p for p in reversed(prefix.parents) if not p.stat().st_mode & 0o001), None)
    if closed is None:
        return ""
    return "\n".join([
        "mkdir /run/python-prefix", f"mount --bind {_quote(str(prefix))} /run/python-prefix",
        f"mount -t tmpfs -o mode=0755 tmpfs {_quote(str(closed))}", f"mkdir -p {_quote(str(prefix))}",
        f"mount --bind /run/python-prefix {_quote(str(prefix))}"])


def _keep_through_tmp() -> tuple[str, str]:
    """Shell lines around the pod's tmpfs /tmp that keep this checkout (and
    its venv) visible when it lives under /tmp, as a CI clone may: bound to
    /run/keep first, bound back into the new /tmp after. In the image the
    code is in /usr/local and /opt, outside the emptyDir."""
    keep = [p for p in dict.fromkeys((REPO, Path(sys.prefix).resolve()))
            if Path("/tmp") in p.parents]
    keep = [p for p in keep if not any(q in p.parents for q in keep)]  # the venv inside the checkout
    before = [f"mkdir -p /run/keep/{i} && mount --bind {_quote(str(p))} /run/keep/{i}" for i, p in enumerate(keep)]
    after = [f"mkdir -p {_quote(str(p))} && mount --bind /run/keep/{i} {_quote(str(p))}" for i, p in enumerate(keep)]
    return "\n".join(before), "\n".join(after)


def _events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _proxy_argv(proxy: dict, upstream) -> list[str]:
    argv = _replace(proxy["args"], "/etc/vcproxy/config/vcproxy.yaml", "/run/cfg/vcproxy.yaml")
    return argv + ["--set", "listeners[0].address=127.0.0.1", "--set", "listeners[0].port=0",
                   "--set", "metrics.address=127.0.0.1", "--set", "metrics.port=0",
                   "--set", f'upstreams.app.servers=["{upstream.address}"]',
                   "--set", "upstreams.app.health_check.enabled=false",
                   # the one behaviour changed: an op that is not offloaded fails its
                   # connection instead of running in-process unnoticed
                   "--set", "crypto.fallback=none",
                   "--set", "listeners[0].tls.certificates[0].cert=/run/cfg/tls.crt",
                   "--set", "listeners[0].tls.certificates[0].key=/run/cfg/tls.key"]


@contextlib.contextmanager
def _run_as_pods(tmp_path: Path, certs, files: dict[str, str], daemons: str, proxy_argv: list[str]) -> Path:
    """Lay out the pods' mounts in a private mount namespace, run `daemons`
    (shell lines; they may start processes and set $DAEMONS), then the proxy
    with the node socket directory read-only; wait for its `ready` event.
    Returns the directory of logs and probe results (/run/out inside)."""
    cfg, out = tmp_path / "cfg", tmp_path / "out"
    cfg.mkdir()
    out.mkdir()
    for name, text in files.items():
        (cfg / name).write_text(text)
    shutil.copy(certs["a"][0], cfg / "tls.crt")
    shutil.copy(certs["a"][1], cfg / "tls.key")
    for path in (cfg, out, *cfg.iterdir()):
        os.chown(path, UID, UID)
    keep_before, keep_after = _keep_through_tmp()
    script = f"""set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir /run/cfg /run/out /run/vcrypto /run/vcrypto-host
mount --bind {_quote(str(cfg))} /run/cfg
mount --bind {_quote(str(out))} /run/out
mount -t tmpfs -o mode=0770,uid={UID},gid={UID} node-sockets /run/vcrypto
mount -t tmpfs -o mode=0770,uid={UID},gid={UID} host-socket /run/vcrypto-host
{_expose_interpreter()}
{keep_before}
mount -t tmpfs -o mode=1777 tmp /tmp
{keep_after}
mount -o remount,bind,ro /
export PYTHONDONTWRITEBYTECODE=1 PATH={_quote(str(BIN))}:$PATH
DAEMONS=
{daemons}
unshare -m --propagation private sh -c '
  mount -o remount,bind,ro /run/vcrypto
  if touch /run/vcrypto/.w 2>/dev/null; then echo rw; else echo ro; fi >/run/out/proxy-socket-mount
  exec "$@"' proxy {_as_pod_user([str(BIN / "vcproxy"), *proxy_argv])} >/run/out/proxy.log 2>&1 &
PROXY=$!
trap 'kill -TERM $PROXY; wait $PROXY; for p in $DAEMONS; do kill -TERM $p; wait $p; done; exit 0' TERM
wait
"""
    log = open(tmp_path / "namespace.log", "w")
    # its own process group: whatever is left of it at the end is killed by that group id
    ns = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not [e for e in _events(out / "proxy.log") if e.get("event") == "ready"]:
            failed = any(e.get("event") == "start_failed" for e in _events(out / "proxy.log"))
            assert ns.poll() is None and not failed and time.monotonic() < deadline, (
                (tmp_path / "namespace.log").read_text(),
                *[(out / f).read_text()[-2000:] for f in ("host.log", "backend.log", "proxy.log")
                  if (out / f).exists()])
            time.sleep(0.1)
        yield out
    finally:
        ns.send_signal(signal.SIGTERM)
        try:
            ns.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(ns.pid, signal.SIGKILL)  # the daemons, if the shell went before them
        except ProcessLookupError:
            pass
        ns.wait()
        log.close()


def _assert_offloaded(out: Path, ctx) -> dict:
    [ready] = [e for e in _events(out / "proxy.log") if e.get("event") == "ready"]
    port = int(next(iter(ready["listeners"].values())).rsplit(":", 1)[1])
    for _ in range(4):  # new connections: handshakes, whichever worker takes them
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        conn.request("GET", "/health")
        assert conn.getresponse().read() == b"ok\n"
        conn.close()
    samples = scrape(ready["metrics"])
    assert total(samples, "vcproxy_crypto_ops_total", provider="vcrypto") > 0, samples
    assert total(samples, "vcproxy_crypto_fallbacks_total") == 0
    return ready


def test_split_layout_offloads_as_deployed(tmp_path, certs, upstream):
    node = _docs(KUBE / "split" / "vcrypto-node.yaml")
    proxy_docs = _docs(KUBE / "split" / "vcproxy.yaml")
    ds = node[("DaemonSet", "vcrypto-node")]["spec"]["template"]["spec"]
    [host] = [c for c in ds["initContainers"] if c["name"] == "vcrypto-host"]
    [backend] = [c for c in ds["containers"] if c["name"] == "engine-backend"]
    [proxy] = proxy_docs[("Deployment", "vcproxy")]["spec"]["template"]["spec"]["containers"]
    host_argv = _replace(host["command"], "/etc/vcrypto/host.yaml", "/run/cfg/host.yaml")
    host_argv = _replace(host_argv, "0.0.0.0:9101", "127.0.0.1:0")
    backend_argv = _replace(backend["command"], "0.0.0.0:9102", "127.0.0.1:0")
    host_probe = host["startupProbe"]["exec"]["command"]
    backend_probe = backend["startupProbe"]["exec"]["command"]
    # the kubelet's order: the sidecar host, its startupProbe, then the engine-backend
    daemons = f"""{_as_pod_user(host_argv)} >/run/out/host.log 2>&1 &
DAEMONS="$! $DAEMONS"
n=0; until {_as_pod_user(host_probe)}; do n=$((n+1)); [ $n -lt 300 ]; sleep 0.1; done
echo host-probe-ok >>/run/out/probes
{_as_pod_user(backend_argv)} >/run/out/backend.log 2>&1 &
DAEMONS="$! $DAEMONS"
n=0; until {_as_pod_user(backend_probe)}; do n=$((n+1)); [ $n -lt 300 ]; sleep 0.1; done
echo backend-probe-ok >>/run/out/probes"""
    files = {"host.yaml": node[("ConfigMap", "vcrypto-host")]["data"]["host.yaml"],
             "vcproxy.yaml": proxy_docs[("ConfigMap", "vcproxy")]["data"]["vcproxy.yaml"]}
    with _run_as_pods(tmp_path, certs, files, daemons,
                                                 _proxy_argv(proxy, upstream)) as out:
        ready = _assert_offloaded(out, client_context(certs["a"][0]))
        assert (out / "probes").read_text().split() == ["host-probe-ok", "backend-probe-ok"]
        assert ready["daemons"] == {}  # vcrypto.manage: false: the supervisor started none
        assert (out / "proxy-socket-mount").read_text().strip() == "ro"


def test_single_pod_layout_offloads_as_deployed(tmp_path, certs, upstream):
    """The single-pod manifest under the same constraints: its supervisor
    starts both daemons in the pod's /tmp, nothing else is writable."""
    docs = _docs(KUBE / "single-pod" / "vcproxy.yaml")
    [proxy] = docs[("Deployment", "vcproxy")]["spec"]["template"]["spec"]["containers"]
    files = {"vcproxy.yaml": docs[("ConfigMap", "vcproxy")]["data"]["vcproxy.yaml"]}
    with _run_as_pods(tmp_path, certs, files, "",
                                                 _proxy_argv(proxy, upstream)) as out:
        ready = _assert_offloaded(out, client_context(certs["a"][0]))
        assert set(ready["daemons"]) == {"vcrypto-host", "vcrypto-engine-backend"}
