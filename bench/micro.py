#!/usr/bin/env python3
"""Micro benchmarks: the compiled hot paths against their pure-Python twins.

The engine ships each compiled module with a readable pure-Python twin (the
test oracle). This measures both, on the same inputs, in one process:

* channels: ``validate_channel``; ``ChannelTrie.match`` vs ``PyChannelTrie.match``
  for one channel against N subscriptions (a mix of exact, ``/*`` and ``/**``
  patterns); and the compiled trie alone at growing N (1k ... 1M) and growing
  channel depth, to show that a match costs O(depth), not O(subscriptions);
* batch: ``splice_array``, ``splice_http``, ``splice_ws`` of k encoded messages;
* wsframe: ``FrameParser.feed`` of masked client frames, ``encode_frame``,
  ``mask_payload``.

Every figure is the median of ``--repeats`` repetitions, each a loop calibrated
to last about ``--target`` seconds, with the garbage collector off (timeit's
way). Times include the Python call overhead, as the server pays it. The
ratio is ``pure time / compiled time`` (how many times faster the compiled one is).

Before timing, both twins are run on the same inputs and their results compared;
a disagreement stops the run (exit 1).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.load.procs import read_rss_bytes
from engine.load.records import (
    add_results_dir_arg,
    format_comparison,
    format_table,
    human_bytes,
    log,
    scenario_record,
    write_record,
)

SCENARIO = "micro"


def _oracle(name: str) -> Any:
    """The plain-Python twin of a compiled module. The twins are test oracles
    in tests/oracles/ (tests/ is not an importable package): loaded by path."""
    path = Path(__file__).resolve().parent.parent / "tests" / "oracles" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"oracles.{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- timing


def _calibrate(timer: timeit.Timer, target: float) -> int:
    """Loop count for which one repetition lasts about ``target`` seconds."""
    number = 1
    # bounded: at most ~30 doublings, each run at most ~target/4 s
    for _ in range(40):
        t = timer.timeit(number)
        if t >= target / 4 or number >= 1 << 30:
            break
        number *= 2
    return max(1, int(number * target / max(t, 1e-9)))


def measure(
    stmt: str, ns: dict[str, Any], per_loop: int, repeats: int, target: float
) -> dict[str, Any]:
    """Median (and spread) of ``repeats`` timings of ``stmt``, in ns per operation.

    ``stmt`` does ``per_loop`` operations each time it runs.
    """
    timer = timeit.Timer(stmt, globals=ns)
    number = _calibrate(timer, target)
    runs = [timer.timeit(number) / (number * per_loop) * 1e9 for _ in range(repeats)]
    return {
        "ns": round(statistics.median(runs), 2),
        "min_ns": round(min(runs), 2),
        "max_ns": round(max(runs), 2),
        "ops": number * per_loop,
    }


def twin(
    name: str,
    stmt: str,
    compiled_ns: dict[str, Any],
    pure_ns: dict[str, Any],
    per_loop: int,
    args: argparse.Namespace,
    **extra: Any,
) -> dict[str, Any]:
    c = measure(stmt, compiled_ns, per_loop, args.repeats, args.target)
    p = measure(stmt, pure_ns, per_loop, args.repeats, args.target)
    row = {
        "name": name,
        "compiled_ns": c["ns"],
        "pure_ns": p["ns"],
        "ratio": round(p["ns"] / c["ns"], 2) if c["ns"] > 0 else None,
        "compiled": c,
        "pure": p,
        **extra,
    }
    _progress(
        args, f"  {name}: compiled {c['ns']:,.0f} ns, pure {p['ns']:,.0f} ns, x{row['ratio']}"
    )
    return row


def _progress(args: argparse.Namespace, text: str) -> None:
    log(not args.quiet, text)


class Mismatch(Exception):
    """The compiled module and its twin disagree."""


# --------------------------------------------------------------------------- channels

EXCHANGES = 16
TOPICS = ("inbox", "presence", "alerts", "feed")
#: Subscriptions present at every size: a monitor on everything and a few
#: per-family wildcards, so every query matches a few of them.
FIXED = (
    ("/**", "monitor-all"),
    ("/stocks/**", "monitor-stocks-1"),
    ("/stocks/**", "monitor-stocks-2"),
    ("/chat/*", "monitor-chat"),
)


def _families(n: int) -> tuple[int, int, int, int]:
    """Entity counts that grow with n, so a pattern has ~1 subscriber on average."""
    return (
        max(16, n // 3),  # stock symbols
        max(16, n // 8),  # users
        max(8, n // 10),  # chat rooms
        max(4, n // 40),  # tenants
    )


def random_channel(rng: random.Random, n: int) -> str:
    """A concrete channel of the namespace sized for n subscriptions."""
    symbols, users, rooms, tenants = _families(n)
    r = rng.random()
    if r < 0.4:
        return f"/stocks/x{rng.randrange(EXCHANGES)}/s{rng.randrange(symbols)}"
    if r < 0.7:
        return f"/users/u{rng.randrange(users)}/{rng.choice(TOPICS)}"
    if r < 0.9:
        return f"/chat/r{rng.randrange(rooms)}"
    return f"/app/a{rng.randrange(4)}/t{rng.randrange(tenants)}/events/e{rng.randrange(64)}"


def random_pattern(rng: random.Random, n: int) -> str:
    """80% exact channels, 15% ``/*`` and 5% ``/**`` patterns, per-entity."""
    r = rng.random()
    if r < 0.80:
        return random_channel(rng, n)
    symbols, users, rooms, tenants = _families(n)
    if r < 0.95:
        s = rng.random()
        if s < 0.5:
            return f"/users/u{rng.randrange(users)}/*"
        if s < 0.8:
            return f"/app/a{rng.randrange(4)}/t{rng.randrange(tenants)}/events/*"
        return f"/stocks/x{rng.randrange(EXCHANGES)}/s{rng.randrange(symbols)}/*"
    if rng.random() < 0.6:
        return f"/users/u{rng.randrange(users)}/**"
    return f"/app/a{rng.randrange(4)}/t{rng.randrange(tenants)}/**"


def subscriptions(n: int, seed: int) -> Any:
    """n (pattern, subscriber) pairs, generated lazily (1M pairs are not kept)."""
    rng = random.Random(seed)
    yield from FIXED
    for i in range(max(0, n - len(FIXED))):
        yield random_pattern(rng, n), i


def queries(n: int, count: int, seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    return [random_channel(rng, n) for _ in range(count)]


def build(cls: type, n: int, seed: int) -> tuple[Any, float]:
    trie = cls()
    add = trie.add
    gc.disable()
    try:
        t = time.perf_counter()
        for pattern, sub in subscriptions(n, seed):
            add(pattern, sub)
        elapsed = time.perf_counter() - t
    finally:
        gc.enable()
    return trie, elapsed


def bench_validate(args: argparse.Namespace, c: Any, p: Any) -> dict[str, Any]:
    rng = random.Random(args.seed)
    names: list[Any] = [random_channel(rng, 100_000) for _ in range(600)]
    names += [random_pattern(rng, 100_000) for _ in range(300)]
    names += ["/a//b", "/a/*/b", "no/slash", "/a/b c/**/d", "/bad\u00e9", "/a/{x}/*", "", "/"] * 12
    names += [None, 42]
    for name in names:
        if c.validate_channel(name) != p.validate_channel(name):
            raise Mismatch(f"validate_channel({name!r}) differs")
    return twin(
        "validate_channel",
        "for a in names: f(a)",
        {"names": names, "f": c.validate_channel},
        {"names": names, "f": p.validate_channel},
        len(names),
        args,
        inputs=len(names),
    )


def bench_channels(args: argparse.Namespace) -> dict[str, Any]:
    p = _oracle("channels")

    import engine.routing._channels as c

    out: dict[str, Any] = {"validate": bench_validate(args, c, p), "match": [], "scaling": []}

    # Compiled vs pure at the comparison sizes.
    for n in args.compare:
        _progress(args, f"channels: building both tries with {n:,} subscriptions")
        ct, c_build = build(c.ChannelTrie, n, args.seed)
        pt, p_build = build(p.PyChannelTrie, n, args.seed)
        qs = queries(n, args.queries, args.seed)
        matched = 0
        for q in qs:
            a, b = ct.match(q), pt.match(q)
            if len(a) != len(b) or set(a) != set(b):
                raise Mismatch(f"match({q!r}) differs at {n} subscriptions")
            matched += len(a)
        if len(ct) != len(pt):
            raise Mismatch(f"pattern counts differ at {n} subscriptions")
        row = twin(
            f"match, {n:,} subscriptions",
            "for a in qs: f(a)",
            {"qs": qs, "f": ct.match},
            {"qs": qs, "f": pt.match},
            len(qs),
            args,
            subscriptions=n,
            patterns=len(ct),
            mean_matches=round(matched / len(qs), 2),
            build_ns_per_add={
                "compiled": round(c_build / n * 1e9, 1),
                "pure": round(p_build / n * 1e9, 1),
            },
        )
        out["match"].append(row)
        del ct, pt
        gc.collect()

    # The compiled trie alone at growing N: the time per match should stay flat.
    for n in args.scaling:
        _progress(args, f"channels: compiled trie with {n:,} subscriptions")
        gc.collect()
        rss0 = read_rss_bytes(os.getpid()) or 0
        ct, c_build = build(c.ChannelTrie, n, args.seed)
        rss1 = read_rss_bytes(os.getpid()) or 0
        qs = queries(n, args.queries, args.seed)
        matched = sum(len(ct.match(q)) for q in qs)
        m = measure(
            "for a in qs: f(a)", {"qs": qs, "f": ct.match}, len(qs), args.repeats, args.target
        )
        out["scaling"].append(
            {
                "subscriptions": n,
                "patterns": len(ct),
                "match_ns": m["ns"],
                "min_ns": m["min_ns"],
                "max_ns": m["max_ns"],
                "mean_matches": round(matched / len(qs), 2),
                "build_ns_per_add": round(c_build / n * 1e9, 1),
                "rss_per_subscription_bytes": round((rss1 - rss0) / n, 1) if n else None,
            }
        )
        _progress(args, f"  {n:,}: {m['ns']:,.0f} ns per match")
        del ct
        gc.collect()

    # Depth: one trie holding chains of every depth; match cost against depth.
    n = args.depth_subscriptions
    _progress(args, f"channels: depth series in a trie of {n:,} subscriptions")
    ct, _ = build(c.ChannelTrie, n, args.seed)
    rng = random.Random(args.seed + 7)
    depth_rows = []
    for depth in args.depths:
        chains = []
        for k in range(args.queries):
            segs = [f"d{depth}k{k}"] + [f"n{rng.randrange(50)}" for _ in range(depth - 1)]
            chains.append("/" + "/".join(segs))
        for k, ch in enumerate(chains):
            ct.add(ch, ("deep", depth, k))
            parent = ch.rsplit("/", 1)[0]
            if parent:
                ct.add(parent + "/*", ("star", depth, k))
        matched = sum(len(ct.match(q)) for q in chains)
        m = measure(
            "for a in qs: f(a)",
            {"qs": chains, "f": ct.match},
            len(chains),
            args.repeats,
            args.target,
        )
        depth_rows.append(
            {
                "depth": depth,
                "match_ns": m["ns"],
                "mean_matches": round(matched / len(chains), 2),
            }
        )
        _progress(args, f"  depth {depth}: {m['ns']:,.0f} ns per match")
    out["depth"] = {"subscriptions": n, "rows": depth_rows}
    del ct
    gc.collect()

    sc = out["scaling"]
    if len(sc) >= 2:
        lo, hi = sc[0], sc[-1]
        out["scaling_summary"] = {
            "from": lo["subscriptions"],
            "to": hi["subscriptions"],
            "subscriptions_factor": hi["subscriptions"] / lo["subscriptions"],
            "match_time_factor": round(hi["match_ns"] / lo["match_ns"], 2),
        }
    return out


# --------------------------------------------------------------------------- batch


def encoded_messages(k: int, seed: int) -> list[bytes]:
    import orjson

    rng = random.Random(seed)
    return [
        orjson.dumps(
            {
                "channel": f"/stocks/x{rng.randrange(16)}/s{rng.randrange(5000)}",
                "data": {"price": round(rng.uniform(1, 500), 2), "seq": i, "t": 1_700_000_000},
                "id": str(rng.randrange(1 << 30)),
            }
        )
        for i in range(k)
    ]


def bench_batch(args: argparse.Namespace) -> list[dict[str, Any]]:
    p = _oracle("batch")

    import engine.delivery._batch as c
    from engine.transport._http import HEAD_OK

    rows = []
    for k in args.batch_sizes:
        parts = encoded_messages(k, args.seed + k)
        for fname in ("splice_array", "splice_http", "splice_ws"):
            fc, fp = getattr(c, fname), getattr(p, fname)
            if fname == "splice_http":
                stmt = "f(h, a)"
                if fc(HEAD_OK, parts) != fp(HEAD_OK, parts):
                    raise Mismatch(f"{fname} differs for {k} parts")
            else:
                stmt = "f(a)"
                if fc(parts) != fp(parts):
                    raise Mismatch(f"{fname} differs for {k} parts")
            rows.append(
                twin(
                    f"{fname}, {k} message{'s' if k != 1 else ''}",
                    stmt,
                    {"f": fc, "a": parts, "h": HEAD_OK},
                    {"f": fp, "a": parts, "h": HEAD_OK},
                    1,
                    args,
                    function=fname,
                    messages=k,
                    bytes=sum(map(len, parts)),
                )
            )
    return rows


# --------------------------------------------------------------------------- wsframe


def text_payload(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    alphabet = b'abcdefghijklmnopqrstuvwxyz0123456789{}":,[]'
    return bytes(rng.choice(alphabet) for _ in range(size))


def bench_wsframe(args: argparse.Namespace) -> list[dict[str, Any]]:
    p = _oracle("wsframe")

    import engine.transport._wsframe as c

    rows = []
    mask = b"\x1f\x8b\x3c\x77"
    for size in args.frame_sizes:
        payload = text_payload(size, args.seed + size)
        count = max(1, min(64, 65536 // max(size, 1)))
        frame = p.encode_client_frame(p.OP_TEXT, payload, mask)
        stream = frame * count
        cp, pp = c.FrameParser(1 << 24), p.FrameParser(1 << 24)
        ec, ep = cp.feed(stream), pp.feed(stream)
        if ec != ep or len(ec) != count:
            raise Mismatch(f"FrameParser.feed differs for {count} x {size} B frames")
        rows.append(
            twin(
                f"FrameParser.feed, {count} x {size} B masked",
                "f(a)",
                {"f": cp.feed, "a": stream},
                {"f": pp.feed, "a": stream},
                1,
                args,
                function="FrameParser.feed",
                payload_bytes=size,
                frames=count,
            )
        )
        if c.encode_frame(c.OP_TEXT, payload) != p.encode_frame(p.OP_TEXT, payload):
            raise Mismatch(f"encode_frame differs for {size} B")
        rows.append(
            twin(
                f"encode_frame, {size} B",
                "f(1, a)",
                {"f": c.encode_frame, "a": payload},
                {"f": p.encode_frame, "a": payload},
                1,
                args,
                function="encode_frame",
                payload_bytes=size,
            )
        )
        if c.mask_payload(payload, mask) != p.mask_payload(payload, mask):
            raise Mismatch(f"mask_payload differs for {size} B")
        rows.append(
            twin(
                f"mask_payload, {size} B",
                "f(a, m)",
                {"f": c.mask_payload, "a": payload, "m": mask},
                {"f": p.mask_payload, "a": payload, "m": mask},
                1,
                args,
                function="mask_payload",
                payload_bytes=size,
            )
        )
    return rows


# --------------------------------------------------------------------------- output


def _ns(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:,.2f} ms"
    if v >= 1e4:
        return f"{v / 1e3:,.1f} us"
    return f"{v:,.0f} ns"


def twin_table(rows: Sequence[dict[str, Any]], title: str) -> str:
    body = [
        (r["name"], _ns(r["compiled_ns"]), _ns(r["pure_ns"]), f"{r['ratio']:.1f}x") for r in rows
    ]
    return format_comparison(body, names=("compiled", "pure", "pure/compiled"), title=title)


def report(record: dict[str, Any]) -> str:
    r = record["results"]
    parts = []
    ch = r.get("channels")
    if ch:
        parts.append(twin_table([ch["validate"], *ch["match"]], "channels (per call, median)"))
        if ch["scaling"]:
            rows = [
                (
                    f"{s['subscriptions']:,} subscriptions",
                    f"{_ns(s['match_ns'])}, {s['mean_matches']:.1f} matches, "
                    f"{human_bytes(s['rss_per_subscription_bytes'])}/sub",
                )
                for s in ch["scaling"]
            ]
            summ = ch.get("scaling_summary")
            if summ:
                rows.append(
                    (
                        "time factor / size factor",
                        f"{summ['match_time_factor']:.2f} / {summ['subscriptions_factor']:,.0f}",
                    )
                )
            parts.append(format_table(rows, "compiled ChannelTrie.match against N (O(depth))"))
        d = ch.get("depth")
        if d and d["rows"]:
            rows = [
                (f"depth {x['depth']}", f"{_ns(x['match_ns'])}, {x['mean_matches']:.1f} matches")
                for x in d["rows"]
            ]
            parts.append(
                format_table(
                    rows,
                    f"compiled match against channel depth ({d['subscriptions']:,} subscriptions)",
                )
            )
    if r.get("batch"):
        parts.append(twin_table(r["batch"], "batch (per call, median)"))
    if r.get("wsframe"):
        parts.append(twin_table(r["wsframe"], "wsframe (per call, median)"))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- main


def _sizes(text: str) -> list[int]:
    out = []
    for word in text.split(","):
        word = word.strip().lower().replace("_", "")
        if not word:
            continue
        mult = 1
        if word.endswith("k"):
            mult, word = 1000, word[:-1]
        elif word.endswith("m"):
            mult, word = 1_000_000, word[:-1]
        out.append(int(float(word) * mult))
    if any(v <= 0 for v in out):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="micro.py",
        description="Compiled vs pure-Python twins: channel matching (and its O(depth) "
        "scaling), batch splicing, WebSocket framing. Prints tables and writes a JSON record.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--repeats", type=int, default=7, help="repetitions per figure (median)")
    p.add_argument("--target", type=float, default=0.1, help="seconds per repetition, about")
    p.add_argument(
        "--compare",
        type=_sizes,
        default=_sizes("10k,100k"),
        help="subscription counts for compiled vs pure matching",
    )
    p.add_argument(
        "--scaling",
        type=_sizes,
        default=_sizes("1k,10k,100k,1m"),
        help="subscription counts for the compiled trie alone (time per match)",
    )
    p.add_argument(
        "--depths",
        type=_sizes,
        default=_sizes("2,4,8,16"),
        help="channel depths for the depth series",
    )
    p.add_argument(
        "--depth-subscriptions",
        type=int,
        default=100_000,
        help="background subscriptions of the depth series",
    )
    p.add_argument("--queries", type=int, default=256, help="distinct channels matched per loop")
    p.add_argument(
        "--batch-sizes",
        type=_sizes,
        default=_sizes("1,10,100"),
        help="messages per spliced response",
    )
    p.add_argument(
        "--frame-sizes",
        type=_sizes,
        default=_sizes("64,1024,16384"),
        help="WebSocket payload sizes in bytes",
    )
    p.add_argument(
        "--only",
        choices=["channels", "batch", "wsframe"],
        action="append",
        help="run only these groups (repeatable)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the generated inputs")
    p.add_argument(
        "--max-subscriptions",
        type=int,
        default=2_000_000,
        help="refuse larger sizes (memory bound: ~0.45 KiB per subscription)",
    )
    add_results_dir_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--note", default="", help="free text stored in the record")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.target <= 0 or args.queries < 1:
        raise SystemExit("micro.py: --repeats, --target and --queries must be positive")
    biggest = max([*args.compare, *args.scaling, args.depth_subscriptions])
    if biggest > args.max_subscriptions:
        raise SystemExit(f"micro.py: {biggest:,} subscriptions > --max-subscriptions")
    groups = args.only or ["channels", "batch", "wsframe"]
    started = time.time()
    t0 = time.monotonic()
    results: dict[str, Any] = {}
    runners: dict[str, Callable[[argparse.Namespace], Any]] = {
        "channels": bench_channels,
        "batch": bench_batch,
        "wsframe": bench_wsframe,
    }
    try:
        for g in groups:
            _progress(args, f"{g} ...")
            results[g] = runners[g](args)
    except Mismatch as exc:
        sys.stderr.write(f"micro.py: compiled and pure twins disagree: {exc}\n")
        return 1
    results["wall_s"] = round(time.monotonic() - t0, 2)
    ch = results.get("channels")
    if ch:
        at = {row["subscriptions"]: row["ratio"] for row in ch["match"]}
        results["summary"] = {
            "match_ratio_by_subscriptions": at,
            "match_ratio_at_100k": at.get(100_000),
            "match_time_factor": (ch.get("scaling_summary") or {}).get("match_time_factor"),
        }
    parameters = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    record = scenario_record(
        SCENARIO,
        started,
        argv,
        __file__,
        {"parameters": parameters | {"groups": groups}, "results": results},
    )
    path = write_record(args.results_dir, f"{SCENARIO}-{record['timestamp']}", record)
    print(report(record))
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
