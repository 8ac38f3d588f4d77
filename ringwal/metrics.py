"""Prometheus metrics of a running writer: ``ringwal serve --metrics-port PORT``.

Needs the ``ringwal[metrics]`` extra (``prometheus_client``); without it ``serve`` fails at
start with MissingExtraError naming the extra. The endpoint is
``http://ADDRESS:PORT/metrics`` (``Config.metrics_address``, default ``127.0.0.1``), served
by prometheus_client's HTTP server on a daemon thread of the writer process.

Every scrape reads what ``ringwal stats`` reads, at that moment: the ring's words through a
read-only ``RingView`` of its own (so the writer's loop does no work for metrics beyond two
counters), and the directory's segment files. Nothing is cached between scrapes.

Metrics (all prefixed ``ringwal_``):

===================================  =========  ==============================================
name                                 type       what
===================================  =========  ==============================================
``writer_up``                        gauge      1 while this writer serves the ring
``info{dir,serializer,version}``     gauge      1; the log's directory and serializer
``records_written_total``            counter    records written to segments by this writer
``bytes_written_total``              counter    frame bodies written (records + u32 lengths)
``fsyncs_total``                     counter    fdatasyncs completed (group commits)
``fsync_seconds``                    histogram  their latency; ``le`` from 100 us to 10 s. Each
                                                is counted at the first bound at or above its
                                                ring histogram bucket's top (<= 19% high)
``durable_seq``                      gauge      last seq covered by a completed fdatasync
``written_seq``                      gauge      last seq handed to the OS
``ring_fill_ratio{lane}``            gauge      bytes waiting in each lane / lane size
``ring_bytes_used``                  gauge      bytes waiting in the whole ring
``producers``                        gauge      producer processes attached (alive)
``followers``                        gauge      followers alive (``follow``, ``tail -f``)
``segments``                         gauge      segment files, ``current.wal`` included
``disk_bytes``                       gauge      their sizes (``current.wal`` preallocated)
``retention_removed_segments_total`` counter    segments removed by retention
``retention_removed_bytes_total``    counter    their bytes
===================================  =========  ==============================================

Shipping (issue 16), once ``ringwal ship`` has written ``wal_shipped.json`` (the shipper is
another process; these come from that file and the durable seq, ``shipped.shipping_lag``):

===================================  =========  ==============================================
``shipped_seq``                      gauge      last seq the NATS stream acknowledged
``ship_lag_records``                 gauge      durable records the stream has not acknowledged
``ship_lag_seconds``                 gauge      age of the oldest of them, by its record time
``shipper_up``                       gauge      1 while a shipper holds ``wal.ship.lock``
===================================  =========  ==============================================
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import MissingExtraError
from .format import FSYNC_BUCKETS, fsync_bucket_upper
from .ring import RingView
from .segment import CURRENT

if TYPE_CHECKING:
    from .writer import Writer

__all__ = ["FSYNC_BOUNDS", "MetricsEndpoint", "start_metrics"]

#: ``le`` bounds of ``ringwal_fsync_seconds``, seconds (then +Inf).
FSYNC_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_SEGMENT_FILE = re.compile(r"^\d{6}\.wal$")


def _shipping(core: Any, directory: str, durable_seq: int) -> Iterator[Any]:
    """The shipping lag (issue 16): from ``wal_shipped.json``, which ``ringwal ship`` (another
    process) keeps; nothing when the log was never shipped."""
    from .shipped import shipping_lag

    lag = shipping_lag(directory, durable_seq=durable_seq)
    if lag is None:
        return
    yield core.GaugeMetricFamily(
        "ringwal_shipped_seq", "last seq the NATS stream acknowledged (ringwal ship)", value=lag["shipped_seq"]
    )
    yield core.GaugeMetricFamily(
        "ringwal_ship_lag_records", "durable records the stream has not acknowledged", value=lag["records"]
    )
    if lag["seconds"] is not None:
        yield core.GaugeMetricFamily(
            "ringwal_ship_lag_seconds", "age of the oldest of them, by its record time", value=lag["seconds"]
        )
    yield core.GaugeMetricFamily(
        "ringwal_shipper_up", "1 while a ringwal ship process holds the log's wal.ship.lock",
        value=int(lag["shipper_running"]),
    )  # fmt: skip


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise MissingExtraError(
            f"metrics_port (--metrics-port) needs prometheus_client, which is not installed ({exc}); "
            "install it with: pip install 'ringwal[metrics]'",
            extra="metrics",
        ) from exc
    return prometheus_client


def fsync_buckets(hist: list[int]) -> list[tuple[str, int]]:
    """The ring's fsync histogram (``FSYNC_BUCKETS`` counts) as cumulative Prometheus
    buckets over ``FSYNC_BOUNDS`` and +Inf. A ring bucket counts at the first bound at or
    above its top value, so no fsync is ever counted below its true latency."""
    per = [0] * (len(FSYNC_BOUNDS) + 1)
    for b, count in enumerate(hist):
        if not count:
            continue
        top_s = fsync_bucket_upper(b) / 1e6
        slot = len(FSYNC_BOUNDS) if b == FSYNC_BUCKETS - 1 else _first_at_or_above(top_s)
        per[slot] += count
    out = []
    running = 0
    for bound, n in zip([*(repr(x) for x in FSYNC_BOUNDS), "+Inf"], per, strict=True):
        running += n
        out.append((bound, running))
    return out


def _first_at_or_above(seconds: float) -> int:
    for i, bound in enumerate(FSYNC_BOUNDS):
        if seconds <= bound:
            return i
    return len(FSYNC_BOUNDS)


class _Collector:
    """prometheus_client's custom-collector protocol: ``collect()`` yields metric families."""

    def __init__(self, writer: Writer, core: Any) -> None:
        self.writer = writer
        self.core = core
        self.dir = writer.dir
        self.serializer = writer.config.serializer.name

    def collect(self) -> Iterator[Any]:
        from . import __version__

        core = self.core
        w = self.writer
        stats = None
        view = RingView.attach(self.dir)
        if view is not None:
            with view:
                stats = view.writer_stats()
        info = core.GaugeMetricFamily(
            "ringwal_info", "the log this writer serves", labels=["dir", "serializer", "version"]
        )
        info.add_metric([self.dir, self.serializer, __version__], 1)
        yield info
        yield core.GaugeMetricFamily(
            "ringwal_writer_up", "1 while this writer serves the ring", value=int(stats is not None)
        )
        yield core.CounterMetricFamily(
            "ringwal_bytes_written", "frame bodies written to segments (records and their u32 lengths)", w.bytes_written
        )
        yield core.CounterMetricFamily(
            "ringwal_retention_removed_segments", "segments removed by retention", w.retention_removed_segments
        )
        yield core.CounterMetricFamily(
            "ringwal_retention_removed_bytes", "bytes of segments removed by retention", w.retention_removed_bytes
        )
        segments, disk = self._files()
        yield core.GaugeMetricFamily("ringwal_segments", "segment files, current.wal included", value=segments)
        yield core.GaugeMetricFamily(
            "ringwal_disk_bytes", "bytes of segment files (current.wal at its preallocated size)", value=disk
        )
        if stats is None:
            return
        yield core.CounterMetricFamily(
            "ringwal_records_written", "records written to segments by this writer", stats["records_written"]
        )
        yield core.CounterMetricFamily("ringwal_fsyncs", "fdatasyncs completed (group commits)", stats["fsyncs"])
        hist = core.HistogramMetricFamily("ringwal_fsync_seconds", "fdatasync latency", unit="")
        hist.add_metric([], fsync_buckets(stats["fsync_histogram"]), sum_value=stats["fsync_ns"] / 1e9)
        yield hist
        yield core.GaugeMetricFamily(
            "ringwal_durable_seq", "last seq covered by a completed fdatasync", value=stats["durable_seq"]
        )
        yield core.GaugeMetricFamily(
            "ringwal_written_seq", "last seq handed to the OS", value=max(stats["next_seq"] - 1, 0)
        )
        fill = core.GaugeMetricFamily("ringwal_ring_fill_ratio", "bytes waiting in a lane / lane size", labels=["lane"])
        size = stats["lane_size"]
        for lane, used in enumerate(stats["lane_bytes_used"]):
            fill.add_metric([str(lane)], used / size)
        yield fill
        yield core.GaugeMetricFamily(
            "ringwal_ring_bytes_used", "bytes waiting in the ring", value=stats["ring_bytes_used"]
        )
        alive = sum(1 for p in stats["producers"] if p["alive"])
        yield core.GaugeMetricFamily("ringwal_producers", "producer processes attached", value=alive)
        yield core.GaugeMetricFamily("ringwal_followers", "followers alive (follow, tail -f)", value=stats["followers"])
        yield from _shipping(core, self.dir, stats["durable_seq"])

    def _files(self) -> tuple[int, int]:
        n = size = 0
        try:
            entries = list(os.scandir(self.dir))
        except OSError:
            return 0, 0
        for e in entries:
            if e.name == CURRENT or _SEGMENT_FILE.match(e.name):
                try:
                    size += e.stat().st_size
                except FileNotFoundError:
                    continue  # removed by retention or renamed by a rotation meanwhile
                n += 1
        return n, size


class MetricsEndpoint:
    """The running HTTP endpoint; ``close()`` stops it (idempotent)."""

    def __init__(self, server: Any, thread: threading.Thread, address: str) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.port: int = port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/metrics"
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_metrics(writer: Writer, port: int, address: str = "127.0.0.1") -> MetricsEndpoint:
    """Serve ``writer``'s metrics on ``address:port`` (0: any free port; ``.port`` says which).

    Raises MissingExtraError without prometheus_client, OSError when the port is taken.
    """
    prom = _prometheus()
    from prometheus_client import core

    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(_Collector(writer, core))
    server, thread = prom.start_http_server(port, addr=address, registry=registry)
    return MetricsEndpoint(server, thread, address)
