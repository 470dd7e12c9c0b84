"""DESIGN.md §10's dependency directions, checked on the source.

vcrypto stays a framework any application could load (it never imports
vcproxy); the TLS stack imports neither the proxy nor vcrypto; the host and
the driver/engine meet only on the wire (shared wire-format and shm modules),
which is what lets a real QEMU guest stand where our driver stands.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package prefix -> module prefixes it must never import
FORBIDDEN = {
    "vcrypto": ["vcproxy"],
    "vcproxy.tls": ["vcproxy.proxy", "vcproxy.config", "vcproxy.supervisor", "vcproxy.cli",
                    "vcproxy.vcrypto_provider", "vcrypto"],
    "vcrypto.host": ["vcrypto.engine", "vcrypto.driver"],
    "vcrypto.driver": ["vcrypto.host", "vcrypto.engine"],
    "vcrypto.engine": ["vcrypto.host"],
    "vcrypto.wire": ["vcrypto.host", "vcrypto.engine", "vcrypto.driver"],
    "vcrypto.shm": ["vcrypto.host", "vcrypto.engine", "vcrypto.driver"],
}


def _modules():
    for pkg in ("vcrypto", "vcproxy"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(p for p in parts if p != "__init__")
            yield name, path


def _imports(path: Path, module: str):
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module


def _violations(module: str, path: Path):
    rules = [bad for prefix, bads in FORBIDDEN.items()
             if module == prefix or module.startswith(prefix + ".") for bad in bads]
    for imported in _imports(path, module):
        for bad in rules:
            if imported == bad or imported.startswith(bad + "."):
                yield f"{module} imports {imported}"


def test_dependency_directions():
    problems = [v for module, path in _modules() for v in _violations(module, path)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source, bad", [
    ("from vcproxy.tls import TLSStream\n", "vcrypto.engine.x imports vcproxy.tls"),
    ("from ..host import daemon\n", "vcrypto.engine.x imports vcrypto.host"),
])
def test_the_checker_sees_violations(tmp_path, source, bad):
    path = tmp_path / "x.py"
    path.write_text(source)
    assert bad in list(_violations("vcrypto.engine.x", path))
