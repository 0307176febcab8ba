"""Counts and histograms of the ingest path, and their Prometheus collector.

The ingest path counts in plain Python (the dashboard's live header reads the same numbers);
``IngestCollector`` turns them into metric families for a hub's own ``CollectorRegistry``
(never the process-global one: tests run many hubs in one process).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000)

# Where messages come from (raw_record.source); every one is exported, zero or not.
SOURCES = ("mqtt", "http", "usb")


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.total += v
        self.n += 1

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, acc = [], 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            cumulative.append((str(float(b)), acc))
        cumulative.append(("+Inf", self.n))
        return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=self.total)


@dataclass
class IngestMetrics:
    received_by: Counter[str] = field(default_factory=Counter)  # source
    committed_by: Counter[tuple[str, str]] = field(default_factory=Counter)  # source, outcome
    rejected_by: Counter[tuple[str, str]] = field(default_factory=Counter)  # source, code
    facts: int = 0
    duplicates: int = 0
    batches: int = 0
    commit_failures: int = 0
    retained_replays: int = 0
    batch_size: Histogram = field(default_factory=lambda: Histogram(SIZE_BUCKETS))
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    lag_seconds: float = 0.0

    @property
    def received(self) -> int:
        return sum(self.received_by.values())

    @property
    def committed(self) -> int:
        return sum(self.committed_by.values())

    @property
    def rejected(self) -> Counter[str]:
        """Rejections by code, whatever the source."""
        out: Counter[str] = Counter()
        for (_, code), n in self.rejected_by.items():
            out[code] += n
        return out


def _sources(*counted: set[str]) -> list[str]:
    seen = set().union(*counted)
    return [*SOURCES, *sorted(seen - set(SOURCES))]


class IngestCollector(Collector):
    def __init__(self, metrics: IngestMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        received = CounterMetricFamily(
            "picofleet_messages_received",
            "Messages taken in (MQTT, POST /ingest, USB), before decoding.",
            labels=["source"],
        )
        for s in _sources(set(m.received_by)):
            received.add_metric([s], m.received_by[s])
        yield received
        committed = CounterMetricFamily(
            "picofleet_messages_committed",
            "Messages whose raw record committed, by source and outcome "
            "(ok, invalid, unauthorized, provisioned, duplicate).",
            labels=["source", "outcome"],
        )
        outcomes = {o for _, o in m.committed_by} | {"ok"}
        for s in _sources({s for s, _ in m.committed_by}):
            for o in sorted(outcomes):
                committed.add_metric([s, o], m.committed_by[(s, o)])
        yield committed
        rejected = CounterMetricFamily(
            "picofleet_messages_rejected",
            "Rejections stored in ingest_error, by source and code (picofleet/core/codes.py).",
            labels=["source", "code"],
        )
        for (s, code), n in sorted(m.rejected_by.items()):
            rejected.add_metric([s, code], n)
        yield rejected
        for name, doc, value in (
            ("picofleet_facts_committed", "Processed facts written.", m.facts),
            (
                "picofleet_duplicates",
                "Redelivered messages whose facts were already stored.",
                m.duplicates,
            ),
            ("picofleet_batches", "Committed write batches.", m.batches),
            (
                "picofleet_commit_failures",
                "Batch commits that failed on a database outage (retried).",
                m.commit_failures,
            ),
            (
                "picofleet_retained_replays_skipped",
                "Retained messages the broker replayed on subscribe, already stored.",
                m.retained_replays,
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield m.batch_size.family(
            "picofleet_batch_size_messages", "Messages per committed write batch."
        )
        yield m.commit_seconds.family(
            "picofleet_commit_duration_seconds", "Time to commit one write batch."
        )
        yield GaugeMetricFamily(
            "picofleet_bridge_lag_seconds",
            "Receive-to-ack time of the first message of the latest batch.",
            value=m.lag_seconds,
        )
