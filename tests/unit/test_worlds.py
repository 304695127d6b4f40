"""The offline evaluator (streams.sim.worlds) and the simulator's new worlds.

Coverage is checked against toy estimators whose coverage is known by construction; the offline
path against the worker's own route (partition states restored from checkpoints, partials
through JSON as Redis carries them, the leader's merge). Expected values come from the scenario
text or from hand arithmetic in the comments.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from streams.core.snapshot import (
    SnapshotMemory,
    build_snapshot,
    merge_partials,
    shares_for_detection,
)
from streams.models.chain import COVERAGE_BLOCKS, decode_chain_summary, encode_chain_summary
from streams.models.partials import decode_share_partial, encode
from streams.pipeline.state import ShareBatchPartition
from streams.settings import Settings
from streams.sim import worlds as W
from streams.sim.model import Simulator, build_world
from streams.sim.scenario import ScenarioError, load_scenario, parse_scenario
from tests.small_scenarios import small_scenario_yaml

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

SMALL = small_scenario_yaml('{US-TX: 30, US: 20, "NO": 10, KZ: 40}', antpool_pct=50)


def small(extra: str = "") -> Any:
    return parse_scenario(SMALL + extra)


# ---- coverage arithmetic: toy estimators of known coverage ------------------------------------


@pytest.mark.parametrize(("z", "expected"), [(1.959964, 0.95), (1.0, 0.6827), (0.0, 0.0)])
def test_coverage_of_a_normal_toy_estimator(z: float, expected: float) -> None:
    rng = np.random.default_rng(5)
    truth = rng.normal(10.0, 1.0, 20_000)
    estimate = truth + rng.normal(0.0, 0.5, truth.size)  # σ = 0.5
    lower, upper = estimate - z * 0.5, estimate + z * 0.5
    covered = W.coverage_of(lower.tolist(), upper.tolist(), truth.tolist())
    assert covered == pytest.approx(expected, abs=0.01)  # 4 σ of a binomial over 20 000


def test_coverage_counts_an_absent_interval_as_a_miss_and_ends_inclusive() -> None:
    assert W.coverage_of([0.0, None, 1.0], [1.0, None, 2.0], [1.0, 0.5, 2.5]) == pytest.approx(
        1 / 3)


def test_calibrate_bias_and_width_of_a_biased_toy_share_estimator() -> None:
    # Shares: estimate = truth + 0.01 (1 pp high), interval ± 0.005 (½ pp): never covers.
    records = [W.Record(0, 0.0, "US", "share", s + 0.01, s + 0.005, s + 0.015, s, s)
               for s in np.linspace(0.2, 0.4, 50)]
    cal = W.calibrate(records, "share", "US")
    assert cal.coverage == 0.0
    assert cal.bias == pytest.approx(1.0)
    assert cal.mean_half_width == pytest.approx(0.5)
    assert cal.median_width == pytest.approx(1.0)  # full width, pp
    assert cal.sample_bias == pytest.approx(0.0)
    # Hashrates: relative units; estimate 10 % low with a ±20 % interval: always covers.
    hs = [W.Record(0, 0.0, "US", "hashrate", 0.9 * h, 0.7 * h, 1.1 * h, h)
          for h in np.linspace(1e18, 2e18, 10)]
    cal = W.calibrate(hs, "hashrate", "US")
    assert (cal.coverage, cal.bias, cal.mean_half_width) == pytest.approx((1.0, -0.1, 0.2))
    assert cal.median_width == pytest.approx(0.4)  # full width relative to the truth
    # The median is the typical interval: one very wide interval moves the mean, not it.
    wide = [*hs, W.Record(0, 0.0, "US", "hashrate", 1e18, 0.0, 1e20, 1e18)]
    cal = W.calibrate(wide, "hashrate", "US")
    assert cal.median_width == pytest.approx(0.4)
    assert cal.mean_half_width > 4.0


# ---- offline path = the worker's path ---------------------------------------------------------


def test_offline_snapshot_equals_the_worker_route() -> None:
    """The same batches through (a) the offline pipeline and (b) four partitions that are
    checkpointed and restored half way, with partials through JSON: the same snapshot."""
    scenario = small()
    settings = Settings()
    config = W.default_config(settings)
    world = W.FastWorld(scenario, seed=7, start_ts=1_700_000_003.0)
    blocks = world.blocks(3600.0)
    batches, *_ = world.batches(3600.0, 400.0)
    assert len(batches) > 100

    offline = W.OfflinePipeline(settings, config, partitions=2)
    for block in blocks:
        offline.apply_block(W.encode(block))
    for batch in batches:
        offline.apply_batch(W.encode(batch.body), batch.pool_index)
    made = offline.snapshot()
    assert made is not None
    snap, _ = made

    states = [ShareBatchPartition.restore(None, settings) for _ in range(4)]
    for number, batch in enumerate(batches):
        if number == len(batches) // 2:  # a crash: every partition resumes from its checkpoint
            states = [ShareBatchPartition.restore(s.checkpoint(), settings) for s in states]
        states[hash(batch.body["pool"]) % 4].apply(orjson.dumps(batch.body))
    clock = max(s.max_event_ts for s in states)
    partials = [decode_share_partial(encode(s.partial(clock - settings.settle_s,
                                                      settings.windows_s)))
                for s in states if s.max_event_ts]
    merged = merge_partials(partials)
    assert merged is not None
    summary = decode_chain_summary(encode_chain_summary(offline.chain.summary(COVERAGE_BLOCKS)))
    worker = build_snapshot(merged, summary, None, config, SnapshotMemory(),
                            published_at=merged.as_of, stale=False)
    assert worker["network"]["hashrate_ci95_hs"] == pytest.approx(
        snap["network"]["hashrate_ci95_hs"], rel=1e-9)
    assert [e["region"] for e in worker["regions"]] == [e["region"] for e in snap["regions"]]
    for mine, theirs in zip(snap["regions"] + snap["subdivisions"],
                            worker["regions"] + worker["subdivisions"], strict=True):
        assert mine["share"] == pytest.approx(theirs["share"], rel=1e-9)
        assert mine["share_ci95"] == pytest.approx(theirs["share_ci95"], rel=1e-9)
        assert mine["hashrate_ci95_hs"] == pytest.approx(theirs["hashrate_ci95_hs"], rel=1e-9)


def test_detection_step_feeds_what_the_leader_feeds() -> None:
    """The tracked runs' lean step (headline window only, no account concentration, no
    network-share intervals) gives exactly `shares_for_detection` of the full snapshot; and
    nothing, as the leader, while the snapshot has no network hashrate (no chain yet)."""
    scenario = small()
    settings = Settings()
    config = W.default_config(settings)
    world = W.FastWorld(scenario, seed=7, start_ts=1_700_000_003.0)
    batches, *_ = world.batches(3600.0, 400.0)
    offline = W.OfflinePipeline(settings, config, partitions=2)
    for batch in batches:
        offline.apply_batch(W.encode(batch.body), batch.pool_index)
    made = offline.snapshot()
    assert made is not None and made[0]["network"]["hashrate_hs"] is None
    step = offline.detection_step()
    assert step is not None and step[1] is None
    for block in world.blocks(3600.0):
        offline.apply_block(W.encode(block))
    made = offline.snapshot()
    assert made is not None and made[0]["network"]["hashrate_hs"] is not None
    step = offline.detection_step()
    assert step is not None and step[1] is not None
    assert step[0] == (made[1].as_of // settings.history_step_s) * settings.history_step_s
    fed = shares_for_detection(made[0])
    assert {"US", "US-TX", "NO", "KZ"} <= set(fed)
    assert step[1] == fed and list(step[1]) == list(fed)  # the same order too


def test_tracked_worlds_catch_a_blackout_and_count_its_delays() -> None:
    """KZ (40 %) blacked out 40 min into a tracked run from a cold start: caught on KZ in both
    worlds within 10 min; the summary's delays are the per-run ones, and a run of world 1 alone
    (``first``) repeats the second world of the run of two."""
    scenario = small("shocks:\n  - {name: kz-off, kind: blackout, region: KZ, at: 40m, "
                     "over: 60s, factor: 0.2}\n")
    settings = Settings()
    result = W.detection_over_worlds(scenario, 2, 5, settings, W.default_config(settings),
                                     lead_s=1800.0, max_track_s=3600.0)
    onset = result["by_region"]["kz-off"]["onset"]
    assert onset["runs"] == 2 and onset["caught"] == 2
    assert all(d is not None and 0.0 < d <= 10.0 for d in onset["delays_min"])
    assert onset["max_min"] == max(onset["delays_min"])
    assert "recovery" not in result["by_region"]["kz-off"]  # a blackout does not come back
    assert result["evaluated_weeks"] > 0.0
    second = W.detection_over_worlds(scenario, 1, 5, settings, W.default_config(settings),
                                     first=1, lead_s=1800.0, max_track_s=3600.0)
    assert second["by_region"]["kz-off"]["onset"]["delays_min"] == onset["delays_min"][1:]


def test_fast_world_rates_match_the_scenario() -> None:
    # Foundry holds 25 % of 100 EH/s; KZ is 40 % of the network: 10 EH/s of Foundry in KZ.
    world = W.FastWorld(small(), seed=1, start_ts=1_700_000_000.0)
    batches, _, rates, _ = world.batches(3600.0, 3000.0)
    kz = sum(b.body["difficulty_sum"] for b in batches
             if b.body["pool"] == "foundry-usa" and b.body["region"] == "KZ")
    assert kz * 2**32 / 3000.0 == pytest.approx(10e18, rel=0.02)
    assert rates.shape[1:] == (2, 4)


def test_small_run_reports_every_interval_and_is_repeatable() -> None:
    scenario = small("evaluation: {checks: [1h, 2h]}\n")
    one = W.evaluate_worlds(scenario, 2, seed=4)
    two = W.evaluate_worlds(scenario, 2, seed=4)
    assert one.checks == [3600.0, 7200.0]
    assert one.network[0].n == 4 and one.network[0].coverage is not None
    assert {c.series for c in one.shares} == {"US", "US-TX", "NO", "KZ"}
    assert one.block_hashrate is not None and one.block_hashrate.n == 4
    assert {c.series for c in one.sample_hashrates} == {"US", "US-TX", "NO", "KZ"}
    assert one.pooled["countries_sample_hashrate"] is not None
    assert W.worlds_report_json(one)["network"] == W.worlds_report_json(two)["network"]
    text = W.format_worlds_report(one)
    assert "network nowcast" in text and "KZ" in text


def test_cli_offline_mode_prints_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from streams.commands import evaluate as cmd

    path = tmp_path / "small.yaml"
    path.write_text(SMALL + "evaluation: {checks: [1h]}\n", encoding="utf-8")
    args = argparse.Namespace(scenario=path, worlds=1, seed=2, detect_worlds=0, detect_first=0,
                              partitions=2,
                              truth=None, from_redis=False, from_api=None, json=Path("-"),
                              track_hours=12.0, lead_hours=2.0)
    assert cmd.run(args) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["worlds"] == 1 and body["scenario"] == "small"
    args.truth = path  # offline mode takes no truth
    assert cmd.run(args) == cmd.EXIT_BAD_INPUT


# ---- the new worlds ---------------------------------------------------------------------------


def _cells(scenario: Any, offset: float) -> Any:
    world = build_world(scenario)
    capacity = 100e18 * world.base_share
    return world, world.pool_cells(capacity, offset)


def test_switch_moves_coverage_but_not_the_network() -> None:
    scenario = small("shocks: [{name: drift, kind: switch, pools: [Foundry USA, ViaBTC], "
                     "at: 0, over: 1h, factor: 0.9}]\n")
    world, before = _cells(scenario, 0.0)
    _, after = _cells(scenario, 3600.0)
    assert after.sum() == pytest.approx(before.sum())
    assert after.sum(axis=0) == pytest.approx(before.sum(axis=0))  # regions keep their share
    sampled = world.sampled_index
    # Sampled pools held 40 %; they keep 90 % of it: 36 %.
    assert after[sampled].sum() / after.sum() == pytest.approx(0.36)


def test_unsampled_shock_removes_hashrate_outside_the_sample() -> None:
    scenario = small("shocks: [{name: u, kind: ramp, pools: [AntPool], at: 0, over: 10m, "
                     "factor: 0.9}]\n")
    world, before = _cells(scenario, 0.0)
    _, after = _cells(scenario, 600.0)
    sampled = world.sampled_index
    assert after[sampled] == pytest.approx(before[sampled])
    # AntPool held 50 % of 100 EH/s and loses 10 % of it: 5 EH/s.
    assert before.sum() - after.sum() == pytest.approx(5e18)


def test_farms_keep_region_totals_and_scatter_the_pools() -> None:
    scenario = small("farms: {regions: [US-TX], count: 40, sigma: 1.5, switches_per_day: 2}\n")
    world = build_world(scenario, seed=11)
    capacity = 100e18 * world.base_share
    tx = world.leaves.index("US-TX")
    for offset in (0.0, 3600.0, 7200.0):
        cells = world.pool_cells(capacity, offset)
        assert cells[:, tx].sum() == pytest.approx(capacity[tx])
    farms = world.farms
    assert farms is not None and farms.size.size == 40
    assert farms.switch_t.size > 0  # 40 farms × 2/day × 2 h: ≈ 6.7 switches expected
    other = build_world(scenario, seed=12).allocation_at(0.0)[:, tx]
    assert not np.allclose(world.allocation_at(0.0)[:, tx], other)


def test_feed_lag_delays_a_pools_batches() -> None:
    scenario = parse_scenario(SMALL.replace("share_interval: 5s}", "share_interval: 5s, "
                                            "feed_lag: 30s}"))
    sim = Simulator(scenario, start_ts=1_700_000_000.0, seed=1)
    for out in sim.steps(120.0):
        for event in out.events:
            if event["type"] == "share_batch" and event["pool"] == "viabtc":
                assert event["end"] + 30.0 <= out.end + 1e-6
    world = W.FastWorld(scenario, seed=1, start_ts=1_700_000_000.0)
    batches, *_ = world.batches(600.0, 100.0)
    last = {p: max(b.body["end"] for b in batches if b.body["pool"] == p)
            for p in ("foundry-usa", "viabtc")}
    assert last["foundry-usa"] - last["viabtc"] == pytest.approx(30.0)


def test_pool_shock_names_known_pools() -> None:
    with pytest.raises(ScenarioError) as err:
        small("shocks: [{name: u, kind: ramp, pools: [Nobody], at: 0, over: 1h, "
              "factor: 0.9}]\n")
    assert err.value.field == "shocks[0].pools"
    with pytest.raises(ScenarioError):
        small("shocks: [{name: u, kind: switch, region: KZ, at: 0, factor: 0.9}]\n")


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_scenario_builds(path: Path) -> None:
    scenario = load_scenario(path)
    build_world(scenario)
    assert W.check_offsets(scenario)


def test_two_bucket_batches_land_as_the_numpy_path_places_them() -> None:
    """`add_span`'s path for a batch across one bucket edge gives the state `_overlaps` gives."""
    from streams.core.shares import _BucketRing, _overlaps

    rng = np.random.default_rng(9)
    fast, slow = _BucketRing(10.0, 400.0), _BucketRing(10.0, 400.0)
    fast.ensure_rows(1)
    slow.ensure_rows(1)
    for _ in range(500):
        start = 1_700_000_000.0 + float(rng.integers(0, 300)) + float(rng.choice([0.0, 0.37]))
        end = start + float(rng.choice([10.0, 2.5, 9.63]))
        values = (float(rng.integers(1, 50)), float(rng.random() * 1e6), float(rng.random()))
        fast.add_span(0, start, end, *values)
        buckets, fractions = _overlaps(start, end, 10.0)
        slow.add_many(0, buckets, fractions[:, None] * np.array([values]))
    assert np.array_equal(fast.index, slow.index)
    assert np.array_equal(fast.data, slow.data)


def test_batches_over_a_few_buckets_land_as_the_numpy_path_places_them() -> None:
    """`add_span`'s plain-float path for batches over 3–16 buckets (the tracked worlds' 60 s
    batches, a slow proxy's) gives bit for bit the state `_overlaps` and `add_many` give,
    including batches older than a slot's bucket and ones touching a bucket edge."""
    from streams.core.shares import _BucketRing, _overlaps

    rng = np.random.default_rng(11)
    fast, slow = _BucketRing(10.0, 400.0), _BucketRing(10.0, 400.0)
    fast.ensure_rows(2)
    slow.ensure_rows(2)
    spans = 0
    for _ in range(800):
        row = int(rng.integers(0, 2))
        start = 1_700_000_000.0 + float(rng.integers(0, 900)) + float(rng.choice([0.0, 0.37]))
        end = start + float(rng.choice([20.0, 60.0, 60.0, 33.3, 150.0, 159.63]))
        values = (float(rng.integers(1, 50)), float(rng.random() * 1e6), float(rng.random()))
        spans += math.floor(end / 10.0) - math.floor(start / 10.0) >= 2
        fast.add_span(row, start, end, *values)
        buckets, fractions = _overlaps(start, end, 10.0)
        slow.add_many(row, buckets, fractions[:, None] * np.array([values]))
    assert spans > 500  # most went through the new path
    assert np.array_equal(fast.index, slow.index)
    assert np.array_equal(fast.data, slow.data)


def test_farm_batches_report_the_farms_concentration_as_a_proxy_would() -> None:
    """In farm_clusters a farmed leaf's accounts at a pool are its farms there: the batch's
    account_difficulty_sq_sum gives back Σsize²/(Σsize)² through the estimator's formula, and
    every batch passes the contract; the live simulator's batches carry the same fields."""
    from streams.contracts import ShareBatchEvent, decode_input
    from streams.core.account_concentration import batch_concentration
    from streams.sim.model import account_concentration

    scenario = load_scenario(SCENARIOS / "farm_clusters.yaml")
    world = W.FastWorld(scenario, seed=5, start_ts=W.BASE_START_TS)
    batches, _, rates, _ = world.batches(3600.0, 60.0)
    hhi, accounts = account_concentration(world.world, 3600.0, rates[-1])
    farms = world.world.farms
    assert farms is not None
    at = farms.pools_at(3600.0)
    kz = world.world.sample_regions.index("KZ")
    row = int(world.world.sampled_index[0])
    sizes = farms.size[(farms.leaf == world.world.leaves.index("KZ")) & (at == row)]
    assert hhi[0, kz] == pytest.approx(np.square(sizes).sum() / sizes.sum() ** 2)
    assert accounts[0, kz] == sizes.size
    for batch in batches[:200]:
        event = decode_input(batch.body, now=batch.body["end"])
        assert isinstance(event, ShareBatchEvent) and event.account_difficulty_sq_sum is not None
        value = batch_concentration(event.difficulty_sum, event.difficulty_sq_sum,
                                    event.account_difficulty_sq_sum)
        q = world.sampled_slugs.index(event.pool)
        r = world.world.sample_regions.index(event.region)
        assert value is None or value == pytest.approx(hhi[q, r], rel=1e-6, abs=1e-12)
    live = Simulator(scenario, start_ts=W.BASE_START_TS)
    step = next(iter(live.steps(scenario.step_s)))
    batches_live = [e for e in step.events if e["type"] == "share_batch"]
    assert batches_live and all("account_difficulty_sq_sum" in b for b in batches_live)
