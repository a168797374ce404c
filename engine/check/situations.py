"""The situations the client judge plays, one class each. A situation waits
for a fresh client's handshake, lets it settle into long polling, then does
one thing to it on a /meta/connect and judges what the client does next.

Each class's docstring is the rule, from the CometD reference
(https://docs.cometd.org/current/reference/, "Bayeux protocol": advice,
reconnect, interval, multiple-clients) or the Bayeux 1.0 specification.

A situation reports one verdict, or more (`extra`): `session_unknown` also
reports `resubscribe`, an observation. Observations always PASS; what the
client did is in `observed` (a stable word, compared by the tests) and the
reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from engine.check.judge_server import (
    CONNECT,
    HANDSHAKE,
    SUBSCRIBE,
    Arrival,
    JudgeServer,
    Stage,
    Timing,
    on,
)
from engine.check.report import Status, Verdict

__all__ = ["Observed", "Situation", "SITUATIONS", "Outcome", "NotReached", "verdict"]


@dataclasses.dataclass
class Observed(Verdict):
    """A verdict with what the client did, as a stable word (`waited`,
    `retried`, `resubscribed`...), for the recorded verdicts to compare."""

    observed: str = ""


class NotReached(Exception):
    """The client never got to the situation (a SKIP, with this reason)."""


@dataclasses.dataclass
class Outcome:
    status: Status
    reason: str
    observed: str = ""


def passed(reason: str, observed: str = "") -> Outcome:
    return Outcome(Status.PASS, reason, observed)


def failed(reason: str, observed: str = "") -> Outcome:
    return Outcome(Status.FAIL, reason, observed)


class Situation:
    """One scripted situation. Subclasses set `name`, `rule` and `play()`."""

    name: ClassVar[str]
    rule: ClassVar[str]
    extra: ClassVar[dict[str, str]] = {}  # further verdicts (observations): name -> rule

    def __init__(self, server: JudgeServer, timing: Timing) -> None:
        self.server = server
        self.timing = timing

    def bound(self) -> float:
        """The longest the situation may take once the client handshook."""
        t = self.timing
        return 4 * t.window + 3 * t.hold + t.interval + t.slow_extra + t.stall_cap + t.backoff

    async def play(self, stage: Stage) -> dict[str, Outcome]:
        raise NotImplementedError

    # ---------------------------------------------------------- shared steps

    async def handshake(self, stage: Stage) -> Arrival:
        hit = await stage.first(on(HANDSHAKE), since=stage.start, within=self.timing.handshake_wait)
        if hit is None:
            raise NotReached(f"no client handshook within {self.timing.handshake_wait:.0f} s")
        return hit

    async def held_connect(self, stage: Stage) -> Arrival:
        """The client's first connect that the server holds (its first connect
        is answered at once): the one the situations play with."""
        hs = await self.handshake(stage)
        within = self.timing.window + self.timing.hold
        hit = await stage.first(
            lambda a: a.channel == CONNECT and a.holdable, since=hs.at, within=within
        )
        if hit is None:
            raise NotReached(f"the client did not settle into long polling within {within:.0f} s")
        return hit

    async def next_connect(self, stage: Stage, after: Arrival, within: float) -> Arrival | None:
        """The client's next /meta/connect after `after` (waiting `within` s from now)."""
        return await stage.first(
            lambda a: a is not after and a.channel == CONNECT, since=after.at, within=within
        )

    async def next_move(self, stage: Stage, after: Arrival, within: float) -> Arrival | None:
        """The client's next /meta/connect or /meta/handshake after `after`."""
        return await stage.first(
            lambda a: a is not after and a.channel in (CONNECT, HANDSHAKE),
            since=after.at,
            within=within,
        )


def _gap(first: float, then: Arrival) -> str:
    return f"{then.at - first:.2f} s"


# ---------------------------------------------------------------- situations


class Baseline(Situation):
    """Handshake, subscribe, connect, and a message delivered on a held connect
    is received: the client then sends its next /meta/connect (Bayeux 1.0:
    the client keeps one connect outstanding)."""

    name = "baseline"
    rule = "handshake, subscribe and connect; after a delivery the client connects again"

    async def play(self, stage: Stage) -> dict[str, Outcome]:
        t = self.timing
        hs = await self.handshake(stage)
        sub = await stage.first(on(SUBSCRIBE), since=hs.at, within=t.window)
        if sub is None:
            return {
                self.name: failed(f"no /meta/subscribe within {t.window:.0f} s of the handshake")
            }
        held = await self.held_connect(stage)
        channel = _concrete(str(sub.message.get("subscription", "/judge")))
        probe = {"judge": "baseline", "generation": stage.generation}
        self.server.publish(stage, channel, probe)
        delivered = stage.now()
        nxt = await stage.first(
            lambda a: a.channel == CONNECT and a is not held, since=delivered, within=t.window
        )
        if nxt is None:
            return {self.name: failed(f"no /meta/connect within {t.window:.0f} s of a delivery")}
        echo = await stage.first(
            lambda a: not a.channel.startswith("/meta/") and a.message.get("data") == probe,
            since=delivered,
            within=t.window,
        )
        seen = f" and published it back on {echo.channel}" if echo else ""
        return {
            self.name: passed(
                f"subscribed to {sub.message.get('subscription')}, received the message on "
                f"{channel}{seen}, connected again after {_gap(delivered, nxt)}",
                "echoed" if echo else "",
            )
        }


class AdviceHandshake(Situation):
    """`reconnect: handshake` advice on a (successful) /meta/connect reply: "the
    client MUST reconnect with a /meta/handshake" and "MUST NOT automatically
    retry" the connect (Bayeux 1.0, reconnect advice; CometD reference,
    advice)."""

    name = "advice_handshake"
    rule = "reconnect: handshake advice -> the next message is a /meta/handshake"

    async def play(self, stage: Stage) -> dict[str, Outcome]:
        held = await self.held_connect(stage)
        held.answer(advice={"reconnect": "handshake", "interval": 0})
        outcome, _ = await _rehandshake(self, stage, held)
        return {self.name: outcome}


class SessionUnknown(Situation):
    """`402::session_unknown` with `reconnect: handshake` on a /meta/connect
    (what a CometD server answers for an expired session): the client must
    handshake again. `resubscribe` (observation): does the client subscribe
    again after the new handshake? The protocol leaves that to the
    application (CometD JS: in a /meta/handshake listener)."""

    name = "session_unknown"
    rule = "402::session_unknown with reconnect: handshake -> a new /meta/handshake"
    extra = {"resubscribe": "observation: after a re-handshake, the subscriptions are made again"}

    async def play(self, stage: Stage) -> dict[str, Outcome]:
        t = self.timing
        hs = await self.handshake(stage)
        sub = await stage.first(on(SUBSCRIBE), since=hs.at, within=t.window)
        held = await self.held_connect(stage)
        self.server.forget(held.client_id, reconnect="handshake")
        held.answer(
            successful=False,
            error="402::session_unknown",
            advice={"reconnect": "handshake", "interval": 0},
        )
        outcome, again = await _rehandshake(self, stage, held)
        out = {self.name: outcome}
        if sub is None or again is None:
            missing = "no first subscription" if sub is None else "no re-handshake"
            out["resubscribe"] = Outcome(Status.SKIP, f"{missing} to observe")
            return out
        subscription = sub.message.get("subscription")
        resub = await stage.first(
            lambda a: a.channel == SUBSCRIBE and a.message.get("subscription") == subscription,
            since=again.at,
            within=t.window,
        )
        if resub is not None:
            out["resubscribe"] = passed(
                f"subscribed to {subscription} again {_gap(again.at, resub)} after the handshake",
                "resubscribed",
            )
        else:
            out["resubscribe"] = passed(
                f"did not subscribe to {subscription} again within {t.window:.0f} s (not required "
                "by the protocol: the application re-subscribes, e.g. in a handshake listener)",
                "not_resubscribed",
            )
        return out


async def _rehandshake(
    situation: Situation, stage: Stage, held: Arrival
) -> tuple[Outcome, Arrival | None]:
    """After handshake advice on `held`: a /meta/handshake must come next, no
    /meta/connect with the old clientId before it. Also the new handshake."""
    t = situation.timing
    nxt = await situation.next_move(stage, held, t.window)
    if nxt is None:
        message = f"neither /meta/handshake nor /meta/connect within {t.window:.0f} s"
        return failed(message, "stopped"), None
    if nxt.channel == CONNECT:
        message = f"sent /meta/connect again ({_gap(held.at, nxt)} later), not a handshake"
        return failed(message, "connected"), None
    return passed(f"handshook again {_gap(held.at, nxt)} after the advice", "handshook"), nxt


class AdviceNone(Situation):
    """`reconnect: none` advice on a /meta/connect reply: "the client MUST NOT
    attempt a reconnect" (Bayeux 1.0; CometD reference, advice): no further
    /meta/connect nor /meta/handshake."""

    name = "advice_none"
    rule = "reconnect: none advice -> no further /meta/connect or /meta/handshake"

    async def play(self, stage: Stage) -> dict[str, Outcome]:
        held = await self.held_connect(stage)
        held.answer(advice={"reconnect": "none"})
        return {self.name: await _stays_quiet(self, stage, held)}


class ServerDisconnect(Situation):
    """The server disconnects the session: the held /meta/connect is answered
    `successful: false`, `403::disconnected_by_server`, `reconnect: none`; any
    later message with that clientId gets 402. The client must stop (as for
    `advice_none`)."""

    name = "server_disconnect"
    rule = "a session the server ended (reconnect: none) -> no further connect or handshake"

    async def play(self, stage: Stage) -> dict[str, Outcome]:
        held = await self.held_connect(stage)
        self.server.forget(held.client_id, reconnect="none")
        held.answer(
            successful=False, error="403::disconnected_by_server", advice={"reconnect": "none"}
        )
        return {self.name: await _stays_quiet(self, stage, held)}


async def _stays_quiet(situation: Situation, stage: Stage, held: Arrival) -> Outcome:
    t = situation.timing
    nxt = await situation.next_move(stage, held, t.window)
    if nxt is not None:
        return failed(
            f"sent {nxt.channel} {_gap(held.at, nxt)} after reconnect: none", "reconnected"
        )
    return passed(f"sent no /meta/connect nor /meta/handshake for {t.window:.0f} s", "stopped")


class Interval(Situation):
    """A connect reply advising `interval: I`: the client waits I ms before its
    next /meta/connect (CometD reference, advice: interval), and does come
    back."""

    name = "interval"
    rule = "interval advice -> the next /meta/connect comes, not before the interval"

    async def play(self, stage: Stage) -> dict[str, Outcome]:
        t = self.timing
        held = await self.held_connect(stage)
        advice = {"reconnect": "retry", "interval": int(t.interval * 1000)}
        return {self.name: await _waits_interval(self, stage, [held], advice, rounds=1)}


class MultipleClients(Situation):
    """`multiple-clients: true` with an interval (a CometD server's answer when
    another tab of the same browser already long-polls): connects are answered
    at once; the client keeps connecting, each time after the interval
    (CometD reference, advice: multiple-clients)."""

    name = "multiple_clients"
    rule = (
        "multiple-clients advice with an interval -> the client keeps connecting, at the interval"
    )

    async def play(self, stage: Stage) -> dict[str, Outcome]:
        t = self.timing
        held = await self.held_connect(stage)
        advice = {
            "reconnect": "retry",
            "interval": int(t.interval * 1000),
            "multiple-clients": True,
        }
        return {self.name: await _waits_interval(self, stage, [held], advice, rounds=2)}


async def _waits_interval(
    situation: Situation, stage: Stage, last: list[Arrival], advice: dict[str, Any], rounds: int
) -> Outcome:
    """Answer the connect at once with `advice`, `rounds` times; each next
    connect must come, and not before the interval."""
    t = situation.timing
    gaps = []
    connect = last[0]
    for _ in range(rounds):
        connect.answer(advice=advice)
        answered = stage.now()
        nxt = await situation.next_connect(stage, connect, t.interval + t.window)
        if nxt is None:
            return failed(f"no /meta/connect within {t.interval + t.window:.1f} s", "stopped")
        gap = nxt.at - answered
        if gap < t.interval - t.early:
            return failed(
                f"connected again after {gap:.2f} s, the advised interval is {t.interval:.2f} s",
                "early",
            )
        gaps.append(f"{gap:.2f} s")
        connect = nxt
    return passed(f"connected again after {', '.join(gaps)} (interval {t.interval:.2f} s)")


class ConnectCut(Situation):
    """The network cuts the connection under a held /meta/connect (TCP
    connection or WebSocket closed mid-hold): the client retries, with a
    /meta/connect or a /meta/handshake, within its back-off (CometD
    reference, transport failures)."""

    name = "connect_cut"
    rule = "a held connect's connection is cut -> the client connects (or handshakes) again"

    async def play(self, stage: Stage) -> dict[str, Outcome]:
        t = self.timing
        held = await self.held_connect(stage)
        held.cut()
        within = t.backoff + t.window
        nxt = await self.next_move(stage, held, within)
        if nxt is None:
            return {
                self.name: failed(
                    f"no /meta/connect or /meta/handshake within {within:.0f} s", "stopped"
                )
            }
        word = "connect" if nxt.channel == CONNECT else "handshake"
        return {
            self.name: passed(
                f"sent {nxt.channel} over {nxt.transport} {_gap(held.at, nxt)} after the cut", word
            )
        }


class SlowConnect(Situation):
    """A slow server: the held /meta/connect is answered `slow_extra` after the
    advised timeout, still within timeout + maxNetworkDelay (CometD
    reference, maxNetworkDelay). Observation: the client waits for the late
    reply (`waited`), or gives up on it and sends the connect again
    (`retried`); it fails only if it stops connecting."""

    name = "slow_connect"
    rule = "a connect answered late (within timeout + network delay) -> the client carries on"

    async def play(self, stage: Stage) -> dict[str, Outcome]:
        t = self.timing
        held = await self.held_connect(stage)
        late = held.at + t.hold + t.slow_extra
        held.answer_at(late)
        within = t.hold + t.slow_extra + t.backoff + t.window
        nxt = await self.next_move(stage, held, within)
        if nxt is None:
            return {
                self.name: failed(
                    f"no /meta/connect or /meta/handshake within {within:.0f} s", "stopped"
                )
            }
        if nxt.at < late or nxt.message.get("id") == held.message.get("id"):
            return {
                self.name: passed(
                    f"gave up on the connect and sent {nxt.channel} "
                    f"{_gap(held.at, nxt)} into it (the late reply came at "
                    f"{late - held.at:.2f} s)",
                    "retried",
                )
            }
        return {
            self.name: passed(
                f"waited for the reply, {late - held.at:.2f} s into the connect, "
                f"and connected again {_gap(late, nxt)} later",
                "waited",
            )
        }


class StalledConnect(Situation):
    """A server that never answers a held /meta/connect (the TCP connection
    stays up): the client must give up on it after the advised timeout plus
    its network delay and retry (CometD reference, maxNetworkDelay);
    otherwise it hangs for ever. The judge waits `stall_cap` seconds."""

    name = "stalled_connect"
    rule = "a connect never answered -> the client times it out and retries"

    async def play(self, stage: Stage) -> dict[str, Outcome]:
        t = self.timing
        held = await self.held_connect(stage)
        held.stall()
        nxt = await self.next_move(stage, held, t.stall_cap)
        if nxt is None:
            return {
                self.name: failed(
                    f"no /meta/connect nor /meta/handshake within {t.stall_cap:.0f} s of a "
                    "connect never answered (the client waits for ever, or gave up for good)",
                    "no_retry",
                )
            }
        return {
            self.name: passed(
                f"gave up after {_gap(held.at, nxt)} and sent {nxt.channel}", "retried"
            )
        }


def _concrete(subscription: str) -> str:
    """A channel a subscription receives: `/a/*` and `/a/**` get `/a/judge`."""
    if subscription.endswith("/**") or subscription.endswith("/*"):
        return subscription.rsplit("/", 1)[0] + "/judge"
    return subscription


SITUATIONS: dict[str, type[Situation]] = {
    cls.name: cls
    for cls in (
        Baseline,
        Interval,
        MultipleClients,
        AdviceHandshake,
        SessionUnknown,
        ConnectCut,
        SlowConnect,
        StalledConnect,
        AdviceNone,
        ServerDisconnect,
    )
}


def verdict(
    situation: type[Situation], name: str, outcome: Outcome, seconds: float, stage: Stage | None
) -> Observed:
    return Observed(
        name=name,
        status=outcome.status,
        rule=situation.extra.get(name, situation.rule),
        reason=outcome.reason,
        group="client",
        seconds=seconds,
        exchange=stage.exchange if stage else None,
        observed=outcome.observed,
    )
