"""The live display of ``engine load`` (rich): clients connected, failed and
dropped, messages per second and the current latency percentiles, redrawn
from every poll the scenarios make of their generators' stats lines
(``records.PROGRESS_HOOKS``). The same polls, once a second, make the
timeline stored in the record and drawn by engine.load.charts.

What latency it shows is decided in one place, ``latency_now``: the
generators' per-line histograms (the values since their previous line):
delivery latency when there are deliveries, else the setup latency
(handshake to first connect) of the clients that just connected.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from engine.load.histogram import merge_field
from engine.load.records import PROGRESS_HOOKS, Target

#: Seconds between two timeline points (and two plain lines off a terminal).
TIMELINE_STEP_S = 1.0
PLAIN_STEP_S = 5.0
RATE_BASE_S = 1.0
QUANTILES = ("p50", "p90", "p99")


def latency_now(lines: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The current latency percentiles, ms, from the generators' latest stats
    lines: their ``hist`` (the values since each one's previous line,
    engine/load/histogram.py) merged; delivery latency (``fanout``) when there
    is some, else the setup latency of the clients that just connected.
    Returns {"kind": "delivery"|"setup"|None, "p50":.., "p90":.., "p99":..}.
    """
    hists = merge_field(lines, "hist")
    for name, kind in (("fanout", "delivery"), ("setup", "setup")):
        h = hists.get(name)
        if h is not None and h.count:
            s = h.summary()
            return {"kind": kind, **{q: s[q] for q in QUANTILES}}
    return {"kind": None, **{q: None for q in QUANTILES}}


def _ms(v: Any) -> str:
    if v is None:
        return "-"
    return "inf" if v == float("inf") else f"{v:,.1f}"


class LiveProgress:
    """The PROGRESS_HOOKS entry of one ``engine load`` run (a context manager:
    registers itself, and draws unless ``quiet``).

    ``start_target`` begins each server's run; its timeline goes into that
    server's record entry. ``last`` keeps the latest figures, for a partial
    record and for the final line."""

    def __init__(self, quiet: bool, clients: int, console: Console | None = None) -> None:
        self.quiet = quiet
        self.clients = clients
        self.console = console or Console(stderr=True)
        self.live: Live | None = None
        self.label = ""
        self.timeline: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}
        self._t0 = time.monotonic()
        self._base: tuple[float, int] | None = None
        self._per_s: float | None = None
        self._shown_latency: dict[str, Any] | None = None
        self._next_point = 0.0
        self._next_plain = 0.0

    def __enter__(self) -> LiveProgress:
        PROGRESS_HOOKS.append(self)
        if not self.quiet and self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4)
            self.live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self in PROGRESS_HOOKS:
            PROGRESS_HOOKS.remove(self)
        if self.live is not None:
            self.live.stop()
            self.live = None

    def start_target(self, target: Target, entry: dict[str, Any]) -> None:
        self.label = target.label
        self.timeline = []
        entry["timeline"] = self.timeline
        self.last = {}
        self._t0 = time.monotonic()
        self._base = None
        self._per_s = None
        self._shown_latency = None
        self._next_point = self._next_plain = 0.0

    def __call__(
        self, phase: str, stats: dict[str, Any], lines: Sequence[dict[str, Any]] = ()
    ) -> None:
        now = time.monotonic()
        msgs = stats.get("hot_messages") or 0
        # messages/s over the last RATE_BASE_S or more: the generators' lines come
        # every 0.5 s, the loops poll every 0.1-0.5 s
        if self._base is None:
            self._base = (now, msgs)
        per_s = self._per_s
        if now - self._base[0] >= RATE_BASE_S:
            per_s = self._per_s = (msgs - self._base[1]) / (now - self._base[0])
            self._base = (now, msgs)
        latency = latency_now(lines)
        t = now - self._t0
        point = {
            "t": round(t, 2),
            "phase": phase,
            "connected": stats.get("connected", 0),
            "failed": stats.get("failed", 0),
            "dropped": stats.get("dropped", 0),
            "messages": msgs,
            "messages_per_s": None if per_s is None else round(per_s, 1),
            "latency": latency,
        }
        # the timeline has what was measured; the display keeps the last figures
        # while nothing new comes (nobody connected since the previous poll)
        self.last = point
        if latency["kind"] is None and self._shown_latency is not None:
            self.last = {**point, "latency": self._shown_latency}
        else:
            self._shown_latency = latency
        if t >= self._next_point:
            self._next_point = t + TIMELINE_STEP_S
            self.timeline.append(point)
        if self.live is not None:
            self.live.update(self._render())
        elif not self.quiet and t >= self._next_plain:
            self._next_plain = t + PLAIN_STEP_S
            self.console.print(self._plain(), highlight=False, soft_wrap=True)

    def _plain(self) -> str:
        d, lat = self.last, self.last.get("latency") or {}
        return (
            f"{self.label} {d.get('phase')} {d.get('t', 0):.0f}s: "
            f"{d.get('connected', 0):,}/{self.clients:,} connected, {d.get('failed', 0):,} "
            f"failed, {d.get('dropped', 0):,} dropped, "
            f"{_ms(d.get('messages_per_s'))} msg/s, {lat.get('kind') or 'latency'} "
            f"p50/p90/p99 {_ms(lat.get('p50'))}/{_ms(lat.get('p90'))}/{_ms(lat.get('p99'))} ms"
        )

    def _render(self) -> Table:
        d, lat = self.last, self.last.get("latency") or {}
        title = f"engine load: {self.label}, {d.get('phase', 'starting')}, {d.get('t', 0):.0f} s"
        table = Table(title=title)
        for name in ("connected", "failed", "dropped", "msg/s", "latency", "p50", "p90", "p99"):
            table.add_column(name, justify="right")
        table.add_row(
            f"{d.get('connected', 0):,}/{self.clients:,}",
            f"{d.get('failed', 0):,}",
            f"{d.get('dropped', 0):,}",
            _ms(d.get("messages_per_s")),
            str(lat.get("kind") or "-"),
            *(_ms(lat.get(q)) for q in QUANTILES),
        )
        return table
