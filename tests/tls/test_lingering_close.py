"""A fatal alert survives on a real TCP socket: the server sends it, shuts down
its write side and drains what the client still sends before closing, so the
close does not turn into a reset that destroys the alert in flight."""
from __future__ import annotations

import socket

import trio

from tests.tls.helpers import server_config, tls_server
from vcproxy.tls import InlineProvider

DECODE_ERROR_ALERT = b"\x15\x03\x03\x00\x02\x02\x32"


async def test_alert_read_from_raw_socket_after_bad_record(test_certs):
    config = server_config([test_certs["ecdsa-p256"]])
    async with tls_server(config, InlineProvider()) as run:
        sock = trio.socket.socket()
        with sock, trio.fail_after(10):
            await sock.connect(("127.0.0.1", run.port))
            # An empty ClientHello (decode_error), then more bytes the server
            # will never parse: unread data at close() is what causes an RST.
            await sock.send(b"\x16\x03\x01\x00\x04\x01\x00\x00\x00")
            garbage = b"\x00" * 200_000
            received = b""

            async def send_garbage():
                view = memoryview(garbage)
                while view:
                    try:
                        n = await sock.send(view[:65536])
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    view = view[n:]
                sock.shutdown(socket.SHUT_WR)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_garbage)
                while True:
                    data = await sock.recv(65536)
                    if not data:
                        break
                    received += data
            while not run.errors:  # the server finishes its drain after our EOF
                await trio.sleep(0.01)
    assert received == DECODE_ERROR_ALERT
    assert run.errors and run.errors[0].alert == 50
