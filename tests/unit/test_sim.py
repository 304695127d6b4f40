"""The simulator against the numbers its scenarios state, and the evaluator against hand sums.

Expected values come from the scenario text (CCAF's published shares, a pool's stated network
share, the hashrate in EH/s) or are worked out by hand in the comments, never from the code under
test. Statistical checks use fixed seeds and bounds of about four standard deviations.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.contracts import BlockEvent, ShareBatchEvent, ShareEvent, decode_input
from streams.core.blocks import block_subsidy_sat, difficulty_from_bits, target_from_bits
from streams.settings import Settings, Topics
from streams.sim import evaluate as ev
from streams.sim.model import Simulator, StepOutput, build_world
from streams.sim.run import drive, route, run_simulation
from streams.sim.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
START = 1_700_000_040.0  # a multiple of 60: truth points fall on the steps
TWO32 = 2.0**32

SMALL = """
name: small
duration: 1h
step_s: 10
seed: 3
network: {hashrate_ehs: 100}
chain: {start_height: 800000, retarget: false, difficulty: 20.0e12, fees_btc_mean: 0.2}
market: {btc_usd: 30000, volatility_per_day: 0.05, interval: 60s}
regions: {US-TX: 30, US: 20, "NO": 10, KZ: 40}
machines:
  - {model: S19, hashrate_ths: [95, 110], share_pct: 70}
  - {model: S21, hashrate_ths: 200, share_pct: 30}
pools:
  - {name: Foundry USA, network_share_pct: 25, sampled: true, share_interval: 10s}
  - {name: ViaBTC, network_share_pct: 15, sampled: true, share_interval: 5s}
  - {name: AntPool, network_share_pct: 50}
shocks: []
"""


def small(**changes: Any) -> Scenario:
    return parse_scenario(SMALL).model_copy(update=changes)


def run_steps(scenario: Scenario, duration_s: float, **kwargs: Any) -> list[StepOutput]:
    return list(Simulator(scenario, start_ts=START, **kwargs).steps(duration_s))


def events_of(outputs: list[StepOutput], kind: str) -> list[dict[str, Any]]:
    return [e for out in outputs for e in out.events if e["type"] == kind]


# ---- scenarios ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["steady", "ccaf_2022_01", "kazakhstan_2022", "china_ban_2021",
                                  "winter_storm_elliott", "vpn_inflated"])
def test_shipped_scenarios_parse_and_sample_about_forty_percent(name: str) -> None:
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    sampled = sum(p.network_share_pct for p in scenario.pools if p.sampled)
    assert 35.0 <= sampled <= 45.0  # CCAF's sample: ≈ 37–44 % of the network
    build_world(scenario)


def test_historical_map_is_ccaf_january_2022() -> None:
    scenario = load_scenario(SCENARIOS / "ccaf_2022_01.yaml")
    by_country: dict[str, float] = {}
    for code, percent in scenario.regions.items():
        by_country[code.split("-")[0]] = by_country.get(code.split("-")[0], 0.0) + percent
    published = {"US": 37.84, "CN": 21.11, "KZ": 13.22, "CA": 6.48, "RU": 4.66}
    for country, percent in published.items():
        assert by_country[country] == pytest.approx(percent, abs=1e-9)
    assert "NO" in scenario.regions  # Norway survives YAML 1.1 (NO is not False here)
    assert scenario.network.hashrate_ehs == 180


BAD_SCENARIOS = [
    ("regions", {"regions": {"US": 50, "KZ": 40}}),
    ("regions.XX", {"regions": {"XX": 60, "KZ": 40}}),
    ("duration", {"duration": "2 fortnights"}),
    ("step_s", {"step_s": 0.5}),
    ("machines", {"machines": [{"model": "S19", "hashrate_ths": 100, "share_pct": 90}]}),
    ("machines[0].hashrate_ths", {"machines": [{"model": "S19", "hashrate_ths": [110, 90],
                                                "share_pct": 100}]}),
    ("pools[1].network_share_pct", {"pools": [
        {"name": "Foundry USA", "network_share_pct": 25, "sampled": True},
        {"name": "ViaBTC", "network_share_pct": -1}]}),
    ("pools", {"pools": [{"name": "AntPool", "network_share_pct": 50}]}),
    ("pools[0].mix", {"pools": [{"name": "Foundry USA", "network_share_pct": 60,
                                 "sampled": True, "mix": {"US": 100}}]}),
    ("pools[0].mix.BR", {"pools": [{"name": "Foundry USA", "network_share_pct": 20,
                                    "sampled": True, "mix": {"BR": 100}}]}),
    ("shocks[0].region", {"shocks": [{"name": "x", "kind": "ramp", "region": "BR", "at": 0,
                                      "over": "1h", "factor": 0.5}]}),
    ("shocks[0].over", {"shocks": [{"name": "x", "kind": "blackout", "region": "KZ",
                                    "at": "1h", "over": "2h", "factor": 0.1}]}),
    ("shocks[0].hold", {"shocks": [{"name": "x", "kind": "curtailment", "region": "US",
                                    "at": "1h", "factor": 0.5}]}),
    ("shocks[0].exit_region", {"shocks": [{"name": "x", "kind": "vpn", "region": "KZ",
                                           "at": 0, "fraction": 0.5}]}),
    ("shocks[1].name", {"shocks": [
        {"name": "x", "kind": "ramp", "region": "KZ", "at": 0, "over": 60, "factor": 0.5},
        {"name": "x", "kind": "ramp", "region": "US", "at": 0, "over": 60, "factor": 0.5}]}),
]


@pytest.mark.parametrize(("field", "change"), BAD_SCENARIOS, ids=[f for f, _ in BAD_SCENARIOS])
def test_scenario_errors_name_the_field(field: str, change: dict[str, Any]) -> None:
    import yaml

    data = yaml.safe_load(SMALL)
    data.update(change)
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(yaml.safe_dump(data))
    assert caught.value.field == field, str(caught.value)


def test_durations_read_units() -> None:
    scenario = parse_scenario(SMALL.replace("duration: 1h", "duration: 1.5d"))
    assert scenario.duration == 1.5 * 86400
    assert parse_scenario(SMALL.replace("duration: 1h", "duration: 90")).duration == 90.0


# ---- shares: totals against the scenario's numbers ---------------------------------------------


def _sample_sums(outputs: list[StepOutput]) -> dict[tuple[str, str], list[float]]:
    """(pool, region) → [count, Σd, Σd²] over batches and single shares together."""
    sums: dict[tuple[str, str], list[float]] = {}
    for out in outputs:
        for e in out.events:
            if e["type"] == "share_batch":
                row = sums.setdefault((e["pool"], e["region"]), [0.0, 0.0, 0.0])
                row[0] += e["count"]
                row[1] += e["difficulty_sum"]
                row[2] += e["difficulty_sq_sum"]
            elif e["type"] == "share":
                row = sums.setdefault((e["pool"], e["region"]), [0.0, 0.0, 0.0])
                row[0] += 1
                row[1] += e["difficulty"]
                row[2] += e["difficulty"] ** 2
    return sums


@pytest.mark.parametrize(("hashrate_ehs", "duration", "single_fraction"),
                         [(0.001, 3600.0, 0.0), (0.001, 3600.0, 0.3), (100.0, 600.0, 0.0)])
def test_sample_totals_match_scenario_hashrates(hashrate_ehs: float, duration: float,
                                                single_fraction: float) -> None:
    """Each (pool, region)'s Σd·2³²/T against network × region share × pool share (from SMALL).

    Σd is compound Poisson with variance Σd² (METHOD §1), so z = (Σd − E)/√Σd² per key; Σz² over
    the 8 keys is χ²(8), whose 99.9 % point is 26.12. A tiny network (1 PH/s) keeps counts small
    enough that this has power; the big one (100 EH/s) checks there is no bias at 1e-4.
    """
    scenario = small(single_share_fraction=single_fraction,
                     network=small().network.model_copy(update={"hashrate_ehs": hashrate_ehs}))
    outputs = run_steps(scenario, duration)
    sums = _sample_sums(outputs)
    pools = {"foundry-usa": 0.25, "viabtc": 0.15}
    regions = {"US-TX": 0.30, "US": 0.20, "NO": 0.10, "KZ": 0.40}
    chi2 = 0.0
    for pool, pool_share in pools.items():
        for region, region_share in regions.items():
            _, dsum, dsq = sums[(pool, region)]
            expected = hashrate_ehs * 1e18 * region_share * pool_share * duration / TWO32
            chi2 += (dsum - expected) ** 2 / dsq
    assert chi2 < 26.12, chi2
    sample_hs = sum(row[1] for row in sums.values()) * TWO32 / duration
    # sample / coverage recovers the network (coverage 40 % from the scenario)
    assert sample_hs / 0.40 == pytest.approx(hashrate_ehs * 1e18, rel=0.02)
    if single_fraction:
        singles = events_of(outputs, "share")
        total = sum(row[0] for row in sums.values())
        assert len(singles) / total == pytest.approx(single_fraction, abs=0.02)


def test_share_counts_are_poisson_not_fixed() -> None:
    """Per-step counts of one key: variance/mean ≈ 1 (index of dispersion test, 359 d.o.f.)."""
    scenario = small(network=small().network.model_copy(update={"hashrate_ehs": 0.001}))
    outputs = run_steps(scenario, 3600.0)
    counts = np.zeros(len(outputs))
    for index, out in enumerate(outputs):
        for e in out.events:
            if e["type"] == "share_batch" and (e["pool"], e["region"]) == ("foundry-usa", "KZ"):
                counts[index] = e["count"]
    dispersion = (counts.size - 1) * counts.var(ddof=1) / counts.mean()
    # χ²(359): mean 359, sd √718 ≈ 26.8; accept ±4 sd
    assert abs(dispersion - 359) < 4 * math.sqrt(2 * 359), dispersion


def test_vardiff_gives_powers_of_two_near_the_share_interval() -> None:
    scenario = small(single_share_fraction=0.5,
                     network=small().network.model_copy(update={"hashrate_ehs": 0.01}))
    outputs = run_steps(scenario, 3600.0)
    by_pool: dict[str, set[float]] = {}
    for e in events_of(outputs, "share"):
        by_pool.setdefault(e["pool"], set()).add(e["difficulty"])
    # S19 95–110 TH/s at 10 s: 95e12·10/2³² ≈ 221 000 → 2¹⁸; S21 200 TH/s → 465 661 → 2¹⁹.
    assert by_pool["foundry-usa"] == {2.0**18, 2.0**19}
    # at 5 s every rate halves: 2¹⁷ and 2¹⁸ (S19 at 110 TH/s: 128 057 → 2¹⁷)
    assert by_pool["viabtc"] == {2.0**17, 2.0**18}


def test_every_event_validates_against_the_contracts() -> None:
    scenario = load_scenario(SCENARIOS / "vpn_inflated.yaml")
    outputs = run_steps(scenario, 3600.0, single_share_fraction=0.0002)
    kinds: Counter[str] = Counter()
    for out in outputs:
        for event in out.events:
            decoded = decode_input(json.dumps(event))
            kinds[event["type"]] += 1
            if isinstance(decoded, ShareBatchEvent):
                assert decoded.start == out.t and decoded.end == out.end
            if isinstance(decoded, ShareEvent):
                assert out.t <= decoded.ts < out.end
    assert set(kinds) == {"share", "share_batch", "price", "block"}


def test_sample_of_shipped_ccaf_2022_world_matches_its_truth() -> None:
    """One hour of ccaf_2022_01.yaml (with its regional wander): the sample over coverage vs
    truth."""
    outputs = run_steps(load_scenario(SCENARIOS / "ccaf_2022_01.yaml"), 3600.0)
    truths = [out.truth for out in outputs if out.truth is not None]
    assert len(truths) == 60
    sums = _sample_sums(outputs)
    sample_hs = sum(row[1] for row in sums.values()) * TWO32 / 3600.0
    coverage = np.mean([t["coverage"] for t in truths])
    network = np.mean([t["network_hs"] for t in truths])
    assert coverage == pytest.approx(0.425, rel=1e-9)  # no mixes: the sampled pools' 42.5 %
    assert network == pytest.approx(180e18, rel=0.03)  # 1 % wander per region
    assert sample_hs / coverage == pytest.approx(network, rel=0.005)
    us = sum(row[1] for (pool, region), row in sums.items() if region.startswith("US"))
    us_truth = np.mean([t["regions"]["US"][0] for t in truths])
    assert us / sum(row[1] for row in sums.values()) == pytest.approx(us_truth, abs=0.002)


# ---- shocks as scripted --------------------------------------------------------------------------


def _truth_at(outputs: list[StepOutput], offset_s: float) -> dict[str, Any]:
    for out in outputs:
        if out.truth is not None and out.t == START + offset_s:
            return out.truth
    raise AssertionError(f"no truth at +{offset_s} s")


def test_kazakhstan_blackout_changes_truth_as_scripted() -> None:
    base = load_scenario(SCENARIOS / "kazakhstan_2022.yaml")
    scenario = base.model_copy(update={
        "step_s": 300.0, "network": base.network.model_copy(update={"noise_sigma": 0.0})})
    outputs = run_steps(scenario, 2 * 86400.0)
    before = _truth_at(outputs, 86400.0 - 300)
    assert before["regions"]["KZ"][0] == pytest.approx(0.1322, rel=1e-9)
    assert before["network_hs"] == pytest.approx(180e18, rel=1e-9)
    assert before["shocks"] == []
    # 45 min fall, at +22.5 min... truth steps are 5 min: at +15 min a third of the way down
    third = _truth_at(outputs, 86400.0 + 900)
    kz_third = 0.1322 * (1 - 0.88 / 3)
    assert third["regions"]["KZ"][1] == pytest.approx(kz_third * 180e18, rel=1e-9)
    assert third["shocks"] == ["kz-internet-shutdown"]
    after = _truth_at(outputs, 86400.0 + 3600)
    # KZ keeps 12 % of 13.22 %: 1.5864 % of the old network, which shrank by 11.6336 %
    assert after["network_hs"] == pytest.approx(180e18 * (1 - 0.1322 * 0.88), rel=1e-9)
    assert after["regions"]["KZ"][0] == pytest.approx(0.015864 / 0.883664, rel=1e-6)
    assert after["regions"]["US"][0] == pytest.approx(0.3784 / 0.883664, rel=1e-6)


def test_elliott_curtailment_recovers() -> None:
    base = load_scenario(SCENARIOS / "winter_storm_elliott.yaml")
    scenario = base.model_copy(update={
        "step_s": 600.0, "network": base.network.model_copy(update={"noise_sigma": 0.0})})
    outputs = run_steps(scenario, 3.5 * 86400.0)
    bottom = _truth_at(outputs, 1.5 * 86400 + 6 * 3600)  # after the 12 h fall, inside the hold
    us_texas = 0.0425 * 0.35 * 0.143
    us_rest = (0.3784 - 0.0425) * 0.35
    canada = 0.0648 * 0.6
    network = 1 - 0.3784 - 0.0648 + us_texas + us_rest + canada
    assert bottom["network_hs"] == pytest.approx(255e18 * network, rel=1e-9)
    assert bottom["regions"]["US-TX"][0] == pytest.approx(us_texas / network, rel=1e-6)
    assert bottom["regions"]["US"][0] == pytest.approx((us_texas + us_rest) / network, rel=1e-6)
    recovered = _truth_at(outputs, 3.25 * 86400)  # hold ends at 2 d, 18 h recovery: done 2.75 d
    assert recovered["network_hs"] == pytest.approx(255e18, rel=1e-9)
    assert recovered["shocks"] == []


def test_vpn_exits_move_the_sample_only() -> None:
    base = load_scenario(SCENARIOS / "vpn_inflated.yaml")
    scenario = base.model_copy(update={
        "step_s": 600.0, "network": base.network.model_copy(update={"noise_sigma": 0.0})})
    outputs = run_steps(scenario, 2 * 86400.0)
    late = _truth_at(outputs, 2 * 86400.0 - 600)
    assert late["regions"]["IE"][0] == pytest.approx(0.03, rel=1e-9)
    assert late["regions"]["CN"][0] == pytest.approx(0.2111, rel=1e-9)
    assert late["regions"]["CN-ZJ"][0] == 0.0
    # exits in order: ZJ takes 15 % of China, IE 25 % of the rest, DE 15 % of what is left
    cn_out = 0.2111 * 0.85
    assert late["sample_shares"]["CN-ZJ"] == pytest.approx(0.2111 * 0.15, rel=1e-6)
    assert late["sample_shares"]["IE"] == pytest.approx(0.03 + cn_out * 0.25, rel=1e-6)
    assert late["sample_shares"]["DE"] == pytest.approx(0.03 + cn_out * 0.75 * 0.15, rel=1e-6)
    assert late["sample_shares"]["CN"] == pytest.approx(
        0.2111 * 0.15 + cn_out * 0.75 * 0.85, rel=1e-6)


def test_pool_mix_moves_coverage_when_its_region_goes_dark() -> None:
    """Foundry holds 25 % of the network, 80 % of it in US-TX (20 of TX's 30 %), rest in KZ."""
    text = SMALL.replace(
        "{name: Foundry USA, network_share_pct: 25, sampled: true, share_interval: 10s}",
        "{name: Foundry USA, network_share_pct: 25, sampled: true, mix: {US-TX: 80, KZ: 20}}",
    ).replace("shocks: []", "shocks: [{name: tx, kind: blackout, region: US-TX, at: 600, "
              "over: 0, factor: 0.0}]").replace("step_s: 10", "step_s: 300")
    scenario = parse_scenario(text)
    outputs = run_steps(scenario, 1800.0)
    before, after = _truth_at(outputs, 0.0), _truth_at(outputs, 900.0)
    assert before["coverage"] == pytest.approx(0.40, rel=1e-9)
    # TX (30 %) is gone: the network is 70 %; Foundry keeps its KZ 5 %, ViaBTC 15 % of the rest
    assert after["network_hs"] == pytest.approx(70e18, rel=1e-9)
    assert after["coverage"] == pytest.approx((0.05 + 0.15 * 0.70) / 0.70, rel=1e-9)
    assert after["pool_shares"]["foundry-usa"] == pytest.approx(0.05 / 0.70, rel=1e-9)


# ---- blocks -------------------------------------------------------------------------------------


def test_blocks_arrive_at_the_difficulty_rate_with_valid_bits() -> None:
    """100 EH/s at difficulty 20 T: one block per 20e12·2³²/1e20 = 859.0 s; 20 days ≈ 2011."""
    scenario = small(step_s=600.0)
    blocks = events_of(run_steps(scenario, 20 * 86400.0), "block")
    expected = 20 * 86400 * 1e20 / (20e12 * TWO32 * (2**16 / 0xFFFF))
    assert abs(len(blocks) - expected) < 4 * math.sqrt(expected)
    for block in blocks:
        model = BlockEvent.model_validate(block)
        # compact bits keep ≥ 15 bits of mantissa: the target rounds by < 2⁻¹⁵
        assert difficulty_from_bits(model.bits) == pytest.approx(20e12, rel=2**-15)
        assert int(model.hash, 16) < target_from_bits(model.bits)
        assert model.coinbase_value_sat is not None
        assert model.coinbase_value_sat >= block_subsidy_sat(model.height)
    heights = [b["height"] for b in blocks]
    assert heights == list(range(800000, 800000 + len(blocks)))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(blocks))
    gaps = np.diff([b["time"] for b in blocks])
    assert (gaps >= 0).all()
    # exponential gaps: P(gap > mean) = e⁻¹ ≈ 0.368, binomial sd ≈ 0.011
    assert abs(np.mean(gaps > 859.0) - math.exp(-1)) < 0.045
    # finders by the pools' network shares (25/15/50 % and 10 % unidentified): χ²(3) < 16.27
    counts = Counter(b.get("pool", "?") for b in blocks)
    shares = {"Foundry USA": 0.25, "ViaBTC": 0.15, "AntPool": 0.50, "?": 0.10}
    chi2 = sum((counts[p] - len(blocks) * s) ** 2 / (len(blocks) * s) for p, s in shares.items())
    assert chi2 < 16.27, counts


def test_retarget_after_2016_blocks_follows_bitcoins_rule() -> None:
    """Start on a period boundary at half the difficulty the hashrate needs: 2016 blocks come in
    about half of two weeks, and the next difficulty is old × 1 209 600 / span, ≈ 2× the old."""
    scenario = small(step_s=600.0, chain=small().chain.model_copy(update={
        "start_height": 2016 * 400, "retarget": True,
        "difficulty": 100e18 * 600 / TWO32 / 2}))
    blocks = events_of(run_steps(scenario, 8 * 86400.0), "block")
    first, last, after = blocks[0], blocks[2015], blocks[2016]
    assert after["height"] == 2016 * 401
    span = last["time"] - first["time"]
    old, new = difficulty_from_bits(first["bits"]), difficulty_from_bits(after["bits"])
    assert new / old == pytest.approx(1_209_600 / span, rel=2**-15)
    assert new / old == pytest.approx(2.0, rel=0.1)
    assert all(b["bits"] == first["bits"] for b in blocks[:2016])


def test_history_blocks_lead_into_the_start() -> None:
    """300 blocks before the start, at the start world's rate (one per 859 s, see above)."""
    scenario = small(step_s=600.0, chain=small().chain.model_copy(update={"history_blocks": 300}))
    blocks = events_of(run_steps(scenario, 7200.0), "block")
    history, live = blocks[:300], blocks[300:]
    assert [b["height"] for b in history] == list(range(800000 - 300, 800000))
    assert all(b["time"] < START for b in history) and all(b["time"] >= START for b in live)
    assert live[0]["height"] == 800000 and live[0]["prev_hash"] == history[-1]["hash"]
    mean_gap = (history[-1]["time"] - history[0]["time"]) / 299
    assert abs(mean_gap - 859.0) < 4 * 859.0 / math.sqrt(299)
    assert {b["bits"] for b in blocks} == {history[0]["bits"]}


# ---- the run edge --------------------------------------------------------------------------------


def test_route_keys_shares_by_pool_and_blocks_by_height() -> None:
    topics = Topics()
    assert route({"type": "share_batch", "pool": "viabtc"}, topics) == ("shares", b"viabtc")
    assert route({"type": "share", "pool": "poolin"}, topics) == ("shares", b"poolin")
    assert route({"type": "block", "height": 5}, topics) == ("blocks", b"5")
    assert route({"type": "price"}, topics) == ("market", None)


def test_dry_run_writes_valid_events_and_truth(tmp_path: Path) -> None:
    events, truth = tmp_path / "events.jsonl", tmp_path / "truth.jsonl"
    summary = run_simulation(small(), Settings(), start_ts=START, duration_s=900.0,
                             dry_run=events, truth_path=truth)
    lines = events.read_text().splitlines()
    assert len(lines) == sum(summary.events.values())
    for line in lines:
        decode_input(line)
    parsed = ev.load_truth(truth)
    assert parsed.start == START and parsed.end == START + 900.0
    assert parsed.t.size == 15 == summary.truth_points
    assert parsed.shares["US"][0] == pytest.approx(0.50)  # US-TX 30 + US 20


def test_drive_paces_by_speed_and_bounds_unacknowledged_sends() -> None:
    """120 simulated s at 600× take ≥ 0.2 s of wall time; sends in flight stay ≤ the bound."""
    outputs = run_steps(small(step_s=10.0), 120.0)
    in_flight: list[asyncio.Future[None]] = []
    most = 0

    async def scenario() -> float:
        nonlocal most
        loop = asyncio.get_running_loop()

        async def send(topic: str, value: bytes, key: bytes | None) -> asyncio.Future[None]:
            nonlocal most
            future: asyncio.Future[None] = loop.create_future()
            loop.call_later(0.001, future.set_result, None)
            in_flight.append(future)
            most = max(most, sum(not f.done() for f in in_flight))
            return future

        started = time.monotonic()
        await drive(iter(outputs), send, topics=Topics(), truth_out=None, header=None,
                    speed=600.0, stop=asyncio.Event(), max_in_flight=5)
        return time.monotonic() - started

    wall = asyncio.run(scenario())
    assert wall >= 0.2 - 0.02
    assert most <= 6


# ---- evaluator on hand-made truth ---------------------------------------------------------------

T0 = 1_700_000_000.0
ONSET = T0 + 7200.0


def _hand_truth() -> ev.Truth:
    """US 60 EH/s steady; KZ 40 → 15 EH/s linearly over 10 min from +2 h; one day long.

    Before: US 0.6, KZ 0.4 of 100. After: 60/75 = 0.8 and 15/75 = 0.2.
    """
    lines = [json.dumps({
        "type": "scenario", "name": "hand", "start": T0, "end": T0 + 900 + 86400,
        "shocks": [{"name": "kz-off", "kind": "blackout", "region": "KZ", "country": "KZ",
                    "direction": "down", "onset": ONSET, "full_effect": ONSET + 600,
                    "recovery_start": None, "recovery_end": None},
                   {"name": "ru-vpn", "kind": "vpn", "region": "KZ", "country": "KZ",
                    "direction": "vpn", "onset": T0 + 40000, "full_effect": T0 + 40000,
                    "exit_region": "RU", "recovery_start": None, "recovery_end": None}],
    })]
    for minute in range(0, (900 + 86400) // 60 + 1):
        t = T0 + 60 * minute
        kz = 40e18 - 25e18 * min(1.0, max(0.0, (t - ONSET) / 600))
        net = 60e18 + kz
        lines.append(json.dumps({
            "type": "truth", "t": t, "network_hs": net,
            "regions": {"US": [60e18 / net, 60e18], "KZ": [kz / net, kz]},
            "sample_shares": {"US": 60e18 / net, "KZ": kz / net},
        }))
    return ev.parse_truth(lines)


def _history_from(truth: ev.Truth, share_shift: dict[str, float], hs_scale: float
                  ) -> dict[str, list[dict[str, Any]]]:
    history: dict[str, list[dict[str, Any]]] = {"network": [], "US": [], "KZ": []}
    for i, t in enumerate(truth.t.tolist()):
        history["network"].append({"t": t, "share": 1.0,
                                   "hashrate_hs": float(truth.network_hs[i]) * hs_scale})
        for code in ("US", "KZ"):
            history[code].append({
                "t": t, "share": float(truth.shares[code][i]) + share_shift[code],
                "hashrate_hs": float(truth.hashrates[code][i]) * hs_scale})
    return history


def test_evaluator_perfect_estimates_score_zero() -> None:
    truth = _hand_truth()
    report = ev.evaluate(truth, _history_from(truth, {"US": 0.0, "KZ": 0.0}, 1.0), [])
    for entry in [report.network, *report.regions]:
        assert entry is not None
        assert entry.hashrate_mae_rel == pytest.approx(0.0, abs=1e-12)
    us = next(e for e in report.regions if e.series == "US")
    assert us.share_mae_pp == pytest.approx(0.0, abs=1e-9)
    # after the 900 s warm-up: minutes 15 … 1455 → 1441 points
    assert us.points == 1441
    assert report.total_variation_pp == pytest.approx(0.0, abs=1e-9)


def test_evaluator_biased_estimates_give_hand_computed_errors() -> None:
    truth = _hand_truth()
    history = _history_from(truth, {"US": 0.01, "KZ": -0.01}, 1.1)
    report = ev.evaluate(truth, history, [])
    us = next(e for e in report.regions if e.series == "US")
    kz = next(e for e in report.regions if e.series == "KZ")
    assert us.share_mae_pp == pytest.approx(1.0) and us.share_bias_pp == pytest.approx(1.0)
    assert kz.share_mae_pp == pytest.approx(1.0) and kz.share_bias_pp == pytest.approx(-1.0)
    assert us.hashrate_mae_rel == pytest.approx(0.1) and kz.hashrate_bias_rel == pytest.approx(0.1)
    assert report.network is not None and report.network.hashrate_p90_rel == pytest.approx(0.1)
    assert report.total_variation_pp == pytest.approx(1.0)  # ½(1 + 1)
    assert us.sample_bias_pp == pytest.approx(0.0, abs=1e-9)


def test_interval_coverage_counts_hits() -> None:
    truth = _hand_truth()
    snapshots = [
        {"as_of": T0 + 3600, "network": {"hashrate_ci95_hs": [90e18, 110e18]},
         "regions": [{"region": "US", "share_ci95": [0.59, 0.61],
                      "hashrate_ci95_hs": [50e18, 55e18]}]},
        {"as_of": T0 + 3660, "network": {"hashrate_ci95_hs": [101e18, 110e18]},
         "regions": [{"region": "US", "share_ci95": [0.61, 0.62],
                      "hashrate_ci95_hs": [59e18, 61e18]}]},
        {"as_of": T0 + 10, "network": {"hashrate_ci95_hs": [0, 1]}, "regions": []},  # warm-up
    ]
    coverage = ev.interval_coverage(truth, snapshots, T0 + 900, T0 + 90000)
    assert coverage["network"].hashrate_coverage == 0.5
    assert coverage["network"].snapshots == 2
    assert coverage["US"].share_coverage == 0.5
    assert coverage["US"].hashrate_coverage == 0.5


def test_window_coverage_judges_the_window_mean() -> None:
    """A 600 s window ending 300 s into KZ's fall (40 → 15 EH/s over 600 s from ONSET):
    at as_of KZ has 27.5 EH/s; over the window it averaged (300·40 + 300·33.75)/600 = 36.875."""
    truth = _hand_truth()
    snapshot = {"as_of": ONSET + 300, "window_s": 600.0, "network": {},
                "regions": [{"region": "KZ", "hashrate_ci95_hs": [36.5e18, 37.2e18]}]}
    coverage = ev.interval_coverage(truth, [snapshot], T0, T0 + 90000)["KZ"]
    assert coverage.hashrate_coverage == 0.0
    assert coverage.hashrate_window_coverage == 1.0
    assert coverage.share_coverage is None


def _alert(region: str, direction: str, detected: float, started: float | None = None,
           state: str = "firing", resolved: float | None = None) -> dict[str, Any]:
    record = {"type": "regional_shift", "id": f"regional_shift:{region}:{direction}:{detected:.0f}",
              "region": region, "direction": direction, "detected_at": detected,
              "started_at": started if started is not None else detected, "state": state}
    if resolved is not None:
        record["resolved_at"] = resolved
    return record


def test_alert_scoring_delay_secondary_and_false_alarms() -> None:
    truth = _hand_truth()
    alerts = [
        _alert("KZ", "down", ONSET + 300, started=ONSET - 60),
        _alert("KZ", "down", ONSET + 300, started=ONSET - 60, state="resolved",
               resolved=ONSET + 20000),
        _alert("US", "up", ONSET + 420),  # US really rose by 20 pp: secondary, not false
        _alert("RU", "up", T0 + 20000),  # nothing happened in RU: false
        _alert("KZ", "up", T0 + 40300),  # during the vpn shock: false, caused by it
        _alert("US", "down", T0 + 100),  # warm-up: not judged
    ]
    score = ev.score_alerts(truth, alerts)
    kz = next(s for s in score.shocks if s.shock == "kz-off")
    assert kz.status == "detected"
    assert kz.delay_s == pytest.approx(300.0)
    assert kz.started_at_error_s == pytest.approx(-60.0)
    assert kz.change_pp == pytest.approx(-20.0)
    verdicts = {(v.region, v.direction): v for v in score.alerts}
    assert verdicts[("US", "up")].verdict == "secondary"
    assert verdicts[("US", "down")].verdict == "warmup"
    assert verdicts[("RU", "up")].verdict == "false" and verdicts[("RU", "up")].shock is None
    assert verdicts[("KZ", "up")].verdict == "false"
    assert verdicts[("KZ", "up")].shock == "ru-vpn"
    assert score.false_alarms == 2
    # evaluated span: one day after the warm-up = 1/7 week → 2 false alarms = 14 per week
    assert score.false_alarms_per_week == pytest.approx(14.0)
    assert score.misses == 0
    assert next(s for s in score.shocks if s.shock == "ru-vpn").status == "vpn"


def test_alert_scoring_miss_and_cover() -> None:
    truth = _hand_truth()
    missed = ev.score_alerts(truth, [_alert("KZ", "down", ONSET + 7 * 3600)])  # past tolerance
    assert missed.shocks[0].status == "missed" and missed.misses == 1
    assert missed.false_alarms == 1
    covering = _alert("KZ", "down", ONSET - 3600)
    covered = ev.score_alerts(truth, [covering])
    assert covered.shocks[0].status == "covered"
    ended = _alert("KZ", "down", ONSET - 3600, state="resolved", resolved=ONSET - 60)
    assert ev.score_alerts(truth, [covering, ended]).shocks[0].status == "missed"
    below = ev.score_alerts(truth, [], min_change_pp=25.0)
    assert below.shocks[0].status == "below_threshold"


def test_report_table_and_json_round_trip() -> None:
    truth = _hand_truth()
    report = ev.evaluate(truth, _history_from(truth, {"US": 0.01, "KZ": -0.01}, 1.0),
                         [_alert("KZ", "down", ONSET + 300)])
    text = ev.format_report(report)
    assert "kz-off" in text and "detected" in text and "5.0" in text  # 300 s = 5.0 min
    assert "history points carry no intervals" in text
    body = json.loads(json.dumps(ev.report_json(report)))
    assert body["alerts"]["misses"] == 0
    assert body["regions"][0]["series"] == "US"


# ---- readers and the commands -------------------------------------------------------------------


def _store_history(redis_url: str, prefix: str, history: dict[str, list[dict[str, Any]]],
                   alerts: list[dict[str, Any]]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    for series, points in history.items():
        for point in points:
            client.zadd(f"{prefix}:history:{series}", {json.dumps(point): point["t"]})
    client.zadd(f"{prefix}:history:US", {json.dumps({"t": T0 - 5000, "share": 9.0}): T0 - 5000})
    for alert in alerts:
        client.zadd(f"{prefix}:alerts", {json.dumps(alert): alert["detected_at"]})
    client.close()


def test_read_from_redis_keeps_the_truth_span(redis_url: str) -> None:
    truth = _hand_truth()
    history = _history_from(truth, {"US": 0.0, "KZ": 0.0}, 1.0)
    _store_history(redis_url, "simtest", history, [_alert("KZ", "down", ONSET + 300)])
    read, alerts = ev.read_from_redis(redis_url, "simtest", truth.start, truth.end)
    assert set(read) == {"network", "US", "KZ"}
    assert len(read["US"]) == len(history["US"])  # the point before the start is left out
    assert alerts[0]["region"] == "KZ"


def test_read_from_api_asks_for_each_series_and_the_alerts() -> None:
    import httpx

    asked: list[tuple[str, dict[str, str]]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        asked.append((request.url.path, params))
        if request.url.path == "/v1/alerts":
            return httpx.Response(200, json={"alerts": [_alert("KZ", "down", ONSET)]})
        if params.get("region") == "XK":
            return httpx.Response(404, json={"title": "unknown region"})
        return httpx.Response(200, json={"region": params.get("region"),
                                         "points": [{"t": T0, "share": 0.5}]})

    history, alerts = ev.read_from_api("http://api.test/", ["network", "US", "XK"], T0, T0 + 60,
                                       transport=httpx.MockTransport(answer))
    assert set(history) == {"network", "US"}
    assert alerts[0]["region"] == "KZ"
    network_params = asked[0][1]
    assert "region" not in network_params and float(network_params["step"]) == 60.0
    assert asked[1][1]["region"] == "US" and float(asked[1][1]["start"]) == T0
    assert asked[-1] == ("/v1/alerts", {"since": str(T0), "limit": "1000"})


def test_simulate_and_evaluate_commands(tmp_path: Path, redis_url: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.commands import evaluate as evaluate_command
    from streams.commands import simulate as simulate_command
    from streams.settings import get_settings

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    simulate_command.add_parser(sub)
    evaluate_command.add_parser(sub)

    scenario_file = tmp_path / "small.yaml"
    scenario_file.write_text(SMALL)
    events, truth_file = tmp_path / "events.jsonl", tmp_path / "truth.jsonl"
    args = parser.parse_args(["simulate", str(scenario_file), "--duration", "1800",
                              "--start", "2023-11-14T22:14:00Z", "--dry-run", str(events),
                              "--truth", str(truth_file), "--seed", "9",
                              "--single-share-fraction", "0.001"])
    assert args.func(args) == 0
    truth = ev.load_truth(truth_file)
    assert truth.start == START and truth.header["seed"] == 9

    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.replace("hashrate_ehs: 100", "hashrate_ehs: -1"))
    assert args.func(parser.parse_args(["simulate", str(bad), "--dry-run", str(events)])) == 2

    monkeypatch.setenv("HASHATLAS_REDIS_URL", redis_url)
    monkeypatch.setenv("HASHATLAS_REDIS_PREFIX", "simcmd")
    get_settings.cache_clear()
    try:
        history = _history_from(truth, {"US": 0.0, "KZ": 0.0}, 1.0)
        history["US-TX"] = [{"t": t, "share": s, "hashrate_hs": h} for t, s, h in
                            zip(truth.t.tolist(), truth.shares["US-TX"].tolist(),
                                truth.hashrates["US-TX"].tolist(), strict=True)]
        _store_history(redis_url, "simcmd", history, [])
        out_json, out_png = tmp_path / "report.json", tmp_path / "report.png"
        args = parser.parse_args(["evaluate", "--truth", str(truth_file), "--from-redis",
                                  "--warmup", "300", "--json", str(out_json),
                                  "--plot", str(out_png)])
        assert args.func(args) == 0
    finally:
        get_settings.cache_clear()
    body = json.loads(out_json.read_text())
    tx = next(r for r in body["regions"] if r["series"] == "US-TX")
    assert tx["share_mae_pp"] == pytest.approx(0.0, abs=1e-9)
    assert tx["points"] == 25  # minutes 5 … 29 of the 30 truth points
    assert body["network"]["hashrate_mae_rel"] == pytest.approx(0.0, abs=1e-12)
    assert out_png.stat().st_size > 10_000


@pytest.mark.parametrize("speed", [30.0, None])
def test_a_run_faster_than_real_time_ends_at_the_wall_clock(
        tmp_path: Path, speed: float | None) -> None:
    """Started now, a 30× run would send events up to 870 s ahead of the clock, which the
    pipeline dead-letters (max_future_skew_s): without a start time it starts in the past."""
    events = tmp_path / "events.jsonl"
    before = time.time()
    run_simulation(small(), Settings(), duration_s=900.0, speed=speed, dry_run=events)
    times = [e.get("end", e.get("ts", e.get("time"))) for e in map(json.loads,
                                                                    events.read_text().splitlines())]
    ahead = 900.0 if speed is None else 900.0 * (1 - 1 / speed)
    assert min(times) >= before - ahead - 1.0
    assert max(times) <= time.time() + 900.0 / (speed or math.inf) + 1.0
