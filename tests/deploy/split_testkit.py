"""Running our daemons as other (system) users, for the split-deployment test.

Two things stand between a root test and a process of another user:

- **The users.** ``ensure_users`` creates them idempotently (``groupadd`` /
  ``useradd --system``; an existing user is only given the missing
  membership), so a rerun, or a second test session racing this one, is fine.
- **A Python they can run.** The venv's interpreter often lives under a
  directory only root can traverse (pyenv in ``/root``; a CI clone in
  ``/root/...``). ``runnable_python`` first asks the user to import our
  packages with ``sys.executable`` as is; if that fails, it stages a copy
  the user can read in a world-traversable temp dir: the base interpreter
  and its standard library, the venv's site-packages, and the repo's two
  packages. Files are hard-linked where the filesystem allows it (same
  inode and mode bits, no bytes copied; a fraction of a second), copied
  otherwise. The staged Python runs the very same code; nothing is stubbed.
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("vcproxy", "vcrypto")
IMPORT_PROBE = "import vcproxy.cli, vcrypto.host.daemon, vcrypto.engine.backend, nacl, prometheus_client"
# not needed by the daemons, and most of the standard library's files
_STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}


@dataclass(frozen=True)
class Account:
    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]     # as initgroups(3) would set them (what systemd and login do)

    def popen_kwargs(self) -> dict:
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def ensure_group(name: str) -> int:
    for _attempt in range(3):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            pass
        done = _run(["groupadd", "--system", name])
        if done.returncode not in (0, 9):       # 9: exists (another session was faster)
            raise RuntimeError(f"groupadd {name}: {done.stderr.strip()}")
    return grp.getgrnam(name).gr_gid


def ensure_user(name: str, member_of: str) -> Account:
    """A system user with its own group, no home, no shell, in ``member_of``."""
    shared_gid = ensure_group(member_of)
    for _attempt in range(3):
        try:
            pw = pwd.getpwnam(name)
            break
        except KeyError:
            pass
        done = _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                     "--shell", "/usr/sbin/nologin", "--groups", member_of, name])
        if done.returncode not in (0, 9):
            raise RuntimeError(f"useradd {name}: {done.stderr.strip()}")
    else:
        pw = pwd.getpwnam(name)
    if shared_gid not in os.getgrouplist(name, pw.pw_gid):
        done = _run(["usermod", "--append", "--groups", member_of, name])
        if done.returncode != 0:
            raise RuntimeError(f"usermod -aG {member_of} {name}: {done.stderr.strip()}")
    groups = tuple(g for g in os.getgrouplist(name, pw.pw_gid) if g != pw.pw_gid)
    return Account(name, pw.pw_uid, pw.pw_gid, groups)


def probe(python: list[str], env: dict[str, str], account: Account) -> subprocess.CompletedProcess:
    argv = [*python, "-c", IMPORT_PROBE]
    try:
        return subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60,
                              **account.popen_kwargs())
    except PermissionError as exc:   # exec itself refused: a directory on the way is not traversable
        return subprocess.CompletedProcess(argv, 126, "", str(exc))


def _mirror(src: Path, dst: Path, skip: set[str] = frozenset(), *, link: bool = True) -> None:
    """Copy the tree ``src`` to ``dst`` (hard links when ``link`` and possible);
    directories 0755 so any user traverses them."""
    dst.mkdir(parents=True, exist_ok=True)
    dst.chmod(0o755)
    for entry in os.scandir(src):
        if entry.name in skip or (entry.name == "__pycache__" and not link):
            continue
        target = dst / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            _mirror(Path(entry.path), target, link=link)
        elif entry.is_file():
            if link:
                try:
                    os.link(entry.path, target)
                    continue
                except OSError:   # another filesystem, or links not allowed here
                    pass
            shutil.copy2(entry.path, target)
            target.chmod(0o644 | (0o111 if os.access(entry.path, os.X_OK) else 0))


def stage_python(root: Path) -> tuple[list[str], dict[str, str]]:
    """A readable copy of this interpreter + packages under ``root``: (argv prefix, env additions)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / "bin").mkdir(mode=0o755)
    real = Path(os.path.realpath(sys.executable))
    exe = root / "bin" / version
    try:
        os.link(real, exe)
    except OSError:
        shutil.copy2(real, exe)
    _mirror(base / "lib" / version, root / "lib" / version, _STDLIB_SKIP)
    libdir = Path(sysconfig.get_config_var("LIBDIR") or base / "lib")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY") or ""
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and ldlibrary:
        for lib in libdir.glob(ldlibrary + "*"):
            target = root / "lib" / lib.name
            try:
                os.link(os.path.realpath(lib), target)
            except OSError:
                shutil.copy2(os.path.realpath(lib), target)
    site = root / "site"
    for sp in {Path(p) for p in sysconfig.get_paths().values() if p.endswith("site-packages")}:
        if sp.is_dir():
            # skip .pth files: the editable install's points at the (maybe unreadable) repo
            _mirror(sp, site, {n for n in os.listdir(sp) if n.endswith(".pth") or n.startswith("__editable__")})
    src = root / "src"
    for pkg in PACKAGES:   # the code under test: copied fresh (a few hundred KB)
        _mirror(REPO / pkg, src / pkg, link=False)
    env = {"PYTHONPATH": f"{src}:{site}", "LD_LIBRARY_PATH": str(root / "lib"),
           "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return [str(exe)], env


def runnable_python(root: Path, account: Account) -> tuple[list[str], dict[str, str], str]:
    """(argv prefix, environment, how) to run our code as ``account``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = str(REPO)
    direct = probe([sys.executable], env, account)
    if direct.returncode == 0:
        return [sys.executable], env, "sys.executable"
    started = time.monotonic()
    python, extra = stage_python(root)
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"} | extra
    staged = probe(python, env, account)
    if staged.returncode != 0:
        raise RuntimeError(f"{account.user} cannot run {sys.executable} ({direct.stderr.strip()[-300:]}) "
                           f"nor the staged copy: {staged.stderr.strip()[-1000:]}")
    return python, env, f"staged in {time.monotonic() - started:.1f}s ({direct.stderr.strip()[-120:]})"


def own(path: Path, uid: int, gid: int, mode: int) -> Path:
    """``path`` (a directory created if missing) given to ``uid:gid`` with ``mode``."""
    if not path.exists():
        path.mkdir()
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path
