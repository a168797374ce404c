"""Presence: the sessions subscribed to a channel, cluster-wide.

Opt-in per channel pattern (`presence_channels="/chat/**"`, or
`server.presence("/chat/**")`).  A session is a *member* of a concrete
channel matching such a pattern while it is subscribed to that very name
(a wildcard subscription such as `/chat/*` watches, it is no membership).
Each member is described as

    {"clientId": ..., "user": session.attributes["user"],
     "info": session.attributes["presence"]}

`user` is what the security policy set (JwtPolicy: the token's `sub`;
BackendHooks: whatever the backend's attributes said); `info` is anything
JSON an application's policy puts in `session.attributes["presence"]` at
handshake (None if absent).

A member leaves on unsubscribe, on /meta/disconnect, on expiry and on a
removal by the server (the HTTP API's disconnect, an expired token): the
session-removed path, where unsubscribe listeners are not called, is
handled too.

**Stores.**  One process: a dict channel -> {clientId: member}; a count is
`len()`.  In a cluster (`--broker`), also Redis, written by each node for
its own sessions only, through redis-py's asyncio client (keys under the
broker's prefix `bayeux:<db>:`):

- `presence:m:<channel>`: HASH clientId -> member JSON (with its `node`);
  the count is `HLEN` (O(1), whatever the number of members);
- `presence:n:<node>:<channel>`: SET of that node's clientIds in the channel;
- `presence:c:<node>`: SET of the channels that node has members in;
- `presence:alive:<node>`: the node's liveness key (`PX` = 2/3 of
  `presence_ttl`, refreshed every `presence_ttl`/6);
- `presence:nodes`: SET of the nodes that have presence data.

Writes leave in one pipeline per loop turn (a join and leave in the same
turn write nothing); the loop never waits for Redis.  If Redis fails, joins
and leaves keep working locally, the failure is counted
(`presence_redis_errors`) and logged once per cause, and once Redis answers
again the node *reconciles*: its index sets against its live sessions
(HSET what is missing, HDEL what is stale).  It does so at start too (a
restarted node of the same id) and when it finds its liveness key gone (a
node stalled past the bound and presumed dead).

**A crashed node** stops refreshing its liveness key, which expires within
2/3 ttl of its last refresh.  Every node sweeps every ttl/6 (a task of
its own, apart from its heartbeat): for each node of `presence:nodes` whose
key is gone, it moves that node's members out, 1,000 per Lua call (SPOP
from the node's set, HMGET, HDEL, only while the node's liveness key is
absent: atomic, so two sweepers never remove the same member twice and a
node that came back keeps what it wrote), and publishes their leave
events.  So a crashed node's members are gone within `presence_ttl`
(2/3 + 1/6 of it, the last 1/6 a margin for the purge itself: about a
millisecond per thousand members).

**Events.**  Joins and leaves are published, through the normal
server-side publish (so to every node's subscribers), on the companion
channel `<presence_prefix><channel>` (`/presence/chat/room` for
`/chat/room`), data `{"action": "join"|"leave", "channel", "clientId",
"user", "info"}`.  Subscribing to a companion channel (or pattern) needs
the right to subscribe to the channel (or pattern) itself: the security
policy's `can_subscribe` and the channel's authorizers are asked for the
base name.

**Coalescing.**  Each node publishes at most `presence_event_rate` events
per second per channel (token bucket, burst = the rate; 0 = no limit).
Past it, events of that channel are dropped (`presence_events_coalesced`,
logged once per cause), and once a second the channel gets one
`{"action": "sync", "channel", "count"}` instead, with the exact count: a
subscriber re-reads the member list if it needs it.

**Queries.**  `/service/presence` with data `{"channel": "/chat/room",
"members": true, "limit": 100}` answers `{"channel", "count", "members":
[...], "truncated": bool}` (`members` only if asked; at most MAX_LIMIT);
allowed to a session that may subscribe to the channel (policy and
authorizers, as for the companion channel) or an admin (admin token in
`ext`, or `attributes["admin"] is True`); others get `403::service_denied`
and nothing else.  The HTTP API has `GET <api_path>/presence/<channel>
?members=1&limit=N`.  Any node answers from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from engine.delivery._batch import encode_message
from engine.protocol.message import Message
from engine.protocol.session import Session
from engine.ratelog import CauseLog
from engine.routing._channels import (
    CHANNEL_OK_CONCRETE,
    ChannelTrie,
    normalize_channel,
    validate_channel,
)

if TYPE_CHECKING:
    from engine.protocol.core import BayeuxCore

__all__ = ["MAX_LIMIT", "PRESENCE_SERVICE", "Presence", "PresenceError"]

log = logging.getLogger("engine.presence")
limit_log = CauseLog(log)

PRESENCE_SERVICE = "/service/presence"
DEFAULT_LIMIT = 100  # members listed when a query asks for members without a limit
MAX_LIMIT = 1000  # members one query lists at most
SYNC_PERIOD = 1.0  # s between the sync messages of coalesced channels
PURGE_CHUNK = 1000  # members of a dead node moved out per Redis call
FLUSH_CHUNK = 5000  # member writes per pipeline
BACKOFF_MAX = 2.0  # s between attempts while Redis fails

# One step of moving a dead node's members of one channel out, atomic: nothing
# if the node is alive again (KEYS[3]); else SPOP up to ARGV[1] of its
# clientIds (KEYS[1]), read and delete their members (KEYS[2]), and once its
# set is empty drop the channel (ARGV[2]) from its channels (KEYS[4]).  So two
# sweepers never take the same member (no leave twice), and a node that came
# back keeps everything it wrote.  Returns {status, members...}: status -1
# alive, 0 done, 1 more to come.
PURGE_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then return {-1} end
local ids = redis.call('SPOP', KEYS[1], ARGV[1])
local out = {1}
if #ids > 0 then
  local values = redis.call('HMGET', KEYS[2], unpack(ids))
  redis.call('HDEL', KEYS[2], unpack(ids))
  for i = 1, #ids do
    if values[i] then table.insert(out, values[i]) end
  end
end
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[4], ARGV[2])
  out[1] = 0
end
return out
"""
# A dead node with no channel left is forgotten, unless it is alive again.
FORGET_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('SCARD', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[3], ARGV[1])
end
return 0
"""


class PresenceError(Exception):
    """A query refused or failed: an HTTP-style status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Presence:
    """Membership of presence channels, their events, queries (see the module)."""

    def __init__(
        self,
        core: BayeuxCore,
        *,
        prefix: str = "/presence",
        event_rate: int = 100,
        ttl_ms: int = 15000,
        is_admin: Callable[[Session, Message], bool] | None = None,
    ) -> None:
        self.core = core
        self.prefix = normalize_channel(prefix)
        self.event_rate = float(event_rate)
        self.ttl_ms = ttl_ms
        self.is_admin = is_admin or (lambda session, message: False)
        self.patterns = ChannelTrie()
        self.pattern_list: list[str] = []
        # channel -> clientId -> member ({"clientId", "user", "info"}): this node's.
        self.local: dict[str, dict[str, dict[str, Any]]] = {}
        self.of_session: dict[str, set[str]] = {}  # clientId -> its presence channels
        self.buckets: dict[str, list[float]] = {}  # channel -> [tokens, when]
        self.unsynced: set[str] = set()  # channels whose events were coalesced
        self.store: RedisPresence | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self.closed = False  # stopped: its listeners (still registered) do nothing
        core.hooks.session_removed.append(self._removed)

    # -------------------------------------------------------------- patterns

    def add_pattern(self, pattern: str) -> None:
        name = normalize_channel(pattern)
        if not validate_channel(name) or name.startswith(("/meta/", "/service/")):
            raise ValueError(f"presence needs a broadcast channel or pattern: {pattern!r}")
        if self.is_companion(name):
            raise ValueError(f"{pattern!r} is under the presence events prefix {self.prefix!r}")
        if name in self.pattern_list:
            return
        self.pattern_list.append(name)
        self.patterns.add(name, True)
        self.core.hooks.add_subscribe_listener(name, self._subscribed)
        self.core.hooks.add_unsubscribe_listener(name, self._unsubscribed)

    def is_companion(self, name: str) -> bool:
        return name.startswith(self.prefix + "/")

    def base_of(self, companion: str) -> str:
        """`/chat/room` for `/presence/chat/room` (a companion name)."""
        return companion[len(self.prefix) :]

    def tracked(self, channel: str) -> bool:
        """Is `channel` a concrete channel with presence?"""
        return (
            "*" not in channel
            and not self.is_companion(channel)
            and bool(self.patterns.match(channel))
        )

    # ------------------------------------------------------------ membership

    def _subscribed(self, session: Session, channel: str) -> None:
        if self.closed or not self.tracked(channel) or session.removed:
            return
        members = self.local.get(channel)
        if members is None:
            members = self.local[channel] = {}
        elif session.id in members:
            return  # (two presence patterns cover it: told twice)
        attributes = session.attributes or {}
        member = {
            "clientId": session.id,
            "user": attributes.get("user"),
            "info": attributes.get("presence"),
        }
        if member["user"] is not None or member["info"] is not None:
            try:
                orjson.dumps(member)
            except (TypeError, orjson.JSONEncodeError):
                limit_log.warning(
                    "presence_not_json",
                    "session %s: attributes user/presence are not JSON; its member has none",
                    session.id,
                )
                member["user"] = member["info"] = None
        members[session.id] = member
        channels = self.of_session.get(session.id)
        if channels is None:
            channels = self.of_session[session.id] = set()
        channels.add(channel)
        self.core.stats.presence_joins += 1
        if self.store is not None:
            self.store.changed(channel, session.id)
        self.event(channel, "join", member)

    def _unsubscribed(self, session: Session, channel: str) -> None:
        self._leave(session.id, channel)
        channels = self.of_session.get(session.id)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self.of_session[session.id]

    def _removed(self, session: Session, timeout: bool) -> None:
        for channel in self.of_session.pop(session.id, ()):
            self._leave(session.id, channel)

    def _leave(self, client_id: str, channel: str) -> None:
        members = self.local.get(channel)
        if members is None:
            return
        member = members.pop(client_id, None)
        if member is None:
            return
        if not members:
            del self.local[channel]
        self.core.stats.presence_leaves += 1
        if self.store is not None:
            self.store.changed(channel, client_id)
        self.event(channel, "leave", member)

    # ---------------------------------------------------------------- events

    def event(self, channel: str, action: str, member: dict[str, Any]) -> None:
        """Publish a join or leave on the companion channel, within the rate."""
        if self.event_rate and not self._within_rate(channel):
            self.core.stats.presence_events_coalesced += 1
            self.unsynced.add(channel)
            limit_log.warning(
                "presence_coalesced",
                "presence events on %s past presence_event_rate=%d/s: coalesced into "
                "sync messages (%d so far)",
                channel,
                self.event_rate,
                self.core.stats.presence_events_coalesced,
            )
            return
        data = {
            "action": action,
            "channel": channel,
            "clientId": member.get("clientId"),
            "user": member.get("user"),
            "info": member.get("info"),
        }
        self._publish(channel, data)

    def _publish(self, channel: str, data: dict[str, Any]) -> None:
        try:
            self.core.publish_from(self.prefix + channel, {"data": data})
        except (TypeError, orjson.JSONEncodeError):  # (info that is not JSON)
            limit_log.warning(
                "presence_not_json", "a presence event on %s is not JSON; not sent", channel
            )

    def _within_rate(self, channel: str) -> bool:
        now = self.core.loop.time()
        rate = self.event_rate
        bucket = self.buckets.get(channel)
        if bucket is None:
            bucket = self.buckets[channel] = [rate, now]
        tokens = min(rate, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    async def _sync_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(SYNC_PERIOD)
            try:
                await self._sync_once()
            except Exception:
                limit_log.exception("presence_sync", "presence sync messages failed")

    async def _sync_once(self) -> None:
        now = self.core.loop.time()
        rate = self.event_rate
        # Buckets full again are forgotten (a channel's bucket is made when needed).
        for channel in [c for c, b in self.buckets.items() if b[0] + (now - b[1]) * rate >= rate]:
            if channel not in self.unsynced:
                del self.buckets[channel]
        channels, self.unsynced = self.unsynced, set()
        for channel in channels:
            try:
                count = await self.count(channel)
            except PresenceError:
                self.unsynced.add(channel)  # (Redis down: next time)
                continue
            self.core.stats.presence_syncs += 1
            self._publish(channel, {"action": "sync", "channel": channel, "count": count})

    # --------------------------------------------------------------- queries

    def check_channel(self, value: object) -> str:
        if type(value) is not str:
            raise PresenceError(400, "channel must be a string")
        name = normalize_channel(value)
        if validate_channel(name) != CHANNEL_OK_CONCRETE:
            raise PresenceError(400, f"{value!r} is not a channel name (no wildcards here)")
        if not self.tracked(name):
            raise PresenceError(404, f"{name!r} has no presence (see presence_channels)")
        return name

    async def count(self, channel: str) -> int:
        if self.store is None:
            return len(self.local.get(channel, ()))
        return await self.store.count(channel)

    def query_now(self, channel: str, members: bool, limit: int) -> dict[str, Any]:
        """One process: the answer at once."""
        here = self.local.get(channel, {})
        result: dict[str, Any] = {"channel": channel, "count": len(here)}
        if members:
            listed = list(here.values())[:limit] if limit < len(here) else list(here.values())
            result["members"] = listed
            result["truncated"] = len(here) > len(listed)
        return result

    async def query(self, channel: str, members: bool = False, limit: int = DEFAULT_LIMIT) -> Any:
        """`{"channel", "count"[, "members", "truncated"]}` of a presence channel."""
        if self.store is None:
            return self.query_now(channel, members, limit)
        return await self.store.query(channel, members, limit)

    @staticmethod
    def query_limit(value: object) -> int:
        if value is None:
            return DEFAULT_LIMIT
        if type(value) is not int or not 0 <= value:
            raise PresenceError(400, "limit must be an integer >= 0")
        return min(value, MAX_LIMIT)

    def service(self, session: Session, message: Message) -> Any:
        """`/service/presence` (see the module docstring)."""
        data = message.get("data")
        try:
            if type(data) is not dict:
                raise PresenceError(400, 'data must be {"channel": ..., ["members", "limit"]}')
            channel = self.check_channel(data.get("channel"))
            limit = self.query_limit(data.get("limit"))
        except PresenceError as exc:
            self._answer(session, message, error=f"{exc.status}::presence_query_invalid")
            return None
        members = data.get("members") is True
        if self.is_admin(session, message):
            allowed: bool | None = True
        else:
            allowed = self.core.subscribe_allowed_now(session, channel, message)
        if allowed is False:
            self.core.stats.presence_refused += 1
            raise PermissionError(f"presence of {channel} needs the right to subscribe to it")
        if allowed is True and self.store is None:
            return self.query_now(channel, members, limit)
        self.core.hooks.spawn(self._answer_later(session, message, channel, members, limit))
        return None

    async def _answer_later(
        self, session: Session, message: Message, channel: str, members: bool, limit: int
    ) -> None:
        if not self.is_admin(session, message) and not await self.core.subscribe_allowed(
            session, channel, message
        ):
            self.core.stats.presence_refused += 1
            self._answer(session, message, error="403::service_denied")
            return
        try:
            result = await self.query(channel, members, limit)
        except PresenceError as exc:
            self._answer(session, message, error=f"{exc.status}::presence_unavailable")
            return
        self._answer(session, message, data=result)

    def _answer(
        self, session: Session, message: Message, data: Any = None, error: str | None = None
    ) -> None:
        if session.removed:
            return
        answer: Message = {"channel": PRESENCE_SERVICE, "successful": error is None}
        if error is None:
            answer["data"] = data
        else:
            answer["error"] = error
        if message.get("id") is not None:
            answer["id"] = message["id"]
        self.core.deliver(session, encode_message(answer))

    # ------------------------------------------------------------------ life

    def use_redis(self, url: str, key_prefix: str, node_id: str) -> None:
        self.store = RedisPresence(self, url, key_prefix, node_id)

    async def start(self) -> None:
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())
        if self.store is not None:
            self.store.start()

    async def stop(self) -> None:
        """A stopping node: its members leave (events, and Redis at once)."""
        self.closed = True
        if self._sync_task is not None:
            self._sync_task.cancel()
            self._sync_task = None
        for channel, members in list(self.local.items()):
            for member in list(members.values()):
                self.event(channel, "leave", member)
        self.local.clear()
        self.of_session.clear()
        if self.store is not None:
            await self.store.stop()
        if self._removed in self.core.hooks.session_removed:
            self.core.hooks.session_removed.remove(self._removed)


class RedisPresence:
    """The cluster's presence in Redis (keys and rules: the module docstring)."""

    def __init__(self, presence: Presence, url: str, key_prefix: str, node_id: str) -> None:
        import redis.asyncio

        self.presence = presence
        self.stats = presence.core.stats
        self.node_id = node_id
        self.redis: Any = redis.asyncio.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        p = key_prefix + "presence:"
        self.k_members = p + "m:"
        self.k_node_set = p + "n:"
        self.k_channels = p + "c:"
        self.k_alive = p + "alive:"
        self.k_nodes = p + "nodes"
        ttl = presence.ttl_ms
        self.alive_px = max(1, ttl * 2 // 3)
        self.period = ttl / 6000.0  # s between refreshes and sweeps
        self.dirty: set[tuple[str, str]] = set()
        self._flush_scheduled = False
        self._flushing = False
        self._reconciling = False
        self.reconcile_needed = True  # at start, after an outage, after a presumed death
        self.failing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._purge: Any = self.redis.register_script(PURGE_SCRIPT)
        self._forget: Any = self.redis.register_script(FORGET_SCRIPT)
        self._wake = asyncio.Event()
        self._closing = False
        self._stopping = asyncio.Event()

    # ---------------------------------------------------------------- writes

    def changed(self, channel: str, client_id: str) -> None:
        self.dirty.add((channel, client_id))
        if not self._flush_scheduled and not self._flushing and not self.failing:
            self._flush_scheduled = True
            self.presence.core.loop.call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        if self._flushing or not self.dirty:
            return
        self._flushing = True
        self.presence.core.hooks.spawn(self._flush())

    async def _flush(self) -> None:
        try:
            while (
                self.dirty
                and not self.failing
                and not self.reconcile_needed
                and not self._reconciling
            ):
                batch: list[tuple[str, str]] = []
                while self.dirty and len(batch) < FLUSH_CHUNK:
                    batch.append(self.dirty.pop())
                try:
                    await self._write(batch)
                except Exception as exc:
                    self.dirty.update(batch)
                    self._failed("write", exc)
                    return
        finally:
            self._flushing = False

    async def _write(self, batch: list[tuple[str, str]]) -> None:
        local = self.presence.local
        node = self.node_id
        pipe = self.redis.pipeline(transaction=False)
        channels: set[str] = set()
        for channel, client_id in batch:
            member = local.get(channel, {}).get(client_id)
            index = self.k_node_set + node + ":" + channel
            if member is not None:
                pipe.hset(
                    self.k_members + channel, client_id, orjson.dumps({**member, "node": node})
                )
                pipe.sadd(index, client_id)
                channels.add(channel)
            else:
                pipe.hdel(self.k_members + channel, client_id)
                pipe.srem(index, client_id)
        if channels:
            pipe.sadd(self.k_channels + node, *channels)
        await pipe.execute()

    def _failed(self, what: str, exc: BaseException) -> None:
        self.stats.presence_redis_errors += 1
        if not self.failing:
            self.failing = True
            self.reconcile_needed = True
        limit_log.warning(
            f"presence_redis:{what}",
            "presence: Redis failed (%s: %s); members are kept here and written back "
            "once it answers",
            what,
            exc,
        )
        self._wake.set()

    async def reconcile(self) -> None:
        """Make Redis hold exactly this node's live members (see the module)."""
        self._reconciling = True
        try:
            await self._reconcile()
        finally:
            self._reconciling = False

    async def _reconcile(self) -> None:
        local = self.presence.local
        node = self.node_id
        # Everything changed so far is written below; what changes meanwhile
        # stays dirty and is flushed after.
        self.dirty.clear()
        known = {c.decode() for c in await self.redis.smembers(self.k_channels + node)}
        await self.redis.sadd(self.k_nodes, node)
        for channel in known | set(local):
            index = self.k_node_set + node + ":" + channel
            there = {c.decode() for c in await self.redis.smembers(index)}
            here = local.get(channel, {})
            pipe = self.redis.pipeline(transaction=False)
            stale = there - set(here)
            if stale:
                pipe.hdel(self.k_members + channel, *stale)
                pipe.srem(index, *stale)
            for client_id, member in here.items():
                pipe.hset(
                    self.k_members + channel, client_id, orjson.dumps({**member, "node": node})
                )
            if here:
                pipe.sadd(index, *here)
                pipe.sadd(self.k_channels + node, channel)
            else:
                pipe.srem(self.k_channels + node, channel)
            await pipe.execute()
        self.stats.presence_reconciles += 1

    # ------------------------------------------------------ liveness, sweeps

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run(), name="presence-redis"))
        # (apart: a long purge never delays this node's own heartbeat)
        self._tasks.append(loop.create_task(self._sweeper(), name="presence-sweep"))

    async def _run(self) -> None:
        delay = 0.0
        while not self._closing:
            try:
                await self._heartbeat()
                if self.reconcile_needed:
                    self.reconcile_needed = False
                    try:
                        await self.reconcile()
                    except BaseException:
                        self.reconcile_needed = True
                        raise
                if self.failing:
                    self.failing = False
                    log.info("presence: Redis answers again; this node's members written back")
                if self.dirty and not self._flushing:
                    self._flushing = True
                    await self._flush()
                delay = self.period * random.uniform(0.8, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed("heartbeat", exc)
                delay = min(BACKOFF_MAX, self.period)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _sweeper(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), self.period * random.uniform(0.8, 1.0)
                )
            if self._closing:
                return
            try:
                await self._sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed("sweep", exc)

    async def _heartbeat(self) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.exists(self.k_alive + self.node_id)
        pipe.set(self.k_alive + self.node_id, b"1", px=self.alive_px)
        pipe.sadd(self.k_nodes, self.node_id)
        existed, _, _ = await pipe.execute()
        if not existed and not self.reconcile_needed:
            # Presumed dead (stalled past the bound): others may have moved
            # our members out; write them back.
            self.reconcile_needed = True
            limit_log.warning(
                "presence_presumed_dead",
                "presence: this node's liveness key had expired (stalled > %d ms?); "
                "its members are written back",
                self.alive_px,
            )

    async def _sweep(self) -> None:
        nodes = [n.decode() for n in await self.redis.smembers(self.k_nodes)]
        others = [n for n in nodes if n != self.node_id]
        if not others:
            return
        pipe = self.redis.pipeline(transaction=False)
        for node in others:
            pipe.exists(self.k_alive + node)
        alive = await pipe.execute()
        for node, up in zip(others, alive, strict=True):
            if not up:
                await self._purge_node(node)

    async def _purge_node(self, node: str) -> None:
        """Move a dead node's members out, publishing their leaves."""
        alive = self.k_alive + node
        channels_key = self.k_channels + node
        channels = [c.decode() for c in await self.redis.smembers(channels_key)]
        removed = 0
        for channel in channels:
            keys = [self.k_node_set + node + ":" + channel, self.k_members + channel]
            while True:
                found = await self._purge(
                    keys=[*keys, alive, channels_key], args=[PURGE_CHUNK, channel]
                )
                status, values = int(found[0]), found[1:]
                removed += len(values)
                self.stats.presence_expired += len(values)
                for value in values:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        member = orjson.loads(value)
                        if type(member) is dict:
                            self.presence.event(channel, "leave", member)
                if status == -1:
                    return  # it is back (and reconciles itself)
                if status == 0:
                    break
        await self._forget(keys=[alive, channels_key, self.k_nodes], args=[node])
        if removed:
            log.info("presence: %d members of node %s (gone) removed", removed, node)

    # --------------------------------------------------------------- queries

    async def count(self, channel: str) -> int:
        try:
            return int(await self.redis.hlen(self.k_members + channel))
        except Exception as exc:
            self._failed("query", exc)
            raise PresenceError(503, f"the presence store (Redis) is unavailable: {exc}") from None

    async def query(self, channel: str, members: bool, limit: int) -> dict[str, Any]:
        key = self.k_members + channel
        try:
            count = int(await self.redis.hlen(key))
            result: dict[str, Any] = {"channel": channel, "count": count}
            if not members:
                return result
            listed: list[Any] = []
            cursor = 0
            while len(listed) < limit:
                cursor, found = await self.redis.hscan(key, cursor, count=min(limit, 1000))
                for value in found.values():
                    member = orjson.loads(value)
                    member.pop("node", None)
                    listed.append(member)
                if cursor == 0:
                    break
        except Exception as exc:
            self._failed("query", exc)
            raise PresenceError(503, f"the presence store (Redis) is unavailable: {exc}") from None
        result["members"] = listed[:limit]
        result["truncated"] = count > len(result["members"])
        return result

    async def stop(self) -> None:
        # (The flag too: a cancellation that lands inside redis-py's own
        # timeout handling may be swallowed, and the loop must still end.)
        self._closing = True
        self._wake.set()
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks.clear()
        try:
            # Leaving: this node's members go now, and its liveness key.
            await asyncio.wait_for(self._leave_all(), 2.0)
        except Exception as exc:
            log.warning("presence: could not remove this node's members from Redis: %s", exc)
        await self.redis.aclose()

    async def _leave_all(self) -> None:
        await self.reconcile()  # (local is empty by now: removes them all)
        await self.redis.delete(self.k_alive + self.node_id)
        await self.redis.srem(self.k_nodes, self.node_id)
