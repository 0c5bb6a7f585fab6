"""Gauges metadata_svc computes from the store when Prometheus scrapes: per-queue depth,
parked tasks and the wait of the oldest leasable task, and open upload sessions."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from metadata_svc.keys import Area, Keyspace
from metadata_svc.kv import Database, Transaction
from metadata_svc.queues import Queues

# Counting sessions stops here; a registry with more open uploads shows this number.
MAX_COUNTED_UPLOADS = 100_000


class StoreCollector(Collector):
    """Reads the gauges in one snapshot transaction per scrape (on the scrape's thread)."""

    def __init__(self, db: Database, keys: Keyspace, queues: Queues) -> None:
        self._db = db
        self._keys = keys
        self._queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "artifactstore_queue_pending", "Tasks not done, by queue.", labels=["queue"]
        )
        parked = GaugeMetricFamily(
            "artifactstore_queue_parked", "Tasks parked after failing, by queue.", labels=["queue"]
        )
        wait = GaugeMetricFamily(
            "artifactstore_queue_oldest_wait_seconds",
            "How long the longest-waiting leasable task has waited, by queue.",
            labels=["queue"],
        )
        uploads = GaugeMetricFamily(
            "artifactstore_upload_sessions_open", "Upload sessions not finished or cancelled."
        )

        def read(tr: Transaction) -> None:
            counters = self._keys.root.subspace((Area.QUEUE_COUNTER,))
            names = sorted(
                {
                    counters.unpack(k)[0]
                    for k, _ in tr.get_range_startswith(counters.key(), snapshot=True)
                }
            )
            for name in names:
                stats = self._queues.stats(tr, name)
                depth.add_metric([name], stats.pending)
                parked.add_metric([name], stats.parked)
                wait.add_metric([name], stats.oldest_wait)
            sessions = self._keys.root.subspace((Area.UPLOAD,))
            rows = tr.get_range_startswith(sessions.key(), limit=MAX_COUNTED_UPLOADS, snapshot=True)
            uploads.add_metric([], len(rows))

        self._db.transact(read)
        yield from (depth, parked, wait, uploads)
