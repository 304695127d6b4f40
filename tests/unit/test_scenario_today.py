"""scenarios/steady.yaml is today's world (issue #12): its numbers agree with each other and with
the public late-2025 figures its comments cite.

Expected values are the cited figures (difficulty 148.26 T on 2025-12-25, 7-day hashrate between
1.0 and 1.1516 ZH/s, hashprice ≈ 38 USD/PH/day in December 2025, Hashrate Index's Q3 2025
country shares), never the code under test.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from streams.core.blocks import block_subsidy_sat, difficulty_from_bits
from streams.core.electricity import hashprice_usd_ph_day
from streams.sim.model import Simulator
from streams.sim.scenario import Scenario, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
START = 1_766_707_200.0  # 2025-12-26 00:00 UTC
TWO32 = 2.0**32
BLOCKS_PER_DAY = 144


@pytest.fixture(scope="module")
def today() -> Scenario:
    return load_scenario(SCENARIOS / "steady.yaml")


def test_hashrate_and_difficulty_are_late_2025_and_consistent(today: Scenario) -> None:
    assert today.chain.difficulty == pytest.approx(148.26e12)  # adjustment of 2025-12-25
    implied_ehs = today.chain.difficulty * TWO32 / 600 / 1e18
    assert today.network.hashrate_ehs == pytest.approx(implied_ehs, rel=1e-3)
    assert 1000 <= today.network.hashrate_ehs <= 1151.6  # ≈ 1 ZH/s, below October's 7-day peak
    assert today.chain.start_height % 2016 == 0  # starts on a retarget boundary
    assert block_subsidy_sat(today.chain.start_height) == 312_500_000


def test_hashprice_is_in_the_late_2025_range(today: Scenario) -> None:
    hashprice = hashprice_usd_ph_day(
        block_subsidy_sat(today.chain.start_height),
        today.chain.fees_btc_mean * 1e8,
        BLOCKS_PER_DAY,
        today.market.btc_usd,
        today.network.hashrate_ehs * 1e18,
    )
    assert 35.0 <= hashprice <= 50.0
    assert hashprice == pytest.approx(38.0, rel=0.05)  # Luxor's ≈ 38 USD/PH/day, December 2025


def test_country_shares_are_hashrate_index_q3_2025(today: Scenario) -> None:
    by_country: dict[str, float] = {}
    for code, percent in today.regions.items():
        country = code.split("-")[0]
        by_country[country] = by_country.get(country, 0.0) + percent
    published = {"US": 35.81, "RU": 16.61, "CN": 13.84, "PY": 3.87, "AE": 3.54, "OM": 2.99,
                 "CA": 2.935, "KZ": 2.484}
    for country, percent in published.items():
        assert by_country[country] == pytest.approx(percent, abs=1e-9), country
    assert "NO" in today.regions  # Norway survives YAML 1.1


def test_one_simulated_hour_shows_the_stated_world(today: Scenario) -> None:
    outputs = list(Simulator(today, start_ts=START).steps(3600.0))
    truths = [out.truth for out in outputs if out.truth is not None]
    network = statistics.mean(t["network_hs"] for t in truths)
    assert network == pytest.approx(today.network.hashrate_ehs * 1e18, rel=0.03)
    blocks = [e for out in outputs for e in out.events if e["type"] == "block"]
    live = [b for b in blocks if b["height"] >= today.chain.start_height]
    assert live, "an hour at 600 s blocks mines some"
    for block in live:
        assert difficulty_from_bits(block["bits"]) == pytest.approx(148.26e12, rel=1e-3)
    prices = [e["btc_usd"] for out in outputs for e in out.events if e["type"] == "price"]
    assert prices[0] == pytest.approx(87_000)
