"""Pools (#15): attribution evidence and hashprice on real blocks, exact intervals, luck
calibration on simulated pools, the divergence rule and its alerts."""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from streams.commands.blocks import add_parser
from streams.contracts import PoolDivergenceAlert
from streams.core.pools import (
    ALERT_TYPE,
    DivergenceDetector,
    DivergenceParams,
    LuckLedger,
    attribution_quality,
    binomial_interval,
    hashprice_sats_th_day,
    hashprice_summary,
    poisson_p_value,
    pool_groups,
    pool_hashrates_from_blocks,
    pool_luck,
    regularized_beta,
)
from streams.sim.pools import flag_run, luck_coverage, simulate_chain

REAL_BLOCKS_FILE = Path(__file__).resolve().parents[1] / "data" / "real_blocks.jsonl"


def run_describe(capsys: pytest.CaptureFixture[str]) -> dict[int, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="hashatlas")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["blocks", "describe", str(REAL_BLOCKS_FILE)])
    assert args.func(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {int(row["height"]): row for row in rows}


# Attribution evidence, read off each coinbase by hand (tests/data/README.md names the pools):
# 250000 pays 1KoAvaL3…, no listed address, its scriptSig holds no tag → unknown.
# 330000 pays F2Pool's 1KFHE7w8…, scriptSig "七彩神仙鱼 … Mined by f2pool" → both agree.
# 625007 pays Huobi's 1MvYASoH…, scriptSig "/HuoBi/" → both agree.
# 629999 pays F2Pool's 1KFHE7w8…, scriptSig "🐟NYTimes 09/Apr/2020 …": the fish is an F2Pool tag
#        in pools-v2.json (UTF-8 reading), so both agree although no ASCII tag is present.
# 722010 pays BTC.com's 1Bf9sZvB…, scriptSig "btcpool/…" matches no tag → address only.
EXPECTED_DETAIL = {250000: "unknown", 330000: "both", 625007: "both", 629999: "both",
                   722010: "address"}

# Hashprice by hand: reward · 86400 s · 10¹² / (D · 2³²) with D = 0xFFFF·2²⁰⁸ / target and
# target = mantissa · 256^(size − 3) from the compact bits, so
#   sats/TH/day = reward · 86400 · 10¹² · mantissa · 2^(8·(size−3)) / (0xFFFF · 2²⁰⁸ · 2³²).
# (bits, coinbase outputs = subsidy + fees in sat)
HAND = {
    250000: (0x1972DBF2, 2_500_000_000 + 11_190_100),
    330000: (0x181BC330, 2_500_000_000 + 652_419),
    625007: (0x171320BC, 1_250_000_000 + 18_966_446),
    629999: (0x17117A39, 1_250_000_000 + 106_876_397),
    722010: (0x170A8BB4, 625_000_000 + 16_035_827),
}


def hand_sats_th_day(bits: int, reward: int) -> Fraction:
    size, mantissa = bits >> 24, bits & 0x7FFFFF
    target = mantissa * 256 ** (size - 3)
    return Fraction(reward * 86400 * 10**12 * target, 0xFFFF * 2**208 * 2**32)


def test_describe_prints_attribution_and_hashprice_of_real_blocks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = run_describe(capsys)
    assert {h: r["attribution_detail"] for h, r in rows.items()} == EXPECTED_DETAIL
    for height, (bits, reward) in HAND.items():
        assert rows[height]["hashprice_sats_th_day"] == pytest.approx(
            float(hand_sats_th_day(bits, reward)), rel=1e-12)
    # 722010 (6 Feb 2022): 641 035 827 sat at D ≈ 2.669e13 → ≈ 483 sat/TH/day (0.0000048 BTC),
    # what hashrate indices showed that week.
    assert rows[722010]["hashprice_sats_th_day"] == pytest.approx(483.1468, abs=1e-4)
    assert rows[250000]["attribution_confidence"] == 0.0
    assert rows[722010]["attribution_confidence"] == 0.95
    assert rows[330000]["attribution_confidence"] == 0.99


def test_hashprice_summary_and_units() -> None:
    difficulty = 1e14
    summary = hashprice_summary([312_500_000] * 3, [10_000_000, None, 20_000_000],
                                312_500_000, difficulty, 100_000.0)
    assert summary["blocks"] == 2
    reward = 312_500_000 + 15_000_000
    sats = reward * 86400e12 / (difficulty * 2**32)
    assert summary["hashprice_sats_th_day"] == pytest.approx(sats)
    assert summary["fpps_sats_th_day"] == pytest.approx(sats)
    assert summary["pps_sats_th_day"] == pytest.approx(312_500_000 * 86400e12 / (1e14 * 2**32))
    # sat/TH/day → USD/PH/day: ×1000 TH per PH, ÷1e8 sat per BTC, × price.
    assert summary["hashprice_usd_ph_day"] == pytest.approx(sats * 1000 / 1e8 * 100_000)
    assert summary["hashvalue_btc_ph_day"] == pytest.approx(sats * 1000 / 1e8)
    assert hashprice_summary([1.0], [None], 1.0, difficulty, None) == {"blocks": 0}
    with pytest.raises(ValueError):
        hashprice_sats_th_day(1.0, 0.0)


# ---- exact intervals ---------------------------------------------------------------------------


def test_clopper_pearson_closed_forms() -> None:
    n = 144
    assert binomial_interval(0, n) == (0.0, pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9))
    assert binomial_interval(n, n) == (pytest.approx(0.025 ** (1 / n), rel=1e-9), 1.0)
    lo, hi = binomial_interval(43, n)
    # The bounds are where the binomial tails hold 2.5 % each.
    assert 1 - regularized_beta(lo, 43, n - 43 + 1) == pytest.approx(0.975, abs=1e-9)
    assert regularized_beta(hi, 44, n - 43) == pytest.approx(0.975, abs=1e-9)


def test_poisson_p_value() -> None:
    assert poisson_p_value(0, 3.0) == pytest.approx(2 * math.exp(-3.0))
    # P(X >= 10 | 3) = 1 − Σ_{j<10} e⁻³ 3ʲ/j!
    tail = 1 - sum(math.exp(-3.0) * 3.0**j / math.factorial(j) for j in range(10))
    assert poisson_p_value(10, 3.0) == pytest.approx(2 * tail, rel=1e-9)
    assert poisson_p_value(3, 3.0) == 1.0


def test_pool_hashrate_from_blocks_combines_both_intervals() -> None:
    pools = ["a"] * 30 + ["b"] * 100 + ["c"] * 14
    works = [1.0] * len(pools)
    rows = pool_hashrates_from_blocks(pools, works, 144, 6e20, (5.4e20, 6.6e20))
    a = rows["a"]
    assert (a.blocks, a.window_blocks, a.work_share) == (30, 144, pytest.approx(30 / 144))
    assert a.hashrate_hs == pytest.approx(30 / 144 * 6e20)
    assert a.hashrate_ci95_hs is not None
    share_lo, share_hi = binomial_interval(30, 144)
    # Wider than either source alone, narrower than their product of extremes.
    assert a.hashrate_ci95_hs[0] < share_lo * 6e20 and a.hashrate_ci95_hs[0] > share_lo * 5.4e20
    assert a.hashrate_ci95_hs[1] > share_hi * 6e20 and a.hashrate_ci95_hs[1] < share_hi * 6.6e20
    assert pool_hashrates_from_blocks(pools, works, 144, None, None)["b"].hashrate_hs is None


# ---- luck --------------------------------------------------------------------------------------


def test_luck_interval_is_garwood_over_expected() -> None:
    luck = pool_luck(10, 8.0, 144, 144)
    assert luck.luck == 1.25
    assert luck.luck_ci95 == (pytest.approx(4.795389 / 8, rel=1e-5),
                              pytest.approx(18.390356 / 8, rel=1e-5))
    none_found = pool_luck(0, 2.0, 144, 144)
    assert none_found.luck_ci95 == (0.0, pytest.approx(3.688879 / 2, rel=1e-5))
    assert pool_luck(0, 0.0, 144, 0).luck is None


def test_ledger_records_new_blocks_and_computes_luck() -> None:
    ledger = LuckLedger()
    heights = list(range(100, 110))
    times = [600.0 * i for i in range(10)]
    difficulty = 1e6
    rate = 0.5 * difficulty * 2**32 / 600  # half of the network at this difficulty
    # The first call only marks where the leader started.
    assert ledger.record(heights[:5], times[:5], [difficulty] * 5, {"a": rate}, 2400, 3600) == []
    recorded = ledger.record(heights, times, [difficulty] * 10, {"a": rate}, 5400.0, 3600.0)
    assert recorded == [105, 106, 107, 108, 109]
    finders = ["a", "x", "a", "a", "x", "a", "a", "a", "x", "a"]
    luck = ledger.luck(heights, finders, 144)["a"]
    assert (luck.covered_blocks, luck.blocks_found) == (5, 4)
    assert luck.expected_blocks == pytest.approx(2.5)
    restored = LuckLedger.from_state(json.loads(json.dumps(ledger.to_state())))
    assert restored.luck(heights, finders, 144)["a"] == luck
    # Blocks older than the rates' window are not credited.
    late = LuckLedger()
    late.record([1], [0.0], [difficulty], {"a": rate}, 0.0, 3600.0)
    assert late.record([1, 2], [0.0, 600.0], [difficulty] * 2, {"a": rate}, 9999.0, 3600.0) == []


# ---- calibration on simulated pools ------------------------------------------------------------

# Sampled pools of realistic sizes (a Foundry-like 30 %, then 15, 8 and 3 %).
SIM_SHARES = [0.30, 0.15, 0.08, 0.03]


def test_simulator_expected_blocks_match_truth() -> None:
    chain = simulate_chain(np.random.default_rng(0), 20_000, SIM_SHARES)
    measured = chain.expected_measured.sum(axis=0)
    assert measured / chain.expected_true.sum(axis=0) == pytest.approx([1.0] * 4, abs=0.01)
    found = np.bincount(chain.finder, minlength=5)[:4]
    assert found / measured == pytest.approx([1.0] * 4, abs=0.1)


def test_luck_intervals_cover_the_truth_93_to_97_percent() -> None:
    coverage = luck_coverage(range(12), SIM_SHARES, windows_per_seed=20)
    covered = sum(c for c, _ in coverage.values())
    tried = sum(t for _, t in coverage.values())
    assert tried > 15_000
    assert 0.93 <= covered / tried <= 0.97
    for window, (c, t) in coverage.items():
        assert 0.93 <= c / t <= 0.97, (window, c, t)


def test_honest_pools_are_flagged_in_under_one_percent_of_days() -> None:
    flagged = days = 0
    for seed, pool in [(1, 0), (2, 1), (3, 2), (4, 3)]:
        f, d, _ = flag_run(seed, SIM_SHARES, pool, 40, warmup_blocks=1008)
        flagged, days = flagged + f, days + d
    assert flagged / days < 0.01


def test_a_proxy_seeing_half_a_pool_is_flagged() -> None:
    for seed in range(3):
        _, _, first = flag_run(100 + seed, SIM_SHARES, 0, 14, visible=0.5)
        assert first is not None and first < 1008, first


# ---- alerts ------------------------------------------------------------------------------------


def test_divergence_fires_with_evidence_and_resolves() -> None:
    detector = DivergenceDetector(DivergenceParams(fire_p=1e-4, resolve_p=0.01))
    bad = {144: pool_luck(60, 30.0, 144, 144)}
    alerts = detector.update(1000.0, {"foundry-usa": bad}, {"foundry-usa": 1e20})
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["type"] == ALERT_TYPE and alert["state"] == "firing"
    assert alert["pool"] == "foundry-usa" and alert["direction"] == "blocks_above_shares"
    assert alert["luck"] == 2.0 and alert["block_implied_hashrate_hs"] == pytest.approx(2e20)
    assert alert["likely_causes"][0].startswith("partial_proxy_view")
    PoolDivergenceAlert.model_validate(alert)
    assert detector.update(1100.0, {"foundry-usa": bad}) == []  # still firing, not repeated
    restored = DivergenceDetector.from_state(json.loads(json.dumps(detector.to_state())))
    assert "foundry-usa" in restored.active
    # Between fire and resolve thresholds nothing changes (hysteresis).
    assert restored.update(1200.0, {"foundry-usa": {144: pool_luck(48, 30.0, 144, 144)}}) == []
    resolved = restored.update(1300.0, {"foundry-usa": {144: pool_luck(31, 30.0, 144, 144)}})
    assert [a["state"] for a in resolved] == ["resolved"]
    assert resolved[0]["id"] == alert["id"] and resolved[0]["resolved_at"] == 1300.0
    # Too few covered blocks: no judgement.
    assert detector.update(1.0, {"x": {144: pool_luck(10, 0.5, 144, 5)}}) == []


def test_attribution_quality_and_groups() -> None:
    quality = attribution_quality(
        ["both", "address", "conflict", "unknown"], [1.0, 1.0, 1.0, 1.0],
        ["f2pool", "foundry-usa", "antpool", "unknown"], [None, None, "braiins-pool", None])
    assert quality["unknown_work_share"] == 0.25
    assert quality["methods"]["both"] == {"blocks": 1, "work_share": 0.25, "confidence": 0.99}
    assert quality["conflicts"] == {"antpool<-braiins-pool": 1}
    assert quality["mean_confidence"] == pytest.approx((0.99 + 0.95 + 0.6) / 4)
    shipped = json.loads((Path(__file__).resolve().parents[2] / "streams" / "data"
                          / "pools-v2.json").read_text(encoding="utf-8"))
    # pools-v2.json names no parent pool (fields: id, name, addresses, tags, link).
    assert {key for entry in shipped for key in entry} == {"id", "name", "addresses", "tags",
                                                            "link"}
    assert pool_groups(shipped) == {}
    assert pool_groups([{"name": "Some Proxy", "parent": "AntPool"}]) == {"some-proxy": "antpool"}


# ---- the snapshot's pools section --------------------------------------------------------------


def test_snapshot_pools_section_flags_a_half_seen_pool() -> None:
    from streams.core.blocks import BestChain, BlockFacts
    from streams.core.electricity import load_hardware
    from streams.core.pools import pool_history_points, top_pools
    from streams.core.snapshot import (
        EstimationConfig,
        MergedSample,
        SampleTotals,
        SnapshotMemory,
        build_snapshot,
    )
    from streams.pipeline.state import ChainPartition

    network_hs = 200e18
    difficulty = network_hs * 600 / 2**32
    t0 = 1_795_000_000.0
    pattern = ["foundry-usa"] * 3 + ["antpool"] * 2 + ["f2pool"] * 3 + ["unknown"] * 2
    chain = BestChain()
    state = ChainPartition(chain=chain, pools=None)  # type: ignore[arg-type]

    def add(i: int) -> None:
        pool = pattern[i % 10]
        chain.add(BlockFacts(
            height=840_000 + i, hash=f"{i:064x}", prev_hash=f"{i - 1:064x}" if i else None,
            time=t0 + i * 600.0, bits="17034219", pool=pool, pool_slug=pool,
            attribution="feed", difficulty=difficulty, work=round(difficulty * 2**32),
            subsidy_sat=312_500_000, fees_sat=0, coinbase_value_sat=312_500_000,
            attribution_detail="address"))

    def totals(hashrate: float) -> SampleTotals:
        dsum = hashrate * 900 / 2**32
        return SampleTotals(dsum / 2**20, dsum, dsum * 2**20, 900, 2**20)

    # The proxy sees half of Foundry (15 % of the network of its 30 %); AntPool fully.
    windows = {("foundry-usa", "US"): totals(0.15 * network_hs),
               ("antpool", "CN"): totals(0.2 * network_hs)}
    config = EstimationConfig(headline_window_s=900, hardware=load_hardware(
        Path(__file__).resolve().parents[2] / "streams" / "data" / "hardware.csv"))
    memory = SnapshotMemory()
    fired_at = None
    for i in range(1500):
        add(i)
        if i < 1000 and i % 100:
            continue  # the ledger starts at the first snapshot; before, only build the chain
        sample = MergedSample(as_of=t0 + i * 600.0 + 1, max_event_ts=t0 + i * 600.0 + 1,
                              windows={900.0: windows})
        snapshot = build_snapshot(sample, state.summary(2016), 50_000.0, config, memory,
                                  published_at=sample.as_of, stale=False)
        alerts = memory.pools.drain_alerts()
        if alerts and fired_at is None:
            fired_at = i
            assert alerts[0]["pool"] == "foundry-usa" and alerts[0]["luck"] > 1.5
    assert fired_at is not None and fired_at - 1000 < 300
    section = snapshot["pools"]
    by_pool = {entry["pool"]: entry for entry in section["pools"]}
    assert [e["pool"] for e in section["pools"]][:2] == ["f2pool", "foundry-usa"]
    foundry = by_pool["foundry-usa"]
    assert foundry["hashrate"]["2016"]["work_share"] == pytest.approx(0.3, abs=0.002)
    assert foundry["hashrate"]["144"]["hashrate_hs"] == pytest.approx(
        foundry["hashrate"]["144"]["work_share"] * snapshot["network"]["hashrate_hs"])
    assert foundry["validation"]["status"] == "diverging"
    assert foundry["luck"]["144"]["luck"] == pytest.approx(2.0, rel=0.05)
    assert by_pool["antpool"]["validation"]["status"] == "consistent"
    assert by_pool["antpool"]["luck"]["1008"]["luck"] == pytest.approx(1.0, rel=0.05)
    assert by_pool["f2pool"]["validation"]["status"] == "not_sampled"
    assert section["diverging"][0]["pool"] == "foundry-usa"
    assert section["attribution"]["unknown_work_share"] == pytest.approx(0.2, abs=0.002)
    # 3.125 BTC at the difficulty of 200 EH/s: 312.5e6 sat · 144 / 2e8 TH/s = 225 sat/TH/day,
    # = 112.5 USD/PH/day at 50 000 USD, the network hashprice the snapshot already gives.
    assert section["hashprice"]["hashprice_sats_th_day"] == pytest.approx(225.0)
    assert section["hashprice"]["hashprice_usd_ph_day"] == pytest.approx(
        snapshot["network"]["hashprice_usd_ph_day"])
    assert "unknown" not in top_pools(section)
    points = pool_history_points(section, 60.0)
    assert set(points) == {"pool:f2pool", "pool:foundry-usa", "pool:antpool"}
    assert points["pool:foundry-usa"]["status"] == "diverging"


def test_chain_asked_for_more_blocks_than_it_holds_gives_them_all() -> None:
    from streams.core.blocks import BestChain, BlockFacts

    chain = BestChain()
    for i in range(5):
        chain.add(BlockFacts(height=i, hash=f"{i:064x}", prev_hash=None, time=600.0 * i,
                             bits="1d00ffff", pool="x", pool_slug="x", attribution="feed",
                             difficulty=1.0, work=2**32, subsidy_sat=0, fees_sat=0,
                             coinbase_value_sat=0))
    # Was blocks[len − n:], a negative start for n > len: the last n − len were returned.
    assert [b.height for b in chain.blocks(8)] == [0, 1, 2, 3, 4]


def test_pools_section_groups_proxying_pools_under_their_parent() -> None:
    from streams.core.pools import PoolMemory, pools_section
    from streams.models.chain import ChainSummary

    pools = ["antpool", "some-proxy", "f2pool", "antpool"]
    chain = ChainSummary(blocks=4, tip_height=103, coverage_pools=pools,
                         coverage_works=[1.0] * 4, coverage_heights=[100, 101, 102, 103],
                         coverage_times=[0.0, 600.0, 1200.0, 1800.0],
                         coverage_difficulties=[1.0] * 4)
    section = pools_section(1800.0, {}, chain, 1e20, (0.9e20, 1.1e20), None, PoolMemory(),
                            {"some-proxy": "antpool"})
    assert section["group_work_share"] == {"antpool": 0.75, "f2pool": 0.25}
    assert {e["pool"]: e["group"] for e in section["pools"]}["some-proxy"] == "antpool"
    assert section["hashprice"] == {"blocks": 0}  # no reward columns: no hashprice


def test_ledger_after_a_reorg_to_a_shorter_chain_records_the_new_branch() -> None:
    ledger = LuckLedger()
    rate = {"a": 2.0**32 / 600}  # one expected block per 600 s at difficulty 1
    ledger.record([1, 2], [0.0, 600.0], [1.0, 1.0], rate, 600.0, 3600.0)
    assert ledger.record([1, 2, 3, 4, 5], [0.0, 600.0, 1200.0, 1800.0, 2400.0], [1.0] * 5,
                         rate, 2400.0, 3600.0) == [3, 4, 5]
    # The feed drops 5 (reorg) and later sends a new 5 and 6: both are recorded.
    assert ledger.record([1, 2, 3, 4], [0.0, 600.0, 1200.0, 1800.0], [1.0] * 4, rate,
                         2500.0, 3600.0) == []
    assert ledger.record([3, 4, 5, 6], [1200.0, 1800.0, 2700.0, 3000.0], [1.0] * 4, rate,
                         3000.0, 3600.0) == [5, 6]
    assert ledger.expected[5]["a"] == pytest.approx(1.5)
    assert ledger.expected[6]["a"] == pytest.approx(0.5)
    # Shares too few for their blocks: the other direction names other causes.
    detector = DivergenceDetector()
    (alert,) = detector.update(1.0, {"a": {144: pool_luck(2, 40.0, 144, 144)}})
    assert alert["direction"] == "blocks_below_shares"
    assert alert["likely_causes"][0].startswith("difficulty_over_reported")
