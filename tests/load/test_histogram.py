"""engine.load.histogram: percentiles against the exact ones of random data,
the wire form, merging and snapshot differences."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from harness import ROOT, ServerProcess
from hypothesis import given
from hypothesis import strategies as st

from engine.load.histogram import (
    HIGHEST_US,
    Latency,
    SignedLatency,
    merge_field,
    minus,
    nearest_rank,
    summary_with_hist,
)

HOUR_NS = HIGHEST_US * 1000
QS = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))


def exact_ms(values_ns: list[int], q: float) -> float:
    """Nearest-rank quantile of the values as recorded (rounded to µs)."""
    s = sorted(round_us(v) for v in values_ns)
    return s[nearest_rank(len(s), q) - 1] / 1000.0


def round_us(ns: int) -> int:
    return (ns + 500) // 1000 if ns >= 0 else -((-ns + 500) // 1000)


def close(reported: float, exact: float) -> bool:
    """Within 3 significant digits (HdrHistogram's sub-buckets are 1/1024
    of their power of two wide) and never below the exact value."""
    return exact - 1e-9 <= reported <= exact + abs(exact) / 1000.0 + 1e-9


durations = st.lists(st.integers(min_value=0, max_value=HOUR_NS), min_size=1, max_size=300)
signed = st.lists(st.integers(min_value=-HOUR_NS, max_value=HOUR_NS), min_size=1, max_size=300)


@given(durations)
def test_latency_percentiles_match_exact_ones(values: list[int]) -> None:
    h = Latency()
    for v in values:
        h.record_ns(v)
    s = h.summary()
    assert s["count"] == len(values)
    for key, q in QS:
        assert close(s[key], exact_ms(values, q)), (key, s[key], exact_ms(values, q))
    assert close(s["max"], max(round_us(v) for v in values) / 1000.0)
    # min: the lowest value of its bucket, within the resolution, never above.
    lo = min(round_us(v) for v in values) / 1000.0
    assert lo - lo / 1000.0 - 1e-9 <= s["min"] <= lo + 1e-9
    mean = sum(round_us(v) for v in values) / len(values) / 1000.0
    assert s["mean"] == pytest.approx(mean, rel=1e-3, abs=1e-3)
    assert h.clamped == 0


@given(signed)
def test_signed_percentiles_over_both_signs_match_exact_ones(values: list[int]) -> None:
    h = SignedLatency()
    for v in values:
        h.record_ns(v)
    s = h.summary()
    assert s["count"] == len(values)
    assert s["early"] == sum(1 for v in values if v < 0)
    for key, q in (*QS, ("min", 0.0), ("max", 1.0)):
        exact = exact_ms(values, q)
        assert close(s[key], exact), (key, s[key], exact)
    # The wire form keeps every percentile.
    again = SignedLatency.decode(h.encode()).summary()
    assert again == s


@given(durations, durations)
def test_merge_through_the_wire_is_the_histogram_of_the_union(a: list[int], b: list[int]) -> None:
    ha, hb, union = Latency(), Latency(), Latency()
    for v in a:
        ha.record_ns(v)
        union.record_ns(v)
    for v in b:
        hb.record_ns(v)
        union.record_ns(v)
    merged = Latency.decode(ha.encode()).merge(Latency.decode(hb.encode()))
    assert merged.summary() == union.summary()
    # Snapshot difference: the union minus the first part is the second part.
    assert merged.minus(ha).summary() == hb.summary()


@given(st.lists(st.integers(min_value=-2 * HOUR_NS, max_value=2 * HOUR_NS), max_size=200))
def test_recording_in_bulk_equals_recording_one_by_one(values: list[int]) -> None:
    one, bulk = Latency(), Latency()
    for v in values:
        one.record_ns(v)
    bulk.record_many_ns(values)
    assert bulk.summary() == one.summary() and bulk.clamped == one.clamped


def test_stats_lines_merge_by_name_and_missing_ones_count_as_empty() -> None:
    fan, late = Latency(), SignedLatency()
    for ms in (1, 2, 3):
        fan.record_ns(ms * 1_000_000)
    late.record_ns(-1_500_000_000)
    late.record_ns(20_000_000)
    line = {"hist_total": {"fanout": fan.encode(), "lateness": late.encode()}}
    merged = merge_field([line, {}, None, {"hist_total": {"fanout": fan.encode()}}], "hist_total")
    assert set(merged) == {"fanout", "lateness"}
    assert merged["fanout"].summary()["count"] == 6
    assert merged["fanout"].summary()["p50"] == 2.0
    assert merged["lateness"].summary()["p50"] == pytest.approx(-1500, rel=1e-3)
    assert merged["lateness"].summary()["max"] == pytest.approx(20.0, rel=1e-3)
    assert merge_field([{"hist": {}}], "hist") == {}
    with pytest.raises(ValueError, match="signed in one line"):
        merge_field([line, {"hist_total": {"lateness": fan.encode()}}], "hist_total")


def test_out_of_range_values_are_clamped_and_counted() -> None:
    h = Latency()
    h.record_ns(-5)  # within the rounding of 0: not clamped
    h.record_ns(-5000)  # clock skew: recorded as 0
    h.record_ns(2 * HOUR_NS)  # past the range: recorded as one hour
    h.record_ns(1_000_000)
    assert h.clamped == 2
    s = summary_with_hist(h)
    assert s["count"] == 4 and s["clamped"] == 2
    assert summary_with_hist(Latency())["clamped"] == 0
    assert s["min"] == 0.0 and s["max"] == pytest.approx(HIGHEST_US / 1000, rel=1e-3)
    assert Latency.decode(s["hist"]).count == 4
    # The clamped counts travel beside the histograms (hist_clamped).
    line = {"hist_total": {"fanout": h.encode()}, "hist_clamped": {"fanout": 2}}
    assert merge_field([line, line], "hist_total")["fanout"].clamped == 4


def test_empty_histograms_and_bad_input() -> None:
    s = Latency().summary()
    assert s["count"] == 0 and all(s[k] is None for k in ("min", "mean", "p50", "p999", "max"))
    assert SignedLatency().summary()["p99"] is None
    assert Latency().percentile_ms(0.5) is None
    assert summary_with_hist(None, signed=True)["count"] == 0
    assert minus(None, Latency()) is None
    with pytest.raises(ValueError, match="not an encoded HdrHistogram"):
        Latency.decode("not base64 at all")
    with pytest.raises(ValueError, match="signed histogram"):
        SignedLatency.decode({"late": Latency().encode()})
    big, small = Latency(), Latency()
    small.record_ns(5_000_000)
    with pytest.raises(ValueError, match="not an earlier snapshot"):
        big.minus(small)


def test_nearest_rank() -> None:
    assert nearest_rank(100, 0.99) == 99
    assert nearest_rank(100, 0.999) == 100
    assert nearest_rank(30, 0.1) == 3
    assert nearest_rank(1, 0.0) == 1
    assert nearest_rank(7, 1.0) == 7


@pytest.mark.timeout(60)
@pytest.mark.server_args("--timeout", "1000")
def test_generator_lines_carry_histograms(server: ServerProcess) -> None:
    """A real generator against a real server: the per-line histograms add
    up to the whole-run ones of its final line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "engine.load.client", "--url",
         f"http://127.0.0.1:{server.port}/cometd", "--clients", "4", "--duration", "3",
         "--report-interval", "0.5", "--max-attempts", "1"],
        capture_output=True, text=True, timeout=30, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    final = lines[-1]
    assert final.get("final") and final["connected"] == 4, final
    assert all("hist_total" not in d for d in lines[:-1])  # only final (and tagged) lines
    deltas = merge_field(lines, "hist")
    totals = merge_field([final], "hist_total")
    assert set(deltas) == set(totals) == {"setup", "lateness"}
    for name in ("setup", "lateness"):
        assert deltas[name].summary() == totals[name].summary(), name
    assert totals["setup"].count == 4
    assert totals["lateness"].count == final["heartbeats"] > 0
    assert final["latency_at"] == "arrival" and final["hist_clamped"] == {}
