"""Results -> Markdown tables (absolute numbers, ratios to (a), run-to-run
repeatability) and PNG plots of throughput vs concurrency."""
from __future__ import annotations

import math
from pathlib import Path

from _configs import LABELS, NAMES

REPEAT_TOLERANCE = 0.15

#: (row label, workload key, field, unit, higher is better)
ROWS = [
    ("full handshakes/s, ECDSA P-256", "hs_ecdsa", "per_s", "/s", True),
    ("full handshakes/s, RSA-2048", "hs_rsa", "per_s", "/s", True),
    ("TLS 1.2 full handshakes/s, ECDSA P-256", "hs12_ecdsa", "per_s", "/s", True),
    ("TLS 1.2 full handshakes/s, RSA-2048", "hs12_rsa", "per_s", "/s", True),
    ("resumed handshakes/s", "resumed", "per_s", "/s", True),
    ("keep-alive small requests/s", "keepalive", "per_s", "/s", True),
    ("bulk 10 MiB downloads, MB/s", "bulk", "mb_per_s", "MB/s", True),
    ("latency p50 at fixed rate, ms", "latency", "p50_ms", "ms", False),
    ("latency p99 at fixed rate, ms", "latency", "p99_ms", "ms", False),
    ("mixed: keep-alive p99 during RSA storm, ms", "mixed", "p99_ms", "ms", False),
    ("mixed: RSA storm handshakes/s", "mixed", "storm_per_s", "/s", True),
]

#: workloads whose CPU is reported per 1,000 handshakes / requests
CPU_ROWS = [("hs_ecdsa", "handshakes"), ("hs_rsa", "handshakes"), ("hs12_ecdsa", "handshakes"),
            ("hs12_rsa", "handshakes"), ("resumed", "handshakes"),
            ("keepalive", "requests"), ("bulk", "GB")]

ROLE_ORDER = ("proxy_worker", "supervisor", "backend", "host", "host_worker", "upstream")


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def value(run: dict, config: str, key: str, field: str) -> float | None:
    w = run["configs"].get(config, {}).get("workloads", {}).get(key)
    if not w or "error" in w:
        return None
    return w.get(field)


def main_table(run: dict) -> str:
    configs = [c for c in NAMES if c in run["configs"]]
    out = ["| workload | " + " | ".join(LABELS[c] for c in configs) + " |",
           "|---|" + "---|" * len(configs)]
    for label, key, field, _unit, _hib in ROWS:
        base = value(run, "inline", key, field)
        cells = []
        for c in configs:
            v = value(run, c, key, field)
            ratio = f" ({v / base:.2f}×)" if v is not None and base else ""
            cells.append(_fmt(v) + (ratio if c != "inline" else ""))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    # notifications per request (vcrypto only)
    cells = []
    for c in configs:
        vals = [value(run, c, k, "notif_per_req") for k in ("hs_ecdsa", "hs_rsa", "keepalive", "bulk")]
        cells.append("–" if all(v is None for v in vals) else " / ".join(_fmt(v) for v in vals))
    out.append("| notifications per request (full ECDSA / full RSA / keep-alive / bulk) | "
               + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def cpu_table(run: dict) -> str:
    configs = [c for c in NAMES if c in run["configs"]]
    out = ["| CPU seconds per 1,000 units, by process (load generators apart) | " + " | ".join(LABELS[c] for c in configs) + " |",
           "|---|" + "---|" * len(configs)]
    for key, unit in CPU_ROWS:
        cells = []
        for c in configs:
            w = run["configs"].get(c, {}).get("workloads", {}).get(key)
            if not w or "error" in w or not w.get("cpu_per_1k"):
                cells.append("–")
                continue
            per = w["cpu_per_1k"]
            parts = [f"{r.replace('_', ' ')} {per[r]:.2f}" for r in ROLE_ORDER if per.get(r)]
            lg = w.get("load_generator_per_1k")
            client = f" (load generators {lg:.2f})" if lg is not None else ""
            cells.append(f"**{sum(per.values()):.2f}**: " + ", ".join(parts) + client)
        unit_label = "per 1 GB" if unit == "GB" else f"per 1,000 {unit}"
        out.append(f"| {key} ({unit_label}) | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def repeat_table(runs: list[dict]) -> str:
    """Run 1 vs run 2 (ratio); rows outside ±15% are flagged."""
    if len(runs) < 2:
        return ""
    a, b = runs[0], runs[1]
    configs = [c for c in NAMES if c in a["configs"] and c in b["configs"]]
    out = ["| workload | " + " | ".join(LABELS[c] for c in configs) + " |",
           "|---|" + "---|" * len(configs)]
    flagged = []
    for label, key, field, _unit, _hib in ROWS:
        cells = []
        for c in configs:
            x, y = value(a, c, key, field), value(b, c, key, field)
            if x is None or y is None or not x:
                cells.append("–")
                continue
            r = y / x
            bad = abs(r - 1) > REPEAT_TOLERANCE
            if bad:
                flagged.append((label, c, x, y))
            cells.append(f"{_fmt(x)} → {_fmt(y)} ({r:.2f}{' ⚠' if bad else ''})")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(out) + "\n"
    text += (f"\n{len(flagged)} of {len(ROWS) * len(configs)} numbers moved more than ±15% between the "
             "two runs (⚠).\n")
    # the same for the ratios to (a): what one run's interleaving is meant to keep stable
    others = [c for c in configs if c != "inline"]
    if "inline" in configs and others:
        out = ["| ratio to (a) | " + " | ".join(LABELS[c] for c in others) + " |",
               "|---|" + "---|" * len(others)]
        moved = 0
        for label, key, field, _unit, _hib in ROWS:
            cells = []
            for c in others:
                xa, ya = value(a, "inline", key, field), value(b, "inline", key, field)
                x, y = value(a, c, key, field), value(b, c, key, field)
                if None in (xa, ya, x, y) or not xa or not ya or not x:
                    cells.append("–")
                    continue
                r1, r2 = x / xa, y / ya
                bad = abs(r2 / r1 - 1) > REPEAT_TOLERANCE
                moved += bad
                cells.append(f"{r1:.2f} → {r2:.2f}{' ⚠' if bad else ''}")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        text += ("\nRatios to (a), run 1 → run 2 (⚠: moved more than ±15%):\n\n" + "\n".join(out) + "\n"
                 f"\n{moved} of {len(ROWS) * len(others)} ratios moved more than ±15%.\n")
    return text


def sweep_points(run: dict, config: str, prefix: str, field: str) -> list[tuple[int, float]]:
    pts = []
    for key, w in run["configs"].get(config, {}).get("workloads", {}).items():
        if key.startswith(prefix + "@") and "error" not in w and w.get(field) is not None:
            pts.append((int(key.split("@")[1]), w[field]))
    return sorted(pts)


def sweep_table(run: dict) -> str:
    out = []
    for prefix, field, title in (("hs_ecdsa", "per_s", "full handshakes/s ECDSA"),
                                 ("hs_rsa", "per_s", "full handshakes/s RSA-2048"),
                                 ("keepalive", "per_s", "keep-alive requests/s")):
        configs = [c for c in NAMES if sweep_points(run, c, prefix, field)]
        if not configs:
            continue
        levels = sorted({n for c in configs for n, _ in sweep_points(run, c, prefix, field)})
        out.append(f"| {title} vs concurrency | " + " | ".join(LABELS[c] for c in configs) + " |")
        out.append("|---|" + "---|" * len(configs))
        for n in levels:
            cells = []
            for c in configs:
                d = dict(sweep_points(run, c, prefix, field))
                cells.append(_fmt(d.get(n)))
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plots(run: dict, stem: Path) -> list[Path]:
    """One PNG per swept workload; [] if matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for prefix, field, title, ylabel in (
            ("hs_ecdsa", "per_s", "Full TLS 1.3 handshakes, ECDSA P-256", "handshakes/s"),
            ("hs_rsa", "per_s", "Full TLS 1.3 handshakes, RSA-2048", "handshakes/s"),
            ("keepalive", "per_s", "Small keep-alive requests", "requests/s")):
        series = {c: sweep_points(run, c, prefix, field) for c in NAMES}
        series = {c: p for c, p in series.items() if p}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for c, pts in series.items():
            ax.plot([n for n, _ in pts], [v for _, v in pts], marker="o", label=LABELS[c])
        ax.set_xscale("log", base=2)
        levels = sorted({n for pts in series.values() for n, _ in pts})
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.minorticks_off()
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}-{prefix}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path)
    return made


def machine_md(machine: dict) -> str:
    return (f"Machine: {machine['nproc']} CPUs ({machine['model']}), {machine['kernel']}, "
            f"Python {machine['python']}, {machine['openssl']}; load average at start "
            f"{machine['load_start']}, at end {machine.get('load_end', '?')}.\n")


def markdown(result: dict) -> str:
    runs = result["runs"]
    parts = [f"# vcproxy benchmark, {result['mode']} mode, {result['started']}\n\n",
             f"Command: `{result['command']}`\n\n", machine_md(result["machine"]),
             f"\nSettings: {result['settings_text']}\n"]
    for i, run in enumerate(runs, 1):
        parts.append(f"\n## Run {i} of {len(runs)} ({run['seconds']:.0f} s, load average "
                     f"{run.get('load_start', '?')} at start, {run.get('load_end', '?')} at end)\n\n"
                     "Ratios in brackets are to (a). Handshakes, requests and MB/s: higher is "
                     "better; latencies: lower is better.\n\n")
        parts.append(main_table(run))
        idle = [f"{LABELS[c]} {cr['idle_cpu_s_per_s']:.3f}" for c, cr in run["configs"].items()
                if "idle_cpu_s_per_s" in cr]
        if idle:
            parts.append("\nIdle CPU s/s while the others were measured: " + ", ".join(idle) + "\n")
        parts.append("\n" + cpu_table(run))
        sweeps = sweep_table(run)
        if sweeps:
            parts.append("\n" + sweeps)
        errors = [(c, k, w["error"]) for c, cr in run["configs"].items()
                  for k, w in cr.get("workloads", {}).items() if "error" in w]
        errors += [(c, "(configuration)", cr["error"]) for c, cr in run["configs"].items() if "error" in cr]
        failures = [(c, k, w.get("failed") or w.get("errors") or w.get("clients_failed"))
                    for c, cr in run["configs"].items() for k, w in cr.get("workloads", {}).items()
                    if (w.get("failed") or w.get("errors") or w.get("clients_failed"))]
        for c, cr in run["configs"].items():
            for k, w in cr.get("workloads", {}).items():
                bad = sum(v for m, v in (w.get("proxy_metrics") or {}).items()
                          if m.startswith("vcproxy_tls_handshakes_total") and "result=ok" not in m)
                bad_up = sum(v for m, v in (w.get("proxy_metrics") or {}).items()
                             if m.startswith("vcproxy_upstream_errors"))
                if bad or bad_up:
                    errors.append((c, k, f"proxy counted {bad:.0f} failed handshakes, {bad_up:.0f} upstream errors"))
                share = w.get("resumed_share")
                if share is None:
                    continue
                want_resumed = k == "resumed"
                if (want_resumed and share < 0.9) or (not want_resumed and share > 0.1):
                    errors.append((c, k, f"{share:.0%} of the handshakes were resumed"))
        if errors or failures:
            parts.append("\nProblems seen:\n")
            for c, k, e in errors:
                parts.append(f"- {LABELS.get(c, c)} {k}: {e}\n")
            for c, k, n in failures:
                parts.append(f"- {LABELS.get(c, c)} {k}: {n} failed requests/clients\n")
    if len(runs) >= 2:
        parts.append("\n## Repeatability: run 1 → run 2 (ratio)\n\n" + repeat_table(runs))
    if result.get("plots"):
        parts.append("\nPlots: " + ", ".join(f"`{p}`" for p in result["plots"]) + "\n")
    return "".join(parts)
