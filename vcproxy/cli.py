"""``vcproxy`` command line: run, check-config, demo-upstream, references.

``main(argv=None) -> int`` (hypercorn's shape): every subcommand returns an
exit status instead of calling ``sys.exit`` so tests can call it directly.
Config values are never copied into flags one by one: ``--set KEY=VALUE``
overrides any key of the file (``--set workers=4``,
``--set listeners[0].port=0``) and goes through the same validation.
"""
from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vcproxy", description="TLS-terminating reverse proxy on trio, with vcrypto crypto offload")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy: supervisor, workers, and the daemons the config asks for")
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (YAML value), e.g. --set workers=4")

    check = sub.add_parser("check-config", help="validate a config file and its certificates (like nginx -t)")
    check.add_argument("file", help="YAML config file")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")

    demo = sub.add_parser("demo-upstream", help="run the built-in demo HTTP server")
    demo.add_argument("--address", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)

    sub.add_parser("config-reference", help="print every config key with type, default and meaning (Markdown)")
    sub.add_parser("metrics-reference", help="print every exported metric (Markdown)")

    worker = sub.add_parser("worker", help="(internal) one worker process, as the supervisor starts it")
    worker.add_argument("--config", required=True)
    worker.add_argument("--index", type=int, default=0)
    worker.add_argument("--port", action="append", default=[], help="LISTENER_INDEX=PORT")
    worker.add_argument("--ready-fd", type=int, default=None)
    worker.add_argument("--backend-socket", default=None)
    worker.add_argument("--set", action="append", default=[])
    worker.add_argument("--ticket-keys", default=None, help="file of shared ticket keys (hex lines)")
    return parser


def _check_config(path: str, overrides: list[str]) -> int:
    """Like ``nginx -t``: every error and warning with its config path on
    stderr; exit 1 on any error, 0 otherwise (warnings alone do not fail)."""
    from vcproxy.config import ConfigError, load_config
    from vcproxy.proxy import check_files

    try:
        config = load_config(path, overrides)
        warnings = check_files(config)
    except ConfigError as exc:
        _print_problems(path, exc.warnings, "warning: ")
        _print_problems(path, exc.problems)
        print(f"vcproxy: configuration file {path} test failed", file=sys.stderr)
        return 1
    _print_problems(path, warnings, "warning: ")
    print(f"vcproxy: configuration file {path} test is successful", file=sys.stderr)
    return 0


def _print_problems(path: str, problems: list[tuple[str, str]], kind: str = "") -> None:
    for where, message in problems:
        print(f"vcproxy: {path}: {kind}{where + ': ' if where else ''}{message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        from vcproxy.supervisor import run

        return run(args.config, args.set)
    if args.command == "check-config":
        return _check_config(args.file, args.set)
    if args.command == "demo-upstream":
        from vcproxy.proxy import demo_upstream

        return demo_upstream.main(["--address", args.address, "--port", str(args.port)])
    if args.command == "config-reference":
        from vcproxy.config import reference

        sys.stdout.write(reference())
        return 0
    if args.command == "metrics-reference":
        from vcproxy.metrics import help_table

        sys.stdout.write(help_table())
        return 0
    if args.command == "worker":
        from vcproxy.proxy._worker import worker_main

        ports = {}
        for item in args.port:
            index, _, port = item.partition("=")
            ports[int(index)] = int(port)
        return worker_main(args.config, args.index, ports, args.ready_fd, args.backend_socket, args.set,
                           args.ticket_keys)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
