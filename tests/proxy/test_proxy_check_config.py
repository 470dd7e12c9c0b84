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


# ------------------------------------------------------------ helpers

def _cert(directory: Path, stem: str, *, days_left: float, names=("localhost",), ips=("127.0.0.1",)) -> tuple[str, str]:
    """A self-signed P-256 certificate whose not-after is ``days_left`` from now (negative: expired)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = now + datetime.timedelta(days=days_left)
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(min(now, not_after) - datetime.timedelta(days=30)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _check(tmp_path: Path, config: dict, capsys) -> tuple[int, list[str]]:
    """check-config on ``config``: its exit status and its stderr lines."""
    f = tmp_path / "vcproxy.yaml"
    f.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    status = cli.main(["check-config", str(f)])
    return status, capsys.readouterr().err.splitlines()


def _lines(lines: list[str], path: str) -> list[str]:
    return [line for line in lines if f": {path}: " in line]


# ------------------------------------------------------------ certificate expiry

def test_expired_and_expiring_certificates_warn_with_path_and_date(tmp_path, capsys):
    expired = _cert(tmp_path, "expired", days_left=-3)
    soon = _cert(tmp_path, "soon", days_left=5)
    fine = _cert(tmp_path, "fine", days_left=90)
    config = _tls_config(*fine)
    config["listeners"][0]["tls"]["certificates"] += [
        {"cert": expired[0], "key": expired[1]}, {"cert": soon[0], "key": soon[1]}]
    status, lines = _check(tmp_path, config, capsys)
    assert status == 0, lines  # warnings do not fail the check
    assert lines[-1].endswith("test is successful")
    assert not _lines(lines, "listeners[0].tls.certificates[0].cert"), lines
    (exp,) = _lines(lines, "listeners[0].tls.certificates[1].cert")
    assert "warning:" in exp and expired[0] in exp and "expired: not after 20" in exp and "UTC" in exp
    (near,) = _lines(lines, "listeners[0].tls.certificates[2].cert")
    assert "warning:" in near and soon[0] in near and "expires in 5.0 days: not after 20" in near


def test_run_logs_the_warnings_check_config_prints(tmp_path, upstream):
    """``vcproxy run`` validates on the same path: it starts, and says why it warns."""
    from proxy_testkit import base_config, running_proxy

    soon = _cert(tmp_path, "soon", days_left=3)
    config = base_config(upstream.address, (Path(soon[0]), Path(soon[1])))
    with running_proxy(tmp_path, config) as proxy:
        (warning,) = [e for e in proxy.events() if e.get("event") == "config_warning"]
    assert warning["level"] == "warning" and warning["path"] == "listeners[0].tls.certificates[0].cert"
    assert "expires in" in warning["problem"] and soon[0] in warning["problem"]


# ------------------------------------------------------------ routes that never match

def test_route_hosts_that_can_never_match_warn(tmp_path, capsys):
    cert = _cert(tmp_path, "site", days_left=90, names=("example.com", "*.example.com", "localhost"))
    routes = [
        {"upstream": "demo"},                                          # 0 catch-all first: shadows nothing
        {"upstream": "demo", "host": "www.example.com"},               # 1 covered by *.example.com
        {"upstream": "demo", "host": "example.com:8443"},              # 2 a port: never (Host is matched without)
        {"upstream": "demo", "host": "Example.com."},                  # 3 trailing dot: never
        {"upstream": "demo", "host": "www.example.com", "path_prefix": "/"},  # 4 same as 1: ties keep 1
        {"upstream": "demo", "host": "api.other.org"},                 # 5 no certificate covers it
        {"upstream": "demo", "host": "*.example.com", "path_prefix": "/api"},  # 6 covered
        {"upstream": "demo", "host": "127.0.0.1"},                     # 7 the IP SAN covers it
        {"upstream": "demo", "host": "www.*.com"},                     # 8 '*' inside: never
        {"upstream": "demo", "host": "*.deep.example.com"},            # 9 *.example.com covers one label only
    ]
    config = _tls_config(*cert, routes=routes)
    status, lines = _check(tmp_path, config, capsys)
    assert status == 0, lines
    warned = {i for i in range(len(routes)) if _lines(lines, f"routes[{i}].host")}
    assert warned == {2, 3, 4, 5, 8, 9}, lines
    assert "can never match" in _lines(lines, "routes[2].host")[0]
    assert "routes[1]" in _lines(lines, "routes[4].host")[0]
    assert "only clients that skip certificate verification" in _lines(lines, "routes[5].host")[0]


def test_a_plaintext_http_listener_reaches_every_host_and_tcp_only_uses_no_route(tmp_path, capsys):
    cert = _cert(tmp_path, "site", days_left=90)
    config = _tls_config(*cert, routes=[{"upstream": "demo"}, {"upstream": "demo", "host": "api.other.org"}])
    config["listeners"].append({"port": 8080, "tls": {"enabled": False}})
    status, lines = _check(tmp_path, config, capsys)
    assert status == 0 and not [line for line in lines if "warning" in line], lines
    config["listeners"] = [{"port": 8443, "mode": "tcp", "upstream": "demo",
                            "tls": {"certificates": [{"cert": cert[0], "key": cert[1]}]}}]
    status, lines = _check(tmp_path, config, capsys)
    assert status == 0 and "never used" in _lines(lines, "routes")[0], lines


# ------------------------------------------------------------ every TLS problem, at its path

def test_every_tls_problem_of_a_listener_is_reported_at_its_path(tmp_path, capsys):
    good = _cert(tmp_path, "good", days_left=90)
    other = _cert(tmp_path, "other", days_left=90)
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    config = _tls_config(*good)
    tls = config["listeners"][0]["tls"]
    tls["certificates"] += [
        {"cert": str(tmp_path / "missing.pem"), "key": good[1]},      # 1 cert file missing
        {"cert": good[0], "key": str(tmp_path / "missing.key")},      # 2 key file missing
        {"cert": good[0], "key": other[1]},                           # 3 key of another certificate
        {"cert": good[0], "key": str(tmp_path / "garbage.pem")},      # 4 key file not a key
        {"cert": str(tmp_path / "garbage.pem"), "key": good[1]},      # 5 cert file not a certificate
    ]
    tls["cipher_suites"] = ["TLS_RC4_WITH_HOPE", "TLS_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]
    tls["groups"] = ["x448", "x25519"]
    status, lines = _check(tmp_path, config, capsys)
    assert status == 1 and lines[-1].endswith("test failed")
    where = "listeners[0].tls"
    expected = {f"{where}.certificates[1].cert": "missing.pem: cannot read",
                f"{where}.certificates[2].key": "missing.key: cannot read",
                f"{where}.certificates[3].key": "does not match the leaf certificate",
                f"{where}.certificates[4].key": "garbage.pem: cannot load private key",
                f"{where}.certificates[5].cert": "no PEM CERTIFICATE block",
                f"{where}.cipher_suites": "unknown 'TLS_RC4_WITH_HOPE'",
                f"{where}.groups": "unknown 'x448'"}
    for path, words in expected.items():
        found = _lines(lines, path)
        assert len(found) == 1 and words in found[0], (path, lines)
    errors = [line for line in lines[:-1] if "warning:" not in line]
    assert len(errors) == len(expected), lines


# ------------------------------------------------------------ port collisions

@pytest.mark.parametrize("extra, path, other", [
    ({"metrics": {"port": 8443}}, "metrics.port", "listeners[0].port"),
    ({"metrics": {"port": 8443, "address": "0.0.0.0"}}, "metrics.port", "listeners[0].port"),
    ({"crypto": {"provider": "vcrypto"}, "vcrypto": {"host_metrics": "127.0.0.1:8443"}},
     "vcrypto.host_metrics", "listeners[0].port"),
    ({"crypto": {"provider": "vcrypto"}, "vcrypto": {"host_metrics": "127.0.0.1:9101",
                                                     "backend_metrics": "127.0.0.1:9101"}},
     "vcrypto.backend_metrics", "vcrypto.host_metrics"),
    ({"crypto": {"provider": "vcrypto"}, "vcrypto": {"backend_metrics": "[::]:9100"}},
     "vcrypto.backend_metrics", "metrics.port"),
    ({"demo_upstream": {"enabled": True, "port": 9100}}, "demo_upstream.port", "metrics.port"),
    ({"listeners": [{"port": 8443, "tls": {"enabled": False}}, {"port": 8443, "tls": {"enabled": False}}]},
     "listeners[1].port", "listeners[0].port"),
])
def test_port_collisions_are_refused_naming_both_paths(tmp_path, capsys, extra, path, other):
    config = {"listeners": [{"port": 8443, "tls": {"enabled": False}}],
              "upstreams": {"demo": {"servers": ["127.0.0.1:8080"]}}, "routes": [{"upstream": "demo"}],
              "crypto": {"provider": "inline"}}
    config.update(extra)
    status, lines = _check(tmp_path, config, capsys)
    assert status == 1, lines
    (line,) = _lines(lines, path)
    assert f"collides with {other}" in line, lines


def test_ports_that_do_not_collide_pass(tmp_path, capsys):
    config = {"listeners": [{"port": 8443, "address": "0.0.0.0", "tls": {"enabled": False}},
                            {"port": 8443, "address": "127.0.0.1", "tls": {"enabled": False}},  # reuseport groups
                            {"port": 0, "tls": {"enabled": False}}, {"port": 0, "tls": {"enabled": False}}],
              "upstreams": {"demo": {"servers": ["127.0.0.1:8080"]}}, "routes": [{"upstream": "demo"}],
              "metrics": {"port": 9100, "address": "::1"},
              "crypto": {"provider": "inline"},
              "vcrypto": {"host_metrics": "127.0.0.1:9100"},   # provider inline: the daemons do not run
              "demo_upstream": {"enabled": True, "port": 8080}}
    status, lines = _check(tmp_path, config, capsys)
    assert status == 0, lines


def test_run_refuses_what_check_config_refuses(tmp_path):
    """The real ``vcproxy run``: the same errors, before anything starts."""
    config = {"listeners": [{"port": 0, "tls": {"enabled": False}}],
              "upstreams": {"demo": {"servers": ["127.0.0.1:8080"]}}, "routes": [{"upstream": "demo"}],
              "crypto": {"provider": "inline"}, "metrics": {"port": 9100},
              "demo_upstream": {"enabled": True, "port": 9100}}
    f = tmp_path / "vcproxy.yaml"
    f.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "vcproxy", "run", "--config", str(f)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "demo_upstream.port: 127.0.0.1:9100 collides with metrics.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_keyless_key_refs_are_checked_against_the_keys_vcrypto_host_will_hold(tmp_path, capsys):
    import shutil

    site = _cert(tmp_path, "site", days_left=90)
    other = _cert(tmp_path, "other", days_left=90)
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(site[1], keys / "site.pem")
    shutil.copy(other[1], keys / "other.pem")
    config = _tls_config(*site, crypto={"provider": "vcrypto"}, vcrypto={"keys_dir": "keys"})
    config["listeners"][0]["tls"]["certificates"] = [
        {"cert": site[0], "key_ref": "site"},       # 0 fine
        {"cert": site[0], "key_ref": "other"},      # 1 held, but another certificate's key
        {"cert": site[0], "key_ref": "sitee"},      # 2 a typo: the host holds no such key
    ]
    status, lines = _check(tmp_path, config, capsys)
    assert status == 1, lines
    assert not _lines(lines, "listeners[0].tls.certificates[0].key_ref"), lines
    assert "does not match the certificate" in _lines(lines, "listeners[0].tls.certificates[1].key_ref")[0]
    (typo,) = _lines(lines, "listeners[0].tls.certificates[2].key_ref")
    assert "no key 'sitee'" in typo and "it holds: other, site" in typo
    (keys / "junk.pem").write_text("not a key\n")
    config["listeners"][0]["tls"]["certificates"] = config["listeners"][0]["tls"]["certificates"][:1]
    status, lines = _check(tmp_path, config, capsys)
    assert status == 1 and "junk.pem: not an unencrypted private key" in _lines(lines, "vcrypto.keys_dir")[0]
    (keys / "junk.pem").unlink()
    status, lines = _check(tmp_path, config, capsys)
    assert status == 0, lines
