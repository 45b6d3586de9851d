"""Prometheus metrics of one API process, served at `GET /metrics`.

Each `Metrics` owns its registry (not prometheus_client's global one) so that tests can build many apps in one
process. Queue gauges are read from the store at scrape time, so every replica reports the shared queue; counters
and histograms are per process (sum them across replicas in queries).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reimagine.jobs import JobStatus
from reimagine.queue.usage import Usage

__all__ = ["Metrics"]

logger = logging.getLogger(__name__)

#: Queue waits span milliseconds (idle pool) to many minutes (backlog); runs seconds to minutes.
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_RUN_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600)


class _Store(Protocol):
    def count_by_status(self) -> dict[str, int]: ...

    @property
    def usage(self) -> Usage: ...


class _FinishedJob(Protocol):
    @property
    def status(self) -> JobStatus: ...
    @property
    def error_type(self) -> str | None: ...
    @property
    def created_at(self) -> float: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def completed_at(self) -> float | None: ...


class _QueueCollector(Collector):
    """Jobs per status, counted by the store on each scrape (a gauge that is never stale)."""

    def __init__(self, store: _Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("reimagine_store_up", "1 if the job store answered this scrape.")
        try:
            counts = self._store.count_by_status()
        except Exception:
            # A scrape must still answer when the store is down: that is what reimagine_store_up reports.
            logger.warning("metrics: could not count jobs", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("reimagine_jobs", "Jobs in the store, by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        depth = GaugeMetricFamily("reimagine_queue_depth", "Jobs waiting for a worker.")
        depth.add_metric([], counts.get(JobStatus.QUEUED.value, 0))
        yield depth


class _UsageCollector(Collector):
    """Usage totals per API key name (`queue/usage.py`), read from the store on each scrape.

    Counters in Prometheus' sense (they only grow), kept in the store: every replica reports the same totals, so
    aggregate them across replicas with max(), not sum().
    """

    _SERIES = (
        ("images", "reimagine_usage_images", "Images generated, per API key."),
        ("failed", "reimagine_usage_failed", "Requests that ended without an image, per API key."),
        ("gpu_s", "reimagine_usage_gpu_seconds", "Seconds of denoising on the device, per API key."),
        ("input_bytes", "reimagine_usage_input_bytes", "Bytes of request bodies, per API key."),
        ("output_bytes", "reimagine_usage_output_bytes", "Bytes of files written for requests, per API key."),
    )

    def __init__(self, store: _Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        try:
            totals = self._store.usage.totals()
        except Exception:
            logger.warning("metrics: could not read usage", exc_info=True)
            return
        for field, name, documentation in self._SERIES:
            family = CounterMetricFamily(name, documentation, labels=["key"])
            for row in totals:
                family.add_metric([row.key_name], getattr(row, field))
            yield family


class Metrics:
    """The registry plus the instruments the API updates."""

    def __init__(self, store: _Store) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_QueueCollector(store))
        self.registry.register(_UsageCollector(store))
        self.job_wait = Histogram(
            "reimagine_job_wait_seconds",
            "Time from submit to a worker starting the job.",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.job_run = Histogram(
            "reimagine_job_run_seconds",
            "Time from a worker starting the job to its end.",
            buckets=_RUN_BUCKETS,
            registry=self.registry,
        )
        self.jobs_completed = Counter(
            "reimagine_jobs_completed",
            "Jobs that reached a terminal status.",
            ["outcome", "error_type"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "reimagine_webhook_deliveries",
            "Webhook delivery attempts by result: delivered, retry, gave_up, refused.",
            ["result"],
            registry=self.registry,
        )

    def observe_job(self, job: _FinishedJob) -> None:
        """Record a finished job (call once per job, when its terminal status is seen)."""
        outcome = job.status.value.lower()
        self.jobs_completed.labels(outcome=outcome, error_type=job.error_type or "").inc()
        if job.started_at is not None:
            self.job_wait.observe(max(0.0, job.started_at - job.created_at))
            if job.completed_at is not None:
                self.job_run.observe(max(0.0, job.completed_at - job.started_at))
        # A job canceled or expired before it started never waited for a worker in the histogram's sense.

    def count_webhook(self, result: str) -> None:
        """One webhook attempt's result (the dispatcher's `metrics=`)."""
        self.webhook_deliveries.labels(result=result).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type. Calls the store: run it off the event loop."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
