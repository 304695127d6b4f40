"""Prometheus metrics: the API's own request metrics and the current snapshot's domain gauges.

Request metrics are labelled by route *template* (``/v1/regions/{region}``), never by the raw
path, so a scanner probing random URLs cannot blow up the series count. Domain gauges are read
from Redis on each scrape and rendered through a fresh registry, so a scrape always shows the
snapshot Redis holds at that moment and no stale copy can linger in the process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import EstimateStore, latest_alert_states
from api.problems import REDIS_UNAVAILABLE_ERRORS
from api.site_metrics import SiteCollector
from streams.commands.sites import shipped_sites
from streams.core.pools import ALERT_TYPE as POOL_ALERT_TYPE
from streams.core.pools import OTHER_POOLS, top_pools
from streams.core.sites import Site

METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)
BANDS = ("lower", "best", "upper")


class RequestMetrics:
    """The API's own metrics, in a registry per app (so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hashatlas_api_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "hashatlas_api_request_duration_seconds",
            "Time from request to the end of the response, by route template and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.sse_clients = Gauge(
            "hashatlas_api_sse_clients",
            "Clients connected to /v1/stream",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        # Label lookups take a lock; caching the children keeps the hot path cheap.
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._histograms: dict[tuple[str, str], Histogram] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = self.requests.labels(route, method, str(status))
            self._counters[(route, method, status)] = counter
        counter.inc()
        histogram = self._histograms.get((route, method))
        if histogram is None:
            histogram = self.duration.labels(route, method)
            self._histograms[(route, method)] = histogram
        histogram.observe(seconds)


class RequestMetricsMiddleware:
    """Pure ASGI middleware (no per-request task or body buffering) counting every response."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.metrics.observe(route, method, status, time.perf_counter() - started)


class SnapshotCollector:
    """Domain gauges of one snapshot, as read from Redis for one scrape."""

    def __init__(
        self,
        snapshot: Mapping[str, Any] | None,
        published_at: float | None,
        firing_by_region: Mapping[str, int],
        *,
        redis_up: bool,
        now: float,
        stale_after_s: float,
        firing_by_pool: Mapping[str, int] | None = None,
    ) -> None:
        self.firing_by_pool = firing_by_pool or {}
        self.snapshot = snapshot
        self.published_at = published_at
        self.firing_by_region = firing_by_region
        self.redis_up = redis_up
        self.now = now
        self.stale_after_s = stale_after_s

    def collect(self) -> Iterator[Metric]:
        yield _gauge("hashatlas_api_redis_up", "1 if the API could read Redis for this scrape",
                     1.0 if self.redis_up else 0.0)
        if self.snapshot is None or self.published_at is None:
            return
        age = max(0.0, self.now - self.published_at)
        stale = bool(self.snapshot.get("stale")) or age > self.stale_after_s
        yield _gauge("hashatlas_snapshot_age_seconds",
                     "Seconds since the current snapshot was published", age)
        yield _gauge("hashatlas_snapshot_stale",
                     "1 if the current snapshot is older than the staleness limit",
                     1.0 if stale else 0.0)
        yield _gauge("hashatlas_snapshot_as_of_timestamp_seconds",
                     "End of the window the current snapshot estimates (Unix seconds)",
                     _number(self.snapshot.get("as_of")))
        yield from self._network(self.snapshot.get("network") or {})
        yield from self._regions(self.snapshot.get("regions") or [])
        firing = GaugeMetricFamily("hashatlas_alerts_firing",
                                   "Regional-shift alerts currently firing, by region",
                                   labels=["region"])
        regions = {str(entry.get("region")) for entry in self.snapshot.get("regions") or []}
        for region in sorted(regions | set(self.firing_by_region)):
            firing.add_metric([region], float(self.firing_by_region.get(region, 0)))
        yield firing
        yield from pool_metrics(self.snapshot.get("pools") or {}, self.firing_by_pool)

    def _network(self, network: Mapping[str, Any]) -> Iterator[Metric]:
        yield from _value_and_bounds(
            "hashatlas_network_hashrate", "hashes_per_second", "Estimated network hashrate",
            network.get("hashrate_hs"), network.get("hashrate_ci95_hs"),
        )
        yield from _optional_gauge(
            "hashatlas_network_sample_hashrate_hashes_per_second",
            "Hashrate the share sample itself shows over the window",
            network.get("sample_hashrate_hs"),
        )
        yield from _optional_gauge(
            "hashatlas_coverage_ratio",
            "Fraction of network hashrate the sampled pools cover",
            network.get("coverage"),
        )
        yield from _optional_gauge(
            "hashatlas_hashprice_usd_per_petahash_day",
            "Expected miner revenue per PH/s per day (USD)",
            network.get("hashprice_usd_ph_day"),
        )
        power = GaugeMetricFamily("hashatlas_network_power_watts",
                                  "Estimated network electrical power by band (lower/best/upper)",
                                  labels=["band"])
        for band, value in _bands(network.get("power_w")):
            power.add_metric([band], value)
        yield power

    def _regions(self, regions: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
        share = GaugeMetricFamily("hashatlas_region_share_ratio",
                                  "Region's share of network hashrate", labels=["region"])
        share_lower = GaugeMetricFamily("hashatlas_region_share_lower_ratio",
                                        "Lower end of the 95% interval of the region's share",
                                        labels=["region"])
        share_upper = GaugeMetricFamily("hashatlas_region_share_upper_ratio",
                                        "Upper end of the 95% interval of the region's share",
                                        labels=["region"])
        hashrate = GaugeMetricFamily("hashatlas_region_hashrate_hashes_per_second",
                                     "Estimated hashrate in the region", labels=["region"])
        hashrate_lower = GaugeMetricFamily(
            "hashatlas_region_hashrate_lower_hashes_per_second",
            "Lower end of the 95% interval of the region's hashrate", labels=["region"])
        hashrate_upper = GaugeMetricFamily(
            "hashatlas_region_hashrate_upper_hashes_per_second",
            "Upper end of the 95% interval of the region's hashrate", labels=["region"])
        power = GaugeMetricFamily("hashatlas_region_power_watts",
                                  "Estimated electrical power in the region by band",
                                  labels=["region", "band"])
        for entry in regions:
            region = str(entry.get("region"))
            _add(share, [region], entry.get("share"))
            _add_interval(share_lower, share_upper, [region], entry.get("share_ci95"))
            _add(hashrate, [region], entry.get("hashrate_hs"))
            _add_interval(hashrate_lower, hashrate_upper, [region], entry.get("hashrate_ci95_hs"))
            for band, value in _bands(entry.get("power_w")):
                power.add_metric([region, band], value)
        yield from (share, share_lower, share_upper, hashrate, hashrate_lower, hashrate_upper,
                    power)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _optional_gauge(name: str, documentation: str, value: object) -> Iterator[Metric]:
    """A gauge only when the snapshot has the value (``null`` means "not estimable now")."""
    if _is_number(value):
        yield _gauge(name, documentation, _number(value))


def _add(family: GaugeMetricFamily, labels: list[str], value: object) -> None:
    if _is_number(value):
        family.add_metric(labels, _number(value))


def _add_interval(lower: GaugeMetricFamily, upper: GaugeMetricFamily, labels: list[str],
                  interval: object) -> None:
    if isinstance(interval, list | tuple) and len(interval) == 2:
        _add(lower, labels, interval[0])
        _add(upper, labels, interval[1])


def _bands(band: object) -> Iterator[tuple[str, float]]:
    if isinstance(band, Mapping):
        for name in BANDS:
            if _is_number(band.get(name)):
                yield name, _number(band.get(name))


def _value_and_bounds(prefix: str, unit: str, documentation: str, value: object,
                      interval: object) -> Iterator[Metric]:
    """``{prefix}_{unit}`` plus ``{prefix}_lower_{unit}`` / ``_upper_`` from a 95% interval."""
    best = GaugeMetricFamily(f"{prefix}_{unit}", documentation, labels=[])
    lower = GaugeMetricFamily(f"{prefix}_lower_{unit}",
                              f"{documentation}: lower end of the 95% interval", labels=[])
    upper = GaugeMetricFamily(f"{prefix}_upper_{unit}",
                              f"{documentation}: upper end of the 95% interval", labels=[])
    _add(best, [], value)
    _add_interval(lower, upper, [], interval)
    yield from (best, lower, upper)


async def render_metrics(store: EstimateStore, metrics: RequestMetrics,
                         stale_after_s: float, *, sites: Sequence[Site] | None = None) -> bytes:
    """Exposition text: request metrics, then the domain gauges read from Redis now, and the
    site registry's capacity (``sites``, default the shipped registry)."""
    snapshot: dict[str, Any] | None = None
    published_at: float | None = None
    firing: dict[str, int] = {}
    firing_pools: dict[str, int] = {}
    redis_up = True
    try:
        stored = await store.snapshot()
        records = await store.alert_records(None)
    except REDIS_UNAVAILABLE_ERRORS:
        redis_up = False
    else:
        if stored is not None:
            snapshot = orjson.loads(stored.json)
            published_at = stored.published_at
        for alert in latest_alert_states(records):
            if alert.get("state") == "firing" and alert.get("type") == POOL_ALERT_TYPE:
                pool = str(alert.get("pool"))
                firing_pools[pool] = firing_pools.get(pool, 0) + 1
            elif alert.get("state") == "firing":
                region = str(alert.get("region"))
                firing[region] = firing.get(region, 0) + 1
    domain = CollectorRegistry()
    domain.register(
        SnapshotCollector(snapshot, published_at, firing, redis_up=redis_up, now=time.time(),
                          stale_after_s=stale_after_s, firing_by_pool=firing_pools)
    )
    domain.register(SiteCollector(shipped_sites() if sites is None else sites, snapshot))
    return generate_latest(metrics.registry) + generate_latest(domain)


def pool_metrics(section: Mapping[str, Any], firing_by_pool: Mapping[str, int]
                 ) -> Iterator[Metric]:
    """Per-pool gauges from the snapshot's pools section. Labels are bounded: the largest pools
    and the sampled ones are named, every other pool is summed into `other` (hashrate and work
    share only: intervals and luck do not add up)."""
    named = set(top_pools(section))
    hashrate = GaugeMetricFamily("hashatlas_pool_hashrate_hashes_per_second",
                                 "Pool hashrate from its share of recent blocks' work, by window "
                                 "(blocks)", labels=["pool", "window"])
    lower = GaugeMetricFamily("hashatlas_pool_hashrate_lower_hashes_per_second",
                              "Lower end of the 95% interval of the pool's hashrate",
                              labels=["pool", "window"])
    upper = GaugeMetricFamily("hashatlas_pool_hashrate_upper_hashes_per_second",
                              "Upper end of the 95% interval of the pool's hashrate",
                              labels=["pool", "window"])
    share = GaugeMetricFamily("hashatlas_pool_work_share_ratio",
                              "Pool's share of the recent blocks' work, by window (blocks)",
                              labels=["pool", "window"])
    sample = GaugeMetricFamily("hashatlas_pool_sample_hashrate_hashes_per_second",
                               "Hashrate the pool's shares show (sampled pools)", labels=["pool"])
    luck = GaugeMetricFamily("hashatlas_pool_luck_ratio",
                             "Blocks found / blocks expected from the pool's shares, by window",
                             labels=["pool", "window"])
    luck_lower = GaugeMetricFamily("hashatlas_pool_luck_lower_ratio",
                                   "Lower end of the 95% interval of the pool's luck",
                                   labels=["pool", "window"])
    luck_upper = GaugeMetricFamily("hashatlas_pool_luck_upper_ratio",
                                   "Upper end of the 95% interval of the pool's luck",
                                   labels=["pool", "window"])
    diverging = GaugeMetricFamily("hashatlas_pool_diverging",
                                  "1 if the pool's shares and blocks disagree beyond their joint "
                                  "interval (sampled pools)", labels=["pool"])
    other: dict[str, tuple[float, float]] = {}
    for entry in section.get("pools") or []:
        pool = str(entry.get("pool"))
        for window, row in (entry.get("hashrate") or {}).items():
            if pool not in named:
                h, w = other.get(window, (0.0, 0.0))
                other[window] = (h + _number(row.get("hashrate_hs")),
                                 w + _number(row.get("work_share")))
                continue
            _add(hashrate, [pool, window], row.get("hashrate_hs"))
            _add_interval(lower, upper, [pool, window], row.get("hashrate_ci95_hs"))
            _add(share, [pool, window], row.get("work_share"))
        if pool not in named or not entry.get("sampled"):
            continue
        _add(sample, [pool], entry.get("sample_hashrate_hs"))
        for window, row in (entry.get("luck") or {}).items():
            if row:
                _add(luck, [pool, window], row.get("luck"))
                _add_interval(luck_lower, luck_upper, [pool, window], row.get("luck_ci95"))
        status = (entry.get("validation") or {}).get("status")
        diverging.add_metric([pool], 1.0 if status == "diverging" else 0.0)
    for window, (h, w) in sorted(other.items()):
        hashrate.add_metric([OTHER_POOLS, window], h)
        share.add_metric([OTHER_POOLS, window], w)
    yield from (hashrate, lower, upper, share, sample, luck, luck_lower, luck_upper, diverging)
    yield _gauge("hashatlas_pool_divergence_alerts_firing",
                 "pool_divergence alerts currently firing", float(sum(firing_by_pool.values())))
    yield from chain_metrics(section)


def chain_metrics(section: Mapping[str, Any]) -> Iterator[Metric]:
    """Gauges of the pools section that describe the chain, not one pool: how its blocks were
    attributed, and hashprice over its last blocks."""
    attribution = section.get("attribution") or {}
    methods = GaugeMetricFamily("hashatlas_blocks_attribution_work_ratio",
                                "Share of recent block work attributed by each method",
                                labels=["method"])
    for method, row in sorted((attribution.get("methods") or {}).items()):
        _add(methods, [str(method)], row.get("work_share"))
    yield methods
    yield from _optional_gauge("hashatlas_blocks_unknown_work_ratio",
                               "Share of recent block work attributed to no known pool",
                               attribution.get("unknown_work_share"))
    yield from _optional_gauge("hashatlas_blocks_attribution_confidence_ratio",
                               "Work-weighted mean confidence of the block attributions",
                               attribution.get("mean_confidence"))
    price = section.get("hashprice") or {}
    yield from _optional_gauge("hashatlas_hashprice_sats_per_terahash_day",
                               "Revenue per TH/s per day over the last 144 blocks (sat)",
                               price.get("hashprice_sats_th_day"))
    yield from _optional_gauge("hashatlas_hashvalue_btc_per_petahash_day",
                               "Revenue per PH/s per day over the last 144 blocks (BTC)",
                               price.get("hashvalue_btc_ph_day"))
    yield from _optional_gauge("hashatlas_fpps_revenue_sats_per_terahash_day",
                               "FPPS payout per TH/s per day before pool fee: next subsidy + "
                               "mean fees (sat)", price.get("fpps_sats_th_day"))
