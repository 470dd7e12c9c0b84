"""Real TLS client binaries driven as subprocesses, with timeouts."""
from __future__ import annotations

import subprocess

import trio

CLIENT_TIMEOUT_S = 20


async def interactive(argv, steps, timeout_s=CLIENT_TIMEOUT_S) -> str:
    """Run ``argv``; for each (send, wait_for) step write ``send`` to stdin and
    read merged stdout/stderr until ``wait_for`` shows up; then close stdin and
    collect the rest. Returns all output (raises TooSlowError on a hang)."""
    out = bytearray()
    with trio.fail_after(timeout_s):
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for send, wait_for in steps:
                if send:
                    await proc.stdin.send_all(send)
                mark = len(out)
                while wait_for.encode() not in out[mark - len(wait_for):] if mark else \
                        wait_for.encode() not in out:
                    chunk = await proc.stdout.receive_some(65536)
                    if not chunk:
                        raise AssertionError(f"{argv[0]} exited before {wait_for!r}:\n{out.decode(errors='replace')}")
                    out += chunk
            await proc.stdin.aclose()
            while chunk := await proc.stdout.receive_some(65536):
                out += chunk
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return out.decode(errors="replace")


def s_client_argv(port: int, ca_file: str, *extra: str, version: str = "-tls1_3") -> list[str]:
    return ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            "-CAfile", ca_file, "-verify_return_error", version, *extra]


async def s_client_ping(port: int, ca_file: str, *extra: str, version: str = "-tls1_3") -> str:
    return await interactive(s_client_argv(port, ca_file, *extra, version=version),
                             [(b"ping\n", "echo:ping")])
