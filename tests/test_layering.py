"""DESIGN.md §10's dependency directions, checked on the source.

vcrypto stays a framework any application could load (it never imports
vcproxy); the TLS stack imports neither the proxy nor vcrypto; the host and
the driver/engine meet only on the wire (shared wire-format and shm modules),
which is what lets a real QEMU guest stand where our driver stands. The
engine's two processes meet only on their contract, and an application
(vcproxy) sees only the engine package's public face. No import circles, and
no import by string of our own modules.
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
    "vcrypto.engine.contract": ["vcrypto.engine.frontend", "vcrypto.engine.backend"],
    "vcrypto.engine.frontend": ["vcrypto.engine.backend"],
    "vcrypto.engine.backend": ["vcrypto.engine.frontend"],
    # vcproxy imports ``vcrypto.engine`` (its public face) and nothing under it
    "vcproxy": ["vcrypto.engine.contract", "vcrypto.engine.frontend", "vcrypto.engine.backend"],
    "vcrypto.wire": ["vcrypto.host", "vcrypto.engine", "vcrypto.driver"],
    "vcrypto.shm": ["vcrypto.host", "vcrypto.engine", "vcrypto.driver"],
    # the admin endpoint serves any daemon's document; each daemon builds its own
    "vcrypto.admin": ["vcrypto.host", "vcrypto.engine", "vcrypto.driver"],
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


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


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


def _module_edges(known: set[str]):
    """module -> the project modules it imports (``from pkg import name``
    counts as importing ``pkg.name`` when that is a module)."""
    edges: dict[str, set[str]] = {}
    for module, path in _modules():
        out = edges.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                           for a in node.names]
            else:
                continue
            out.update(t for t in targets if t in known and t != module)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    known = {name for name, _ in _modules()}
    # A package's __init__ re-exporting its own submodules is not a circle:
    # count edges from a package to its submodules out, keep everything else.
    edges = {m: {t for t in ts if not t.startswith(m + ".")}
             for m, ts in _module_edges(known).items()}
    assert not _cycles(edges), _cycles(edges)


def test_the_circle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_by_string():
    problems = []
    for module, path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "importlib" for a in node.names):
                problems.append(f"{module}: import importlib")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "importlib":
                problems.append(f"{module}: from importlib import ...")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id == "__import__"):
                problems.append(f"{module}: __import__()")
    assert not problems, "\n".join(problems)
