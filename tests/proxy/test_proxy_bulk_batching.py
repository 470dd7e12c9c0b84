"""Bulk bodies reach vcrypto in batches: the HTTP body pump reads up to
``READ_CHUNK_BYTES`` and hands it to one ``send_all``, whose full records go
to the engine together (one opdone per 16 records), so the engine-backend
batches requests to the host by up to 16 rather than by the 4 records a
64 KiB read holds (each batch costs a doorbell, a kick and wake-ups on a
machine where every process hop costs ~20 us: shared/notes/ipc-costs.md)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading

from proxy_testkit import base_config, client_context, free_port, scrape, total

BODY = 2 * 1024 * 1024


@contextlib.contextmanager
def _eager_upstream(body: bytes):
    """An origin that writes each whole response in one sendall, so the
    proxy's upstream reads are limited by its read size, not by how fast an
    origin produces bytes (a slower origin only makes some reads shorter)."""
    lsock = socket.create_server(("127.0.0.1", 0))
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    def serve():
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            with conn:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    conn.sendall(head + body)
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):
                        pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{lsock.getsockname()[1]}"
    finally:
        lsock.close()


def _download(port: int, ctx) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(f"GET /bytes?n={BODY} HTTP/1.1\r\nHost: localhost\r\n"
                    "Connection: close\r\n\r\n".encode())
        data = bytearray()
        while chunk := tls.recv(262144):
            data += chunk
    return bytes(data)


def test_bulk_download_fills_engine_batches(start_proxy, certs):
    backend_metrics = f"127.0.0.1:{free_port()}"
    payload = os.urandom(BODY)
    with _eager_upstream(payload) as origin:
        proxy = start_proxy(base_config(
            origin, certs["a"], workers=1,
            crypto={"provider": "vcrypto", "fallback": "none"},
            vcrypto={"backend_metrics": backend_metrics}))
        reply = _download(proxy.port, client_context(certs["a"][0]))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
    m = scrape(f"http://{backend_metrics}/metrics")
    # One connection, each send_all awaited before the next read: the records
    # of one body read leave as one opdone and one device batch. 256 KiB reads
    # fill batches of 16; 64 KiB reads could not exceed 4 (upstream reads that
    # return less than a full chunk only make some batches smaller).
    requests = total(m, "vcrypto_engine_family_batch_fill_sum", family="bulk")
    batches = total(m, "vcrypto_engine_family_batch_fill_count", family="bulk")
    assert requests >= BODY // 16384, m
    assert requests / batches >= 12, (requests, batches)
