"""Config: every invalid example is rejected with an error naming its path."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from vcproxy import cli
from vcproxy.config import ConfigError, check_files, load_config, parse_config, reference

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


def test_check_config_loads_certificates(tmp_path, certs):
    data = _with("listeners[0].tls", {"certificates": [{"cert": str(certs["a"][0]), "key": str(certs["b"][1])}]})
    f = tmp_path / "mismatch.yaml"
    f.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", str(f)]) == 1  # key does not match the certificate
    data["listeners"][0]["tls"]["certificates"][0]["key"] = str(certs["a"][1])
    f.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", str(f)]) == 0


def test_check_config_checks_tls_parameters(tmp_path, certs):
    cert = {"cert": str(certs["a"][0]), "key": str(certs["a"][1])}
    data = _with("listeners[0].tls", {"certificates": [cert], "cipher_suites": ["TLS_RC4_WITH_HOPE"]})
    f = tmp_path / "suite.yaml"
    f.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", str(f)]) == 1
    with pytest.raises(ConfigError) as info:
        check_files(load_config(str(f)))
    assert info.value.problems[0][0] == "listeners[0].tls" and "cipher_suites" in info.value.problems[0][1]
    data = _with("listeners[0].tls", {"certificates": [cert], "versions": ["1.2"]})
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data))
    assert info.value.problems[0][0] == "listeners[0].tls.versions"


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


def test_vcrypto_provider_is_a_clear_error_until_the_engine_exists(tmp_path):
    from vcproxy.supervisor import vcrypto_available

    f = tmp_path / "vc.yaml"
    f.write_text(yaml.safe_dump(_with("crypto.provider", "vcrypto")))
    expected = 0 if vcrypto_available() is None else 1
    assert cli.main(["check-config", str(f)]) == expected


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
