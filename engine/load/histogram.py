"""The one latency histogram of the load tool: HdrHistogram, carried as text.

Every duration the tool measures (fan-out delivery, publish ack, canary
delivery, client setup, heartbeat lateness, churn's handshakes and cycles) is
recorded into a :class:`Latency`: a thin typed wrapper over
``hdrh.histogram.HdrHistogram`` (package ``hdrhistogram``).

Why HdrHistogram and these settings:

- Fixed memory (about 190 KB of counters) however many values, O(1) to
  record, and exact merging: a generator no longer keeps every value in
  memory (the old int64 latency files) nor rounds to coarse buckets (the old
  ~6 % log buckets and fixed-edge lists). One format for every scenario.
- 1 µs .. 1 h at 3 significant digits: any percentile is within 0.1 % of the
  exact value of the recorded data (plus the 1 µs unit). Values are recorded
  in ns rounded to the nearest µs; the tool cares about ms, and µs keeps the
  counts array small. Values outside the range are clamped to its ends and
  counted in :attr:`Latency.clamped` (nothing is dropped silently).
- ``encode()`` is HdrHistogram's standard compressed, base64 form (a few
  hundred bytes for a typical run; ``HISTFAAA...``), readable by every
  HdrHistogram implementation, so histograms travel in the generators' JSON
  lines and are stored in the records as they are.
- Percentiles use the nearest-rank definition the scenarios always used
  (the value at rank ceil(q x N) of the sorted values), reported as the
  highest value equivalent to it at this resolution: a percentile is never
  below the truth by more than the µs rounding.
- The library rather than an own histogram: ``hdrh`` is pure Python, about
  1.5 µs per ``record_value``; the one hot path (every fan-out delivery)
  appends to an ``array`` and records in bulk at the next stats line
  (:meth:`Latency.record_many_ns`: one update per distinct µs value, about
  0.2 µs a value), so speed gave no reason to write and test our own.

Heartbeat lateness is signed (the engine answers held connects up to its
timeout jitter early on purpose, so most values are negative). HdrHistogram
records only values >= 0; :class:`SignedLatency` keeps two: ``late`` (values
>= 0) and ``early`` (the magnitudes of the negative ones). The union sorted
ascending is the early ones by decreasing magnitude, then the late ones by
increasing value, so the value at rank r is ``-early[early.count - r + 1]``
for r <= early.count and ``late[r - early.count]`` above: exact ranks over
the union, the same resolution on both sides of 0.

Wire format (the generators' stats lines, see ``engine/load/client.py``):

- ``"hist"``: the histograms of the values recorded since the previous stats
  line of that process (a live display shows *current* percentiles; a chart
  plots them over time), ``{name: encoded}``;
- ``"hist_total"``: the histograms of the whole run so far, in the final line
  and in every tagged line (``report TAG`` on stdin: the marks a scenario
  takes, e.g. the start and end of a hold, whose difference is
  :meth:`Latency.minus`);
- ``"hist_sample"``: ``{name: stride}`` when a line's ``fanout`` /
  ``fanout_read`` is an evenly spread sample (every stride-th value; a
  second of a large fan-out is too many values to record in Python every
  second: the whole-run histograms are recorded at the tagged and final
  lines), so its count is the sample's;
- ``"hist_clamped"``: ``{name: count}`` of values clamped so far (only names
  with some);
- ``"latency_at"``: ``"arrival"`` (fan-out timed when its bytes reached the
  socket: the kernel's receive stamp, ``stamped.py``) or ``"read"`` (over TLS:
  when the decrypted bytes reached the connection).

A name whose value is a string is a :class:`Latency` (``encode()``), one whose
value is ``{"late": ..., "early": ...}`` a :class:`SignedLatency`; a name that
is missing had no value in that interval. Names (:data:`NAMES`):
``fanout`` (publish stamp -> arrival), ``fanout_read`` (publish stamp -> read
by the generator: adds its own queue), ``setup`` (a client's start -> its
first successful connect), ``lateness`` (signed: reply - send - advised
timeout of held connects answered without events).

Records store :func:`summary_with_hist` (count, min, mean, p50, p90, p99,
p999, max in ms, ``clamped``, for signed ones ``early`` and ``late`` counts)
under the keys the report reads (``latency_ms``, ``read_latency_ms``,
``setup_latency_ms``, ``heartbeat_lateness_ms.hold``/``run``,
``handshake_ms``, ``ack_ms``), with the encoded histogram beside them under
``"hist"``; the scenarios' once-a-second samples carry :func:`current`
(count, p50, p99 of the values since the previous sample).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

#: Histogram names a generator's stats lines carry (see the module docstring).
NAMES = ("fanout", "fanout_read", "setup", "lateness")
#: The names whose histograms are signed (:class:`SignedLatency`).
SIGNED = frozenset({"lateness"})

#: Unit of the counts: 1 µs in ns.
UNIT_NS = 1000
#: Largest value kept (µs): one hour; larger values are clamped to it.
HIGHEST_US = 3_600_000_000
#: Significant decimal digits kept.
DIGITS = 3
#: Quantiles of :meth:`Latency.summary`, by key.
QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))


def nearest_rank(n: int, q: float) -> int:
    """1-based rank of the q-quantile among n sorted values: ceil(q x n),
    kept within 1 .. n (the small epsilon absorbs 0.1 x 30 = 3.0000000000000004)."""
    return min(n, max(1, math.ceil(q * n - 1e-9)))


def _new() -> HdrHistogram:
    return HdrHistogram(1, HIGHEST_US, DIGITS)


def _round_us(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)


class Latency:
    """Durations >= 0, recorded in ns, kept in µs at 3 significant digits."""

    __slots__ = ("_h", "clamped")

    def __init__(self, hist: HdrHistogram | None = None) -> None:
        self._h = hist if hist is not None else _new()
        #: Values recorded at an end of the range instead of their own
        #: (negative, or above one hour). Not part of :meth:`encode`.
        self.clamped = 0

    # recording -------------------------------------------------------------------

    def record_ns(self, ns: int) -> None:
        self.record_us((ns + UNIT_NS // 2) // UNIT_NS)

    def record_many_ns(self, values_ns: Iterable[int]) -> None:
        """Record many values at once: one histogram update per distinct µs
        value (a generator buffers its fan-out latencies in an ``array`` and
        records them here at its next stats line, about 10 x cheaper than
        :meth:`record_ns` per value, and outside the burst being timed)."""
        half = UNIT_NS // 2
        for us, n in Counter((v + half) // UNIT_NS for v in values_ns).items():
            self.record_us(us, n)

    def record_us(self, us: int, count: int = 1) -> None:
        """``count`` values of ``us`` µs each; out of range: clamped, counted."""
        if us < 0 or us > HIGHEST_US:
            self.clamped += count
            us = 0 if us < 0 else HIGHEST_US
        self._h.record_value(us, count)

    def merge(self, *others: Latency) -> Latency:
        """Add the others' values to this one; returns self."""
        for o in others:
            if o.count:
                self._h.add(o._h)
            self.clamped += o.clamped
        return self

    def minus(self, earlier: Latency) -> Latency:
        """What was recorded between two snapshots of one growing histogram
        (``earlier`` taken first): a new Latency. ValueError if ``earlier``
        holds a value this one does not (they are not snapshots of one)."""
        out = Latency()
        mine, theirs = self._h.counts, earlier._h.counts
        for i in range(self._h.counts_len):
            d = mine[i] - theirs[i]
            if d < 0:
                raise ValueError("Latency.minus: not an earlier snapshot of this histogram")
            if d:
                out.record_us(self._h.get_value_from_index(i), d)
        out.clamped = max(0, self.clamped - earlier.clamped)
        return out

    # wire ------------------------------------------------------------------------

    def encode(self) -> str:
        """HdrHistogram's compressed base64 form (V2), e.g. ``"HISTFAAA..."``."""
        data: bytes = self._h.encode()
        return data.decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Latency:
        """The Latency of an :meth:`encode` string; ValueError when it is not one."""
        try:
            return cls(HdrHistogram.decode(text.encode("ascii")))
        except Exception as exc:  # hdrh raises TypeError, zlib.error, its own ...
            raise ValueError(f"not an encoded HdrHistogram: {text[:40]!r} ({exc})") from None

    # reading ---------------------------------------------------------------------

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def values_at_ranks(self, ranks: Iterable[int]) -> list[int]:
        """The values (µs, highest equivalent) at the given 1-based ranks of
        the sorted recorded values, in the order asked; ranks in 1 .. count."""
        return self._scan(ranks)[0]

    def _scan(self, ranks: Iterable[int]) -> tuple[list[int], float]:
        """One pass over the counts: the values at ``ranks`` and the mean
        (µs, each value counted at the middle of its bucket)."""
        ranks = list(ranks)
        wanted = sorted(set(ranks))
        n = self.count
        if wanted and (wanted[0] < 1 or wanted[-1] > n):
            raise ValueError(f"ranks must be within 1 .. {n}")
        h = self._h
        found: dict[int, int] = {}
        seen = 0
        total = 0.0
        j = 0
        for i, c in enumerate(h.counts):
            if not c:
                continue
            lo = h.get_value_from_index(i)
            hi = h.get_highest_equivalent_value(lo)
            seen += c
            total += c * (lo + hi) / 2
            while j < len(wanted) and wanted[j] <= seen:
                found[wanted[j]] = hi
                j += 1
            if seen == n:
                break
        return [found[r] for r in ranks], (total / n if n else 0.0)

    def lowest_at_ranks(self, ranks: Iterable[int]) -> list[int]:
        """Like :meth:`values_at_ranks`, the lowest equivalent values."""
        h = self._h
        return [h.get_lowest_equivalent_value(v) for v in self.values_at_ranks(ranks)]

    def percentile_ms(self, q: float) -> float | None:
        """Nearest-rank q-quantile (0 < q <= 1) in ms; None when empty."""
        n = self.count
        if not n:
            return None
        return self.values_at_ranks([nearest_rank(n, q)])[0] / 1000.0

    def summary(self) -> dict[str, Any]:
        """count, min, mean, p50, p90, p99, p999, max in ms (None when empty)."""
        n = self.count
        if not n:
            out: dict[str, Any] = {"count": 0, "min": None, "mean": None}
            out.update({k: None for k, _ in QUANTILES})
            out["max"] = None
            return out
        ranks = [1, *(nearest_rank(n, q) for _, q in QUANTILES), n]
        values, mean = self._scan(ranks)
        lo = self._h.get_lowest_equivalent_value(values[0])
        out = {"count": n, "min": lo / 1000.0, "mean": _round_us(mean / 1000.0)}
        for (k, _), v in zip(QUANTILES, values[1:-1], strict=True):
            out[k] = v / 1000.0
        out["max"] = values[-1] / 1000.0
        return out


class SignedLatency:
    """Durations of either sign (ns): ``late`` holds those >= 0, ``early``
    the magnitudes of the negative ones; percentiles over the union."""

    __slots__ = ("early", "late")

    def __init__(self, late: Latency | None = None, early: Latency | None = None) -> None:
        self.late = late if late is not None else Latency()
        self.early = early if early is not None else Latency()

    def record_ns(self, ns: int) -> None:
        if ns >= 0:
            self.late.record_ns(ns)
        else:
            self.early.record_ns(-ns)

    @property
    def count(self) -> int:
        return self.late.count + self.early.count

    @property
    def clamped(self) -> int:
        return self.late.clamped + self.early.clamped

    def merge(self, *others: SignedLatency) -> SignedLatency:
        for o in others:
            self.late.merge(o.late)
            self.early.merge(o.early)
        return self

    def minus(self, earlier: SignedLatency) -> SignedLatency:
        return SignedLatency(self.late.minus(earlier.late), self.early.minus(earlier.early))

    def encode(self) -> dict[str, str]:
        return {"late": self.late.encode(), "early": self.early.encode()}

    @classmethod
    def decode(cls, value: Mapping[str, str]) -> SignedLatency:
        if not isinstance(value, Mapping) or not {"late", "early"} <= set(value):
            raise ValueError(f"a signed histogram is {{'late': ..., 'early': ...}}, got {value!r}")
        return cls(Latency.decode(value["late"]), Latency.decode(value["early"]))

    def values_at_ranks_us(self, ranks: Iterable[int]) -> list[int]:
        """Signed values (µs) at 1-based ranks of the union sorted ascending.
        Early values are reported as minus their lowest equivalent magnitude,
        so on both sides the result is the upper end of its value's bucket."""
        ranks = list(ranks)
        ne = self.early.count
        early_ranks = [ne - r + 1 for r in ranks if r <= ne]
        late_ranks = [r - ne for r in ranks if r > ne]
        early = iter(self.early.lowest_at_ranks(early_ranks))
        late = iter(self.late.values_at_ranks(late_ranks))
        return [-next(early) if r <= ne else next(late) for r in ranks]

    def percentile_ms(self, q: float) -> float | None:
        n = self.count
        if not n:
            return None
        return self.values_at_ranks_us([nearest_rank(n, q)])[0] / 1000.0

    def summary(self) -> dict[str, Any]:
        """As :meth:`Latency.summary`, over both signs (``early`` and
        ``late`` count the values below and at or above 0)."""
        n = self.count
        out: dict[str, Any] = {"count": n}
        if not n:
            out.update({"min": None, "mean": None, **{k: None for k, _ in QUANTILES}, "max": None})
        else:
            ranks = [1, *(nearest_rank(n, q) for _, q in QUANTILES), n]
            values = [v / 1000.0 for v in self.values_at_ranks_us(ranks)]
            total = self.late._scan([])[1] * self.late.count
            total -= self.early._scan([])[1] * self.early.count
            out["min"] = values[0]
            out["mean"] = _round_us(total / n / 1000.0)
            out.update({k: v for (k, _), v in zip(QUANTILES, values[1:-1], strict=True)})
            out["max"] = values[-1]
        out["early"] = self.early.count
        out["late"] = self.late.count
        return out


Histogram = Latency | SignedLatency


def new_histogram(name: str) -> Histogram:
    """An empty histogram of the kind ``name`` carries (:data:`SIGNED`)."""
    return SignedLatency() if name in SIGNED else Latency()


def decode_histogram(value: Any) -> Histogram:
    """A wire value: a string is a Latency, a {"late", "early"} dict a SignedLatency."""
    if isinstance(value, str):
        return Latency.decode(value)
    return SignedLatency.decode(value)


def merge_field(lines: Iterable[Mapping[str, Any] | None], field: str) -> dict[str, Histogram]:
    """Merge the histograms under ``field`` (``"hist"`` or ``"hist_total"``)
    of several stats lines, by name; lines or names missing count as empty."""
    out: dict[str, Histogram] = {}
    for line in lines:
        # hist_clamped counts the whole run, as hist_total does.
        clamped = (line or {}).get("hist_clamped") or {} if field == "hist_total" else {}
        for name, value in ((line or {}).get(field) or {}).items():
            h = decode_histogram(value)
            (h.late if isinstance(h, SignedLatency) else h).clamped += int(clamped.get(name, 0))
            try:
                out[name] = fold(out.get(name), h)
            except ValueError:
                raise ValueError(
                    f"histogram {name!r} is signed in one line and not in another"
                ) from None
    return out


def fold(have: Histogram | None, h: Histogram) -> Histogram:
    """``have`` with ``h`` merged into it (``h`` itself when ``have`` is None)."""
    if have is None:
        return h
    if isinstance(have, SignedLatency) and isinstance(h, SignedLatency):
        return have.merge(h)
    if isinstance(have, Latency) and isinstance(h, Latency):
        return have.merge(h)
    raise ValueError("fold: a signed and an unsigned histogram")


def minus(later: Histogram | None, earlier: Histogram | None) -> Histogram | None:
    """``later.minus(earlier)``, either side possibly missing (empty)."""
    if later is None:
        return None
    if earlier is None:
        return later
    if isinstance(later, SignedLatency) and isinstance(earlier, SignedLatency):
        return later.minus(earlier)
    if isinstance(later, Latency) and isinstance(earlier, Latency):
        return later.minus(earlier)
    raise ValueError("minus: a signed and an unsigned histogram")


def current(hists: Mapping[str, Histogram], name: str) -> dict[str, Any]:
    """count, p50, p99 (ms) of one histogram of recent values, for a
    scenario's once-a-second samples (a chart of latency over time)."""
    h = hists.get(name)
    if h is None:
        return {"count": 0, "p50": None, "p99": None}
    s = h.summary()
    return {"count": s["count"], "p50": s["p50"], "p99": s["p99"]}


def summary_with_hist(h: Histogram | None, signed: bool = False) -> dict[str, Any]:
    """:meth:`summary`, the count of clamped values (``"clamped"``) and the
    encoded histogram (``"hist"``): what a record stores for one measured
    thing (an empty one when ``h`` is None)."""
    if h is None:
        h = SignedLatency() if signed else Latency()
    out = h.summary()
    out["clamped"] = h.clamped
    out["hist"] = h.encode()
    return out
