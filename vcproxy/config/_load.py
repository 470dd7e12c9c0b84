"""A generic, strict YAML → frozen-dataclass loader.

The schema is the dataclasses in ``_schema.py``; this module only walks them.
Every problem is recorded with the path of the offending value
(``listeners[0].port: expected int, got str``) and all problems of a file
are reported together, the way ``nginx -t`` reports the first and we report
every one. Unknown keys are errors: a typo must never be silently ignored
(hypercorn's config is the example of what goes wrong otherwise).

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Literal``,
``X | None``, ``tuple[X, ...]``, ``dict[str, X]``, nested dataclasses,
``object`` (free-form YAML passed through, validated by its consumer), and
classes with a ``from_yaml(value, path) -> instance`` classmethod.

File paths: a ``str`` field declared with ``path=True`` (``opt``/``req``) is
a file or directory name. A relative one is resolved against the directory
of the config file (``base_dir``), never the working directory, so
``cd /tmp && vcproxy check-config /etc/vcproxy/vcproxy.yaml`` reads the same
files as the service does; the tree holds the absolute, normalised path.
``path_keywords`` are words that are not paths (a log's ``stdout``).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import os
import types
import typing
from typing import Any, Literal


class ConfigError(Exception):
    """The config is invalid; ``problems`` lists ``(path, message)`` pairs;
    ``warnings`` (same shape) what was found besides, for a report of both."""

    def __init__(self, problems: list[tuple[str, str]], warnings: list[tuple[str, str]] = ()) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings)
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in self.problems))


class _Invalid(Exception):
    """One value is wrong; raised inside the walk, collected by the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


_MISSING = object()


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "mapping", list: "list"}.get(type(value), type(value).__name__)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Loader:
    def __init__(self, base_dir: str | None = None) -> None:
        self.problems: list[tuple[str, str]] = []
        self.base_dir = base_dir

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def load(self, tp: Any, value: Any, path: str) -> Any:
        """Convert ``value`` to ``tp``; on error record it and return _MISSING."""
        try:
            return self._convert(tp, value, path)
        except _Invalid as exc:
            self.problem(path, exc.message)
            return _MISSING

    def _convert(self, tp: Any, value: Any, path: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is object or tp is Any:
            return value
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            if len(inner) != 1:
                raise TypeError(f"unsupported union {tp}")
            return self._convert(inner[0], value, path)
        if origin is Literal:
            if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
                choices = ", ".join(repr(a) for a in args)
                raise _Invalid(f"expected one of {choices}, got {value!r}")
            return value
        if origin is tuple:
            if not isinstance(value, list):
                raise _Invalid(f"expected list, got {_type_name(value)}")
            items = [self.load(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
            if any(item is _MISSING for item in items):
                raise _Skip()
            return tuple(items)
        if origin in (dict, collections.abc.Mapping):
            if not isinstance(value, dict):
                raise _Invalid(f"expected mapping, got {_type_name(value)}")
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    self.problem(path, f"keys must be strings, got {_type_name(k)}")
                    continue
                out[k] = self.load(args[1], v, join(path, k))
            if any(item is _MISSING for item in out.values()):
                raise _Skip()
            return types.MappingProxyType(out)
        if hasattr(tp, "from_yaml"):
            return tp.from_yaml(value, path)
        if dataclasses.is_dataclass(tp):
            return self._dataclass(tp, value, path)
        if tp is bool:
            if not isinstance(value, bool):
                raise _Invalid(f"expected bool, got {_type_name(value)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _Invalid(f"expected int, got {_type_name(value)}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Invalid(f"expected float, got {_type_name(value)}")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise _Invalid(f"expected str, got {_type_name(value)}")
            return value
        raise TypeError(f"unsupported config type {tp!r} at {path}")

    def _dataclass(self, cls: Any, value: Any, path: str) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _Invalid(f"expected mapping, got {_type_name(value)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in value:
            if key not in fields:
                known = ", ".join(sorted(fields))
                self.problem(join(path, str(key)), f"unknown key (known keys: {known})")
        kwargs = {}
        failed = False
        for name, f in fields.items():
            # A missing section is loaded from {} so its checks run too.
            section = dataclasses.is_dataclass(hints[name]) and not hasattr(hints[name], "from_yaml")
            if name in value or section:
                converted = self.load(hints[name], value.get(name), join(path, name))
                if converted is _MISSING:
                    failed = True
                else:
                    kwargs[name] = self._resolve_path(f, converted)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.problem(join(path, name), "required key is missing")
                failed = True
        if failed:
            raise _Skip()
        try:
            obj = cls(**kwargs)
        except _Invalid as exc:  # __post_init__ checks of one object
            raise _Invalid(exc.message) from exc
        check = getattr(obj, "check", None)
        if check is not None:
            for sub, message in check():
                self.problem(join(path, sub) if sub else path, message)
        return obj

    def _resolve_path(self, f: dataclasses.Field, value: Any) -> Any:
        """A relative file path of a ``path=True`` field, made absolute from ``base_dir``."""
        if (not f.metadata.get("path") or self.base_dir is None or not isinstance(value, str)
                or not value or value in f.metadata.get("path_keywords", ())):
            return value
        return os.path.normpath(os.path.join(self.base_dir, value))


class _Skip(_Invalid):
    """A nested value already recorded its problem; the parent just gives up."""

    def __init__(self) -> None:
        super().__init__("")


def load_tree(cls: Any, data: Any, base_dir: str | None = None) -> tuple[Any, list[tuple[str, str]]]:
    """``data`` as a ``cls`` tree and its problems; relative paths resolve from
    ``base_dir`` (None: left as written, i.e. relative to the working directory)."""
    loader = Loader(base_dir)
    try:
        obj = loader._convert(cls, data, "")
    except _Skip:
        obj = None
    except _Invalid as exc:
        loader.problem("", exc.message)
        obj = None
    return obj, [p for p in loader.problems if p[1]]


def _meta(doc: str, path: bool, path_keywords: tuple[str, ...]) -> dict:
    meta: dict = {"doc": doc}
    if path:
        meta.update(path=True, path_keywords=path_keywords)
    return meta


def opt(default: Any, doc: str, *, path: bool = False, path_keywords: tuple[str, ...] = ()) -> Any:
    """A field with a default and its one line of documentation (``path``: a
    file path, resolved from the config file's directory)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a factory for mutable defaults")
    if getattr(type(default), "__hash__", None) is None or (
        dataclasses.is_dataclass(default) and not isinstance(default, type)
    ):
        return dataclasses.field(default_factory=lambda: default, metadata=_meta(doc, path, path_keywords))
    return dataclasses.field(default=default, metadata=_meta(doc, path, path_keywords))


def req(doc: str, *, path: bool = False) -> Any:
    """A required field and its documentation."""
    return dataclasses.field(metadata=_meta(doc, path, ()))
