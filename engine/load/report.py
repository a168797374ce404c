#!/usr/bin/env python3
"""Turn bench records into a Markdown report and a PNG chart.

    python -m engine.load.report                           # bench/results/*.json
    python -m engine.load.report bench/results/idle-*.json # chosen records
    python -m engine.load.report --results-dir /tmp/r      # /tmp/r/REPORT.md, /tmp/r/report.png
    python -m engine.load.report --readme docs/benchmarks.md   # also into that file

``--results-dir`` is bench/results/ when the package runs from a checkout
(python -m from the repository, or an editable install), else the current
directory.

Reads the JSON records the scenarios write (idle, fanout, churn, micro, bound;
any other scenario gets a generic row), keeps the newest record of each
configuration (``--all`` keeps every one), and writes:

* a Markdown file: the targets with the measured value, Faye's value,
  the ratio and whether each is met; then one table per scenario with its key
  figures (engine vs Faye where the record has a peer) and the command that
  reproduces each row;
* a PNG chart (matplotlib, Agg backend): publish-to-delivery latency
  percentiles against N (fan-out records, one panel per transport) and server
  RSS per idle client against N (idle records), engine vs Faye. Without such
  records no chart is written.

Exit status 0 when the report was written, 1 when no record could be read.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_DIR / "bench"
PROG = "python -m engine.load.report"


def default_results_dir() -> Path:
    """bench/results/ of the checkout this package runs from, else the current directory."""
    results = BENCH_DIR / "results"
    return results if (REPO_DIR / "pyproject.toml").is_file() and results.is_dir() else Path(".")


#: Parameters that do not define a configuration (they change from run to run).
VOLATILE = {
    "url",
    "urls",
    "server_cmd",
    "bound_server_cmd",
    "server_pid",
    "results_dir",
    "note",
    "no_progress",
    "quiet",
    "port",
    "check",
    "profile",
    "startup_timeout",
    "admin_token",
}

TARGETS: dict[str, Any] = {
    "idle_bytes_abs": 4096,
    "idle_vs_faye": 0.25,
    "fanout_fraction": 0.95,
    "fanout_p99_ms": {"websocket": 50.0, "long-polling": 100.0},
    "bound_fraction": 0.60,
    "micro_ratio": 10.0,
}


# --------------------------------------------------------------------------- loading


def from_load_record(rec: dict[str, Any]) -> dict[str, Any]:
    """A record of `python -m engine load` (one entry per server under
    ``targets``, run in the order URL2, URL) read as the scenarios' records
    are: URL's parameters and results as the main ones, URL2's (--compare) as
    the peer, each named by its label. Other records are returned as they are."""
    targets = [t for t in rec.get("targets") or [] if isinstance(t, dict)]
    if "results" in rec or not targets or not isinstance(targets[-1].get("results"), dict):
        return rec
    main = targets[-1]
    out = {**rec, "parameters": main.get("parameters") or {}, "results": main["results"]}
    out["server"] = str(main.get("label") or main.get("url") or "URL")
    if len(targets) > 1 and isinstance(targets[0].get("results"), dict):
        other = targets[0]
        out["peer"] = {"name": str(other.get("label") or "URL2"), "results": other["results"]}
    return out


def load(paths: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    records, problems = [], []
    for p in paths:
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{p}: {exc}")
            continue
        if isinstance(rec, dict):
            rec = from_load_record(rec)
        if not isinstance(rec, dict) or "scenario" not in rec or "results" not in rec:
            problems.append(f"{p}: not a load record (no scenario/results)")
            continue
        rec["_path"] = str(p)
        records.append(rec)
    records.sort(key=lambda r: (r.get("started_at") or 0, r.get("timestamp") or ""))
    return records, problems


def config_key(rec: dict[str, Any]) -> str:
    params = {k: v for k, v in (rec.get("parameters") or {}).items() if k not in VOLATILE}
    peer = (rec.get("peer") or {}).get("name")
    return json.dumps([rec["scenario"], peer, params], sort_keys=True, default=str)


def newest_per_config(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for r in records:  # sorted oldest first
        latest[config_key(r)] = r
    return sorted(latest.values(), key=lambda r: r.get("started_at") or 0)


# --------------------------------------------------------------------------- helpers


def command_line(rec: dict[str, Any]) -> str:
    """The record's command, runnable from the repository root: ``python`` for
    the interpreter, repository-relative script paths, no temporary --results-dir."""
    cmd = rec.get("command")
    if not cmd:
        return ""
    words = shlex.split(cmd) if isinstance(cmd, str) else [str(w) for w in cmd]
    if words and words[0].endswith(".py"):  # (a command recorded without its interpreter)
        words.insert(0, "python")
    out: list[str] = []
    skip = False
    for i, w in enumerate(words):
        if skip:
            skip = False
            continue
        if i == 0 and ("python" in Path(w).name or w == sys.executable):
            out.append("python")
            continue
        if w == "--results-dir":
            skip = True
            continue
        if w.startswith("--results-dir="):
            continue
        p = Path(w)
        if p.is_absolute():
            try:
                w = str(p.resolve().relative_to(REPO_DIR))
            except (ValueError, OSError):
                pass
        out.append(w)
    return " ".join(shlex.quote(w) for w in out)


def server_name(rec: dict[str, Any]) -> str:
    """Which server a record's main results are of: engine, faye, the command,
    or (an `engine load` record) the label of its URL."""
    if rec.get("server"):
        return str(rec["server"])
    cmd = str(get(rec, "parameters", "server_cmd") or "")
    if not cmd or "-m engine" in cmd or "engine serve" in cmd:
        return "engine"
    if "faye" in cmd.lower():
        return "faye"
    return Path(shlex.split(cmd)[0]).name if cmd.strip() else "custom"


def sides(rec: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """(server name, results) of the record's main run and of its peer, if any."""
    out = [(server_name(rec), rec.get("results"))]
    peer = rec.get("peer")
    if isinstance(peer, dict) and peer.get("results"):
        out.append((str(peer.get("name") or "peer"), peer.get("results")))
    return out


def engine_and_faye(rec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The engine's results and Faye's (or the peer's), wherever they are in the record."""
    found = dict(sides(rec))
    if "engine" not in found:  # an `engine load` record: URL's results, then URL2's
        both = sides(rec)
        return both[0][1] or {}, (both[1][1] if len(both) > 1 else None)
    peer = next((v for k, v in found.items() if k != "engine"), None)
    return found.get("engine") or {}, peer


def get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def fmt(v: Any, spec: str = "{:,.0f}", none: str = "n/a") -> str:
    if v is None:
        return none
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)
    try:
        return spec.format(v)
    except (ValueError, TypeError):
        return str(v)


def ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
        return None
    return a / b


def md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in header) + " |"]
    out.append("|" + "|".join(" --- " for _ in header) + "|")
    for r in rows:
        out.append("| " + " | ".join(cell(c) for c in r) + " |")
    return "\n".join(out)


def code(s: str) -> str:
    return f"`{s}`" if s else ""


def met(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "**no**")


def when(rec: dict[str, Any]) -> str:
    return str(rec.get("timestamp") or "")


# --------------------------------------------------------------------------- sections


def idle_rows(recs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in sorted(
        recs,
        key=lambda r: (
            get(r, "parameters", "transport") or "",
            get(r, "parameters", "clients") or 0,
        ),
    ):
        p = r.get("parameters") or {}
        res, peer = engine_and_faye(r)
        pres = peer or {}
        e_b, f_b = res.get("bytes_per_client"), pres.get("bytes_per_client")
        rows.append(
            [
                p.get("transport", "long-polling") + (" over TLS" if is_tls(r) else ""),
                fmt(p.get("clients")),
                f"{fmt(res.get('connected'))} / {fmt(res.get('failed'))} / "
                f"{fmt(res.get('dropped'))}",
                fmt(e_b),
                fmt(f_b) if peer else "",
                fmt(ratio(e_b, f_b), "{:.2f}") if peer else "",
                fmt(res.get("server_cpu_per_cycle_s"), "{:.3f}"),
                fmt(pres.get("server_cpu_per_cycle_s"), "{:.3f}") if peer else "",
                when(r),
                code(command_line(r)),
            ]
        )
    return rows


def is_tls(rec: dict[str, Any]) -> bool:
    """A run served over TLS (idle.py --tls / --compare-tls): shown in its
    scenario's table, kept out of the targets and the chart (plain runs)."""
    return bool(get(rec, "parameters", "tls"))


def is_cluster_idle(rec: dict[str, Any]) -> bool:
    """An idle record of the engine as several workers over Redis."""
    return rec.get("scenario") == "idle" and bool(get(rec, "parameters", "workers"))


def cluster_idle_rows(recs: list[dict[str, Any]]) -> list[list[str]]:
    """One row per idle run of a multi-worker engine: clients held, memory,
    idle CPU, heartbeat lateness and the fan-out to a fraction of them."""
    rows = []
    for r in sorted(
        recs,
        key=lambda r: (
            get(r, "parameters", "transport") or "",
            get(r, "parameters", "clients") or 0,
            r.get("started_at") or 0,
        ),
    ):
        p = r.get("parameters") or {}
        res = r.get("results") or {}
        n = p.get("clients") or 0
        late = get(res, "heartbeat_lateness_ms", "hold") or {}
        fan = res.get("fanout") or {}
        flat = fan.get("latency_ms") or {}
        cpu = res.get("server_cpu_percent_hold")
        share = res.get("server_cpu_machine_share_hold")
        dropped = res.get("dropped")
        rows.append(
            [
                p.get("transport", "?"),
                fmt(n),
                fmt(p.get("workers")),
                f"{fmt(res.get('connected'))} / {fmt(res.get('failed'))} / {fmt(dropped)}"
                + (f" ({100 * dropped / n:.2f} %)" if isinstance(dropped, int) and n else ""),
                f"{fmt(res.get('hold_seconds'), '{:.0f}')} s = "
                f"{fmt(res.get('timeout_cycles'), '{:.1f}')}",
                fmt(res.get("bytes_per_client")),
                f"{fmt(mib(res.get('rss_loaded_bytes')), '{:,.0f}')} / "
                f"{fmt(mib(res.get('redis_rss_loaded_bytes')), '{:,.1f}')}",
                f"{fmt(cpu, '{:.1f}')} % "
                f"({fmt(None if share is None else 100 * share, '{:.1f}')} %)",
                f"{fmt(late.get('p50'), '{:,.0f}')} / {fmt(late.get('p99'), '{:,.0f}')}",
                (
                    " / ".join(fmt(flat.get(k), "{:,.1f}") for k in ("p50", "p99", "max"))
                    + ("" if fan.get("latency_at") == "arrival" else " (read)")
                    if fan
                    else ""
                ),
                (
                    f"{fmt(fan.get('delivered'))} / {fmt(fan.get('expected'))}"
                    + (" complete" if fan.get("complete") else " **incomplete**")
                    if fan
                    else ""
                ),
                fmt(res.get("ramp_rate_achieved")),
                met(res.get("held_cleanly")),
                when(r),
                code(command_line(r)),
            ]
        )
    return rows


def fanout_rows(recs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in sorted(
        recs,
        key=lambda r: (
            get(r, "parameters", "transport") or "",
            get(r, "parameters", "clients") or 0,
        ),
    ):
        p = r.get("parameters") or {}
        res, peer = engine_and_faye(r)
        pres = peer or {}

        def lat(x: dict[str, Any]) -> str:
            lm = x.get("latency_ms") or {}
            return " / ".join(fmt(lm.get(k), "{:.1f}") for k in ("p50", "p90", "p99", "max"))

        def rate(x: dict[str, Any]) -> str:
            return (
                f"{fmt(x.get('delivered_per_s'))} of {fmt(x.get('demanded_per_s'))} "
                f"({fmt(x.get('delivered_fraction'), '{:.0%}')})"
            )

        rows.append(
            [
                p.get("transport", ""),
                fmt(p.get("clients")),
                fmt(p.get("subscribers")),
                fmt(p.get("rate"), "{:g}"),
                lat(res),
                fmt(get(res, "read_latency_ms", "p99"), "{:.1f}"),
                lat(pres) if peer else "",
                rate(res),
                rate(pres) if peer else "",
                when(r),
                code(command_line(r)),
            ]
        )
    return rows


def churn_rows(recs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in recs:
        p = r.get("parameters") or {}
        res, peer = engine_and_faye(r)
        pres = peer or {}
        rows.append(
            [
                fmt(p.get("clients")),
                f"{fmt(p.get('rounds'))} x {fmt(p.get('duration'), '{:g}')} s",
                fmt(res.get("handshakes_per_s")),
                fmt(pres.get("handshakes_per_s")) if peer else "",
                fmt(res.get("errors_total")),
                fmt(get(res, "handshake_ms", "p99"), "{:.1f}"),
                fmt(res.get("server_cpu_per_handshake_us"), "{:.0f}"),
                fmt(pres.get("server_cpu_per_handshake_us"), "{:.0f}") if peer else "",
                f"{fmt(mib(res.get('rss_baseline_bytes')), '{:.1f}')} -> "
                f"{fmt(mib(res.get('rss_settled_bytes')), '{:.1f}')}",
                fmt(res.get("rss_growth_after_first_round_per_handshake_bytes"), "{:.1f}"),
                fmt(res.get("sessions_settled")),
                when(r),
                code(command_line(r)),
            ]
        )
    return rows


def mib(v: Any) -> float | None:
    return None if not isinstance(v, int | float) else v / 1048576


def bound_rows(recs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in recs:
        res, p = r["results"], r.get("parameters") or {}
        rows.append(
            [
                fmt(p.get("clients")),
                fmt(res.get("engine_cycles_per_s")),
                fmt(res.get("bound_requests_per_s")),
                fmt(res.get("fraction"), "{:.1%}"),
                fmt(res.get("cpu_fraction"), "{:.1%}"),
                f"{fmt(get(res, 'engine', 'server_cpu_per_request_us'), '{:.1f}')} / "
                f"{fmt(get(res, 'bound', 'server_cpu_per_request_us'), '{:.1f}')}",
                str(get(res, "engine", "limited_by") or ""),
                when(r),
                code(command_line(r)),
            ]
        )
    return rows


def cluster_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for rec in records:
        params = rec.get("parameters", {})
        for name, res in rec.get("results", {}).get("configurations", {}).items():
            lat = res.get("latency_ms") or {}
            rows.append(
                [
                    f"{name} ({params.get('transport', '?')})",
                    f"{params.get('clients', 0):,}",
                    f"{params.get('subscribers', 0):,}",
                    f"{params.get('rate', 0):g}",
                    " / ".join(f"{lat.get(k, float('nan')):.1f}" for k in ("p50", "p99", "max")),
                    f"{res.get('delivered_per_s', 0):,.0f} of {res.get('demanded_per_s', 0):,.0f}",
                    "yes" if res.get("kept_up") else "no",
                    rec.get("timestamp", ""),
                    code(command_line(rec)),
                ]
            )
    return rows


def micro_section(rec: dict[str, Any]) -> str:
    res = rec["results"]
    out = []
    rows = []
    ch = res.get("channels") or {}
    twins = [ch.get("validate")] + list(ch.get("match") or []) + list(res.get("batch") or [])
    twins += list(res.get("wsframe") or [])
    for t in twins:
        if not t:
            continue
        rows.append(
            [
                t["name"],
                fmt(t.get("compiled_ns"), "{:,.0f}"),
                fmt(t.get("pure_ns"), "{:,.0f}"),
                fmt(t.get("ratio"), "{:.1f}x"),
            ]
        )
    if rows:
        out.append(md_table(["operation", "compiled ns", "pure ns", "pure / compiled"], rows))
    sc = ch.get("scaling") or []
    if sc:
        srows = [
            [
                fmt(s["subscriptions"]),
                fmt(s["match_ns"], "{:,.0f}"),
                fmt(s.get("mean_matches"), "{:.1f}"),
                fmt(s.get("rss_per_subscription_bytes"), "{:,.0f}"),
            ]
            for s in sc
        ]
        out.append(
            "Compiled `ChannelTrie.match` against the number of subscriptions "
            "(flat = O(depth), not O(subscriptions)):\n\n"
            + md_table(["subscriptions", "ns per match", "matches", "RSS B / subscription"], srows)
        )
    d = get(ch, "depth", "rows") or []
    if d:
        out.append(
            "Against channel depth "
            f"({fmt(get(ch, 'depth', 'subscriptions'))} subscriptions):\n\n"
            + md_table(
                ["depth", "ns per match"],
                [[str(x["depth"]), fmt(x["match_ns"], "{:,.0f}")] for x in d],
            )
        )
    out.append(f"Record {when(rec)}: {code(command_line(rec))}")
    return "\n\n".join(out)


def generic_rows(recs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in recs:
        res = r.get("results") or {}
        keys = [k for k, v in res.items() if isinstance(v, int | float)][:6]
        rows.append(
            [
                r["scenario"],
                ", ".join(f"{k}={fmt(res[k], '{:,.4g}')}" for k in keys),
                when(r),
                code(command_line(r)),
            ]
        )
    return rows


# --------------------------------------------------------------------------- targets


def targets(by: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    rows: list[list[str]] = []
    for transport in ("long-polling", "websocket"):
        recs = [
            r
            for r in by.get("idle", [])
            if get(r, "parameters", "transport") == transport
            and server_name(r) == "engine"
            and not is_cluster_idle(r)
            and not is_tls(r)
        ]
        if not recs:
            continue
        r = max(
            recs,
            key=lambda r: (
                get(r, "parameters", "clients") or 0,
                r.get("peer") is not None,
                r.get("started_at") or 0,
            ),
        )
        eng, peer = engine_and_faye(r)
        e = eng.get("bytes_per_client")
        f = get(peer, "bytes_per_client")
        rt = ratio(e, f)
        ok = None
        if e is not None:
            ok = e <= TARGETS["idle_bytes_abs"] and (rt is None or rt <= TARGETS["idle_vs_faye"])
        rows.append(
            [
                f"idle {transport}, {fmt(get(r, 'parameters', 'clients'))} clients: bytes per "
                "idle client <= 4 KB and <= 1/4 of Faye's",
                fmt(e),
                fmt(f),
                fmt(rt, "{:.2f}"),
                met(ok),
                code(command_line(r)),
            ]
        )
    for transport in ("websocket", "long-polling"):
        recs = [
            r
            for r in by.get("fanout", [])
            if get(r, "parameters", "transport") == transport and server_name(r) == "engine"
        ]
        if not recs:
            continue
        r = max(
            recs,
            key=lambda r: (
                get(r, "parameters", "clients") or 0,
                r.get("peer") is not None,
                r.get("started_at") or 0,
            ),
        )
        lim = TARGETS["fanout_p99_ms"][transport]
        eng, peer = engine_and_faye(r)
        e99 = get(eng, "latency_ms", "p99")
        f99 = get(peer, "latency_ms", "p99")
        frac = eng.get("delivered_fraction")
        ffrac = get(peer, "delivered_fraction")
        ok = None
        if e99 is not None and frac is not None:
            ok = e99 < lim and frac >= TARGETS["fanout_fraction"]
        rows.append(
            [
                f"fan-out {transport}, {fmt(get(r, 'parameters', 'clients'))} clients, "
                f"{fmt(get(r, 'parameters', 'subscribers'))} subscribed: kept up (>= 95 %) "
                f"and p99 < {lim:g} ms",
                f"p99 {fmt(e99, '{:.1f}')} ms, {fmt(frac, '{:.0%}')}",
                f"p99 {fmt(f99, '{:.1f}')} ms, {fmt(ffrac, '{:.0%}')}" if r.get("peer") else "",
                fmt(ratio(e99, f99), "{:.2f}"),
                met(ok),
                code(command_line(r)),
            ]
        )
    if by.get("bound"):
        r = by["bound"][-1]
        fr = get(r, "results", "fraction")
        rows.append(
            [
                "long-polling /meta/connect cycles/s >= 60 % of the bound server's requests/s",
                f"{fmt(get(r, 'results', 'engine_cycles_per_s'))}/s = {fmt(fr, '{:.0%}')}",
                "",
                f"bound {fmt(get(r, 'results', 'bound_requests_per_s'))}/s",
                met(None if fr is None else fr >= TARGETS["bound_fraction"]),
                code(command_line(r)),
            ]
        )
    if by.get("micro"):
        r = by["micro"][-1]
        at = get(r, "results", "summary", "match_ratio_at_100k")
        tf = get(r, "results", "summary", "match_time_factor")
        sc = get(r, "results", "channels", "scaling") or []
        size_f = (sc[-1]["subscriptions"] / sc[0]["subscriptions"]) if len(sc) >= 2 else None
        flat = None if tf is None else tf < 2.0
        rows.append(
            [
                "compiled channel matching at 100,000 subscriptions >= 10x pure Python, "
                "and O(depth)",
                f"{fmt(at, '{:.1f}x')}; time x{fmt(tf, '{:.2f}')} for "
                f"subscriptions x{fmt(size_f, '{:,.0f}')}",
                "",
                "",
                met(None if at is None else at >= TARGETS["micro_ratio"] and flat is not False),
                code(command_line(r)),
            ]
        )
    return rows


# --------------------------------------------------------------------------- chart


def chart(by: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    fan = by.get("fanout", [])
    idle = [r for r in by.get("idle", []) if not is_tls(r)]
    if not fan and not idle:
        return False
    try:
        import matplotlib
    except ImportError:
        sys.stderr.write(
            "report: matplotlib is not installed (pip install -r "
            "bench/requirements.txt): no chart\n"
        )
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    transports = sorted({get(r, "parameters", "transport") or "?" for r in fan})
    panels = len(transports) + (1 if idle else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 4.6), squeeze=False)
    axes = axes[0]
    colors = {"engine": "#1f77b4", "faye": "#d62728"}
    styles = {"p50": ("-", "o"), "p90": ("--", "s"), "p99": (":", "^")}

    def series(recs: list[dict[str, Any]], getter: Any) -> dict[str, list[tuple[float, float]]]:
        """Per server, (N, value) points; the newest record wins at equal N."""
        out: dict[str, dict[float, float]] = {}
        for r in sorted(recs, key=lambda r: r.get("started_at") or 0):
            n = get(r, "parameters", "clients")
            if n is None:
                continue
            for who, res in sides(r):
                v = getter(res) if res else None
                if isinstance(v, int | float) and math.isfinite(v):
                    out.setdefault(who, {})[n] = v
        return {k: sorted(v.items()) for k, v in out.items()}

    for ax, transport in zip(axes, transports, strict=False):
        recs = [r for r in fan if (get(r, "parameters", "transport") or "?") == transport]
        per_q = {q: series(recs, lambda res, q=q: get(res, "latency_ms", q)) for q in styles}
        names = sorted({w for v in per_q.values() for w in v}, key=lambda w: (w != "engine", w))
        for who in names:
            for q, (ls, mk) in styles.items():
                pts = per_q[q].get(who)
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                ax.plot(
                    xs,
                    ys,
                    ls,
                    marker=mk,
                    color=colors.get(who, "#555"),
                    label=f"{who} {q}",
                    linewidth=1.6,
                    markersize=5,
                )
        lim = TARGETS["fanout_p99_ms"].get(transport)
        if lim:
            ax.axhline(lim, color="#888", linewidth=0.8, linestyle="-.")
            ax.annotate(
                f"p99 target {lim:g} ms",
                (0.02, lim),
                xycoords=("axes fraction", "data"),
                fontsize=8,
                color="#666",
                va="bottom",
            )
        ax.set_yscale("log")
        ax.set_xlabel("clients N (of which K subscribed)")
        ax.set_ylabel("publish-to-delivery latency, ms")
        ax.set_title(f"fan-out latency, {transport}")
        _xscale(ax, [get(r, "parameters", "clients") for r in recs])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2, loc="best")
    if idle:
        ax = axes[-1]
        for transport, mk in (("long-polling", "o"), ("websocket", "s")):
            recs = [
                r
                for r in idle
                if (get(r, "parameters", "transport") or "long-polling") == transport
            ]
            if not recs:
                continue
            found = series(recs, lambda res: get(res, "bytes_per_client"))
            for who, pts in sorted(found.items(), key=lambda kv: (kv[0] != "engine", kv[0])):
                xs, ys = zip(*pts, strict=True)
                ax.plot(
                    xs,
                    [y / 1024 for y in ys],
                    "-" if who == "engine" else "--",
                    marker=mk,
                    color=colors.get(who, "#555"),
                    label=f"{who}, {transport}",
                    linewidth=1.6,
                    markersize=5,
                )
        ax.axhline(TARGETS["idle_bytes_abs"] / 1024, color="#888", linewidth=0.8, linestyle="-.")
        ax.annotate(
            "target 4 KiB",
            (0.02, TARGETS["idle_bytes_abs"] / 1024),
            xycoords=("axes fraction", "data"),
            fontsize=8,
            color="#666",
            va="bottom",
        )
        ax.set_yscale("log")
        ax.set_xlabel("idle clients N")
        ax.set_ylabel("server RSS per idle client, KiB")
        ax.set_title("memory per idle client")
        _xscale(ax, [get(r, "parameters", "clients") for r in idle])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("engine vs Faye (same machine; side-by-side records: same run)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _xscale(ax: Any, ns: list[Any]) -> None:
    vals = [n for n in ns if isinstance(n, int | float) and n > 0]
    if vals and max(vals) / min(vals) >= 10:
        ax.set_xscale("log")


# --------------------------------------------------------------------------- main


def machine_line(recs: list[dict[str, Any]]) -> str:
    m = recs[-1].get("machine") or {}
    pk = m.get("packages") or {}
    rev = (m.get("git_revision") or "")[:10]
    dirty = " (engine/ or src_pyx/ modified)" if m.get("git_dirty") else ""
    return (
        f"{m.get('cpu_count', '?')} x {m.get('cpu_model') or 'CPU'}, "
        f"{fmt(mib(m.get('mem_total_bytes')), '{:,.0f}')} MiB, Linux {m.get('kernel', '?')}, "
        f"Python {m.get('python', '?')}, engine {pk.get('engine')}, uvloop {pk.get('uvloop')}, "
        f"git {rev or '?'}{dirty}"
    )


def markdown(records: list[dict[str, Any]], chart_rel: str | None, sources: str) -> str:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["scenario"], []).append(r)
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Benchmark report",
        "",
        f"Generated {now} by `{PROG}` from {len(records)} record(s) in {sources}.",
        f"Machine of the newest record: {machine_line(records)}.",
        "Each row gives the command that reproduces it (from the repository root).",
    ]
    t = targets(by)
    if t:
        out += [
            "",
            "## Targets",
            "",
            md_table(["target", "engine", "Faye", "ratio", "met", "command"], t),
        ]
    single_idle = [r for r in by.get("idle", []) if not is_cluster_idle(r)]
    cluster_idle = [r for r in by.get("idle", []) if is_cluster_idle(r)]
    if cluster_idle:
        out += [
            "",
            "## Idle clients over several workers",
            "",
            "The engine as W worker processes sharing the port (SO_REUSEPORT) over a Redis "
            "broker the scenario starts itself; N clients ramped (each handshaken and "
            "subscribed to one of a set of channels), held through at least two "
            "`/meta/connect` timeouts, then a fan-out to a fraction of them. Clients: "
            "connected at the end of the hold / failed before connecting / dropped after "
            "(whole run). Memory: server RSS of every process (supervisor and workers) "
            "above its baseline per connected client; MiB of the server tree and of "
            "redis at the end of the hold. CPU: server CPU during the hold, % of one core "
            "(of the machine). Heartbeat lateness: held connects answered without "
            "events, reply - send - advised timeout, ms (negative: answered early; the "
            "server ends held connects up to 10 % early on purpose). Fan-out latency: "
            "until each delivery arrived in the client's socket, or, marked (read), until "
            "the generator read it (records made before timing at arrival; see Fan-out). "
            "Held cleanly: "
            "< 0.1 % dropped, >= 2 timeout cycles, fan-out complete.",
            "",
            md_table(
                [
                    "transport",
                    "N",
                    "workers",
                    "connected / failed / dropped",
                    "hold = cycles",
                    "B/client",
                    "RSS MiB server / redis",
                    "server CPU idle",
                    "heartbeat lateness p50 / p99 ms",
                    "fan-out latency p50 / p99 / max ms",
                    "fan-out delivered / expected",
                    "ramp clients/s",
                    "held cleanly",
                    "when",
                    "command",
                ],
                cluster_idle_rows(cluster_idle),
            ),
        ]
    if single_idle:
        out += [
            "",
            "## Idle clients",
            "",
            "Server RSS per idle client and CPU per heartbeat cycle "
            "(all clients long-polling or on WebSocket through one connect timeout).",
            "",
            md_table(
                [
                    "transport",
                    "N",
                    "connected / failed / dropped",
                    "engine B/client",
                    "Faye B/client",
                    "engine/Faye",
                    "engine CPU s/cycle",
                    "Faye CPU s/cycle",
                    "when",
                    "command",
                ],
                idle_rows(single_idle),
            ),
        ]
    if "fanout" in by:
        out += [
            "",
            "## Fan-out",
            "",
            "Publish-to-delivery latency (ms, p50 / p90 / p99 / max): until the message's "
            "bytes arrived in the client's socket (the kernel's receive time; records made "
            "before 2026-11-28 11:00 UTC timed it when the generator read it). Read p99: "
            "the engine's p99 timed when the generator read it, which adds the queue of "
            "replies waiting while the generator served the clients ahead of them "
            "(bench/README.md, Arrival time). Delivered messages per second against the "
            "demanded rate.",
            "",
            md_table(
                [
                    "transport",
                    "N",
                    "K",
                    "pub/s",
                    "engine latency",
                    "engine read p99",
                    "Faye latency",
                    "engine delivered/s",
                    "Faye delivered/s",
                    "when",
                    "command",
                ],
                fanout_rows(by["fanout"]),
            ),
        ]
    if "churn" in by:
        out += [
            "",
            "## Churn (reconnect storms)",
            "",
            "Handshake + subscribe + connect + disconnect cycles; RSS from the baseline to "
            "after the last storm settled; sessions left after settling (should be 0).",
            "",
            md_table(
                [
                    "clients",
                    "rounds",
                    "engine handshakes/s",
                    "Faye handshakes/s",
                    "errors",
                    "handshake p99 ms",
                    "engine CPU us/handshake",
                    "Faye CPU us/handshake",
                    "RSS MiB",
                    "RSS growth B/handshake after round 1",
                    "sessions left",
                    "when",
                    "command",
                ],
                churn_rows(by["churn"]),
            ),
        ]
    if "bound" in by:
        out += [
            "",
            "## Long-polling cycles against the bound",
            "",
            "Engine `/meta/connect` cycles per second (advice timeout 0) against a minimal "
            "uvloop + httptools server with a fixed body, same clients, same run. The CPU-cost "
            "fraction compares server CPU per request.",
            "",
            md_table(
                [
                    "clients",
                    "engine cycles/s",
                    "bound req/s",
                    "fraction",
                    "CPU-cost fraction",
                    "server us/req engine / bound",
                    "limited by",
                    "when",
                    "command",
                ],
                bound_rows(by["bound"]),
            ),
        ]
    if "cluster" in by:
        out += [
            "",
            "## Scale-out: workers over Redis",
            "",
            "The fan-out scenario against one process (in-process broker) and against 1, 2 "
            "and 4 workers sharing the port over Redis, in one run: with several workers most "
            "deliveries cross from the publisher's worker to another one through Redis.",
            "",
            md_table(
                [
                    "configuration",
                    "N",
                    "K",
                    "pub/s",
                    "latency p50 / p99 / max ms",
                    "delivered/s",
                    "kept up",
                    "when",
                    "command",
                ],
                cluster_rows(by["cluster"]),
            ),
        ]
    if "micro" in by:
        out += ["", "## Compiled vs pure Python", "", micro_section(by["micro"][-1])]
    other = [
        r
        for s, rs in by.items()
        if s not in ("idle", "fanout", "churn", "bound", "micro", "cluster")
        for r in rs
    ]
    if other:
        out += [
            "",
            "## Other records",
            "",
            md_table(["scenario", "figures", "when", "command"], generic_rows(other)),
        ]
    if chart_rel:
        out += ["", "## Chart", "", f"![latency and memory against N]({chart_rel})"]
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Read bench JSON records and write a Markdown report (key figures per "
        "scenario, engine vs Faye, the command of each) and a PNG chart (latency percentiles "
        "and RSS per client against N, engine vs Faye).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "records",
        nargs="*",
        type=Path,
        help="record files (default: every *.json in --results-dir)",
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        default=default_results_dir(),
        help="where records are read from when none are named (bench/results/ in a checkout)",
    )
    p.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="Markdown output (default: <results-dir>/REPORT.md)",
    )
    p.add_argument(
        "--chart", type=Path, default=None, help="PNG output (default: <results-dir>/report.png)"
    )
    p.add_argument("--no-chart", action="store_true", help="write no PNG")
    p.add_argument(
        "--all",
        action="store_true",
        help="every record (default: the newest of each configuration)",
    )
    p.add_argument(
        "--print", dest="print_md", action="store_true", help="also print the Markdown to stdout"
    )
    p.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also put the report into this file, between the markers "
        f"{README_BEGIN!r} and {README_END!r} (headings one level down)",
    )
    return p


README_BEGIN = "<!-- bench/report: begin -->"
README_END = "<!-- bench/report: end -->"


def into_readme(readme: Path, report: str, chart_rel: str | None, chart: Path) -> None:
    """Replace the file's generated performance section with `report`."""
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"report: {readme} has no {README_BEGIN} ... {README_END} section")
    body = report.split("\n", 1)[1]  # drop the report's own title
    body = "\n".join("#" + line if line.startswith("##") else line for line in body.splitlines())
    if chart_rel:  # the chart path relative to that file, not to REPORT.md
        target = os.path.relpath(chart.resolve(), readme.resolve().parent)
        body = body.replace(f"]({chart_rel})", f"]({target})")
    readme.write_text(text[: start + len(README_BEGIN)] + "\n" + body.strip() + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = args.records or [Path(p) for p in sorted(glob.glob(str(args.results_dir / "*.json")))]
    records, problems = load(paths)
    for pr in problems:
        sys.stderr.write(f"report: skipped {pr}\n")
    if not records:
        sys.stderr.write(f"report: no records ({args.results_dir}/*.json or the files given)\n")
        return 1
    if not args.all:
        records = newest_per_config(records)
    md_path = args.markdown or (args.results_dir / "REPORT.md")
    png_path = args.chart or (args.results_dir / "report.png")
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["scenario"], []).append(r)
    wrote_chart = False if args.no_chart else chart(by, png_path)
    chart_rel = None
    if wrote_chart:
        chart_rel = os.path.relpath(png_path.resolve(), md_path.resolve().parent)
    sources = f"`{_rel(args.results_dir)}`" if not args.records else f"{len(args.records)} file(s)"
    text = markdown(records, chart_rel, sources)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    if args.print_md:
        print(text)
    if args.readme is not None:
        into_readme(args.readme, text, chart_rel, png_path)
        print(f"readme: {args.readme}")
    print(f"markdown: {md_path}")
    print(f"chart: {png_path}" if wrote_chart else "chart: none (no idle or fanout records)")
    return 0


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(p)


if __name__ == "__main__":
    sys.exit(main())
