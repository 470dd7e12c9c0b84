"""Typed, validated vcproxy configuration.

``load_config(path)`` reads YAML into the frozen ``Config`` tree (see
``_schema.py`` for every key and default) and raises ``ConfigError`` naming
the path of every problem. Relative file paths in the file (and in ``--set``
overrides) resolve from the config file's directory, not the working
directory: ``load_config`` hands the loader that directory. Loading the
certificates and building each listener's TLS settings is the proxy's
(``vcproxy.proxy.check_files``): this package only reads and validates.
"""
from __future__ import annotations

import dataclasses
import os
import typing

import yaml

from ._load import ConfigError, load_tree
from ._schema import (
    CertificateConfig,
    Config,
    CryptoConfig,
    DemoUpstreamConfig,
    HealthCheckConfig,
    Http2Config,
    LimitsConfig,
    ListenerConfig,
    LoggingConfig,
    MetricsConfig,
    Network,
    RouteConfig,
    ServerAddress,
    SocketMode,
    TicketsConfig,
    TLSConfig,
    UpstreamConfig,
    VcryptoConfig,
)

__all__ = [
    "CertificateConfig", "Config", "ConfigError", "CryptoConfig", "DemoUpstreamConfig",
    "HealthCheckConfig", "Http2Config", "LimitsConfig", "ListenerConfig", "LoggingConfig", "MetricsConfig",
    "Network", "RouteConfig", "ServerAddress", "TicketsConfig", "TLSConfig", "UpstreamConfig",
    "VcryptoConfig", "load_config", "parse_config", "reference",
]


def parse_config(text: str, source: str = "<config>", overrides: typing.Sequence[str] = (),
                 base_dir: str | None = None) -> Config:
    """The config in ``text``; relative paths resolve from ``base_dir`` (None:
    left relative, i.e. to the working directory, for configs not read from a file)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError([("", f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}")]) from exc
    if data is None:
        data = {}
    for item in overrides:
        data = apply_override(data, item)
    config, problems = load_tree(Config, data, base_dir)
    if problems:
        raise ConfigError(problems)
    return config


def apply_override(data: typing.Any, item: str) -> typing.Any:
    """Apply ``key.path[0].sub=YAML value`` (the CLI's ``--set``) to raw config data."""
    path, sep, raw = item.partition("=")
    if not sep or not path:
        raise ConfigError([("", f"--set {item!r}: expected KEY.PATH=VALUE")])
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError([(path, f"--set: invalid YAML value {raw!r}")]) from exc
    steps: list[str | int] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        if name:
            steps.append(name)
        for idx in rest.rstrip("]").split("][") if rest else ():
            if not idx.isdigit():
                raise ConfigError([(path, "--set: list indexes must be integers")])
            steps.append(int(idx))
    if not isinstance(data, dict):
        raise ConfigError([("", "the config must be a mapping")])
    node = data
    for step, nxt in zip(steps, steps[1:]):
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise ConfigError([(path, f"--set: no list item {step}")])
            node = node[step]
        else:
            if not isinstance(node, dict):
                raise ConfigError([(path, f"--set: {step!r} is not inside a mapping")])
            node = node.setdefault(step, [] if isinstance(nxt, int) else {})
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError([(path, f"--set: no list item {last}")])
    elif not isinstance(node, dict):
        raise ConfigError([(path, "--set: not inside a mapping")])
    node[last] = value
    return data


def load_config(path: str, overrides: typing.Sequence[str] = ()) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from exc
    return parse_config(text, path, overrides, base_dir=os.path.dirname(os.path.abspath(path)))


def reference() -> str:
    """Every key with its type, default and meaning, as a Markdown table."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            key = f"{prefix}{f.name}"
            inner = _dataclass_in(tp)
            if f.default is not dataclasses.MISSING:
                default = "`null`" if f.default is None else f"`{_show(f.default)}`"
            elif f.default_factory is not dataclasses.MISSING:
                default = "" if inner else f"`{_show(f.default_factory())}`"
            else:
                default = "required"
            type_text = _type_text(tp).replace("str", "path") if f.metadata.get("path") else _type_text(tp)
            rows.append(f"| `{key}` | {type_text} | {default} | {f.metadata.get('doc', '')} |")
            if inner is not None:
                sep = "[]." if typing.get_origin(tp) is tuple else (".<name>." if typing.get_origin(tp) else ".")
                walk(inner, key + sep)

    walk(Config, "")
    return "\n".join(rows) + "\n"


def _dataclass_in(tp: typing.Any) -> type | None:
    if dataclasses.is_dataclass(tp) and not hasattr(tp, "from_yaml"):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, typing.Mapping):
        return "{}"
    return str(value)


def _type_text(tp: typing.Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin is tuple:
        return f"list of {_type_text(args[0])}"
    if origin is not None and args and origin.__name__ == "Mapping":
        return f"mapping of {_type_text(args[1])}"
    if args and type(None) in args:
        return _type_text(next(a for a in args if a is not type(None))) + " or null"
    if tp is object:
        return "any"
    if isinstance(tp, type) and issubclass(tp, ServerAddress):
        return "host:port"
    if tp is Network:
        return "CIDR"
    if tp is SocketMode:
        return "octal mode"
    return getattr(tp, "__name__", str(tp))
