"""check-config beyond the schema: where relative paths point, certificate
expiry and route warnings, every TLS problem named by its path, port
collisions. Each test drives the real command (``cli.main`` or the process)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vcproxy import cli
from vcproxy.config import load_config

from proxy_testkit import REPO, make_cert


def _tls_config(cert: str, key: str, **extra) -> dict:
    config = {
        "listeners": [{"port": 8443, "tls": {"certificates": [{"cert": cert, "key": key}]}}],
        "upstreams": {"demo": {"servers": ["127.0.0.1:8080"]}},
        "routes": [{"upstream": "demo"}],
        "crypto": {"provider": "inline"},
    }
    config.update(extra)
    return config


# ------------------------------------------------------------ relative paths

def test_relative_paths_resolve_from_the_config_files_directory(tmp_path):
    """``cd /tmp && vcproxy check-config /path/vcproxy.yaml`` reads the files
    next to the config, not ones in the working directory."""
    etc = tmp_path / "etc" / "vcproxy"
    (etc / "certs").mkdir(parents=True)
    make_cert(etc / "certs", "site")
    config = _tls_config("certs/site.pem", "certs/site.key",
                         logging={"access_log": "logs/access.log", "error_log": "stderr"})
    path = etc / "vcproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-m", "vcproxy", "check-config", str(path)], cwd=elsewhere,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    # The same file named relatively from another directory: the same files.
    result = subprocess.run([sys.executable, "-m", "vcproxy", "check-config", "etc/vcproxy/vcproxy.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_path_key_is_resolved_and_streams_are_not(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    config = _tls_config("a.pem", "sub/../a.key",
                         vcrypto={"runtime_dir": "run", "host_socket": "run/h.sock",
                                  "backend_socket": "/abs/b.sock", "keys_dir": "keys"},
                         logging={"access_log": "access.log", "error_log": "stdout"})
    (etc / "c.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config(str(etc / "c.yaml"), overrides=["listeners[0].tls.certificates[0].names=[x]"])
    cert = cfg.listeners[0].tls.certificates[0]
    assert (cert.cert, cert.key) == (str(etc / "a.pem"), str(etc / "a.key"))
    vc = cfg.vcrypto
    assert (vc.runtime_dir, vc.host_socket, vc.backend_socket, vc.keys_dir) == (
        str(etc / "run"), str(etc / "run" / "h.sock"), "/abs/b.sock", str(etc / "keys"))
    assert (cfg.logging.access_log, cfg.logging.error_log) == (str(etc / "access.log"), "stdout")
    # a --set override is part of the config: the same rule
    cfg = load_config(str(etc / "c.yaml"), overrides=["logging.error_log=err.log", "logging.access_log=null"])
    assert (cfg.logging.error_log, cfg.logging.access_log) == (str(etc / "err.log"), None)


def test_shipped_configs_point_at_what_make_demo_cert_creates():
    """config/vcproxy.yaml (``make run``) and example-full.yaml name the demo
    certificate relative to config/: the repo's .demo/ whatever the cwd."""
    for name in ("vcproxy.yaml", "example-full.yaml"):
        cfg = load_config(str(REPO / "config" / name))
        for lis in cfg.listeners:
            for cert in lis.tls.certificates:
                assert (cert.cert, cert.key) == (str(REPO / ".demo" / "cert.pem"), str(REPO / ".demo" / "key.pem"))
