"""The hub's one ``/metrics``: Prometheus text through ``prometheus_client``.

Each app gets its own ``CollectorRegistry`` (tests run many hubs in one process, so never the
global one) holding three collectors: the ingest path's counters (picofleet/bridge/metrics.py),
this process's state (build, database, pool, broker session, supervised tasks), and the
families the areas return from ``<area>.metrics.collect(hub)`` (see picofleet/areas.py),
which may ask the database and so are gathered before each scrape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from picofleet.bridge.metrics import IngestCollector
from picofleet.core.buildinfo import build_info

if TYPE_CHECKING:
    from picofleet.web.app import HubContext

MetricSource = Callable[["HubContext"], Awaitable[list[Metric]]]


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class HubCollector(Collector):
    """What this process knows without asking the database."""

    def __init__(self, hub: HubContext) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        info = build_info()
        build = GaugeMetricFamily(
            "picofleet_build_info",
            "The running build: package version, source commit, shipped firmware versions.",
            labels=["version", "commit", "pico_w", "pico_usb"],
        )
        fw = info.firmware
        build.add_metric(
            [info.version, info.commit, fw.get("pico_w", ""), fw.get("pico_usb", "")], 1
        )
        yield build
        yield gauge(
            "picofleet_db_up", "The write path's last database call succeeded.", hub.ingest.db_ok
        )
        pool = GaugeMetricFamily(
            "picofleet_db_pool_connections",
            "Connections in the hub's pool by state.",
            labels=["state"],
        )
        pool.add_metric(["open"], hub.pool.get_size())
        pool.add_metric(["idle"], hub.pool.get_idle_size())
        pool.add_metric(["max"], hub.pool.get_max_size())
        yield pool
        if hub.supervisor is not None:
            yield from hub.supervisor.metric_families()
        if hub.bridge is None:
            return
        s = hub.bridge.session
        yield gauge("picofleet_broker_connected", "The bridge's broker session is up.", s.connected)
        yield gauge(
            "picofleet_bridge_buffered_messages",
            "Messages received and not yet acknowledged (bounded by buffer_max_messages).",
            s.buffered,
        )
        if hasattr(s, "reconnects"):  # an MQTT session, not the embedded broker's tap
            session: Any = s
            yield CounterMetricFamily(
                "picofleet_broker_reconnects",
                "Times the bridge lost its broker connection.",
                value=session.reconnects,
            )
            yield CounterMetricFamily(
                "picofleet_bridge_redelivery_drops",
                "Buffered messages of a lost connection left for the broker to redeliver.",
                value=session.dropped_old_epoch,
            )


class _AreaFamilies(Collector):
    """The areas' families of the scrape in progress."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def install(app: FastAPI, hub: HubContext, sources: Sequence[MetricSource]) -> None:
    """``GET /metrics`` on ``app``, from a registry of its own."""
    hub_metrics = HubMetrics(hub, sources)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        """Prometheus text format: the ingest path, this process, and every area's gauges."""
        body, content_type = await hub_metrics.render(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})


def metrics_app(hub: HubContext, sources: Sequence[MetricSource] = ()) -> FastAPI:
    """The whole HTTP surface of a process without the http role: /metrics and /health."""
    app = FastAPI(title="picofleet metrics", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        info = build_info()
        return {"status": "ok", "version": info.version, "commit": info.commit}

    install(app, hub, sources)
    return app


class HubMetrics:
    def __init__(self, hub: HubContext, sources: Sequence[MetricSource] = ()) -> None:
        self.hub = hub
        self.sources = list(sources)
        self.registry = CollectorRegistry(auto_describe=False)
        self._areas = _AreaFamilies()
        for c in (IngestCollector(hub.ingest.metrics), HubCollector(hub), self._areas):
            self.registry.register(c)

    async def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type: the classic text format (0.0.4), or
        OpenMetrics when the scraper asks for it."""
        families: list[Metric] = []
        for source in self.sources:
            families += await source(self.hub)
        self._areas.families = families
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
