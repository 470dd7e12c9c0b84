"""Bulk bodies reach vcrypto in batches: the HTTP body pump reads up to
``READ_CHUNK_BYTES`` and hands it to one ``send_all``, whose full records go
to the engine together (one opdone per 16 records), so the engine-backend
batches requests to the host by up to 16 rather than by the 4 records a
64 KiB read holds (each batch costs a doorbell, a kick and wake-ups on a
machine where every process hop costs ~20 us: shared/notes/ipc-costs.md)."""
from __future__ import annotations

import hashlib
import socket

from vcproxy.proxy import _http, _splice
from vcproxy.proxy.demo_upstream import expected_sha256
from proxy_testkit import base_config, client_context, free_port, scrape, total

BODY = 2 * 1024 * 1024


def _download(port: int, ctx) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(f"GET /bytes?n={BODY} HTTP/1.1\r\nHost: localhost\r\n"
                    "Connection: close\r\n\r\n".encode())
        data = bytearray()
        while chunk := tls.recv(262144):
            data += chunk
    return bytes(data)


def test_body_pump_reads_hold_a_full_record_batch():
    # 16 full TLS records (16 KiB of plaintext each) per read: one opdone.
    assert _http.READ_CHUNK_BYTES >= 16 * 16384
    assert _splice.PUMP_CHUNK_BYTES >= 16 * 16384


def test_bulk_download_reaches_the_host_in_batches_over_four(start_proxy, certs, upstream):
    backend_metrics = f"127.0.0.1:{free_port()}"
    proxy = start_proxy(base_config(
        upstream.address, certs["a"], workers=1,
        crypto={"provider": "vcrypto", "fallback": "none"},
        vcrypto={"backend_metrics": backend_metrics}))
    reply = _download(proxy.port, client_context(certs["a"][0]))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert hashlib.sha256(body).hexdigest() == expected_sha256(BODY)
    m = scrape(f"http://{backend_metrics}/metrics")
    # One connection, each send_all awaited before the next read: a batch of
    # more than 4 requests means a read carried more than 64 KiB of records
    # to the engine at once (2 MiB = 128 records; upstream reads that return
    # less than a full chunk only make some batches smaller).
    up_to_4 = sum(v for (name, labels), v in m.items()
                  if name == "vcrypto_engine_batch_fill_bucket" and float(dict(labels)["le"]) == 4)
    batches = total(m, "vcrypto_engine_batch_fill_count")
    requests = total(m, "vcrypto_engine_requests_total")
    assert requests >= BODY // 16384, m
    assert batches > up_to_4, (batches, up_to_4)
