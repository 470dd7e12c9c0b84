"""Config: every invalid example is rejected with an error naming its path."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from vcproxy import cli
from vcproxy.config import ConfigError, load_config, parse_config, reference
from vcproxy.proxy import check_files

from proxy_testkit import REPO

VALID = {
    "listeners": [{"port": 8443, "tls": {"enabled": False}}],
    "upstreams": {"demo": {"servers": ["127.0.0.1:8080"]}},
    "routes": [{"upstream": "demo"}],
}


def _with(path: str, value):
    """VALID with one key replaced (``a.b[0].c`` paths)."""
    data = yaml.safe_load(yaml.safe_dump(VALID))
    from vcproxy.config import apply_override

    return apply_override(data, f"{path}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")


INVALID = [
    # (description, data, expected path, expected words in the message)
    ("port as string", _with("listeners[0].port", "8443"), "listeners[0].port", "expected int, got str"),
    ("port out of range", _with("listeners[0].port", 70000), "listeners[0].port", "0..65535"),
    ("bool is not int", _with("workers", True), "workers", "expected int, got bool"),
    ("unknown top-level key", _with("worker", 2), "worker", "unknown key"),
    ("unknown nested key", _with("listeners[0].tls.certs", []), "listeners[0].tls.certs", "unknown key"),
    ("bad mode", _with("listeners[0].mode", "udp"), "listeners[0].mode", "expected one of"),
    ("tcp without upstream", _with("listeners[0].mode", "tcp"), "listeners[0].upstream", "required"),
    ("tls without certificates", _with("listeners[0].tls.enabled", True), "listeners[0].tls.certificates",
     "at least one"),
    ("certificate without key", _with("listeners[0].tls", {"certificates": [{"cert": "x.pem"}]}),
     "listeners[0].tls.certificates[0].key", "required"),
    ("bad address", _with("listeners[0].address", "localhost"), "listeners[0].address", "IP address"),
    ("listeners not a list", _with("listeners", {"port": 1}), "listeners", "expected list, got mapping"),
    ("no listeners", _with("listeners", []), "listeners", "at least one"),
    ("server without port", _with("upstreams.demo.servers[0]", "127.0.0.1"), "upstreams.demo.servers[0]",
     "host:port"),
    ("server port zero", _with("upstreams.demo.servers[0]", "127.0.0.1:0"), "upstreams.demo.servers[0]",
     "1..65535"),
    ("no servers", _with("upstreams.demo.servers", []), "upstreams.demo.servers", "at least one"),
    ("negative timeout", _with("upstreams.demo.read_timeout_s", -1), "upstreams.demo.read_timeout_s", "> 0"),
    ("timeout as string", _with("upstreams.demo.connect_timeout_s", "5s"), "upstreams.demo.connect_timeout_s",
     "expected float, got str"),
    ("negative retries", _with("upstreams.demo.retries", -1), "upstreams.demo.retries", ">= 0"),
    ("health interval zero", _with("upstreams.demo.health_check.interval_s", 0),
     "upstreams.demo.health_check.interval_s", "> 0"),
    ("route to unknown upstream", _with("routes[0].upstream", "nope"), "routes[0].upstream", "unknown upstream"),
    ("route prefix without slash", _with("routes[0].path_prefix", "api"), "routes[0].path_prefix", "start with '/'"),
    ("no routes for http", _with("routes", []), "routes", "at least one route"),
    ("bad provider", _with("crypto.provider", "qat"), "crypto.provider", "expected one of"),
    ("CIDR with host bits", _with("listeners[0].trusted_proxies", ["10.0.0.1/8"]), "listeners[0].trusted_proxies[0]",
     "has host bits set"),
    ("CIDR not an address", _with("listeners[0].trusted_proxies", ["lb.example/24"]),
     "listeners[0].trusted_proxies[0]", "expected a CIDR"),
    ("CIDR prefix too long", _with("listeners[0].trusted_proxies", ["10.0.0.0/33"]),
     "listeners[0].trusted_proxies[0]", "expected a CIDR"),
    ("CIDR as a number", _with("listeners[0].trusted_proxies", [10]), "listeners[0].trusted_proxies[0]",
     "expected a CIDR string"),
    ("unknown proxy_protocol value", _with("listeners[0].proxy_protocol", "v3"), "listeners[0].proxy_protocol",
     "expected bool, got str"),
    ("proxy_protocol without trusted_proxies", _with("listeners[0].proxy_protocol", True),
     "listeners[0].trusted_proxies", "required when proxy_protocol is true"),
    ("unknown send_proxy_protocol value", _with("upstreams.demo.send_proxy_protocol", "v3"),
     "upstreams.demo.send_proxy_protocol", "expected one of 'v1', 'v2'"),
    ("pipeline depth", _with("crypto.pipeline_depth", 17), "crypto.pipeline_depth", "1..16"),
    ("record threshold", _with("crypto.small_record_threshold_bytes", 16386),
     "crypto.small_record_threshold_bytes", "0..16385"),
    ("bad fallback", _with("crypto.fallback", True), "crypto.fallback", "expected one of"),
    ("stall deadline zero", _with("crypto.stall_timeout_s", 0), "crypto.stall_timeout_s", "> 0"),
    ("pool resources type", _with("vcrypto.pool", {"resources": 3}), "vcrypto.pool.resources", "expected a list"),
    ("pool resource kind", _with("vcrypto.pool", {"resources": [{"name": "x", "kind": "gpu"}]}),
     "vcrypto.pool.resources[0].kind", "unknown kind"),
    ("pool not a mapping", _with("vcrypto.pool", [1]), "vcrypto.pool", "expected mapping"),
    ("vcrypto metrics address", _with("vcrypto.host_metrics", 9101), "vcrypto.host_metrics", "host:port"),
    ("host poll mode", _with("vcrypto.host_poll.mode", "spin"), "vcrypto.host_poll.mode", "expected one of"),
    ("host poll spin", _with("vcrypto.host_poll.spin_us", -1), "vcrypto.host_poll.spin_us", ">= 0"),
    ("host poll threshold", _with("vcrypto.host_poll.batch_threshold", 0), "vcrypto.host_poll.batch_threshold",
     ">= 1"),
    ("backend poll budget", _with("vcrypto.backend_poll.budget_us", -5), "vcrypto.backend_poll.budget_us", ">= 0"),
    ("fifo type", _with("vcrypto.fifo", "yes"), "vcrypto.fifo", "expected bool"),
    ("limits zero", _with("limits.max_connections", 0), "limits.max_connections", "> 0"),
    ("limits type", _with("limits.max_body_bytes", "1G"), "limits.max_body_bytes", "expected int, got str"),
    ("metrics port", _with("metrics.port", -1), "metrics.port", "0..65535"),
    ("log level", _with("logging.level", "verbose"), "logging.level", "expected one of"),
    ("workers zero", _with("workers", 0), "workers", "1..64"),
    ("duplicate listener names", _with("listeners", [
        {"name": "a", "port": 1, "tls": {"enabled": False}}, {"name": "a", "port": 2, "tls": {"enabled": False}}]),
     "listeners[1].name", "duplicate"),
    ("section not a mapping", _with("limits", [1]), "limits", "expected mapping, got list"),
]


@pytest.mark.parametrize("desc,data,path,words", INVALID, ids=[row[0] for row in INVALID])
def test_invalid_config_names_its_path(desc, data, path, words, tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data))
    problems = dict(info.value.problems)
    assert path in problems, f"{desc}: {info.value.problems}"
    assert words in problems[path]
    assert str(info.value).count(f"{path}: ") >= 1
    # check-config agrees and exits non-zero, naming the path on stderr
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", str(f)]) == 1


def test_all_problems_reported_together():
    data = _with("listeners[0].port", "x")
    data["workers"] = "two"
    data["upstreams"]["demo"]["retries"] = "many"
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data))
    paths = [p for p, _ in info.value.problems]
    assert paths == ["listeners[0].port", "upstreams.demo.retries", "workers"]


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_config("listeners: [\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))


def test_defaults_and_overrides():
    config = parse_config(yaml.safe_dump(VALID), overrides=["workers=3", "listeners[0].port=0"])
    assert config.workers == 3 and config.listeners[0].port == 0
    assert config.limits.max_header_bytes == 16384
    assert config.crypto.provider == "vcrypto"
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(VALID), overrides=["limits.max_connections=lots"])
    assert info.value.problems[0][0] == "limits.max_connections"


def test_config_tree_is_frozen():
    config = parse_config(yaml.safe_dump(VALID))
    with pytest.raises(AttributeError):
        config.workers = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.upstreams["x"] = config.upstreams["demo"]  # type: ignore[index]


@pytest.mark.parametrize("mode, alpn, path, words", [
    ("http", ["h2", "spdy/3"], "listeners[0].tls.alpn[1]", "cannot serve 'spdy/3'"),
    ("tcp", ["h2"], "listeners[0].tls.alpn[0]", "mode tcp cannot serve 'h2'"),
    ("http", ["http/1.1", "http/1.1"], "listeners[0].tls.alpn", "twice"),
])
def test_check_config_rejects_alpn_the_listener_cannot_serve(mode, alpn, path, words):
    data = _with("listeners[0].tls.alpn", alpn)
    data["listeners"][0].update(mode=mode, upstream="demo")
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data))
    assert any(p == path and words in m for p, m in info.value.problems), info.value.problems


def test_alpn_defaults_by_mode_and_http2_limits():
    config = parse_config(yaml.safe_dump(VALID))
    assert config.listeners[0].alpn() == ("h2", "http/1.1")
    assert config.http2.max_concurrent_streams == 100
    tcp = _with("listeners[0].mode", "tcp")
    tcp["listeners"][0]["upstream"] = "demo"
    assert parse_config(yaml.safe_dump(tcp)).listeners[0].alpn() == ("http/1.1",)
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(_with("http2.max_frame_size_bytes", 1000)))
    assert info.value.problems[0][0] == "http2.max_frame_size_bytes"


def test_check_config_loads_certificates(tmp_path, certs):
    data = _with("listeners[0].tls", {"certificates": [{"cert": str(certs["a"][0]), "key": str(certs["b"][1])}]})
    f = tmp_path / "mismatch.yaml"
    f.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", str(f)]) == 1  # key does not match the certificate
    data["listeners"][0]["tls"]["certificates"][0]["key"] = str(certs["a"][1])
    f.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", str(f)]) == 0


def test_check_config_checks_groups(tmp_path, certs):
    cert = {"cert": str(certs["a"][0]), "key": str(certs["a"][1])}
    f = tmp_path / "groups.yaml"
    for groups, versions, words in [
        (["X25519MLKEM768", "x25519"], None, None),
        (["SecP256r1MLKEM768", "X25519MLKEM768"], ["1.3"], None),
        (["x25519mlkem768"], None, "unknown 'x25519mlkem768'"),          # names are IANA's, exactly
        (["X25519MLKEM768"], ["1.2", "1.3"], "no TLS 1.2 group"),        # hybrids are TLS 1.3 only
    ]:
        tls = {"certificates": [cert], "groups": groups}
        if versions:
            tls["versions"] = versions
        f.write_text(yaml.safe_dump(_with("listeners[0].tls", tls)))
        if words is None:
            check_files(load_config(str(f)))
            assert cli.main(["check-config", str(f)]) == 0
            continue
        assert cli.main(["check-config", str(f)]) == 1
        with pytest.raises(ConfigError) as info:
            check_files(load_config(str(f)))
        path, message = info.value.problems[0]
        assert path == "listeners[0].tls.groups" and words in message, message


def test_check_config_checks_tls_parameters(tmp_path, certs):
    cert = {"cert": str(certs["a"][0]), "key": str(certs["a"][1])}
    data = _with("listeners[0].tls", {"certificates": [cert], "cipher_suites": ["TLS_RC4_WITH_HOPE"]})
    f = tmp_path / "suite.yaml"
    f.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", str(f)]) == 1
    with pytest.raises(ConfigError) as info:
        check_files(load_config(str(f)))
    assert info.value.problems[0][0] == "listeners[0].tls.cipher_suites"
    # a TLS 1.2 suite we do not serve (CBC) is refused by name
    data = _with("listeners[0].tls", {"certificates": [cert],
                                      "cipher_suites": ["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"]})
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        check_files(load_config(str(f)))
    assert "'TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA'" in info.value.problems[0][1]
    # TLS 1.2 suites only, but TLS 1.3 served too
    data = _with("listeners[0].tls", {"certificates": [cert], "versions": ["1.2", "1.3"],
                                      "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]})
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        check_files(load_config(str(f)))
    assert "no TLS 1.3 suite" in info.value.problems[0][1]
    data["listeners"][0]["tls"]["min_version"] = "1.2"
    data["listeners"][0]["tls"]["versions"] = ["1.2"]
    f.write_text(yaml.safe_dump(data))
    check_files(load_config(str(f)))  # TLS 1.2 only, with a TLS 1.2 suite: fine
    data = _with("listeners[0].tls", {"certificates": [cert], "versions": ["1.1"]})
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data))
    assert info.value.problems[0][0] == "listeners[0].tls.versions[0]"


def test_check_config_process_exit_status(tmp_path):
    """The real command, like `nginx -t`: non-zero and the path on stderr."""
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(_with("listeners[0].port", "8443")))
    result = subprocess.run([sys.executable, "-m", "vcproxy", "check-config", str(f)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "listeners[0].port: expected int, got str" in result.stderr
    assert "test failed" in result.stderr


def test_shipped_configs_are_valid(certs):
    cert, key = certs["a"]
    for name in ("vcproxy.yaml", "example-full.yaml"):
        sets = [f"listeners[0].tls.certificates[0].cert={cert}", f"listeners[0].tls.certificates[0].key={key}"]
        if name == "example-full.yaml":
            sets += [f"listeners[1].tls.certificates[0].cert={cert}", f"listeners[1].tls.certificates[0].key={key}"]
        assert cli.main(["check-config", str(REPO / "config" / name)] + [a for s in sets for a in ("--set", s)]) == 0


def test_vcrypto_provider_passes_check_config(tmp_path):
    f = tmp_path / "vc.yaml"
    f.write_text(yaml.safe_dump(_with("crypto.provider", "vcrypto")))
    assert cli.main(["check-config", str(f)]) == 0


def test_reference_lists_every_key():
    text = reference()
    for key in ("`listeners[].tls.certificates[].names`", "`upstreams.<name>.read_timeout_s`",
                "`limits.max_header_bytes`", "`crypto.small_record_threshold_bytes`", "`vcrypto.pool`"):
        assert key in text
    assert cli.main(["config-reference"]) == 0


def test_config_readme_tables_are_current():
    """config/README.md carries the generated reference tables; regenerate them when the schema changes."""
    from vcproxy.metrics import help_table

    text = (REPO / "config" / "README.md").read_text()
    assert "<!-- config-reference:begin -->\n" + reference() + "<!-- config-reference:end -->" in text
    assert "<!-- metrics-reference:begin -->\n" + help_table() + "<!-- metrics-reference:end -->" in text
    # README.md carries the same metrics list for users who never open config/
    readme = (REPO / "README.md").read_text()
    assert "<!-- metrics-reference:begin -->\n" + help_table() + "<!-- metrics-reference:end -->" in readme


def test_supervisor_hands_the_vcrypto_section_to_both_daemons():
    """``vcrypto.fifo``, ``vcrypto.host_poll`` and ``vcrypto.backend_poll`` reach
    the daemons: the host's generated config parses with the host's own
    loader to those values, the backend's argv with the backend's parser."""
    from vcproxy.supervisor import daemon_plan
    from vcrypto.engine.backend._main import _parse as parse_backend_argv
    from vcrypto.host.config import parse_config as parse_host_config

    data = yaml.safe_load(yaml.safe_dump(VALID))
    data["crypto"] = {"provider": "vcrypto", "stall_timeout_s": 4}
    data["vcrypto"] = {"fifo": True, "host_poll": {"mode": "doorbell", "spin_us": 75, "batch_threshold": 3,
                                                   "coalesce_us": 10},
                       "backend_poll": {"budget_us": 125}, "pool": {"resources": [{"name": "s", "kind": "sodium"}]}}
    plan = daemon_plan(parse_config(yaml.safe_dump(data)), "/h.sock", "/b.sock", "/h.yaml")
    host = parse_host_config(yaml.safe_load(yaml.safe_dump(plan.host_config)))
    assert host.fifo is True and host.pool == {"resources": [{"name": "s", "kind": "sodium"}]}
    assert (host.poll.mode, host.poll.spin_us, host.poll.batch_threshold, host.poll.coalesce_us) == (
        "doorbell", 75.0, 3, 10.0)
    assert plan.host_argv[3:7] == ["--socket", "/h.sock", "--config", "/h.yaml"]
    backend = parse_backend_argv(plan.backend_argv[3:])
    assert (backend.poll_budget_us, backend.stall_timeout_s, backend.host_socket) == (125.0, 4.0, "/h.sock")
    # both daemons write the supervisor's error log (one format, one file, reopened on SIGUSR1)
    assert (backend.log, backend.log_level) == ("stderr", "info")
    assert plan.host_argv[7:11] == ["--log", "stderr", "--log-level", "info"]
    # The defaults: what was measured best on this machine (README "Polling").
    default = daemon_plan(parse_config(yaml.safe_dump(VALID)), "/h", "/b", "/c")
    host = parse_host_config(default.host_config)
    assert host.fifo is False and not default.host_config.get("pool")
    from vcproxy.config import VcryptoConfig
    assert host.poll.mode == VcryptoConfig().host_poll.mode
    assert parse_backend_argv(default.backend_argv[3:]).poll_budget_us == VcryptoConfig().backend_poll.budget_us
