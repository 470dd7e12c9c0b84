"""Interop with real clients: openssl s_client, curl, gnutls-cli, Python ssl.

Each test runs once per ``tls_provider`` parameter; with the counting
provider, ``tls_server`` checks at the end that every key exchange, signature
and above-threshold record went through the provider.
"""
from __future__ import annotations

import socket
import ssl

import pytest
import trio

from tests.tls.clients import interactive, s_client_argv, s_client_ping
from tests.tls.helpers import server_config, tls_server

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


async def test_openssl_tls12_only_client_gets_protocol_version_alert(test_certs, ca_file,
                                                                     tls_provider):
    config = server_config([test_certs["ecdsa-p256"]])
    async with tls_server(config, tls_provider) as run:
        argv = [a for a in s_client_argv(run.port, ca_file) if a != "-tls1_3"] + ["-tls1_2"]
        with trio.fail_after(20):
            proc = await trio.run_process(argv, stdin=b"", capture_stdout=True,
                                          capture_stderr=True, check=False)
        while not run.errors:
            await trio.sleep(0.01)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode != 0
    assert "alert protocol version" in out, out
    assert run.errors[0].alert == 70
