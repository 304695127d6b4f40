"""The leader's estimation config: method settings and the reference tables shipped in
``streams/data`` (or the files the settings name)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from streams.core.electricity import Method, load_electricity_prices, load_hardware
from streams.core.known_regions import parse_known_regions
from streams.core.pools import pool_groups
from streams.core.snapshot import EstimationConfig
from streams.settings import Settings

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def estimation_config(settings: Settings) -> EstimationConfig:
    hardware = load_hardware(settings.hardware_file or DATA_DIR / "hardware.csv")
    default_price, prices = load_electricity_prices(
        settings.electricity_prices_file or DATA_DIR / "electricity_prices.yaml"
    )
    method: Method = "1.2.0" if settings.electricity_method == "1.2.0" else "1.4.0"
    return EstimationConfig(
        headline_window_s=settings.headline_window_s,
        hardware=hardware,
        default_price_usd_kwh=default_price,
        prices_usd_kwh=prices,
        method=method,
        suspect_regions=settings.suspect_regions,
        site_capacity_w=site_capacity_w(settings),
        # pools-v2.json names no parent pool today, so this is empty unless a list adds one.
        pool_groups=pool_groups(json.loads((DATA_DIR / "pools-v2.json").read_text("utf-8"))),
        known_regions=known_regions(settings),
    )


def known_regions(settings: Settings) -> tuple[str, ...]:
    """The countries of the reference list of known mining regions."""
    path = settings.mining_regions_file or DATA_DIR / "mining_regions.csv"
    return tuple(row.region for row in parse_known_regions(path.read_text("utf-8")))


def site_capacity_w(settings: Settings) -> dict[str, float]:
    """Energised mining capacity per region of the site registry (each site's latest row)."""
    from streams.commands.sites import load_sites
    from streams.core.sites import latest, mining_capacity_w

    warn = logging.getLogger("hashatlas.sites").warning
    return mining_capacity_w(latest(load_sites(settings, warn=warn)))
