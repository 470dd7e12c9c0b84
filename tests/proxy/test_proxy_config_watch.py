"""reload.watch_config: a config or certificate change reloads with no signal.

The layout is the kubelet's for a ConfigMap mounted as a directory: the path
is a symlink through ``..data`` and an update swaps ``..data`` by rename
(deploy/kubernetes/ relies on this; a ``subPath`` mount is never updated).
"""
from __future__ import annotations

import copy
import http.client
import os
import socket
import ssl
import time
from pathlib import Path

import pytest
import yaml

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vcproxy.config import ConfigError, parse_config
from vcproxy._config_watch import ConfigWatch, file_identities
from proxy_testkit import base_config, client_context, closed_port, running_proxy

INTERVAL_S = 0.2


class KubeletVolume:
    """A directory laid out as the kubelet lays out a ConfigMap volume."""

    def __init__(self, root: Path, files: dict[str, str]) -> None:
        self.root = root
        self.generation = 0
        self.update(files)
        for name in files:
            os.symlink(f"..data/{name}", root / name)

    def update(self, files: dict[str, str]) -> None:
        """Write a new timestamped directory, then swap ``..data`` atomically."""
        self.generation += 1
        stamp = self.root / f"..2026_12_04_00_00_{self.generation:02d}.000"
        stamp.mkdir()
        for name, text in files.items():
            (stamp / name).write_text(text)
        tmp_link = self.root / "..data_tmp"
        os.symlink(stamp.name, tmp_link)
        os.replace(tmp_link, self.root / "..data")  # rename(2): the swap the kubelet does


def test_watch_decides_on_identity_changes_only():
    watch = ConfigWatch({"a": (1, 10, 5, 100), "b": (1, 11, 5, 100)})
    assert watch.observe({"a": (1, 10, 5, 100), "b": (1, 11, 5, 100)}) == []
    assert watch.observe({"a": (1, 12, 5, 100), "b": (1, 11, 5, 100)}) == ["a"]   # new inode
    assert watch.observe({"a": (1, 12, 5, 100), "b": (1, 11, 5, 100)}) == []      # reported once
    assert watch.observe({"a": (1, 12, 5, 100), "b": None}) == []                 # missing: wait
    assert watch.observe({"a": (1, 12, 5, 100), "b": (1, 11, 5, 200)}) == ["b"]   # back, mtime moved
    watch.rebase({"a": (1, 12, 5, 100), "c": (1, 13, 1, 1)})
    assert watch.observe({"a": (1, 12, 5, 100), "c": (1, 13, 1, 1)}) == []


def test_a_data_symlink_swap_changes_the_identity_of_the_path(tmp_path):
    volume = KubeletVolume(tmp_path, {"vcproxy.yaml": "workers: 1\n"})
    path = str(tmp_path / "vcproxy.yaml")
    before = file_identities((path,))
    volume.update({"vcproxy.yaml": "workers: 1\n"})  # same content, same size: a new inode
    after = file_identities((path,))
    assert before[path] is not None and after[path] is not None and before != after


def _status(port: int, ctx: ssl.SSLContext, path: str) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    conn.request("GET", path)
    code = conn.getresponse().status
    conn.close()
    return code


def _events(proxy, name: str) -> list[dict]:
    return [e for e in proxy.events() if e.get("event") == name]


def test_configmap_update_reloads_without_a_signal(tmp_path, certs, upstream):
    volume = KubeletVolume(tmp_path, {"vcproxy.yaml": ""})
    config = base_config(upstream.address, certs["a"],
                         reload={"watch_config": True, "watch_interval_s": INTERVAL_S})
    ctx = client_context(certs["a"][0])
    with running_proxy(tmp_path, config) as proxy:   # Proxy writes through the symlink
        assert (tmp_path / "vcproxy.yaml").is_symlink()
        assert _status(proxy.port, ctx, "/gone/x") == 404
        new = copy.deepcopy(proxy.config)
        new["upstreams"]["dead"] = {"servers": [f"127.0.0.1:{closed_port()}"], "retries": 0}
        new["routes"].append({"path_prefix": "/gone", "upstream": "dead"})
        volume.update({"vcproxy.yaml": yaml.safe_dump(new)})
        changed = proxy.wait_event("config_changed")
        assert changed["files"] == [str(tmp_path / "vcproxy.yaml")]
        proxy.wait_event("reloaded")
        assert _status(proxy.port, ctx, "/gone/x") == 502  # the new route is live

        volume.update({"vcproxy.yaml": "listeners: [{port: 'nope'}]\n"})
        event = proxy.wait_event("reload_rejected")
        assert ["listeners[0].port", "expected int, got str"] in event["problems"]
        time.sleep(10 * INTERVAL_S)  # an unchanged broken file is not retried on every poll
        assert len(_events(proxy, "reload_rejected")) == 1
        assert _status(proxy.port, ctx, "/gone/x") == 502  # the last good config still serves


def _peer_cert_der(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def test_certificate_rewritten_in_place_is_served_after_the_next_poll(tmp_path, certs, upstream):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(certs["a"][0].read_bytes())
    key.write_bytes(certs["a"][1].read_bytes())
    config = base_config(upstream.address, (cert, key),
                         reload={"watch_config": True, "watch_interval_s": INTERVAL_S})
    with running_proxy(tmp_path, config) as proxy:
        assert _peer_cert_der(proxy.port) == _der(certs["a"][0])
        # the key first: the poll that sees only the key reloads a mismatched pair,
        # which is rejected and changes nothing; the certificate completes it
        key.write_bytes(certs["b"][1].read_bytes())
        cert.write_bytes(certs["b"][0].read_bytes())
        deadline = time.monotonic() + 20
        while _peer_cert_der(proxy.port) != _der(certs["b"][0]):
            assert time.monotonic() < deadline, proxy.events()[-5:]
            time.sleep(0.1)
        assert _events(proxy, "config_changed")


def test_watch_interval_is_checked_with_its_path():
    text = "listeners: [{port: 1, tls: {enabled: false}}]\nreload: {watch_config: true, watch_interval_s: 0}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert ("reload.watch_interval_s", "must be 0.1..3600 (s), got 0.0") in [tuple(p) for p in info.value.problems]
