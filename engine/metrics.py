"""Prometheus metrics: what a server exports, where, and how workers add up.

Where: `--metrics-port PORT` opens a listener of its own (on `--metrics-host`,
the server's host by default) answering `GET /metrics` without
authentication, meant for a port the balancer does not expose.  The same
text is on the main port at `/metrics` behind the admin token.

Under `--workers N` the supervisor owns the metrics port and serves one
aggregated endpoint: each worker serves its own metrics on a loopback port it
prints at start-up, and a scrape of the supervisor reads every worker and adds
them up (`aggregate`): counters and histograms are summed and stay monotonic
across a worker's restart (the last values read from the dead worker are kept
and added); gauges are summed over the live workers (sessions, connections,
memory, CPU); cluster-wide gauges (`bayeux_cluster_*`) are taken from one
worker, as each reports the whole cluster.  What a worker counted after the
last scrape before it crashed is lost (a lone process would lose it all).

What: the server's counters (`engine.stats.Counters`, as `bayeux_<name>_total`)
and gauges, all read at scrape time from running totals, never by walking the
sessions; histograms of the publish-to-write latency, the handshake duration
and the request duration (`Histogram`, below: observed in a few hundred ns,
no lock, as everything runs on the loop); and prometheus_client's process,
platform and GC collectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import resource
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from engine.ratelog import CauseLog

if TYPE_CHECKING:
    from engine.server import BayeuxServer

__all__ = [
    "BUCKETS",
    "Histogram",
    "MetricsListener",
    "ServerMetrics",
    "WorkerAggregate",
    "server_registry",
]

log = logging.getLogger("engine.metrics")
limits = CauseLog(log)  # one line per cause, with a count, not one per event

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# Seconds: 100 µs (a fan-out on the loop) to 10 s (an awaited backend hook).
BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """Observations in fixed buckets (`le` bounds), cumulated at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, +Inf last, as Prometheus wants them."""
        pairs: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            pairs.append(("+Inf" if bound == math.inf else repr(bound), running))
        return pairs


class ServerMetrics:
    """The server's histograms, observed by the core and the transports."""

    __slots__ = ("publish_to_write", "handshake", "requests")

    def __init__(self) -> None:
        # From a message batch's arrival (or, for deliveries made later, the
        # delivery) to the write of what it delivered: once per flush.
        self.publish_to_write = Histogram()
        # From a handshake's arrival to its reply (awaited policies included).
        self.handshake = Histogram()
        # From a request's arrival to its reply (a held connect: until held),
        # per transport; a handful of transports, made on first use.
        self.requests: dict[str, Histogram] = {}

    def request(self, transport: str) -> Histogram:
        found = self.requests.get(transport)
        if found is None:
            found = self.requests[transport] = Histogram()
        return found


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def gauges(server: BayeuxServer) -> dict[str, Any]:
    """The node's gauges, from running totals (a scrape never walks sessions)."""
    core = server.core
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "sessions": len(core.sessions),
        "sessions_by_transport": {t: n for t, n in core.by_transport.items() if n},
        "held_connects": core.held_total,
        "connections": len(server.connections),
        "channels": core.broker.channel_count(),
        "queued_messages": core.queued_total,
        "rss_bytes": rss_bytes(),
        "open_files_limit": soft if soft != resource.RLIM_INFINITY else hard,
    }


def _histogram(name: str, text: str, labels: dict[str, str], h: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text, labels=list(labels))
    family.add_metric(list(labels.values()), h.buckets(), h.total)
    return family


class ServerCollector(Collector):
    """Reads the server at scrape time: running totals, nothing to keep in sync."""

    GAUGES = {
        "sessions": "Bayeux sessions on this node",
        "held_connects": "held /meta/connect requests",
        "connections": "open client connections",
        "channels": "subscribed channels and patterns",
        "queued_messages": "messages waiting in session queues",
        "rss_bytes": "resident memory of this process",
        "open_files_limit": "open-files limit of this process",
    }

    def __init__(self, server: BayeuxServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        node = server.node_id
        values = gauges(server)
        for name, text in self.GAUGES.items():
            gauge = GaugeMetricFamily(f"bayeux_{name}", text, labels=["node"])
            gauge.add_metric([node], values[name])
            yield gauge
        by_transport = GaugeMetricFamily(
            "bayeux_sessions_by_transport", "sessions per transport", labels=["node", "transport"]
        )
        for transport, count in sorted(values["sessions_by_transport"].items()):
            by_transport.add_metric([node, transport], count)
        yield by_transport
        core = server.core
        for name, value in core.stats.as_dict().items():
            counter = CounterMetricFamily(f"bayeux_{name}", f"{name} since start", labels=["node"])
            counter.add_metric([node], value)
            yield counter
        m = core.metrics
        yield _histogram(
            "bayeux_publish_to_write_seconds",
            "from a publish's arrival to the write of its deliveries (once per flush)",
            {"node": node},
            m.publish_to_write,
        )
        yield _histogram(
            "bayeux_handshake_duration_seconds",
            "from a handshake's arrival to its reply",
            {"node": node},
            m.handshake,
        )
        requests = HistogramMetricFamily(
            "bayeux_request_duration_seconds",
            "from a request's arrival to its reply (a held connect: until held)",
            labels=["node", "transport"],
        )
        for transport, h in sorted(m.requests.items()):
            requests.add_metric([node, transport], h.buckets(), h.total)
        yield requests
        cluster = server.cluster_status
        if cluster is not None:
            view = cluster.cluster(None)
            for name in ("sessions", "held_connects", "connections", "rss_bytes"):
                gauge = GaugeMetricFamily(
                    f"bayeux_cluster_{name}", f"{name} of each live node", labels=["node"]
                )
                for member, summary in sorted(view["nodes"].items()):
                    gauge.add_metric([member], summary.get(name) or 0)
                yield gauge
            nodes = GaugeMetricFamily("bayeux_cluster_nodes", "live nodes in the cluster")
            nodes.add_metric([], view["totals"]["nodes"])
            yield nodes


class ProcessMetrics(Collector):
    """The process metrics of prometheus_client's ProcessCollector (the same
    names), with the open-files count from stat(2).

    The library counts open files by listing /proc/self/fd: a walk over
    every connection, on the event loop (22 ms at 19,000 connections on a
    2-core machine).  Since Linux 6.2 the size of that directory is the
    count; the directory is listed only where the kernel reports no size."""

    def __init__(self) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat", "rb") as f:
            self.boot_time = next(float(x.split()[1]) for x in f if x.startswith(b"btime "))

    def collect(self) -> Iterator[Metric]:
        with open("/proc/self/stat", "rb") as f:
            parts = f.read().rsplit(b")", 1)[-1].split()
        yield GaugeMetricFamily(
            "process_virtual_memory_bytes", "Virtual memory size in bytes.", value=float(parts[20])
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            value=float(parts[21]) * PAGE_SIZE,
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            value=float(parts[19]) / self.ticks + self.boot_time,
        )
        yield CounterMetricFamily(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            value=(float(parts[11]) + float(parts[12])) / self.ticks,
        )
        size = os.stat("/proc/self/fd").st_size
        yield GaugeMetricFamily(
            "process_open_fds",
            "Number of open file descriptors.",
            value=size if size > 0 else len(os.listdir("/proc/self/fd")),
        )
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        yield GaugeMetricFamily(
            "process_max_fds", "Maximum number of open file descriptors.", value=soft
        )


def server_registry(server: BayeuxServer) -> CollectorRegistry:
    """The server's metrics and the process, platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    for collector in (PROCESS, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


PROCESS = ProcessMetrics()  # (one per process, shared by its servers)


# ------------------------------------------------------------- the listener

MAX_SCRAPERS = 16  # connections to the metrics port at once; more are closed
HEAD_LIMIT = 8192
SCRAPE_TIMEOUT = 10.0  # s for a scraper to send its request


class MetricsListener:
    """`GET /metrics` on a port of its own, on the event loop.

    `render` makes the body (a coroutine: the supervisor reads its workers).
    One request per connection (Connection: close), a bounded head, a
    timeout, a bounded number of scrapers: what a Prometheus needs, and
    nothing a stranger on that port can use to hold the process."""

    def __init__(self, render: Callable[[], Any], host: str, port: int) -> None:
        self.render = render
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None
        self.active = 0
        self.refused = 0  # connections closed unanswered (bounds, timeouts)

    def _refuse(self, cause: str, why: str, *args: Any) -> None:
        self.refused += 1
        limits.warning(cause, "metrics port: connection closed: " + why, *args)

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True, limit=HEAD_LIMIT
        )
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host or '0.0.0.0'}:{self.port}/metrics"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            if self.active > MAX_SCRAPERS:
                self._refuse("metrics_scrapers", "more than %d connections at once", MAX_SCRAPERS)
                return
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SCRAPE_TIMEOUT)
            except asyncio.LimitOverrunError:
                self._refuse("metrics_head", "a request head over %d bytes", HEAD_LIMIT)
                return
            except TimeoutError:
                self._refuse("metrics_timeout", "no request within %g s", SCRAPE_TIMEOUT)
                return
            except (asyncio.IncompleteReadError, OSError):
                return  # (the scraper went away)
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            method, target = (parts[0], parts[1]) if len(parts) == 3 else (b"", b"")
            path = target.split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, body, kind = b"405 Method Not Allowed", b"GET /metrics\n", b"text/plain"
            elif path != b"/metrics":
                status, body, kind = b"404 Not Found", b"GET /metrics\n", b"text/plain"
            else:
                status, kind = b"200 OK", CONTENT_TYPE
                body = await self.render()
            writer.write(
                b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n" % (status, kind, len(body))
            )
            if method != b"HEAD":
                writer.write(body)
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.drain(), SCRAPE_TIMEOUT)
        except Exception:
            log.exception("metrics request failed")
        finally:
            self.active -= 1
            writer.close()


# ------------------------------------------------------ workers, added up

# Gauges taken from one worker: each worker reports the whole cluster.
FROM_ONE = ("bayeux_cluster_",)
# Gauges that are not amounts (adding them up would mean nothing).
EARLIEST = ("process_start_time_seconds",)
ANY_ONE = ("python_info", "bayeux_open_files_limit")
CUMULATIVE = ("counter", "histogram", "summary")
MAX_WORKER_METRICS = 16 * 1024 * 1024
Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


def _parse(text: str, node: str) -> dict[str, tuple[Metric, dict[Key, float]]]:
    """One worker's exposition: family name -> (family, {sample key: value});
    the `node` label of its own series becomes `node` (the supervisor's)."""
    families: dict[str, tuple[Metric, dict[Key, float]]] = {}
    for family in text_string_to_metric_families(text):
        own = family.type in CUMULATIVE or not family.name.startswith(FROM_ONE)
        samples: dict[Key, float] = {}
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # a time, not an amount
            labels = dict(sample.labels)
            if own and "node" in labels:
                labels["node"] = node
            samples[(sample.name, tuple(sorted(labels.items())))] = sample.value
        families[family.name] = (family, samples)
    return families


class WorkerAggregate:
    """The supervisor's view of its workers' metrics (see the module doc)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.last: dict[int, tuple[int, dict[str, tuple[Metric, dict[Key, float]]]]] = {}
        # Cumulative values of workers that are gone, kept so totals never fall.
        self.retired: dict[str, tuple[Metric, dict[Key, float]]] = {}
        self.restarts = 0

    def seen(self, worker: int, pid: int, text: str) -> None:
        """A worker's fresh exposition (`pid` tells incarnations apart)."""
        previous = self.last.get(worker)
        if previous is not None and previous[0] != pid:
            self.retire(worker)
        self.last[worker] = (pid, _parse(text, self.node))

    def retire(self, worker: int) -> None:
        """A worker exited: its counters and histograms stay in the totals."""
        previous = self.last.pop(worker, None)
        if previous is None:
            return
        for name, (family, samples) in previous[1].items():
            if family.type not in CUMULATIVE:
                continue
            _, kept = self.retired.setdefault(name, (family, {}))
            for key, value in samples.items():
                kept[key] = kept.get(key, 0.0) + value

    def render(self, live: Iterable[int], extra: Iterable[Metric] = ()) -> bytes:
        """The sum, as Prometheus text: `live` names the workers to count gauges of."""
        alive = set(live)
        merged: dict[str, tuple[Metric, dict[Key, float]]] = {
            name: (family, dict(samples)) for name, (family, samples) in self.retired.items()
        }
        first_seen: set[str] = set()
        for worker, (_, families) in sorted(self.last.items()):
            for name, (family, samples) in families.items():
                cumulative = family.type in CUMULATIVE
                if not cumulative and worker not in alive:
                    continue
                target = merged.setdefault(name, (family, {}))[1]
                if name.startswith(FROM_ONE) and not cumulative:
                    if name not in first_seen:
                        first_seen.add(name)
                        target.update(samples)
                    continue
                for key, value in samples.items():
                    if key not in target:
                        target[key] = value
                    elif name in EARLIEST:
                        target[key] = min(target[key], value)
                    elif name in ANY_ONE:
                        target[key] = value
                    else:
                        target[key] += value
        out: list[Metric] = []
        for name, (family, samples) in sorted(merged.items()):
            metric = Metric(name, family.documentation, family.type, family.unit)
            for (sample, labels), value in samples.items():
                metric.add_sample(sample, dict(labels), value)
            out.append(metric)
        out.extend(extra)
        return generate_latest(_Fixed(out))


class _Fixed:
    """A registry-like object for generate_latest over ready-made families."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


async def fetch_metrics(url: str) -> str:
    """GET a worker's metrics (http://127.0.0.1:PORT/metrics): the body."""
    match = re.fullmatch(r"http://([^/:]+|\[[^]]+\]):(\d+)(/\S*)", url)
    if match is None:
        raise ValueError(f"not a metrics URL: {url!r}")
    host, port, path = match.group(1).strip("[]"), int(match.group(2)), match.group(3)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
            % (path.encode(), host.encode())
        )
        chunks: list[bytes] = []
        size = 0
        while chunk := await reader.read(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_WORKER_METRICS:
                raise ValueError(f"metrics of {url} larger than {MAX_WORKER_METRICS} bytes")
        raw = b"".join(chunks)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        status = head.split(b"\r\n", 1)[0]
        raise ValueError(f"{url} answered {status!r}")
    return body.decode()


def supervisor_gauges(node: str, live: int, restarts: int) -> list[Metric]:
    workers = GaugeMetricFamily("bayeux_workers", "live worker processes", labels=["node"])
    workers.add_metric([node], live)
    restarted = CounterMetricFamily(
        "bayeux_worker_restarts", "workers restarted by the supervisor", labels=["node"]
    )
    restarted.add_metric([node], restarts)
    return [workers, restarted]
