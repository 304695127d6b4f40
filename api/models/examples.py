"""Examples shown in the OpenAPI description (each one valid against its model)."""

from __future__ import annotations

from typing import Any

EXAMPLE_POWER = {"lower": 1.2e10, "best": 1.9e10, "upper": 3.1e10}
EXAMPLE_TWH = {"lower": 105.2, "best": 166.6, "upper": 271.7}
EXAMPLE_REGION: dict[str, Any] = {
    "region": "US", "name": "United States", "share": 0.378, "share_ci95": [0.348, 0.408],
    "sampling_ci95": [0.3778, 0.3782],
    "share_se_parts": {"sampling": 0.0001, "pool_weights": 0.0, "heterogeneity": 0.0145,
                       "clustering": 0.0038},
    "hashrate_hs": 2.8e20, "hashrate_ci95_hs": [2.7e20, 2.9e20], "sample_hashrate_hs": 1.2e20,
    "sample_hashrate_ci95_hs": [1.19e20, 1.21e20],
    "power_w": {"lower": 4.5e9, "best": 7.2e9, "upper": 1.2e10},
    "annualized_twh": {"lower": 39.4, "best": 63.1, "upper": 105.2},
    "electricity_usd_kwh": 0.05, "subdivisions": ["US-TX", "US-GA"],
}
EXAMPLE_SNAPSHOT: dict[str, Any] = {
    "type": "estimate", "as_of": 1732400000.0, "published_at": 1732400000.4, "window_s": 300,
    "stale": False, "max_event_ts": 1732399999.8,
    "network": {
        "hashrate_hs": 7.5e20, "hashrate_ci95_hs": [7.2e20, 7.8e20], "source": "fused",
        "sources": ["shares", "coverage", "blocks"], "coverage": 0.41,
        "coverage_ci95": [0.37, 0.45], "coverage_status": "stable",
        "coverage_long_window": 0.405, "coverage_shift_z": 0.4,
        "interval_note": "coverage 0.41 (stable: the last 144 blocks agree with the older ones)",
        "unlisted_region_share_max": 0.63,
        "sample_hashrate_hs": 3.1e20,
        "power_w": EXAMPLE_POWER, "annualized_twh": EXAMPLE_TWH, "hashprice_usd_ph_day": 52.1,
        "profitability_threshold_j_gh": 0.041, "block_hashrate_hs": 7.4e20,
        "block_hashrate_ci95_hs": [6.2e20, 8.9e20], "blocks_seen": 2016, "tip_height": 872000,
        "implausible_pools": {},
    },
    "regions": [EXAMPLE_REGION],
    "subdivisions": [],
    "pools": {"windows": [144, 1008, 2016], "tip_height": 872000, "rate_window_s": 900.0,
              "pools": [], "diverging": [], "attribution": None, "hashprice": {"blocks": 0},
              "groups": {}},
    "site_utilisation": [],
    "inputs": {"partitions": {"0": 123456}, "evaluated_at": {"0": 1732400000.0}},
}
EXAMPLE_ALERT: dict[str, Any] = {
    "type": "regional_shift", "id": "KZ-1641340800", "region": "KZ", "direction": "down",
    "test": "step", "mirrors": ["US", "RU"], "detected_at": 1641341700.0,
    "started_at": 1641340800.0, "share_before": 0.18,
    "share_after": 0.06, "magnitude_pp": -12.0, "relative_change": -0.67, "score": 14.2,
    "state": "firing", "updated_at": 1641341700.0,
}
EXAMPLE_SITE: dict[str, Any] = {
    "operator": "Riot Platforms", "site": "Rockdale Facility", "country": "US",
    "subdivision": "US-TX", "region": "US-TX", "latitude": None, "longitude": None,
    "energised_mw": 700.0, "planned_mw": None, "status": "mining", "as_of": "2025-06-30",
    "source": "Riot Platforms 10-Q for the period ended 30 Jun 2025, Note 1 Organization "
              "https://www.sec.gov/Archives/edgar/data/1167419/000155837025009896/R8.htm",
    "notes": "700 MW of total developed capacity",
}
