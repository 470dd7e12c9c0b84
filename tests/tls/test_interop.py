"""Interop with real clients: openssl s_client, curl, gnutls-cli, Python ssl.

Each test runs once per ``tls_provider`` parameter; with the counting
provider, ``tls_server`` checks at the end that every key exchange, signature
and above-threshold record went through the provider.
"""
from __future__ import annotations

import functools
import socket
import ssl

import pytest
import trio

from tests.tls.clients import interactive, s_client_argv, s_client_ping
from tests.tls.helpers import CountingProvider, server_config, tls_server

pytestmark = pytest.mark.interop

SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
OPENSSL_GROUPS = {"x25519": "X25519", "secp256r1": "P-256", "secp384r1": "P-384"}


async def test_openssl_every_suite_and_group(test_certs, ca_file, tls_provider):
    config = server_config([test_certs["ecdsa-p256"]])
    results = {}
    async with tls_server(config, tls_provider) as run:
        async def one(suite, group):
            results[suite, group] = await s_client_ping(
                run.port, ca_file, "-ciphersuites", suite, "-groups", OPENSSL_GROUPS[group])
        async with trio.open_nursery() as nursery:
            for suite in SUITES:
                for group in OPENSSL_GROUPS:
                    nursery.start_soon(one, suite, group)
    assert not run.errors
    assert sorted((i.cipher_suite, i.named_group) for i in run.infos) == sorted(results)
    for (suite, group), out in results.items():
        assert f"Cipher is {suite}" in out and "Verification: OK" in out
    assert not any(i.hello_retry for i in run.infos)


async def test_openssl_hello_retry_when_first_share_is_not_taken(test_certs, ca_file, tls_provider):
    # The client sends a P-384 share only; the server takes x25519 or P-256.
    config = server_config([test_certs["ecdsa-p256"]], groups=["secp256r1", "x25519"])
    async with tls_server(config, tls_provider) as run:
        out = await s_client_ping(run.port, ca_file, "-groups", "P-384:X25519", "-msg")
    assert out.count("ClientHello") == 2, out
    assert "echo:ping" in out
    [info] = run.infos
    assert info.hello_retry and info.named_group == "x25519"


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "ed25519"])
async def test_openssl_each_certificate_type(kind, test_certs, ca_file, tls_provider):
    config = server_config([test_certs[kind]])
    async with tls_server(config, tls_provider) as run:
        out = await s_client_ping(run.port, ca_file)
    assert "Verification: OK" in out and "echo:ping" in out
    # the chain carries the intermediate: depth 2 = root, intermediate, leaf
    assert "depth=2" in out and "depth=1" in out


async def test_openssl_resumption_shows_reused(test_certs, ca_file, tls_provider, tmp_path):
    config = server_config([test_certs["ecdsa-p256"]])
    sess = str(tmp_path / "sess.pem")
    async with tls_server(config, tls_provider) as run:
        first = await s_client_ping(run.port, ca_file, "-sess_out", sess)
        second = await s_client_ping(run.port, ca_file, "-sess_in", sess)
    assert "New, TLSv1.3" in first
    assert "Reused, TLSv1.3" in second, second
    assert [i.resumed for i in run.infos] == [False, True]


async def test_openssl_client_key_update_keeps_connection(test_certs, ca_file, tls_provider):
    config = server_config([test_certs["ecdsa-p256"]])
    async with tls_server(config, tls_provider) as run:
        out = await interactive(s_client_argv(run.port, ca_file), [
            (b"ping\n", "echo:ping"),
            (b"k\n", "KEYUPDATE"), (b"after-k\n", "echo:after-k"),
            (b"K\n", "KEYUPDATE"), (b"after-K\n", "echo:after-K"),
        ])
    assert not run.errors, run.errors
    assert out.count("KEYUPDATE") == 2


async def test_server_initiated_key_update(test_certs, ca_file, tls_provider):
    config = server_config([test_certs["ecdsa-p256"]], key_update_after_records=2)
    async with tls_server(config, tls_provider) as run:
        steps = [(f"line{i}\n".encode(), f"echo:line{i}") for i in range(6)]
        out = await interactive(s_client_argv(run.port, ca_file), steps)
    assert not run.errors, run.errors
    assert "echo:line5" in out


async def test_curl(test_certs, ca_file, tls_provider):
    config = server_config([test_certs["ecdsa-p256"]], alpn_protocols=["http/1.1"])
    async with tls_server(config, tls_provider) as run:
        with trio.fail_after(20):
            proc = await trio.run_process(
                ["curl", "-sS", "--cacert", ca_file, "--resolve", f"localhost:{run.port}:127.0.0.1",
                 f"https://localhost:{run.port}/"], capture_stdout=True, capture_stderr=True,
                check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"hello http/1.1 TLS_AES_128_GCM_SHA256"


async def test_gnutls_cli(test_certs, ca_file, tls_provider):
    config = server_config([test_certs["ecdsa-p256"]])
    async with tls_server(config, tls_provider) as run:
        out = await interactive(
            ["gnutls-cli", "--x509cafile", ca_file, "-p", str(run.port), "localhost"],
            [(b"ping\n", "echo:ping")])
    assert "Handshake was completed" in out
    assert not run.errors


async def test_python_ssl_with_verification(test_certs, ca_file, tls_provider):
    config = server_config([test_certs["rsa-2048"]], alpn_protocols=["h2", "http/1.1"])

    def client(port):
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_alpn_protocols(["http/1.1"])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"x" * 40000)
                got = b""
                while len(got) < 40005:
                    got += s.recv(65536)
                return s.version(), s.selected_alpn_protocol(), got

    async with tls_server(config, tls_provider) as run:
        version, alpn, got = await trio.to_thread.run_sync(client, run.port)
    assert (version, alpn) == ("TLSv1.3", "http/1.1")
    assert got.startswith(b"echo:") and got.count(b"x") == 40000


@pytest.mark.parametrize("versions,client", [
    (["1.3"], ["-tls1_2"]),                                  # a TLS 1.3-only listener
    (None, ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]),    # TLS 1.1: never (RFC 8996)
])
async def test_openssl_client_without_a_version_we_serve_gets_protocol_version(
        versions, client, test_certs, ca_file, tls_provider):
    config = server_config([test_certs["ecdsa-p256"], test_certs["rsa-2048"]], versions=versions)
    async with tls_server(config, tls_provider) as run:
        argv = s_client_argv(run.port, ca_file, *client[1:], version=client[0])
        with trio.fail_after(20):
            proc = await trio.run_process(argv, stdin=b"", capture_stdout=True,
                                          capture_stderr=True, check=False)
            while not run.errors:
                await trio.sleep(0.01)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode != 0
    assert "alert protocol version" in out, out
    assert run.errors[0].alert == 70


# ---- TLS 1.2 ----------------------------------------------------------------

#: (our IANA name, OpenSSL's name, client -groups, the group we choose). In TLS
#: 1.2 the client's groups also bound the ECDSA certificate's curve (RFC 8422
#: §5.1), so the ECDSA runs offer P-256 too; every group is covered.
SUITES12 = (
    ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256", "X25519:P-256",
     "x25519"),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384", "P-384:P-256",
     "secp256r1"),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305",
     "X25519:P-256", "x25519"),
    ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "P-256", "secp256r1"),
    ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "X25519", "x25519"),
    ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305", "P-384",
     "secp384r1"),
)


def config12(test_certs, **kw):
    """ECDSA and RSA certificates for one name: the suite picks the certificate."""
    return server_config([test_certs["ecdsa-p256"], test_certs["rsa-2048"]], **kw)


async def test_openssl_tls12_every_suite_with_ecdsa_and_rsa(test_certs, ca_file, tls_provider):
    results = {}
    async with tls_server(config12(test_certs), tls_provider) as run:
        async def one(name, openssl_name, groups, _):
            results[name] = await s_client_ping(
                run.port, ca_file, "-cipher", openssl_name, "-groups", groups, version="-tls1_2")
        async with trio.open_nursery() as nursery:
            for suite in SUITES12:
                nursery.start_soon(one, *suite)
    assert not run.errors, run.errors
    assert sorted((i.cipher_suite, i.named_group) for i in run.infos) == sorted(
        (name, group) for name, _, _, group in SUITES12)
    assert {i.version for i in run.infos} == {"TLSv1.2"}
    for name, openssl_name, _, _ in SUITES12:
        out = results[name]
        assert f"New, TLSv1.2, Cipher is {openssl_name}" in out, out
        assert "Verification: OK" in out
        # RFC 7627 and RFC 5746 were negotiated
        assert "Extended master secret: yes" in out and "Secure Renegotiation IS supported" in out


@pytest.mark.parametrize("kind,sigalgs,shown", [
    ("ecdsa-p384", "ECDSA+SHA384", "Peer signature type: ECDSA"),
    ("ed25519", "ed25519", "Peer signature type: ed25519"),
    ("rsa-2048", "RSA+SHA256", "Peer signature type: RSA\n"),        # PKCS#1 v1.5
    ("rsa-2048", "RSA-PSS+SHA384", "Peer signature type: RSA-PSS"),
])
async def test_openssl_tls12_signature_schemes(kind, sigalgs, shown, test_certs, ca_file,
                                               tls_provider):
    async with tls_server(server_config([test_certs[kind]]), tls_provider) as run:
        out = await s_client_ping(run.port, ca_file, "-sigalgs", sigalgs, version="-tls1_2")
    assert shown in out and "Verification: OK" in out, out
    assert [i.version for i in run.infos] == ["TLSv1.2"]


async def test_openssl_tls12_ticket_resumption_shows_reused(test_certs, ca_file, tls_provider,
                                                            tmp_path):
    sess = str(tmp_path / "sess12.pem")
    async with tls_server(config12(test_certs), tls_provider) as run:
        first = await s_client_ping(run.port, ca_file, "-sess_out", sess, version="-tls1_2")
        second = await s_client_ping(run.port, ca_file, "-sess_in", sess, version="-tls1_2")
    assert "New, TLSv1.2" in first
    assert "Reused, TLSv1.2" in second, second
    assert [i.resumed for i in run.infos] == [False, True]


async def test_openssl_tls12_renegotiation_refused_with_a_warning(test_certs, ca_file,
                                                                  tls_provider):
    async with tls_server(config12(test_certs), tls_provider) as run:
        out = await interactive(s_client_argv(run.port, ca_file, "-msg", version="-tls1_2"), [
            (b"before\n", "echo:before"),
            (b"R\n", "warning no_renegotiation"),
        ])
        with trio.fail_after(10):
            while not run.errors:
                await trio.sleep(0.01)
    # We refuse with a *warning* and keep the connection (the data before the
    # attempt was answered); OpenSSL's client then gives up by itself with a
    # fatal handshake_failure (its choice, RFC 5746 §4.4 leaves it to the client).
    assert "<<< TLS 1.2, Alert [length 0002], warning no_renegotiation" in out, out
    assert "fatal" not in out.split("warning no_renegotiation")[0]
    assert [e.alert for e in run.errors] == [40]  # the client's handshake_failure, received


async def test_curl_tls12(test_certs, ca_file, tls_provider):
    config = config12(test_certs, alpn_protocols=["http/1.1"])
    async with tls_server(config, tls_provider) as run:
        with trio.fail_after(20):
            proc = await trio.run_process(
                ["curl", "-sS", "--tls-max", "1.2", "--cacert", ca_file,
                 "--resolve", f"localhost:{run.port}:127.0.0.1", f"https://localhost:{run.port}/"],
                capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"hello http/1.1 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"


async def test_gnutls_cli_tls12(test_certs, ca_file, tls_provider):
    async with tls_server(config12(test_certs), tls_provider) as run:
        out = await interactive(
            ["gnutls-cli", "--x509cafile", ca_file, "--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.2",
             "-p", str(run.port), "localhost"], [(b"ping\n", "echo:ping")])
    assert "Handshake was completed" in out and "(TLS1.2-X.509)" in out, out
    assert not run.errors
    assert [i.version for i in run.infos] == ["TLSv1.2"]


def _python_tls12_client(port, ca_file, *, ems=True, payload=b"x" * 40000):
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if not ems:
        ctx.options |= 1  # SSL_OP_NO_EXTENDED_MASTER_SECRET (OpenSSL 3: bit 0)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload) + 5:
                got += s.recv(65536)
            return s.version(), s.selected_alpn_protocol(), got


async def test_python_ssl_tls12(test_certs, ca_file, tls_provider):
    config = config12(test_certs, alpn_protocols=["h2", "http/1.1"])
    async with tls_server(config, tls_provider) as run:
        version, alpn, got = await trio.to_thread.run_sync(_python_tls12_client, run.port, ca_file)
    assert (version, alpn) == ("TLSv1.2", "http/1.1")
    assert got.startswith(b"echo:") and got.count(b"x") == 40000
    if isinstance(tls_provider, CountingProvider):
        # 40000 bytes each way: full records, above the threshold, went through
        # the provider's batches (ECDH x2 and the signature: tls_server checks)
        assert tls_provider.counts["opened_records"] >= 3
        assert tls_provider.counts["sealed_records"] >= 3


async def test_python_ssl_tls12_without_ems_is_refused(test_certs, ca_file, tls_provider):
    async with tls_server(config12(test_certs), tls_provider) as run:
        with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
            await trio.to_thread.run_sync(
                functools.partial(_python_tls12_client, run.port, ca_file, ems=False))
        while not run.errors:
            await trio.sleep(0.01)
    assert run.errors[0].alert == 40 and "extended_master_secret" in str(run.errors[0])


async def test_vcrypto_serves_tls12_handshake_and_records(test_certs, ca_file,
                                                          vcrypto_tls_provider):
    """crypto.provider: vcrypto with a TLS 1.2 client: both ECDH steps, the
    ServerKeyExchange signature and every record at or above the threshold
    run through the engine (counted by the proxy's own metrics wrapper); the
    fixture then checks that the host executed every offloaded request and
    that nothing fell back in-process."""
    from vcproxy.proxy._tlsglue import CountingProvider as MetricsProvider

    counted: dict[tuple[str, str], int] = {}

    def count(op, provider_name, n):
        counted[op, provider_name] = counted.get((op, provider_name), 0) + n

    provider = MetricsProvider(vcrypto_tls_provider, count)
    submitted = vcrypto_tls_provider.frontend.stats.submitted
    config = config12(test_certs, alpn_protocols=["http/1.1"])
    async with tls_server(config, provider) as run:
        version, _, got = await trio.to_thread.run_sync(_python_tls12_client, run.port, ca_file)
    assert version == "TLSv1.2" and got.count(b"x") == 40000
    assert counted["ecdh", "vcrypto"] == 2 and counted["sign", "vcrypto"] == 1, counted
    # 40000 bytes: three full records each way, above the 64-byte threshold
    assert counted["aead_seal", "vcrypto"] >= 3 and counted["aead_open", "vcrypto"] >= 3, counted
    assert vcrypto_tls_provider.frontend.stats.submitted - submitted >= 2 + 1 + 6
