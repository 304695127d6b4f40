"""Prometheus gauges of the site registry: capacity by region and status, and each region's
estimated power over its registry capacity (read at scrape time with the snapshot)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from streams.core import sites as core

#: Regions labelled by name in the capacity metrics; the rest are summed under ``other``.
METRIC_TOP_REGIONS = 10
OTHER_REGION = "other"


def site_metrics(sites: Sequence[core.Site], snapshot: dict[str, Any] | None) -> list[Metric]:
    """Capacity gauges with bounded labels (the top regions by energised MW, the rest as
    ``other``; the six statuses) and, where the snapshot has a region's power band, the
    utilisation of its mining capacity with the band's interval."""
    state = core.latest(sites)
    top = set(core.top_regions(state, METRIC_TOP_REGIONS))
    energised = GaugeMetricFamily(
        "hashatlas_site_capacity_watts",
        "Energised power capacity of the registry's mining sites (latest row of each), by "
        "region (top regions, the rest as other) and status", labels=["region", "status"])
    planned = GaugeMetricFamily(
        "hashatlas_site_planned_capacity_watts",
        "Announced, not yet energised capacity of the registry's sites, by region and status",
        labels=["region", "status"])
    sums: dict[tuple[str, str], tuple[float, float]] = {}
    for site in state:
        key = (site.region if site.region in top else OTHER_REGION, site.status)
        e, p = sums.get(key, (0.0, 0.0))
        sums[key] = (e + site.energised * core.W_PER_MW, p + site.planned * core.W_PER_MW)
    for (region, status), (e, p) in sorted(sums.items()):
        energised.add_metric([region, status], e)
        planned.add_metric([region, status], p)
    metrics: list[Metric] = [energised, planned]
    if snapshot is not None:
        capacity_w = core.mining_capacity_w(state)
        entries = [*(snapshot.get("regions") or []), *(snapshot.get("subdivisions") or [])]
        ratio = GaugeMetricFamily(
            "hashatlas_region_site_utilisation_ratio",
            "Estimated regional power band / energised mining capacity of the registry's sites "
            "(above 1: more power than the listed public miners' capacity)",
            labels=["region", "band"])
        for item in core.site_utilisation(entries, capacity_w):
            for band, value in item["utilisation"].items():
                ratio.add_metric([item["region"], band], value)
        metrics.append(ratio)
    return metrics


class SiteCollector:
    def __init__(self, sites: Sequence[core.Site], snapshot: dict[str, Any] | None) -> None:
        self.sites = sites
        self.snapshot = snapshot

    def collect(self) -> list[Metric]:
        return site_metrics(self.sites, self.snapshot)
