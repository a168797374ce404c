"""A socket transport whose reads carry the kernel's receive time.

The load generator plays thousands of clients on one CPU. When the server
answers a fan-out, a client's reply can wait in its socket while the generator
serves the clients ahead of it; timing the message when the generator reads it
would count that queue, which no real client has, as server latency. With
``SO_TIMESTAMPNS`` every ``recvmsg`` also says when the kernel queued the data
on the socket, which on loopback is when the server wrote it.

:class:`StampedTransport` drives an :class:`asyncio.Protocol` like the loop's
own transports do (``connection_made``, ``data_received``, ``eof_received``,
``connection_lost``) and offers the part of the transport API the generator
uses (``write``, ``close``, ``abort``, ``is_closing``). Before each
``data_received`` it sets ``arrived_ns``: the receive time of the data, on
``time.monotonic_ns()``'s clock, or the time of the read when the kernel gave
none.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

#: Bytes asked of one recvmsg; more waiting data comes with the next call.
READ_SIZE = 65536
_STAMP = struct.Struct("@qq")  # struct timespec
_ANC_SIZE = socket.CMSG_SPACE(_STAMP.size)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS


class Clock:
    """CLOCK_REALTIME (the kernel's stamps) to CLOCK_MONOTONIC (the publisher's
    clock); ``resync`` it now and then (the offset moves only when the
    wall clock is stepped or slewed)."""

    __slots__ = ("offset_ns",)

    def __init__(self) -> None:
        self.offset_ns = 0
        self.resync()

    def resync(self) -> None:
        # The closest of a few tries: a preemption between the two reads
        # would skew the offset.
        best = None
        for _ in range(5):
            m0 = time.monotonic_ns()
            r = time.time_ns()
            m1 = time.monotonic_ns()
            if best is None or m1 - m0 < best[0]:
                best = (m1 - m0, r - (m0 + m1) // 2)
        assert best is not None
        self.offset_ns = best[1]


class StampedTransport:
    __slots__ = (
        "loop",
        "sock",
        "fd",
        "protocol",
        "clock",
        "out",
        "closing",
        "lost",
        "arrived_ns",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.Protocol,
        clock: Clock,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.protocol: Any = protocol
        self.clock = clock
        self.out: list[bytes] = []  # what the socket did not take yet
        self.closing = False
        self.lost = False
        self.arrived_ns = 0
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        loop.add_reader(self.fd, self._readable)
        protocol.connection_made(self)  # type: ignore[arg-type]

    # reading ----------------------------------------------------------------

    def _readable(self) -> None:
        # Per read, on the generator's hottest path: kept flat.
        try:
            data, anc, _, _ = self.sock.recvmsg(READ_SIZE, _ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        if not data:
            try:
                self.protocol.eof_received()
            except Exception as exc:
                self._failed(exc)
            self._end(None)
            return
        arrived = 0
        if anc:
            level, kind, payload = anc[0]  # the one control message asked for
            if kind == SCM_TIMESTAMPNS and level == socket.SOL_SOCKET:
                sec, nsec = _STAMP.unpack_from(payload)
                arrived = sec * 1_000_000_000 + nsec - self.clock.offset_ns
        self.arrived_ns = arrived or time.monotonic_ns()
        try:
            self.protocol.data_received(data)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """A protocol callback raised: end the connection, as asyncio's own
        transports do, and tell the loop's exception handler."""
        self.loop.call_exception_handler(
            {"message": "protocol callback failed", "exception": exc, "transport": self}
        )
        self._end(exc)

    # writing ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        if self.out:
            self.out.append(data)
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._end(exc)
            return
        if sent < len(data):
            self.out.append(data[sent:])
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        data = b"".join(self.out)
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        self.out = [data[sent:]] if sent < len(data) else []
        if not self.out:
            self.loop.remove_writer(self.fd)
            if self.closing:
                self._end(None)

    # ending -----------------------------------------------------------------

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        """Stop reading; close once what was written has left."""
        if self.closing:
            return
        self.closing = True
        self.loop.remove_reader(self.fd)
        if not self.out:
            self._end(None)

    def abort(self) -> None:
        """Close now, dropping what was not sent."""
        self.closing = True
        self.out = []
        self._end(None)

    def _end(self, exc: BaseException | None) -> None:
        """Close the socket; the protocol hears ``connection_lost`` in a later
        callback, never from inside one of its own calls (as with asyncio)."""
        if self.lost:
            return
        self.lost = self.closing = True
        self.out = []
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self.sock.close()
        self.loop.call_soon(self.protocol.connection_lost, exc)
