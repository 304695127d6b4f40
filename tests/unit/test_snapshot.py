"""The snapshot builder on a world whose every number is known by hand."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from streams.core.blocks import BestChain, BlockFacts
from streams.core.electricity import load_hardware
from streams.core.network import DEFAULT_COVERAGE_MEMORY_BLOCKS
from streams.core.snapshot import (
    EstimationConfig,
    MergedSample,
    SampleTotals,
    SnapshotMemory,
    build_snapshot,
    history_points,
    merge_partials,
    shares_for_detection,
)
from streams.models.chain import ChainSummary
from streams.models.partials import SharePartial
from streams.pipeline.state import ChainPartition

H = 200e18  # network hashrate, H/s
D = H * 600 / 2**32  # difficulty for one block per 600 s
HEIGHT0 = 840_000  # subsidy 3.125 BTC
SHARE_D = 2.0**20
WINDOW = 300.0
HARDWARE = load_hardware(Path(__file__).resolve().parents[2] / "streams" / "data" / "hardware.csv")
T_END = 1_795_000_000.0


def _chain() -> ChainSummary:
    """Blocks exactly 600 s apart: 30 % Foundry, 20 % AntPool, 50 % pools not sampled."""
    pattern = ["foundry-usa"] * 3 + ["antpool"] * 2 + ["f2pool"] * 3 + ["unknown"] * 2
    chain = BestChain()
    for i in range(2011):  # the window of the last 2010 blocks holds 201 whole patterns
        pool = pattern[i % 10]
        chain.add(BlockFacts(
            height=HEIGHT0 + i, hash=f"{i:064x}", prev_hash=f"{i - 1:064x}" if i else None,
            time=T_END - (2010 - i) * 600.0, bits="17034219", pool=pool, pool_slug=pool,
            attribution="feed", difficulty=D, work=round(D * 2**32), subsidy_sat=312_500_000,
            fees_sat=0, coinbase_value_sat=312_500_000))
    state = ChainPartition(chain=chain, pools=None)  # type: ignore[arg-type]
    return state.summary(2010)


def _totals(hashrate: float) -> SampleTotals:
    dsum = hashrate * WINDOW / 2**32
    return SampleTotals(dsum / SHARE_D, dsum, dsum * SHARE_D, WINDOW, SHARE_D)


def _sample(extra: dict[tuple[str, str], SampleTotals] | None = None) -> MergedSample:
    windows = {
        ("foundry-usa", "US-TX"): _totals(0.3 * H * 0.6),
        ("foundry-usa", "KZ"): _totals(0.3 * H * 0.4),
        ("antpool", "CN-SC"): _totals(0.2 * H),
        **(extra or {}),
    }
    return MergedSample(as_of=T_END, max_event_ts=T_END, windows={WINDOW: windows})


def _build(sample: MergedSample, chain: ChainSummary | None = None,
           **config: Any) -> dict[str, object]:
    estimation = EstimationConfig(headline_window_s=WINDOW, hardware=HARDWARE, **config)
    return build_snapshot(sample, chain or _chain(), 50_000.0, estimation, SnapshotMemory(),
                          published_at=T_END + 1, stale=False)


def test_known_world_gives_known_numbers() -> None:
    # ĉ weighs every block alike here (infinite memory), so it is exactly the pattern's 1/2
    snapshot = _build(_sample(), coverage_memory_blocks=math.inf)
    network = snapshot["network"]
    assert network["source"] == "fused"
    assert network["coverage"] == pytest.approx(0.5, rel=1e-12)
    assert network["coverage_long_window"] == pytest.approx(0.5, rel=1e-12)
    assert network["coverage_status"] == "stable"
    assert network["coverage_shift_z"] == pytest.approx(0.0, abs=0.2)
    assert network["sample_hashrate_hs"] == pytest.approx(0.5 * H, rel=1e-12)
    assert network["block_hashrate_hs"] == pytest.approx(H * 120 / 120, rel=1e-9)
    assert network["hashrate_hs"] == pytest.approx(H, rel=1e-9)
    lower, upper = network["hashrate_ci95_hs"]
    assert lower < H < upper
    # θ = revenue / (24 · H[TH/s] · p) = 144 · 3.125 · 50 000 / (24 · 2e8 · 0.05)
    assert network["profitability_threshold_j_gh"] == pytest.approx(0.09375, rel=1e-9)
    # hashprice = 3.125 BTC · 144 blocks/day · 50 000 USD / 200 000 PH/s
    assert network["hashprice_usd_ph_day"] == pytest.approx(112.5, rel=1e-9)
    power = network["power_w"]
    assert 0 < power["lower"] <= power["best"] <= power["upper"]
    assert network["annualized_twh"]["best"] == pytest.approx(power["best"] * 8.766e-9)
    shares = {r["region"]: r["share"] for r in snapshot["regions"]}
    assert shares == pytest.approx({"US": 0.36, "KZ": 0.24, "CN": 0.40}, rel=1e-12)
    for entry in snapshot["regions"]:
        assert entry["hashrate_hs"] == pytest.approx(entry["share"] * H, rel=1e-9)
        lo, hi = entry["share_ci95"]
        assert lo <= entry["share"] <= hi
    assert [s["region"] for s in snapshot["subdivisions"]] == ["CN-SC", "US-TX"]
    assert next(r for r in snapshot["regions"] if r["region"] == "US")["subdivisions"] == ["US-TX"]


def test_the_snapshot_says_when_coverage_moved_and_widens() -> None:
    steady = _build(_sample())
    network = steady["network"]
    assert network["coverage_status"] == "stable"
    assert network["coverage"] == pytest.approx(0.5, abs=0.02)  # discounted, within a pattern
    assert f"exp(-age/{DEFAULT_COVERAGE_MEMORY_BLOCKS:g})" in network["interval_note"]
    # the sampled pools find 1 in 4 of the last 144 blocks, not 1 in 2: their share fell
    chain = _chain()
    chain = replace(chain, coverage_pools=[*chain.coverage_pools[:-144],
                                           *(["foundry-usa"] + ["f2pool"] * 3) * 36])
    moved = _build(_sample(), chain)["network"]
    assert moved["coverage_status"] == "shifted"
    assert moved["coverage_shift_z"] < -3.0
    assert moved["coverage_long_window"] < 0.5
    assert moved["coverage"] == pytest.approx(0.25)
    assert moved["interval_note"].startswith("coverage ĉ = 0.250")
    assert "shifted" in moved["interval_note"]
    width = [n["hashrate_ci95_hs"][1] / n["hashrate_ci95_hs"][0] for n in (network, moved)]
    assert width[1] > width[0]


def test_a_pool_claiming_the_impossible_is_set_aside_and_named() -> None:
    honest = _build(_sample())
    rogue = _build(_sample({("viabtc", "RU"): _totals(10 * H)}))  # no block at all: absurd
    assert set(rogue["network"]["implausible_pools"]) == {"viabtc"}
    assert rogue["network"]["hashrate_hs"] == honest["network"]["hashrate_hs"]
    assert {r["region"] for r in rogue["regions"]} == {"US", "KZ", "CN"}


def test_merging_partials_sums_per_key() -> None:
    row = ["p", "US", 2.0, 10.0, 50.0, 300.0, 5.0]
    merged = merge_partials([SharePartial.from_json(body) for body in [
        {"t_eval": 10.0, "max_event_ts": 12.0, "windows": {"300": [row]}},
        {"t_eval": 10.0, "max_event_ts": 11.0, "windows": {"300": [row, ["q", "KZ", 1.0, 4.0,
                                                                       16.0, 200.0, 4.0]]}},
    ]])
    assert merged is not None and merged.max_event_ts == 12.0
    assert merged.windows[300.0][("p", "US")] == SampleTotals(4.0, 20.0, 100.0, 300.0, 5.0)
    assert merge_partials([]) is None


def test_history_points_cover_network_regions_and_subdivisions() -> None:
    points = history_points(_build(_sample()), 60.0)
    assert set(points) == {"network", "US", "KZ", "CN", "US-TX", "CN-SC"}
    assert points["network"]["share"] == 1.0
    assert points["US"]["share"] == pytest.approx(0.36)


def test_a_regions_sample_interval_covers_its_keys_and_a_countrys_its_subdivisions() -> None:
    extra = {("f2pool", "US"): _totals(0.05 * H), ("f2pool", "US-TX"): _totals(0.02 * H)}
    sample = _sample(extra)
    snapshot = _build(sample)
    totals = sample.windows[WINDOW]
    members = {"US": [("foundry-usa", "US-TX"), ("f2pool", "US"), ("f2pool", "US-TX")],
               "US-TX": [("foundry-usa", "US-TX"), ("f2pool", "US-TX")],
               "KZ": [("foundry-usa", "KZ")], "CN": [("antpool", "CN-SC")],
               "CN-SC": [("antpool", "CN-SC")]}
    entries = {e["region"]: e for e in [*snapshot["regions"], *snapshot["subdivisions"]]}
    assert set(entries) == set(members)
    for code, keys in members.items():
        parts = [totals[key] for key in keys]  # one window length: no rescaling
        combined = SampleTotals(sum(t.count for t in parts),
                                sum(t.difficulty_sum for t in parts),
                                sum(t.difficulty_sq_sum for t in parts), WINDOW, SHARE_D)
        assert entries[code]["sample_hashrate_ci95_hs"] == pytest.approx(
            list(combined.ci95_hs()), rel=1e-12), code


def test_site_utilisation_is_each_power_band_over_the_registrys_mining_capacity() -> None:
    capacity = {"US": 2e9, "US-TX": 1e9}
    config = EstimationConfig(headline_window_s=WINDOW, hardware=HARDWARE,
                              site_capacity_w=capacity)
    snapshot = build_snapshot(_sample(), _chain(), 50_000.0, config, SnapshotMemory(),
                              published_at=T_END + 1, stale=False)
    entries = {e["region"]: e for e in [*snapshot["regions"], *snapshot["subdivisions"]]}
    found = {item["region"]: item for item in snapshot["site_utilisation"]}
    assert set(found) == {"US", "US-TX"}
    for region, item in found.items():
        band = entries[region]["power_w"]
        assert item["mining_capacity_w"] == capacity[region]
        assert item["utilisation"] == pytest.approx(
            {k: band[k] / capacity[region] for k in ("lower", "best", "upper")})
    assert _build(_sample())["site_utilisation"] == []


def test_share_interval_covers_the_network_and_the_sample_interval_is_kept() -> None:
    """Two sampled pools with disjoint regions, half the network unsampled: share_ci95 is the
    network-share interval (wide: the other half could mix like either pool), sampling_ci95 the
    sample's own (narrow); detection reads the sampling one; reported account concentration
    narrows the clustering part."""
    snapshot = _build(_sample())
    for entry in snapshot["regions"]:
        s_lo, s_hi = entry["sampling_ci95"]
        lo, hi = entry["share_ci95"]
        assert lo < s_lo <= entry["share"] <= s_hi < hi
        assert hi - lo > 20 * (s_hi - s_lo)
        parts = entry["share_se_parts"]
        se = (parts["sampling"] ** 2 + parts["pool_weights"] ** 2 + parts["heterogeneity"] ** 2
              + parts["clustering"] ** 2) ** 0.5
        assert hi == pytest.approx(min(1.0, entry["share"] + 1.959963984540054 * se), rel=1e-9)
        assert lo == pytest.approx(max(0.0, entry["share"] - 1.959963984540054 * se), abs=1e-12)
    assert snapshot["network"]["unlisted_region_share_max"] == pytest.approx(
        1 - snapshot["network"]["coverage_ci95"][0])
    detection = shares_for_detection(snapshot)
    us = next(r for r in snapshot["regions"] if r["region"] == "US")
    assert detection["US"][1] == pytest.approx(
        (us["sampling_ci95"][1] - us["sampling_ci95"][0]) / (2 * 1.959964))
    fine = _sample()
    reported = MergedSample(as_of=fine.as_of, max_event_ts=fine.max_event_ts,
                            windows=fine.windows,
                            concentration={key: (0.0, 1.0, 0.0) for key in fine.windows[WINDOW]})
    lumpless = {r["region"]: r for r in _build(reported)["regions"]}
    assert lumpless["US"]["share_se_parts"]["clustering"] == 0.0
    assert us["share_se_parts"]["clustering"] > 0.0


def test_partials_carry_account_concentration_through_the_merge() -> None:
    partial = {"t_eval": T_END, "max_event_ts": T_END, "windows": {},
               "concentration": [["p", "US", 0.5, 1.0, 2.0]]}
    older_worker = {"t_eval": T_END, "max_event_ts": T_END, "windows": {}}
    merged = merge_partials([
        SharePartial.from_json(body) for body in
        (partial, {**partial, "concentration": [["p", "US", 0.1, 1.0, 0.0]]}, older_worker)])
    assert merged is not None
    assert merged.concentration == {("p", "US"): pytest.approx((0.6, 2.0, 2.0))}


def test_the_api_model_keeps_the_coverage_fields() -> None:
    """GET /v1/estimates/current serialises through EstimateSnapshot: the fields that say why
    the network interval is as wide as it is must survive it."""
    from streams.models.snapshot import EstimateSnapshot

    snapshot = _build(_sample())
    served = EstimateSnapshot.model_validate(snapshot).model_dump()["network"]
    for key in ("coverage_status", "coverage_long_window", "coverage_shift_z", "interval_note"):
        assert served[key] == snapshot["network"][key]  # type: ignore[index]
    assert served["coverage_status"] == "stable"
