"""The server checks of `engine check`: one small async function per rule.

Each check is registered with `@check(name, group, ...)`; its docstring's
first paragraph is the rule as printed in the report, and says whether the
rule is a MUST of the Bayeux protocol as CometD documents it, or a stronger
rule of this engine (those need `--strict`).  A check raises `CheckFailed`
(via `expect`) when the server breaks the rule, returns normally (optionally
with a note) when it holds.

References (cited per check):
  [bayeux]  https://docs.cometd.org/current/reference/#_bayeux
  [meta]    https://docs.cometd.org/current/reference/#_bayeux_meta_channels
  [advice]  https://docs.cometd.org/current/reference/#_bayeux_advice
  [chan]    https://docs.cometd.org/current/reference/#_concepts_channels
  [lp]      https://docs.cometd.org/current/reference/#_bayeux_long_polling
  [jsonp]   https://docs.cometd.org/current/reference/#_bayeux_callback_polling
  [ws]      https://docs.cometd.org/current/reference/#_bayeux_websocket
  [multi]   https://docs.cometd.org/current/reference/#_java_server_multiple_sessions
  [ack]     https://docs.cometd.org/current/reference/#_extensions_acknowledge
  [tsync]   https://docs.cometd.org/current/reference/#_extensions_timesync
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from engine.check.bayeux import (
    CheckFailed,
    CheckSkipped,
    Context,
    Message,
    Session,
    WsSession,
    error_code,
    expect,
    parse_messages,
    reply_to,
)
from engine.check.wire import Response, cookie_pairs

__all__ = ["Check", "CHECKS", "FEATURES", "check"]

CheckFunction = Callable[[Context], Awaitable[str | None]]

# Optional features: name -> (default on?, what it is).  A check needing a
# feature that is off is SKIP.
FEATURES: dict[str, tuple[bool, str]] = {
    "websocket": (True, "the websocket transport (--no-websocket)"),
    "jsonp": (True, "the callback-polling (JSONP) transport (--no-jsonp)"),
    "browser_cookie": (True, "the BAYEUX_BROWSER cookie (--no-browser-cookie)"),
    "ack": (False, "the acknowledge extension (--ack)"),
    "timesync": (False, "the timesync extension (--timesync)"),
    "strict": (False, "this engine's rules stronger than the protocol's MUSTs (--strict)"),
}


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    group: str
    rule: str
    run: CheckFunction
    feature: str | None = None  # a FEATURES key the check needs
    transport: str | None = None  # a connection type the server must advertise
    holds: float = 0.0  # how many of the server's connect holds the check may wait out


CHECKS: dict[str, Check] = {}


def check(
    name: str,
    group: str,
    *,
    feature: str | None = None,
    transport: str | None = None,
    holds: float = 0.0,
) -> Callable[[CheckFunction], CheckFunction]:
    """Register a check; the rule is the first paragraph of its docstring."""

    def register(function: CheckFunction) -> CheckFunction:
        assert name not in CHECKS, f"check {name} registered twice"
        assert feature is None or feature in FEATURES
        doc = (function.__doc__ or "").strip().split("\n\n")[0]
        rule = " ".join(doc.split())
        CHECKS[name] = Check(name, group, rule, function, feature, transport, holds)
        return function

    return register


ALNUM = re.compile(r"^[A-Za-z0-9]+$")


def quick(ctx: Context) -> float:
    """Seconds within which an answer counts as "at once" rather than "at
    the end of the hold": half the server's advised timeout, at most 2 s."""
    if ctx.facts.hold < 1.0:
        raise CheckSkipped(
            f"the server's advice timeout ({ctx.facts.timeout_ms} ms) is too short to tell "
            "a held connect from an immediate answer"
        )
    return min(2.0, ctx.facts.hold / 2)


async def timed(awaitable: Awaitable[Message]) -> tuple[Message, float]:
    start = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - start


def unknown_client_id(ctx: Context) -> str:
    return f"checkunknown{ctx.run_id}"


async def publish_then_sentinel(publisher: Session, channels: list[str], sentinel: str) -> None:
    """Publish once to each of `channels`, then to `sentinel`: deliveries of
    one publisher arrive in order, so once the sentinel is in, anything that
    was going to be delivered is in too."""
    for index, channel in enumerate(channels):
        await publisher.call(publisher.message(channel, data={"n": index}))
    await publisher.publish(sentinel, {"sentinel": True})


# --------------------------------------------------------------------------- handshake


@check("handshake.reply", "handshake")
async def handshake_reply(ctx: Context) -> None:
    """MUST: a handshake is answered by one /meta/handshake reply with the
    request's id, successful true, a version, an alphanumeric clientId and
    supportedConnectionTypes including long-polling [meta: handshake]."""
    session = await ctx.handshake()
    reply = session.handshake_reply
    expect(isinstance(reply.get("version"), str), f"no version string: {reply}")
    expect(ALNUM.match(session.client_id), f"clientId {session.client_id!r} is not alphanumeric")
    types = reply.get("supportedConnectionTypes")
    expect(
        isinstance(types, list) and "long-polling" in types,
        f"supportedConnectionTypes {types!r} lacks long-polling",
    )


@check("handshake.advice", "advice")
async def handshake_advice(ctx: Context) -> None:
    """MUST: the handshake reply carries advice with reconnect "retry" and
    numeric interval and timeout, which clients then apply [advice]."""
    reply = (await ctx.handshake()).handshake_reply
    advice = reply.get("advice")
    expect(isinstance(advice, dict), f"handshake reply without advice: {reply}")
    assert isinstance(advice, dict)
    expect(advice.get("reconnect") == "retry", f"advice.reconnect is {advice.get('reconnect')!r}")
    for field in ("interval", "timeout"):
        value = advice.get(field)
        expect(
            isinstance(value, int | float) and not isinstance(value, bool),
            f"advice.{field} is {value!r}",
        )


@check("handshake.unique_client_ids", "handshake")
async def handshake_unique_ids(ctx: Context) -> None:
    """MUST: every handshake gets a new clientId; 20 handshakes give 20
    distinct ids [bayeux: clientId]."""
    browser = ctx.browser()
    ids = [(await ctx.handshake(browser)).client_id for _ in range(20)]
    expect(len(set(ids)) == 20, f"only {len(set(ids))} distinct clientIds in 20 handshakes")


@check("handshake.no_common_transport", "handshake")
async def handshake_no_common_transport(ctx: Context) -> None:
    """MUST: a handshake offering only unknown connection types (["iframe"])
    fails: successful false, an error, and no clientId [meta: handshake]."""
    request = ctx.handshake_message(["iframe"])
    reply = reply_to(await ctx.browser().post([request]), request)
    expect(reply.get("successful") is False, f"handshake with only 'iframe' succeeded: {reply}")
    expect("clientId" not in reply, f"failed handshake carries a clientId: {reply}")
    expect(isinstance(reply.get("error"), str), f"failed handshake without error: {reply}")


@check("handshake.single_object", "handshake")
async def handshake_single_object(ctx: Context) -> None:
    """MUST: a request body may be a single message object instead of an
    array; the answer is still an array [bayeux: message format]."""
    request = ctx.handshake_message()
    reply = reply_to(await ctx.browser().post(request), request)
    expect(reply.get("successful") is True, f"single-object handshake refused: {reply}")


@check("handshake.batched_publish_ignored", "handshake", feature="strict")
async def handshake_batched_publish(ctx: Context) -> None:
    """Engine rule (--strict; the Bayeux spec says the server MUST ignore the
    other messages, CometD fails the whole request): a handshake sent with a
    publish in one request is answered alone, and the publish is not
    delivered [meta: handshake]."""
    channel, sentinel = ctx.channel(), ctx.channel("sentinel")
    subscriber = await ctx.subscriber(channel, sentinel)
    handshake = ctx.handshake_message()
    publish = {"channel": channel, "data": {"batched": 1}, "id": ctx.next_id()}
    answer = await ctx.browser().post([handshake, publish])
    expect(reply_to(answer, handshake).get("successful") is True, f"handshake failed: {answer}")
    expect([m["channel"] for m in answer] == ["/meta/handshake"], f"answered {answer}")
    await publish_then_sentinel(await ctx.session(), [], sentinel)
    await subscriber.receive(sentinel)
    stray = [e for e in subscriber.events if e["channel"] == channel]
    expect(not stray, f"the publish batched with the handshake was delivered: {stray}")


# --------------------------------------------------------------------------- connect


@check("connect.first_not_held", "connect", feature="strict")
async def connect_first_not_held(ctx: Context) -> None:
    """Engine rule (--strict; the CometD Java server does it, Faye and
    cometd-nodejs-server hold it, and CometD clients send the first connect
    with advice timeout 0 anyway): the first /meta/connect after a handshake
    is answered at once, not held [meta: connect]."""
    session = await ctx.handshake()
    limit = quick(ctx)
    reply, took = await timed(session.connect())
    expect(reply.get("successful") is True, f"first connect refused: {reply}")
    expect(took < limit, f"first connect answered after {took:.2f} s (held; limit {limit:.1f} s)")


@check("connect.held", "connect", holds=1)
async def connect_held(ctx: Context) -> str:
    """MUST: a connect with nothing to deliver is held about the advised
    timeout, then answered successful true [meta: connect, advice timeout]."""
    session = await ctx.session()
    reply, took = await timed(session.connect())
    expect(reply.get("successful") is True, f"held connect answered unsuccessfully: {reply}")
    hold = ctx.facts.hold
    expect(took >= hold * 0.5, f"connect answered after {took:.2f} s, advice timeout {hold} s")
    expect(took <= hold + 5, f"connect held {took:.2f} s, advice timeout {hold} s")
    return f"held {took:.2f} s (advice timeout {hold} s)"


@check("connect.timeout_zero", "connect")
async def connect_timeout_zero(ctx: Context) -> None:
    """MUST: a connect carrying advice {"timeout": 0} is answered at once
    [advice: timeout]."""
    session = await ctx.session()
    limit = quick(ctx)
    reply, took = await timed(session.connect(hold=False))
    expect(reply.get("successful") is True, f"connect refused: {reply}")
    expect(took < limit, f"timeout-0 connect held {took:.2f} s (limit {limit:.1f} s)")


@check("connect.unknown_client", "connect")
async def connect_unknown_client(ctx: Context) -> None:
    """MUST: a connect with an unknown clientId is answered at once with
    successful false and advice reconnect "handshake" [advice: reconnect]."""
    request = {
        "channel": "/meta/connect",
        "clientId": unknown_client_id(ctx),
        "connectionType": "long-polling",
        "id": ctx.next_id(),
    }
    reply = reply_to(await ctx.browser().post([request]), request)
    expect(reply.get("successful") is False, f"connect of an unknown client succeeded: {reply}")
    advice = reply.get("advice") or {}
    expect(
        isinstance(advice, dict) and advice.get("reconnect") == "handshake",
        f"advice {advice!r}, wanted reconnect 'handshake'",
    )


@check("connect.wakes_on_publish", "connect")
async def connect_wakes_on_publish(ctx: Context) -> None:
    """MUST: a held connect returns as soon as another session publishes to
    a channel the holder subscribes to, carrying the event [meta: connect]."""
    channel = ctx.channel()
    holder = await ctx.subscriber(channel)
    publisher = await ctx.session()
    held = asyncio.create_task(holder.connect())
    await asyncio.sleep(0.3)  # let the connect arrive and be held
    limit = quick(ctx)
    start = time.monotonic()
    await publisher.publish(channel, {"wake": 1})
    reply = await held
    took = time.monotonic() - start
    expect(reply.get("successful") is True, f"held connect answered unsuccessfully: {reply}")
    got = [e for e in holder.events if e["channel"] == channel]
    expect(got, "the held connect returned without the event")
    expect(took < limit, f"event came {took:.2f} s after the publish (limit {limit:.1f} s)")


@check("connect.queued_at_once", "connect")
async def connect_queued_at_once(ctx: Context) -> None:
    """MUST: events queued while no connect is held are returned by the next
    connect at once, not at the end of a hold [meta: connect]."""
    channel = ctx.channel()
    holder = await ctx.subscriber(channel)
    publisher = await ctx.session()
    await publisher.publish(channel, {"queued": 1})
    limit = quick(ctx)
    _, took = await timed(holder.connect())
    got = [e for e in holder.events if e["channel"] == channel]
    expect(got, "the connect returned without the queued event")
    expect(took < limit, f"queued event came after {took:.2f} s (limit {limit:.1f} s)")


@check("connect.second_releases_first", "connect")
async def connect_second_releases_first(ctx: Context) -> None:
    """MUST: a session has one outstanding connect; when a second connect of
    the same session arrives (on another connection, as after a page's
    network hiccup) the held first one is answered at once [meta: connect]."""
    session = await ctx.session()
    first = asyncio.create_task(session.send(session.connect_message()))
    await asyncio.sleep(0.3)
    limit = quick(ctx)
    second = asyncio.create_task(session.send(session.connect_message()))
    # Finished means answered: with a reply, an HTTP error or a closed connection.
    done, _ = await asyncio.wait({first}, timeout=limit)
    second.cancel()
    if not done:
        first.cancel()
        raise CheckFailed(f"first connect still held {limit:.1f} s after the second arrived")
    if not first.cancelled():
        first.exception()  # retrieved: any outcome is an answer here


@check("connect.advice", "advice")
async def connect_advice(ctx: Context) -> None:
    """MUST: the reply to a first connect sent with advice {"timeout": 0}
    carries the server's advice: reconnect "retry" and its own (non-zero)
    timeout, not the 0 the client asked for [advice]."""
    session = await ctx.handshake()
    reply = await session.connect(hold=False)
    advice = reply.get("advice")
    expect(isinstance(advice, dict), f"connect reply without advice: {reply}")
    assert isinstance(advice, dict)
    expect(advice.get("reconnect") == "retry", f"advice.reconnect is {advice.get('reconnect')!r}")
    timeout = advice.get("timeout")
    expect(isinstance(timeout, int) and timeout > 0, f"advice.timeout is {timeout!r}")


# --------------------------------------------------------------------------- disconnect


@check("disconnect.reply", "disconnect")
async def disconnect_reply(ctx: Context) -> None:
    """MUST: a disconnect is answered successful true with the request's id
    [meta: disconnect]."""
    reply = await (await ctx.session()).disconnect()
    expect(reply.get("successful") is True, f"disconnect failed: {reply}")


@check("disconnect.session_gone", "disconnect")
async def disconnect_session_gone(ctx: Context) -> None:
    """MUST: after a disconnect the clientId is unknown: a connect gets
    successful false and advice reconnect "handshake" [meta: disconnect]."""
    session = await ctx.session()
    await session.disconnect()
    reply = await session.call(session.connect_message())
    expect(reply.get("successful") is False, f"connect after disconnect succeeded: {reply}")
    advice = reply.get("advice") or {}
    expect(advice.get("reconnect") == "handshake", f"advice {advice!r} after disconnect")


@check("disconnect.releases_held_connect", "disconnect")
async def disconnect_releases_held(ctx: Context) -> None:
    """MUST: a connect held when its session disconnects is answered at
    once, not at the end of its hold [meta: disconnect]."""
    session = await ctx.session()
    held = asyncio.create_task(session.send(session.connect_message()))
    await asyncio.sleep(0.3)
    limit = quick(ctx)
    start = time.monotonic()
    await session.disconnect()
    try:
        await asyncio.wait_for(held, max(limit - (time.monotonic() - start), 0.1))
    except TimeoutError:
        held.cancel()
        raise CheckFailed(f"held connect still open {limit:.1f} s after the disconnect") from None


# --------------------------------------------------------------------------- subscribe


@check("subscribe.reply", "subscribe")
async def subscribe_reply(ctx: Context) -> None:
    """MUST: a subscribe is answered successful true with `subscription`
    echoed exactly [meta: subscribe]."""
    channel = ctx.channel()
    reply = await (await ctx.session()).subscribe(channel)
    expect(reply.get("subscription") == channel, f"subscription echoed as {reply!r}")


@check("subscribe.array", "subscribe")
async def subscribe_array(ctx: Context) -> None:
    """MUST: a subscribe whose `subscription` is an array subscribes to every
    channel in it and echoes the array [meta: subscribe]."""
    first, second = ctx.channel("a"), ctx.channel("b")
    subscriber = await ctx.session()
    reply = await subscriber.subscribe(first, second)
    expect(reply.get("subscription") == [first, second], f"subscription echoed as {reply!r}")
    publisher = await ctx.session()
    await publisher.publish(second, {"to": "second"})
    await subscriber.receive(second)


@check("subscribe.meta_refused", "subscribe")
async def subscribe_meta_refused(ctx: Context) -> None:
    """MUST: subscribing to a meta channel (/meta/connect) is refused:
    successful false [chan: meta channels]."""
    session = await ctx.session()
    reply = await session.call(session.message("/meta/subscribe", subscription="/meta/connect"))
    expect(reply.get("successful") is False, f"subscribe to /meta/connect succeeded: {reply}")


@check("subscribe.missing_subscription", "subscribe")
async def subscribe_missing(ctx: Context) -> None:
    """MUST: a subscribe without `subscription` is refused: successful false
    with an error [meta: subscribe]."""
    session = await ctx.session()
    reply = await session.call(session.message("/meta/subscribe"))
    expect(reply.get("successful") is False, f"subscribe without subscription: {reply}")
    expect(isinstance(reply.get("error"), str), f"refusal without error: {reply}")


@check("subscribe.invalid_channel", "subscribe")
async def subscribe_invalid(ctx: Context) -> None:
    """MUST: a subscribe to an invalid channel name ("check" without the
    leading slash, or "/check/*/x" with a wildcard before the end) is refused
    [chan: channel names]."""
    session = await ctx.session()
    for bad in ("check", "/check/*/x"):
        reply = await session.call(session.message("/meta/subscribe", subscription=bad))
        expect(reply.get("successful") is False, f"subscribe to {bad!r} succeeded: {reply}")


@check("unsubscribe.reply", "subscribe")
async def unsubscribe_reply(ctx: Context) -> None:
    """MUST: an unsubscribe is answered successful true with `subscription`
    echoed [meta: unsubscribe]."""
    channel = ctx.channel()
    session = await ctx.subscriber(channel)
    reply = await session.unsubscribe(channel)
    expect(reply.get("successful") is True, f"unsubscribe failed: {reply}")
    expect(reply.get("subscription") == channel, f"subscription echoed as {reply!r}")


@check("unsubscribe.never_subscribed", "subscribe", feature="strict")
async def unsubscribe_never_subscribed(ctx: Context) -> None:
    """Engine rule (--strict; Faye and cometd-nodejs-server do it, the CometD
    Java server answers 400::channel_missing):
    unsubscribing from a channel never subscribed is answered successful true
    [meta: unsubscribe]."""
    session = await ctx.session()
    reply = await session.unsubscribe(ctx.channel("never"))
    expect(reply.get("successful") is True, f"unsubscribe answered {reply}")


@check("unsubscribe.stops_delivery", "subscribe")
async def unsubscribe_stops_delivery(ctx: Context) -> None:
    """MUST: after an unsubscribe, messages on that channel are no longer
    delivered to the session [meta: unsubscribe]."""
    gone, sentinel = ctx.channel("gone"), ctx.channel("sentinel")
    subscriber = await ctx.subscriber(gone, sentinel)
    await subscriber.unsubscribe(gone)
    publisher = await ctx.session()
    await publish_then_sentinel(publisher, [gone], sentinel)
    await subscriber.receive(sentinel)
    stray = [e for e in subscriber.events if e["channel"] == gone]
    expect(not stray, f"delivered after unsubscribe: {stray}")


@check("subscribe.service_not_delivered", "subscribe")
async def subscribe_service_not_delivered(ctx: Context) -> None:
    """MUST: messages published to a /service/ channel go to the server
    only, never to other clients, even to one that subscribed to it
    [chan: service channels]."""
    service = "/service" + ctx.channel()
    sentinel = ctx.channel("sentinel")
    subscriber = await ctx.subscriber(sentinel)
    await subscriber.call(subscriber.message("/meta/subscribe", subscription=service))
    publisher = await ctx.session()
    await publish_then_sentinel(publisher, [service], sentinel)
    await subscriber.receive(sentinel)
    stray = [e for e in subscriber.events if e["channel"] == service]
    expect(not stray, f"service message delivered to a client: {stray}")


# --------------------------------------------------------------------------- wildcards


async def wildcard_delivery(ctx: Context, pattern: str, base: str) -> list[str]:
    """Subscribe to `pattern`, publish to base, base/a, base/a/b; the channels
    delivered to the subscriber, in order (each once per delivery)."""
    sentinel = ctx.channel("sentinel")
    subscriber = await ctx.subscriber(pattern, sentinel)
    publisher = await ctx.session()
    await publish_then_sentinel(publisher, [base, base + "/a", base + "/a/b"], sentinel)
    await subscriber.receive(sentinel)
    return [e["channel"] for e in subscriber.events if e["channel"] != sentinel]


@check("wildcards.one_segment", "wildcards")
async def wildcards_one_segment(ctx: Context) -> None:
    """MUST: a subscriber of /x/* receives /x/a, not /x itself nor /x/a/b
    [chan: wildcards]."""
    base = ctx.channel("w")
    got = await wildcard_delivery(ctx, base + "/*", base)
    expect(got == [base + "/a"], f"{base}/* delivered {got}, wanted only {base}/a")


@check("wildcards.deep", "wildcards")
async def wildcards_deep(ctx: Context) -> None:
    """MUST: a subscriber of /x/** receives /x/a and /x/a/b, not /x itself
    [chan: wildcards]."""
    base = ctx.channel("w")
    got = await wildcard_delivery(ctx, base + "/**", base)
    expect(got == [base + "/a", base + "/a/b"], f"{base}/** delivered {got}")


@check("wildcards.overlap_once", "wildcards")
async def wildcards_overlap_once(ctx: Context) -> None:
    """MUST: a session subscribed to both /x/* and /x/a receives a publish to
    /x/a exactly once, with channel /x/a [chan: wildcards]."""
    base = ctx.channel("w")
    sentinel = ctx.channel("sentinel")
    subscriber = await ctx.subscriber(base + "/*", base + "/a", sentinel)
    publisher = await ctx.session()
    await publish_then_sentinel(publisher, [base + "/a"], sentinel)
    await subscriber.receive(sentinel)
    got = [e["channel"] for e in subscriber.events if e["channel"] != sentinel]
    expect(got == [base + "/a"], f"delivered {got}, wanted {base}/a once")


# --------------------------------------------------------------------------- publish


@check("publish.reply", "publish")
async def publish_reply(ctx: Context) -> None:
    """MUST: a publish is answered with its channel, its id and successful
    true; the reply carries no data [bayeux: publish]."""
    channel = ctx.channel()
    reply = await (await ctx.session()).publish(channel, {"x": 1})
    expect("data" not in reply, f"publish reply echoes data: {reply}")


@check("publish.delivered_fields", "publish")
async def publish_delivered_fields(ctx: Context) -> None:
    """MUST: a subscriber receives the message with its channel and
    identical data, and not as a reply (no `successful`) [bayeux: delivery]."""
    channel = ctx.channel()
    subscriber = await ctx.subscriber(channel)
    data = {"text": "héllo", "list": [1, 2.5, None, True], "nested": {"k": "v"}}
    await (await ctx.session()).publish(channel, data)
    event = (await subscriber.receive(channel))[0]
    expect(event.get("data") == data, f"data delivered as {event.get('data')!r}")
    expect("successful" not in event, f"delivery carries successful: {event}")


@check("publish.delivered_stripped", "publish", feature="strict")
async def publish_delivered_stripped(ctx: Context) -> None:
    """Engine rule (--strict; CometD does it, the protocol does not ask):
    a delivered message carries neither the publisher's clientId nor its
    id [bayeux: delivery]."""
    channel = ctx.channel()
    subscriber = await ctx.subscriber(channel)
    await (await ctx.session()).publish(channel, {"x": 1})
    event = (await subscriber.receive(channel))[0]
    for field in ("clientId", "id"):
        expect(field not in event, f"delivery carries the publisher's {field}: {event}")


@check("publish.own_message", "publish")
async def publish_own_message(ctx: Context) -> None:
    """MUST: a publisher subscribed to the channel receives its own message
    [bayeux: delivery]."""
    channel = ctx.channel()
    session = await ctx.subscriber(channel)
    await session.publish(channel, {"own": 1})
    await session.receive(channel)


@check("publish.meta_refused", "publish")
async def publish_meta_refused(ctx: Context) -> None:
    """MUST: a publish to a meta channel that is not a Bayeux operation
    (/meta/check) is refused: successful false [chan: meta channels]."""
    session = await ctx.session()
    reply = await session.call(session.message("/meta/check", data={}))
    expect(reply.get("successful") is False, f"publish to /meta/check succeeded: {reply}")


@check("publish.unknown_client", "publish")
async def publish_unknown_client(ctx: Context) -> None:
    """MUST: a publish with an unknown clientId is refused: successful false
    [bayeux: publish]."""
    request = {
        "channel": ctx.channel(),
        "clientId": unknown_client_id(ctx),
        "data": {},
        "id": ctx.next_id(),
    }
    reply = reply_to(await ctx.browser().post([request]), request)
    expect(reply.get("successful") is False, f"publish of an unknown client succeeded: {reply}")


@check("publish.ext_passthrough", "publish")
async def publish_ext_passthrough(ctx: Context) -> None:
    """MUST: an `ext` object the server does not know reaches subscribers
    unchanged [bayeux: ext]."""
    channel = ctx.channel()
    subscriber = await ctx.subscriber(channel)
    ext = {"checkExt": {"k": [1, "two"]}}
    await (await ctx.session()).publish(channel, {"x": 1}, ext=ext)
    event = (await subscriber.receive(channel))[0]
    got = (event.get("ext") or {}).get("checkExt")
    expect(got == ext["checkExt"], f"ext delivered as {event.get('ext')!r}")


@check("publish.order", "publish")
async def publish_order(ctx: Context) -> None:
    """MUST: messages of one publisher on one channel reach a subscriber in
    the order they were published (10 in one batch) [bayeux: delivery]."""
    channel = ctx.channel()
    subscriber = await ctx.subscriber(channel)
    publisher = await ctx.session()
    requests = [publisher.message(channel, data={"n": n}) for n in range(10)]
    await publisher.send(*requests)
    got = [e["data"].get("n") for e in await subscriber.receive(channel, 10)]
    expect(got == list(range(10)), f"delivered in the order {got}")


# --------------------------------------------------------------------------- batching


@check("batching.in_order", "batching")
async def batching_in_order(ctx: Context) -> None:
    """MUST: several messages in one request are each answered, with their
    ids, and processed in order: a subscribe then a publish to that channel
    in one batch delivers the publish [bayeux: batching]."""
    channel = ctx.channel()
    session = await ctx.session()
    requests = [
        session.message("/meta/subscribe", subscription=channel),
        session.message(channel, data={"batched": 1}),
    ]
    answer = await session.send(*requests)
    for request in requests:
        reply = reply_to(answer, request)
        expect(reply.get("successful") is True, f"batched {request['channel']} failed: {reply}")
    await session.receive(channel)


# --------------------------------------------------------------------------- errors


@check("errors.unknown_session_402", "errors")
async def errors_unknown_session(ctx: Context) -> None:
    """MUST (CometD): an unknown clientId on /meta/connect gets an error
    with code 402 ("402::..."), the code CometD servers and clients use
    for "handshake again" [bayeux: errors]."""
    request = {
        "channel": "/meta/connect",
        "clientId": unknown_client_id(ctx),
        "connectionType": "long-polling",
        "id": ctx.next_id(),
    }
    reply = reply_to(await ctx.browser().post([request]), request)
    expect(error_code(reply) == "402", f"error {reply.get('error')!r}, wanted 402::...")


@check("errors.meta_subscribe_403", "errors")
async def errors_meta_subscribe(ctx: Context) -> None:
    """MUST (CometD): a refused subscribe to /meta/connect gets an error with
    code 403 ("403::...") [bayeux: errors]."""
    session = await ctx.session()
    reply = await session.call(session.message("/meta/subscribe", subscription="/meta/connect"))
    expect(error_code(reply) == "403", f"error {reply.get('error')!r}, wanted 403::...")


@check("errors.failure_http_200", "errors")
async def errors_failure_http_200(ctx: Context) -> None:
    """MUST: a Bayeux failure (here an unknown clientId) is a message in an
    HTTP 200 response of Content-Type application/json, not an HTTP error
    [lp]."""
    body = json.dumps(
        [
            {
                "channel": "/meta/connect",
                "clientId": unknown_client_id(ctx),
                "connectionType": "long-polling",
                "id": "1",
            }
        ]
    )
    response = await ctx.browser().request("POST", ctx.target(), body.encode())
    expect(response.status == 200, f"HTTP {response.status} for a Bayeux failure")
    content_type = (response.header("content-type") or "").lower()
    expect(content_type.startswith("application/json"), f"Content-Type {content_type!r}")


@check("errors.invalid_json_400", "errors")
async def errors_invalid_json(ctx: Context) -> None:
    """MUST: a body that is not JSON gets HTTP 400 [lp]."""
    response = await ctx.browser().request("POST", ctx.target(), b"[{not json")
    expect(response.status == 400, f"HTTP {response.status} for a body that is not JSON")


@check("errors.empty_batch_400", "errors", feature="strict")
async def errors_empty_batch(ctx: Context) -> None:
    """Engine rule (--strict): an empty message array `[]` gets HTTP 400
    [lp]."""
    response = await ctx.browser().request("POST", ctx.target(), b"[]")
    expect(response.status == 400, f"HTTP {response.status} for []")


@check("errors.publish_pattern_405", "errors", feature="strict")
async def errors_publish_pattern(ctx: Context) -> None:
    """Engine rule (--strict; Faye does it, CometD accepts the publish): a
    publish to a wildcard channel gets "405::..." [chan: wildcards]."""
    session = await ctx.session()
    reply = await session.call(session.message(ctx.channel() + "/*", data={}))
    expect(error_code(reply) == "405", f"error {reply.get('error')!r}, wanted 405::...")


@check("errors.data_missing_400", "errors", feature="strict")
async def errors_data_missing(ctx: Context) -> None:
    """Engine rule (--strict; the protocol says data MUST be present, CometD
    does not check): a publish without data gets "400::..." [bayeux: publish]."""
    session = await ctx.session()
    reply = await session.call(session.message(ctx.channel()))
    expect(error_code(reply) == "400", f"error {reply.get('error')!r}, wanted 400::...")


# --------------------------------------------------------------------------- browser


def browser_cookies(headers: list[str]) -> list[str]:
    return [h for h in headers if h.strip().startswith("BAYEUX_BROWSER=")]


@check("browser.cookie_set", "browser", feature="browser_cookie")
async def browser_cookie_set(ctx: Context) -> None:
    """CometD: a handshake without a BAYEUX_BROWSER cookie gets one, with
    Path=/ and HttpOnly, so several tabs are recognised as one browser
    [multi]."""
    browser = ctx.browser()
    await ctx.handshake(browser)
    cookies = browser_cookies(browser.set_cookies)
    expect(cookies, f"no BAYEUX_BROWSER cookie set (Set-Cookie: {browser.set_cookies})")
    _, value, attributes = cookie_pairs(cookies[0])
    expect(value, "empty BAYEUX_BROWSER value")
    expect(attributes.get("path") == "/", f"cookie without Path=/: {cookies[0]!r}")
    expect("httponly" in attributes, f"cookie without HttpOnly: {cookies[0]!r}")


@check("browser.cookie_kept", "browser", feature="browser_cookie")
async def browser_cookie_kept(ctx: Context) -> None:
    """CometD: a handshake presenting a BAYEUX_BROWSER cookie does not get a
    new one [multi]."""
    browser = ctx.browser()
    await ctx.handshake(browser)
    expect(browser_cookies(browser.set_cookies), "no BAYEUX_BROWSER cookie set at all")
    before = len(browser.set_cookies)
    await ctx.handshake(browser)
    fresh = browser_cookies(browser.set_cookies[before:])
    expect(not fresh, f"a second BAYEUX_BROWSER cookie: {fresh}")


@check("browser.multiple_clients", "browser", feature="browser_cookie")
async def browser_multiple_clients(ctx: Context) -> None:
    """CometD: when two sessions of one browser (same BAYEUX_BROWSER cookie)
    both long-poll, the second's connect is answered at once with advice
    multiple-clients true, reconnect "retry" and an interval > 0 [multi]."""
    browser = ctx.browser()
    first = await ctx.session(browser)
    expect(browser_cookies(browser.set_cookies), "no BAYEUX_BROWSER cookie set at all")
    second = await ctx.session(browser)
    held = asyncio.create_task(first.connect())
    await asyncio.sleep(0.3)
    limit = quick(ctx)
    try:
        reply, took = await timed(second.connect())
    finally:
        held.cancel()
    advice = reply.get("advice") or {}
    expect(advice.get("multiple-clients") is True, f"no multiple-clients advice: {reply}")
    expect(advice.get("reconnect") == "retry", f"advice {advice!r}")
    interval = advice.get("interval")
    expect(isinstance(interval, int) and interval > 0, f"advice.interval {interval!r}")
    expect(took < limit, f"answered after {took:.2f} s (limit {limit:.1f} s)")


@check("browser.cookie_binding", "browser", feature="strict")
async def browser_cookie_binding(ctx: Context) -> None:
    """Engine rule (--strict): a session is bound to the BAYEUX_BROWSER
    cookie it was created under; its clientId under another cookie gets
    "402::session_unknown" [multi]."""
    if "browser_cookie" not in ctx.features:
        raise CheckSkipped("needs " + FEATURES["browser_cookie"][1])
    owner = ctx.browser()
    session = await ctx.session(owner)
    expect(browser_cookies(owner.set_cookies), "no BAYEUX_BROWSER cookie set at all")
    thief = ctx.browser()
    thief.cookies["BAYEUX_BROWSER"] = "checkother" + ctx.run_id
    request = session.message("/meta/connect", connectionType="long-polling")
    reply = reply_to(await thief.post([request]), request)
    expect(error_code(reply) == "402", f"another cookie's connect answered {reply}")


# --------------------------------------------------------------------------- long-polling


@check("long_polling.paths", "long-polling")
async def long_polling_paths(ctx: Context) -> None:
    """MUST: <base>/handshake, <base>/connect and <base> itself all accept
    Bayeux messages (CometD clients append the channel's last segment to the
    URL) [lp]."""
    browser = ctx.browser()
    request = ctx.handshake_message()
    reply = reply_to(await browser.post([request], path="/handshake"), request)
    expect(reply.get("successful") is True, f"handshake at /handshake failed: {reply}")
    session = Session(browser, str(reply["clientId"]), reply)
    connect = session.connect_message(advice={"timeout": 0})
    reply = reply_to(await session.send(connect, path="/connect"), connect)
    expect(reply.get("successful") is True, f"connect at /connect failed: {reply}")
    reply = await session.call(session.message("/meta/subscribe", subscription=ctx.channel()))
    expect(reply.get("successful") is True, f"subscribe at <base> failed: {reply}")


@check("long_polling.content_type", "long-polling")
async def long_polling_content_type(ctx: Context) -> None:
    """MUST: long-polling responses have Content-Type application/json [lp]."""
    request = ctx.handshake_message()
    response = await ctx.browser().request("POST", ctx.target(), json.dumps([request]).encode())
    content_type = (response.header("content-type") or "").lower()
    expect(content_type.startswith("application/json"), f"Content-Type {content_type!r}")


# --------------------------------------------------------------------------- JSONP


JSONP = re.compile(r"^\s*(?:/\*\*/)?\s*([A-Za-z_$][\w$.]*)\((.*)\)\s*;?\s*$", re.S)


async def jsonp_get(ctx: Context, callback: str, messages: list[Message]) -> Response:
    query = urlencode({"jsonp": callback, "message": json.dumps(messages)})
    return await ctx.browser().request("GET", f"{ctx.target()}?{query}", content_type=None)


@check("jsonp.handshake", "callback-polling", feature="jsonp", transport="callback-polling")
async def jsonp_handshake(ctx: Context) -> None:
    """MUST for callback-polling: GET <base>?jsonp=cb&message=[...] is
    answered `cb([...])` with a JavaScript Content-Type [jsonp]."""
    request = ctx.handshake_message(["callback-polling"])
    response = await jsonp_get(ctx, "check_cb1", [request])
    expect(response.status == 200, f"HTTP {response.status}")
    content_type = (response.header("content-type") or "").lower()
    expect(
        content_type.startswith(("text/javascript", "application/javascript")),
        f"Content-Type {content_type!r}, wanted text/javascript",
    )
    match = JSONP.match(response.text)
    expect(match and match.group(1) == "check_cb1", f"not check_cb1(...): {response.text!r}")
    assert match is not None
    reply = reply_to(parse_messages(match.group(2)), request)
    expect(reply.get("successful") is True, f"JSONP handshake refused: {reply}")


@check("jsonp.bad_callback_400", "callback-polling", feature="strict", transport="callback-polling")
async def jsonp_bad_callback(ctx: Context) -> None:
    """Engine rule (--strict): a `jsonp` callback that is not a plain name
    (alert(1)) or is longer than 64 characters gets HTTP 400, so the endpoint
    cannot be made to run script [jsonp]."""
    for callback in ("alert(1)", "a" * 65):
        response = await jsonp_get(ctx, callback, [ctx.handshake_message(["callback-polling"])])
        expect(response.status == 400, f"HTTP {response.status} for callback {callback!r}")


# --------------------------------------------------------------------------- WebSocket


@check("websocket.handshake", "websocket", feature="websocket", transport="websocket")
async def websocket_handshake(ctx: Context) -> None:
    """MUST for websocket: an upgrade at <base> succeeds and a handshake in a
    text frame is answered by a text frame with a JSON array holding the
    successful handshake reply [ws]."""
    ws = await ctx.websocket()
    await ws.handshake()


async def websocket_subscriber(ctx: Context, channel: str) -> WsSession:
    """A WebSocket session subscribed to `channel`, its first connect done."""
    ws = await ctx.websocket()
    await ws.handshake()
    reply = await ws.call(ws.message("/meta/subscribe", subscription=channel))
    expect(reply.get("successful") is True, f"subscribe over WebSocket failed: {reply}")
    reply = await ws.call(ws.connect_message(advice={"timeout": 0}))
    expect(reply.get("successful") is True, f"first connect over WebSocket failed: {reply}")
    return ws


@check("websocket.delivery", "websocket", feature="websocket", transport="websocket", holds=1)
async def websocket_delivery(ctx: Context) -> None:
    """MUST for websocket: while a connect is held on the socket, a message
    published (over HTTP, by another session) is written to the socket at
    once, and the held connect is still answered by the end of its hold
    [ws]."""
    channel = ctx.channel()
    ws = await websocket_subscriber(ctx, channel)
    connect = ws.connect_message()
    await ws.send(connect)
    await asyncio.sleep(0.3)
    limit = quick(ctx)
    await (await ctx.session()).publish(channel, {"ws": 1})
    await ws.wait_for(lambda m: m.get("channel") == channel, what="the event", timeout=limit)
    reply = await ws.expect_reply(connect, timeout=ctx.hold_timeout)
    expect(reply.get("successful") is True, f"held connect answered {reply}")


@check("websocket.publish_reply", "websocket", feature="websocket", transport="websocket")
async def websocket_publish_reply(ctx: Context) -> None:
    """MUST for websocket: a publish sent over the socket is answered there,
    with its id and successful true [ws]."""
    ws = await websocket_subscriber(ctx, ctx.channel("other"))
    reply = await ws.call(ws.message(ctx.channel(), data={"x": 1}))
    expect(reply.get("successful") is True, f"publish over WebSocket answered {reply}")


@check("websocket.resume_session", "websocket", feature="websocket", transport="websocket")
async def websocket_resume(ctx: Context) -> None:
    """MUST for websocket: when a session's socket drops (no close frame),
    a new socket whose first message is a connect for that session is
    served, successful true: the client goes on without a new handshake
    [ws]."""
    first = await ctx.websocket()
    await first.handshake()
    first.ws.abort()
    second = await ctx.websocket()
    second.client_id = first.client_id
    reply = await second.call(second.connect_message(advice={"timeout": 0}))
    expect(reply.get("successful") is True, f"connect on a new socket answered {reply}")


@check("websocket.bad_json_isolated", "websocket", feature="websocket", transport="websocket")
async def websocket_bad_json(ctx: Context) -> str:
    """MUST for websocket: a frame that is not JSON ends at most that
    connection; another WebSocket session goes on being served [ws]."""
    bystander = await ctx.websocket()
    await bystander.handshake()
    bad = await ctx.websocket()
    await bad.ws.send_text("[{not json")
    outcome = "no answer"
    try:
        await bad.ws.receive_text(min(ctx.request_timeout, 3.0))
        outcome = "answered"
    except Exception as exc:  # closed or silent: both fine for this rule
        outcome = str(exc)
    reply = await bystander.call(bystander.connect_message(advice={"timeout": 0}))
    expect(reply.get("successful") is True, f"bystander's connect answered {reply}")
    return f"bad socket: {outcome}"


# --------------------------------------------------------------------------- extensions


async def ack_session(ctx: Context, *channels: str) -> Session:
    session = await ctx.handshake(ext={"ack": True})
    ext = session.handshake_reply.get("ext") or {}
    expect(ext.get("ack") is True, f"handshake reply ext {ext!r}, wanted ack true")
    if channels:
        await session.subscribe(*channels)
    return session


def ack_of(reply: Message) -> Any:
    return (reply.get("ext") or {}).get("ack")


@check("ack.negotiated", "extensions", feature="ack")
async def ack_negotiated(ctx: Context) -> None:
    """Ack extension: a handshake with ext {"ack": true} is answered with
    ext {"ack": true} [ack]."""
    await ack_session(ctx)


@check("ack.batch_numbers", "extensions", feature="ack")
async def ack_batch_numbers(ctx: Context) -> None:
    """Ack extension: connect replies carry an integer ext.ack, each one
    greater than the one before [ack]."""
    channel = ctx.channel()
    session = await ack_session(ctx, channel)
    publisher = await ctx.session()
    numbers = []
    reply = await session.connect(hold=False, ext={"ack": -1})
    numbers.append(ack_of(reply))
    for n in range(2):
        await publisher.publish(channel, {"n": n})
        reply = await session.connect(ext={"ack": numbers[-1]})
        numbers.append(ack_of(reply))
    expect(all(isinstance(n, int) for n in numbers), f"ext.ack values {numbers}")
    expect(numbers == sorted(set(numbers)), f"ext.ack values not increasing: {numbers}")


@check("ack.redelivery", "extensions", feature="ack")
async def ack_redelivery(ctx: Context) -> None:
    """Ack extension: events delivered in batch N come again on the next
    connect when the client acknowledges less than N [ack]."""
    channel = ctx.channel()
    session = await ack_session(ctx, channel)
    first = await session.connect(hold=False, ext={"ack": -1})
    await (await ctx.session()).publish(channel, {"again": 1})
    batch = await session.connect(ext={"ack": ack_of(first)})
    expect(
        len([e for e in session.events if e["channel"] == channel]) == 1,
        f"event not delivered once in batch {ack_of(batch)}",
    )
    await session.connect(hold=False, ext={"ack": ack_of(first)})  # not acknowledging it
    again = [e for e in session.events if e["channel"] == channel]
    expect(len(again) == 2, f"unacknowledged event not re-sent ({len(again)} deliveries)")


@check("timesync.reply", "extensions", feature="timesync")
async def timesync_reply(ctx: Context) -> None:
    """Timesync extension: a meta request with ext.timesync {tc, l, o} gets
    a reply whose ext.timesync echoes tc and has integer ts, p and a [tsync]."""
    tc = int(time.time() * 1000)
    request = ctx.handshake_message(ext={"timesync": {"tc": tc, "l": 0, "o": 0}})
    reply = reply_to(await ctx.browser().post([request]), request)
    sync = (reply.get("ext") or {}).get("timesync")
    expect(isinstance(sync, dict), f"reply ext {reply.get('ext')!r} without timesync")
    assert isinstance(sync, dict)
    expect(sync.get("tc") == tc, f"timesync.tc {sync.get('tc')!r}, sent {tc}")
    for field in ("ts", "p", "a"):
        expect(isinstance(sync.get(field), int), f"timesync.{field} is {sync.get(field)!r}")
