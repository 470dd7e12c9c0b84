"""``vcrypto``: the operator's command for the vcrypto daemons.

    vcrypto status [--json] [--runtime-dir DIR] [--host-admin PATH]
                   [--backend-admin PATH] [--timeout-s S]

Asks each daemon's admin socket for its status document and prints one
block per daemon (``--json``: the documents as one JSON object keyed by
daemon). Which sockets: ``--host-admin`` / ``--backend-admin`` name them
(only those daemons are asked when no runtime dir is given); else
``--runtime-dir`` (a ``vcproxy run`` runtime directory, or ``/run/vcrypto``
of the systemd units); else the one running supervisor found in the temp
directory (``$TMPDIR/*/vcrypto.json``) or ``/run/vcrypto``.

Exit status: 0 every daemon answered; 2 a daemon did not answer (the others
are still shown), no daemons were found, or the command line is wrong.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from ._client import (DAEMONS, RUNTIME_FILE, SYSTEM_RUNTIME_DIR, AdminUnreachable, default_admin_paths,
                      find_runtime_dirs, query)
from ._protocol import AdminProtocolError
from ._render import RENDERERS, render_unreachable

EXIT_OK = 0
EXIT_UNREACHABLE = 2


class _NoDaemons(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vcrypto", description="vcrypto daemons: admin view")
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="devices, frontends, sessions, queues, resources, polling")
    st.add_argument("--json", action="store_true", help="print the status documents as JSON")
    st.add_argument("--runtime-dir", help="directory holding the daemons' admin sockets "
                                          "(a vcproxy runtime dir, or /run/vcrypto)")
    st.add_argument("--host-admin", help="vcrypto-host admin socket")
    st.add_argument("--backend-admin", help="vcrypto-engine-backend admin socket")
    st.add_argument("--timeout-s", type=float, default=5.0, help="per daemon (default 5)")
    return p


def _targets(args) -> dict[str, str]:
    explicit = {name: path for name, path in (("vcrypto-host", args.host_admin),
                                              ("vcrypto-engine-backend", args.backend_admin))
                if path}
    if args.runtime_dir:
        return default_admin_paths(args.runtime_dir) | explicit
    if explicit:
        return explicit
    found = find_runtime_dirs()
    if not found:
        raise _NoDaemons(f"no running vcrypto daemons found (no live "
                         f"{os.path.join(tempfile.gettempdir(), '*', RUNTIME_FILE)}, "
                         f"no admin socket in {SYSTEM_RUNTIME_DIR}); "
                         f"pass --runtime-dir or --host-admin/--backend-admin")
    if len(found) > 1:
        raise _NoDaemons("several vcrypto runtime directories are live; pick one with "
                         "--runtime-dir:\n  " + "\n  ".join(found))
    return default_admin_paths(found[0])


def status(args, out=sys.stdout, err=sys.stderr) -> int:
    try:
        targets = _targets(args)
    except _NoDaemons as exc:
        print(f"vcrypto status: {exc}", file=err)
        return EXIT_UNREACHABLE
    results: dict[str, dict] = {}
    for name in DAEMONS:
        if name not in targets:
            continue
        path = targets[name]
        try:
            results[name] = {"admin_socket": path, "ok": True,
                             "status": query(path, "status", timeout_s=args.timeout_s)}
        except AdminUnreachable as exc:
            results[name] = {"admin_socket": path, "ok": False, "error": str(exc)}
        except AdminProtocolError as exc:
            results[name] = {"admin_socket": path, "ok": False,
                             "error": f"the daemon answered with an error: {exc}"}
    if args.json:
        json.dump(results, out, indent=2)
        out.write("\n")
    else:
        blocks = []
        for name, res in results.items():
            if res["ok"]:
                try:
                    blocks.append(RENDERERS[name](res["status"], res["admin_socket"]))
                except (KeyError, TypeError, AttributeError, ValueError) as exc:
                    # a daemon of another version: its document, not a traceback
                    blocks.append([f"{name}  answered a status this vcrypto cannot tabulate "
                                   f"({type(exc).__name__}: {exc}); see vcrypto status --json"])
            else:
                blocks.append(render_unreachable(name, res["admin_socket"], res["error"]))
        out.write("\n\n".join("\n".join(b) for b in blocks) + "\n")
    down = [name for name, res in results.items() if not res["ok"]]
    for name in down:
        print(f"vcrypto status: {name} is not reachable: {results[name]['error']}", file=err)
    return EXIT_UNREACHABLE if down else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        return status(args)
    return EXIT_UNREACHABLE   # argparse rejects unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
