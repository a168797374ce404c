"""The recovery seam over Redis: a history subscribe reads the stream on one
connection while the same messages travel live on the subscribed one.
`RedisBroker.fence` returns only after every message Redis had sent the
subscribed connection before it; the recovery waits for it, so an entry it
read has either been captured (and is deduped by offset) or will never
arrive live. Without it, a message in flight was delivered twice (seen once
in a full run of test_history_cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from redis_server import RedisServer

from engine.cluster.redis_broker import RedisBroker


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_after_a_fence_every_message_sent_before_it_has_arrived(redis_srv: RedisServer) -> None:
    async def scenario() -> None:
        broker = RedisBroker(lambda *a: None, node_id="fence", url=redis_srv.url)
        await broker.start()
        try:
            assert await broker.hold_subscription("/h/seam", 5.0)
            captured = broker.capture("/h/seam")
            name = broker.prefix.encode() + b"/h/seam"
            publisher = redis.Redis(host="127.0.0.1", port=redis_srv.port)
            try:
                for round_ in range(20):
                    first = round_ * 50 + 1
                    # 50 history messages published by "another node", then
                    # at once a fence: all 50 must be in when it returns.
                    pipe = publisher.pipeline(transaction=False)
                    for offset in range(first, first + 50):
                        pipe.publish(name, b"~e %d\n{}" % offset)
                    pipe.execute()
                    await broker.fence(5.0)
                    assert [o for o, _ in captured][-1] == first + 49, round_
            finally:
                publisher.close()
            assert [o for o, _ in captured] == list(range(1, 1001))
            broker.uncapture("/h/seam", captured)
            broker.release_subscription("/h/seam")
        finally:
            await broker.stop()

    asyncio.run(scenario())


def test_a_fence_without_redis_fails_at_once() -> None:
    async def scenario() -> None:
        broker = RedisBroker(lambda *a: None, node_id="nofence", url="redis://127.0.0.1:1/0")
        with pytest.raises(ConnectionError):
            await broker.fence(1.0)

    asyncio.run(scenario())
