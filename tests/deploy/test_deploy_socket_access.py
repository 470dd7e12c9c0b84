"""The daemons' socket mode and group: the default, the options, the errors.

The two-user test (test_deploy_split_users.py) shows why they matter; here
each way of setting them (host YAML, backend CLI, the proxy's ``vcrypto``
section) and each bad value, with the message that names where it is.
"""
from __future__ import annotations

import grp
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proxy.proxy_testkit import base_config, certs, running_proxy, upstream  # noqa: F401 (fixtures)
from vcproxy.config import ConfigError, parse_config
from vcproxy.supervisor import daemon_plan
from vcrypto import SocketAccess, SocketAccessError, parse_socket_mode, resolve_socket_group
from vcrypto._unixsock import bind_unix_listener
from vcrypto.host.config import HostConfigError, parse_config as parse_host_config

REPO = Path(__file__).resolve().parents[2]
# a group this process may give files to: as root any; else its own
OTHER_GID = next((g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getegid()), None) \
    if os.geteuid() == 0 else None


def _mode(path) -> tuple[int, int]:
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    return stat.S_IMODE(st.st_mode), st.st_gid


def test_default_is_0660_in_the_daemons_group(tmp_path):
    old = os.umask(0o022)   # the umask alone would give srwxr-xr-x: nobody else could connect
    try:
        sock = bind_unix_listener(str(tmp_path / "d.sock"))
    finally:
        os.umask(old)
    with sock:
        assert _mode(tmp_path / "d.sock") == (0o660, os.getegid())


def test_mode_is_set_even_against_a_wide_umask(tmp_path):
    old = os.umask(0)
    try:
        sock = bind_unix_listener(str(tmp_path / "d.sock"), access=SocketAccess(0o600))
    finally:
        os.umask(old)
    with sock:
        assert _mode(tmp_path / "d.sock")[0] == 0o600


@pytest.mark.skipif(OTHER_GID is None, reason="giving a socket to another group needs root here")
def test_group_is_set_before_listening(tmp_path):
    with bind_unix_listener(str(tmp_path / "g.sock"), access=SocketAccess(0o660, OTHER_GID)) as sock:
        assert _mode(tmp_path / "g.sock") == (0o660, OTHER_GID)
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(tmp_path / "g.sock"))
        client.close()
        sock.accept()[0].close()


@pytest.mark.parametrize("value, bits", [("0660", 0o660), ("660", 0o660), ("0o640", 0o640), (0o600, 0o600),
                                         (432, 0o660)])
def test_mode_forms(value, bits):
    assert parse_socket_mode(value) == bits


@pytest.mark.parametrize("value, message", [
    ("0999", "expected an octal mode"), ("rw-rw----", "expected an octal mode"), ("", "expected an octal mode"),
    (True, "expected an octal mode"), (0o4770, "0000..0777"), ("0444", "owner without write"),
])
def test_bad_modes(value, message):
    with pytest.raises(SocketAccessError, match=message) as info:
        parse_socket_mode(value)
    assert info.value.field == "socket_mode"


def test_groups_by_name_and_gid():
    own = grp.getgrgid(os.getegid())
    assert resolve_socket_group(own.gr_name) == own.gr_gid
    assert resolve_socket_group(str(own.gr_gid)) == own.gr_gid
    with pytest.raises(SocketAccessError, match="no such group 'vcpx-no-such-group'"):
        resolve_socket_group("vcpx-no-such-group")
    with pytest.raises(SocketAccessError, match="no group with gid 4000000000"):
        resolve_socket_group(4_000_000_000)


def test_host_yaml_keys():
    own = grp.getgrgid(os.getegid()).gr_name
    cfg = parse_host_config({"socket_mode": "0600", "socket_group": own})
    assert cfg.socket == SocketAccess(0o600, os.getegid())
    assert parse_host_config({}).socket == SocketAccess(0o660, None)
    with pytest.raises(HostConfigError, match=r"^socket_group: no such group 'vcpx-no-such-group'"):
        parse_host_config({"socket_group": "vcpx-no-such-group"})
    with pytest.raises(HostConfigError, match=r"^socket_mode: expected an octal mode"):
        parse_host_config({"socket_mode": "u+rw"})


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_host_daemon_names_the_config_file_and_key(tmp_path):
    conf = tmp_path / "host.yaml"
    conf.write_text("socket_group: vcpx-no-such-group\n")
    done = _run(["-m", "vcrypto.host", "--socket", str(tmp_path / "h.sock"), "--config", str(conf)])
    assert done.returncode == 2
    assert f"config error: {conf}: socket_group: no such group 'vcpx-no-such-group'" in done.stderr
    assert not (tmp_path / "h.sock").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--socket-mode", "0888", "--socket-mode: expected an octal mode like '0660', got '0888'"),
    ("--socket-group", "vcpx-no-such-group", "--socket-group: no such group 'vcpx-no-such-group'"),
])
def test_backend_names_the_flag(tmp_path, flag, value, message):
    done = _run(["-m", "vcrypto.engine.backend", "--no-host", "--socket", str(tmp_path / "b.sock"), flag, value])
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "b.sock").exists()


BASE = "listeners: [{port: 0, tls: {enabled: false}}]\nupstreams: {u: {servers: ['127.0.0.1:1']}}\n" \
       "routes: [{upstream: u}]\n"


def test_proxy_config_checks_and_passes_them_to_the_daemons():
    own = grp.getgrgid(os.getegid()).gr_name
    cfg = parse_config(BASE + f"vcrypto: {{socket_mode: 0640, socket_group: {own}}}\n")
    plan = daemon_plan(cfg, "/run/h.sock", "/run/b.sock", "/run/host.yaml")
    assert plan.host_config["socket_mode"] == "0640" and plan.host_config["socket_group"] == own
    assert parse_host_config(plan.host_config).socket == SocketAccess(0o640, os.getegid())
    argv = plan.backend_argv
    assert argv[argv.index("--socket-mode") + 1] == "0640" and argv[argv.index("--socket-group") + 1] == own
    default = daemon_plan(parse_config(BASE), "/run/h.sock", "/run/b.sock", "/run/host.yaml")
    assert default.host_config["socket_mode"] == "0660" and "--socket-group" not in default.backend_argv


@pytest.mark.parametrize("snippet, path, message", [
    ("vcrypto: {socket_group: vcpx-no-such-group}", "vcrypto.socket_group", "no such group"),
    ("vcrypto: {socket_mode: '0999'}", "vcrypto.socket_mode", "expected an octal mode"),
    ("vcrypto: {socket_mode: 0400}", "vcrypto.socket_mode", "owner without write"),
])
def test_proxy_config_errors_name_the_path(snippet, path, message):
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + snippet + "\n")
    assert any(p == path and message in m for p, m in info.value.problems), info.value.problems


def test_supervisor_names_a_missing_external_socket(tmp_path, certs, upstream):
    """vcrypto.manage: false and no engine-backend there (yet): the proxy
    serves (fallback) and says so at start, naming the socket."""
    config = base_config(upstream.address, certs["a"], crypto={"provider": "vcrypto"},
                         vcrypto={"manage": False, "backend_socket": str(tmp_path / "absent.sock")})
    with running_proxy(tmp_path, config) as proxy:
        missing = [e for e in proxy.events() if e.get("event") == "vcrypto_socket_missing"]
        assert [e["socket"] for e in missing] == [str(tmp_path / "absent.sock")]
