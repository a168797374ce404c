"""Histograms the load generators fill and the scenarios merge."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

# --------------------------------------------------------------------------- histograms

#: Buckets per decade of the signed log histogram (edges 10^(k/HIST_PER_DECADE)
#: ms apart, about 6 %); |values| up to 1 ms share bucket 0.
HIST_PER_DECADE = 40
#: Largest bucket index (10^7 ms, beyond any run here); larger values clip.
HIST_MAX_BUCKET = 7 * HIST_PER_DECADE


def hist_bucket(ms: float) -> int:
    """Bucket of ``ms``: 0 for -1 < ms <= 1; b > 0 for 10^((b-1)/D) < ms <= 10^(b/D);
    -b for the mirror image below -1 (D = HIST_PER_DECADE)."""
    a = ms if ms >= 0 else -ms
    if a <= 1.0:
        return 0
    b = min(math.ceil(math.log10(a) * HIST_PER_DECADE - 1e-9), HIST_MAX_BUCKET)
    b = max(b, 1)
    return b if ms > 0 else -b


def hist_edges(bucket: int) -> tuple[float, float]:
    """(low, high) in ms of a bucket: low < value <= high (mirrored below 0)."""
    if bucket == 0:
        return (-1.0, 1.0)
    b = abs(bucket)
    lo, hi = 10.0 ** ((b - 1) / HIST_PER_DECADE), 10.0 ** (b / HIST_PER_DECADE)
    return (lo, hi) if bucket > 0 else (-hi, -lo)


def hist_add(hist: dict[int, int], ms: float) -> None:
    b = hist_bucket(ms)
    hist[b] = hist.get(b, 0) + 1


def _hist_items(hist: dict[Any, int] | None) -> Iterable[tuple[int, int]]:
    """Items of a histogram whose keys may be strings (it went through JSON)."""
    for k, v in (hist or {}).items():
        yield int(k), int(v)


def hist_merge(*hists: dict[Any, int] | None) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for k, v in _hist_items(h):
            out[k] = out.get(k, 0) + v
    return out


def hist_sub(later: dict[Any, int] | None, earlier: dict[Any, int] | None) -> dict[int, int]:
    """What was added between two snapshots of one (merged) histogram."""
    out = hist_merge(later)
    for k, v in _hist_items(earlier):
        out[k] = out.get(k, 0) - v
    return {k: v for k, v in out.items() if v > 0}


def hist_count(hist: dict[Any, int] | None) -> int:
    return sum(v for _, v in _hist_items(hist))


def hist_percentile(hist: dict[Any, int] | None, q: float) -> float | None:
    """Upper edge (ms) of the bucket holding the q-quantile; None when empty."""
    items = sorted(_hist_items(hist))
    total = sum(v for _, v in items)
    if not total:
        return None
    rank = q * total
    seen = 0
    for k, v in items:
        seen += v
        if seen >= rank:
            return hist_edges(k)[1]
    return hist_edges(items[-1][0])[1]


def percentile_ms(hist: list[int], edges_ms: Sequence[float], q: float) -> float | None:
    """Upper edge (ms) of the bucket holding the q-quantile of a histogram
    counted over fixed bucket edges (the last bucket is +inf); None when empty."""
    total = sum(hist)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return float(edges_ms[i]) if i < len(edges_ms) else math.inf
    return math.inf
