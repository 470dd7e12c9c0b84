"""deploy/systemd: each unit's hardening rates "OK" (exposure <= 4.5) in
``systemd-analyze security --offline=yes``, with and without the shipped
drop-ins, and the units agree with each other on what the split deployment
needs (users, the shared /run/vcrypto, readiness).

``--offline=yes`` reads unit files, not a running manager; ``--root`` points
it at a scratch tree laid out like /etc/systemd/system, so the drop-ins are
merged exactly as systemd would merge them.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
OK_LIMIT = 4.5   # systemd's own bands: <= 4.5 "OK", then MEDIUM, EXPOSED, UNSAFE

pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (make sysdeps)")

SERVICES = sorted(p.name for p in UNITS.glob("*.service"))
# (unit, drop-ins from deploy/systemd/<unit>.d/ to install with it)
VARIANTS = [(name, ()) for name in SERVICES] + [
    ("vcproxy.service", ("split.conf",)),
    ("vcproxy.service", ("split.conf", "port-443.conf.example")),
]


def _install(root: Path, unit: str, dropins: tuple[str, ...]) -> None:
    system = root / "etc" / "systemd" / "system"
    system.mkdir(parents=True, exist_ok=True)
    for service in SERVICES:
        shutil.copy(UNITS / service, system / service)
    if dropins:
        (system / f"{unit}.d").mkdir()
        for name in dropins:
            shutil.copy(UNITS / f"{unit}.d" / name, system / f"{unit}.d" / name.removesuffix(".example"))


def exposure(root: Path, unit: str) -> tuple[float, str, str]:
    done = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", f"--root={root}", "--no-pager", unit],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
    assert m, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    return float(m.group(1)), m.group(2), done.stderr


@pytest.mark.parametrize("unit, dropins", VARIANTS, ids=[f"{u}+{'+'.join(d)}" if d else u for u, d in VARIANTS])
def test_unit_hardening_is_ok(tmp_path, unit, dropins):
    _install(tmp_path, unit, dropins)
    level, verdict, warnings = exposure(tmp_path, unit)
    # a misspelt directive is ignored by systemd (with a warning): it would
    # silently not harden anything, so any warning is a failure
    assert not warnings.strip(), warnings
    assert level <= OK_LIMIT and verdict == "OK", f"{unit} {dropins}: {level} {verdict}"


def test_the_check_sees_an_unhardened_unit(tmp_path):
    """The shipped units before #14 (Type=simple, a few options) rated 8.6-9.2."""
    system = tmp_path / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    (system / "bare.service").write_text("[Service]\nUser=vcrypto\nExecStart=/bin/true\nNoNewPrivileges=true\n")
    level, verdict, _ = exposure(tmp_path, "bare.service")
    assert level > OK_LIMIT and verdict != "OK"


def _directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_units_agree_on_the_split_deployment():
    host, backend, proxy = (_directives(UNITS / n) for n in
                            ("vcrypto-host.service", "vcrypto-engine-backend.service", "vcproxy.service"))
    split = _directives(UNITS / "vcproxy.service.d" / "split.conf")
    for unit in (host, backend, proxy):
        assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
        assert unit.get("LogsDirectory")
    for daemon in (host, backend):   # one shared /run/vcrypto, kept while either restarts
        assert daemon["User"] == ["vcrypto"] and daemon["Group"] == ["vcrypto"]
        assert daemon["RuntimeDirectory"] == ["vcrypto"] and daemon["RuntimeDirectoryPreserve"] == ["yes"]
        assert daemon["RuntimeDirectoryMode"] == ["0750"]
    assert "--socket /run/vcrypto/host.sock" in host["ExecStart"][0]
    assert "--socket /run/vcrypto/backend.sock" in backend["ExecStart"][0]
    assert "--host-socket /run/vcrypto/host.sock" in backend["ExecStart"][0]
    # the proxy user reaches /run/vcrypto (0750) and backend.sock (0660) through the group
    assert proxy["User"] == ["vcproxy"] and split["SupplementaryGroups"] == ["vcrypto"]
    sysusers = (UNITS / "vcproxy.sysusers.conf").read_text().splitlines()
    assert "m vcproxy vcrypto" in sysusers
    # no capability unless the port-443 drop-in asks for it
    assert proxy["CapabilityBoundingSet"] == [""] and proxy["AmbientCapabilities"] == [""]


# the console scripts the units run -> how to run the same entry point here
_ENTRY = {"vcrypto-host": ["-m", "vcrypto.host"], "vcrypto-engine-backend": ["-m", "vcrypto.engine.backend"],
          "vcproxy": ["-m", "vcproxy"]}


def test_units_do_not_restart_a_config_failure_and_pass_only_real_flags():
    """Exit 78 (EX_CONFIG: a daemon's metrics address cannot be bound, or
    ``vcproxy run`` refused to start because of one) means a restart cannot
    help: every unit says RestartPreventExitStatus=78, or Restart=
    restart-loops it. Every --flag a unit passes is one its program takes
    (its --help lists it)."""
    import sys

    for name in SERVICES:
        unit = _directives(UNITS / name)
        prevent = " ".join(unit.get("RestartPreventExitStatus", [])).split()
        assert "78" in prevent, f"{name}: Restart={unit['Restart']} without RestartPreventExitStatus=78"
        for line in unit.get("ExecStart", []) + unit.get("ExecStartPre", []) + unit.get("ExecReload", []):
            argv = line.split()
            script = Path(argv[0]).name
            if script not in _ENTRY:
                continue   # /bin/kill
            sub = [argv[1]] if script == "vcproxy" else []
            helptext = subprocess.run([sys.executable, *_ENTRY[script], *sub, "--help"], cwd=REPO,
                                      capture_output=True, text=True, timeout=60, check=True).stdout
            for flag in (a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")):
                assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", helptext), f"{name}: {script} has no {flag}"
