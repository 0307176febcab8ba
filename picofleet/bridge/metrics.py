"""Counters and histograms of the ingest path, rendered in Prometheus text format."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000)


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

    def render(self, name: str) -> list[str]:
        out, acc = [], 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{le="{b}"}} {acc}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{name}_sum {self.total}")
        out.append(f"{name}_count {self.n}")
        return out


# Where messages come from (raw_record.source); every one is rendered, zero or not.
SOURCES = ("mqtt", "http", "usb")


@dataclass
class IngestMetrics:
    received_by: Counter[str] = field(default_factory=Counter)
    committed_by: Counter[str] = field(default_factory=Counter)
    facts: int = 0
    duplicates: int = 0
    batches: int = 0
    commit_failures: int = 0
    retained_replays: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    batch_size: Histogram = field(default_factory=lambda: Histogram(SIZE_BUCKETS))
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    lag_seconds: float = 0.0

    @property
    def received(self) -> int:
        return sum(self.received_by.values())

    @property
    def committed(self) -> int:
        return sum(self.committed_by.values())

    def _by_source(self, name: str, counts: Counter[str]) -> list[str]:
        sources = [*SOURCES, *sorted(set(counts) - set(SOURCES))]
        return [f"# TYPE {name} counter"] + [f'{name}{{source="{s}"}} {counts[s]}' for s in sources]

    def render(self) -> list[str]:
        lines = [
            *self._by_source("picofleet_messages_received_total", self.received_by),
            *self._by_source("picofleet_messages_committed_total", self.committed_by),
            "# TYPE picofleet_facts_committed_total counter",
            f"picofleet_facts_committed_total {self.facts}",
            "# TYPE picofleet_commit_failures_total counter",
            f"picofleet_commit_failures_total {self.commit_failures}",
            "# TYPE picofleet_retained_replays_skipped_total counter",
            f"picofleet_retained_replays_skipped_total {self.retained_replays}",
            "# TYPE picofleet_messages_rejected_total counter",
        ]
        lines += [
            f'picofleet_messages_rejected_total{{code="{c}"}} {n}'
            for c, n in sorted(self.rejected.items())
        ]
        lines.append("# TYPE picofleet_batch_size histogram")
        lines += self.batch_size.render("picofleet_batch_size")
        lines.append("# TYPE picofleet_commit_seconds histogram")
        lines += self.commit_seconds.render("picofleet_commit_seconds")
        lines += [
            "# TYPE picofleet_bridge_lag_seconds gauge",
            f"picofleet_bridge_lag_seconds {self.lag_seconds:.6f}",
        ]
        return lines
