"""The live-pipeline evaluator and the offline evaluator agree on one world (#14 item 2).

One seed of ``scenarios/steady.yaml`` (20 simulated minutes at 20×) goes live through
``hashatlas simulate`` → Kafka → compactor → worker → Redis / ``estimates`` topic, and offline
through ``streams.sim.worlds`` (no Kafka, no Redis). Two comparisons, because the offline
evaluator has two halves that can differ from the live path in different ways:

1. **The pipeline half** (``OfflinePipeline``: partition states, merge, ``build_snapshot``) on
   the *same events*: at check snapshots the live leader published, each partition is replayed
   offline with exactly the records the live worker had applied (the snapshot's
   ``inputs.partitions`` offsets) and the blocks up to its tip, and evaluated at the live
   snapshot's own ``as_of``. That removes the only legitimate differences (which events had
   arrived, and when the leader looked), so network hashrate, ĉ, regional shares and every
   interval must agree to float rounding (rel 1e-9); and once more at the end, fed straight from
   the simulator (no Kafka) over the evaluator's default 2 partitions instead of the topic's 4.
   Both evaluators' scorers (``evaluate.interval_coverage`` live, ``worlds.snapshot_records``
   offline) then judge every interval against the same truth (the simulator's truth file) and
   must give the same verdicts.
2. **The world half** (``FastWorld``, what ``hashatlas evaluate --scenario --worlds`` runs): world
   0 of seed 1 is ``build_world(scenario, 100_003)``, and the live run uses that seed, so both
   are the same world (allocation, sampled pools, vardiff classes) but different draws of its
   wander, shares and blocks (the generators use their random streams differently). Their
   truths must agree within the wander (AR(1) log-noise σ = 0.01 per region) and their 95 %
   intervals must overlap; both must also be within 3 half-widths of the truth, and each
   region's sample hashrate within its sampling error (+ 0.5 %) of its window-mean truth.

Not compared: power, hashprice and the threshold (the offline evaluator leaves the BTC price out)
and pool luck (it needs the leader to have seen the blocks arrive).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka import client_options
from streams.settings import Settings
from streams.sim import evaluate as ev
from streams.sim import worlds
from streams.sim.model import Simulator
from streams.sim.scenario import Scenario, load_scenario
from tests.conftest import PROJECT_ROOT
from tests.integration.pipeline_helpers import (
    CliProcess,
    Compactor,
    Worker,
    data_ends,
    offsets_reached,
    partitions_of,
    wait_for_snapshot,
)

SCENARIO = PROJECT_ROOT / "scenarios" / "steady.yaml"
DURATION_S = 1200.0
SPEED = 20.0
#: The offline evaluator's base seed; its world 0 is seeded ``SEED * 100_003`` (run_world).
SEED = 1
WORLD_SEED = SEED * 100_003
#: Check offsets from the start: the headline window (300 s) is full from the first one.
CHECKS = (600.0, 900.0, 1200.0)
#: A check uses the complete live snapshot nearest to it (one every ~10 simulated s at 20×).
MAX_CHECK_DISTANCE_S = 120.0
SAME_EVENTS_REL = 1e-9
#: Per-region AR(1) log wander of the scenario; two independent draws differ by σ√2 per region.
WANDER_SIGMA = 0.01
WANDER_TOLERANCE = 5 * math.sqrt(2) * WANDER_SIGMA
#: The sample hashrate's truth is the window mean of 60-s truth points (the live path) or of the
#: model's 60-s grid (offline): a stand-in for the exact mean that is off by the wander within a
#: minute (measured: ≤ 0.25 % over 24 regions × 3 checks), allowed 0.5 %.
WINDOW_TRUTH_REL = 0.005
NETWORK_FIELDS = ("hashrate_hs", "hashrate_ci95_hs", "coverage", "coverage_ci95",
                  "sample_hashrate_hs", "block_hashrate_hs", "unlisted_region_share_max")
REGION_FIELDS = ("share", "share_ci95", "sampling_ci95", "hashrate_hs", "hashrate_ci95_hs",
                 "sample_hashrate_hs")


async def test_live_and_offline_evaluators_agree_on_one_world(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = isolated_settings
    scenario = load_scenario(SCENARIO)
    truth_path = tmp_path / "truth.jsonl"
    live = await run_live(settings, scenario, tmp_path, truth_path)
    truth = ev.load_truth(truth_path)
    coverage_truth = truth_coverage(truth_path)
    records = await committed_records(settings, settings.topics.compacted_shares)
    events = live["events"]
    assert batch_totals(raw for part in records.values() for _, raw in part) == batch_totals(
        orjson.dumps(e) for e in events if e["type"] == "share_batch"), \
        "the compacted topic does not carry the simulator's share batches"
    blocks = [e for e in events if e["type"] == "block"]

    checks = [pick_check(live, records, truth.start + c) for c in CHECKS]
    config = worlds.default_config(settings)
    for snap in checks:
        offline, merged = replay(settings, config, snap, records, blocks)
        assert_same_estimates(snap, offline)
        assert_same_verdicts(snap, offline, merged, truth, coverage_truth)
    # The last snapshot (every event applied), against the simulator's events fed directly.
    direct = direct_from_simulator(settings, config, events, live["final"]["as_of"])
    assert_same_estimates(live["final"], direct)

    # The live evaluator reads the same run back from Redis and the estimates topic.
    report = ev.evaluate(truth, live["history"], live["alerts"], live["snapshots"],
                         warmup_s=settings.headline_window_s)
    assert report.network is not None and report.network.points >= 10
    assert report.intervals is not None and report.intervals[ev.NETWORK].snapshots >= 10

    offline_records = worlds.run_world(scenario, 0, SEED, settings, config, checks=CHECKS)
    for offset, snap in zip(CHECKS, checks, strict=True):
        assert_same_world(offset, snap, offline_records, truth, coverage_truth)


# ---- the live run -----------------------------------------------------------------------------


async def run_live(settings: Settings, scenario: Scenario, workdir: Path,
                   truth_path: Path) -> dict[str, Any]:
    """Simulate through compactor and worker; once the worker has applied every batch and
    block: every snapshot the leader published, the last one, the Redis history and alerts,
    and the run's events regenerated from its seed and start."""
    worker = Worker(settings, workdir, "worker")
    processes: list[CliProcess] = [Compactor(settings, workdir, "compactor"), worker]
    try:
        simulator = CliProcess(settings, workdir, "simulate", [
            "simulate", str(SCENARIO), "--speed", str(SPEED), "--duration", str(DURATION_S),
            "--seed", str(WORLD_SEED), "--single-share-fraction", "0",
            "--truth", str(truth_path)])
        processes.append(simulator)
        code = await asyncio.to_thread(simulator.proc.wait, DURATION_S / SPEED + 90)
        assert code == 0, simulator.log_tail()
        events = simulator_events(scenario, float(json_lines(truth_path)[0]["start"]), settings)
        tip = max(e["height"] for e in events if e["type"] == "block")
        ends = await data_ends(settings, settings.topics.compacted_shares)
        complete = offsets_reached(ends)
        final = await wait_for_snapshot(
            settings, lambda s: complete(s) and s["network"]["tip_height"] == tip, 90, [worker])
        await asyncio.sleep(2 * settings.snapshot_interval_s)  # the last one also on Kafka
    finally:
        for process in processes:
            process.stop()
    snapshots = await ev.read_estimates_topic(client_options(settings),
                                              settings.topics.estimates, 0.0, math.inf)
    history, alerts = ev.read_from_redis(settings.redis_url, settings.redis_prefix, 0.0, math.inf)
    return {"snapshots": snapshots, "history": history, "alerts": alerts, "events": events,
            "final": final}


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def truth_coverage(path: Path) -> list[tuple[float, float]]:
    """(t, true coverage of the sampled pools) from the truth file."""
    return [(float(r["t"]), float(r["coverage"])) for r in json_lines(path)
            if r["type"] == "truth"]


async def committed_records(settings: Settings, topic: str) -> dict[int, list[tuple[int, bytes]]]:
    """Every committed record of ``topic`` with its offset, per partition."""
    tps = [TopicPartition(topic, p) for p in await partitions_of(settings, topic)]
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    out: dict[int, list[tuple[int, bytes]]] = {tp.partition: [] for tp in tps}
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "the compacted topic could not be read back"
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                out[tp.partition] += [(m.offset, m.value) for m in messages if m.value]
    finally:
        await consumer.stop()
    return out


def simulator_events(scenario: Scenario, start_ts: float,
                     settings: Settings) -> list[dict[str, Any]]:
    """The live run's events again, from the same seed and start (the simulator is seeded)."""
    simulator = Simulator(scenario, start_ts=start_ts, seed=WORLD_SEED,
                          single_share_fraction=0.0, truth_step_s=settings.history_step_s)
    return [event for step in simulator.steps(DURATION_S) for event in step.events]


def batch_totals(raws: Any) -> Counter[tuple[str, str, float, int, float]]:
    out: Counter[tuple[str, str, float, int, float]] = Counter()
    for raw in raws:
        b = orjson.loads(raw)
        out[(b["pool"], b["region"], b["start"], b["count"], b["difficulty_sum"])] += 1
    return out


def pick_check(live: Mapping[str, Any], records: Mapping[int, list[tuple[int, bytes]]],
               at: float) -> dict[str, Any]:
    """The live snapshot nearest ``at`` that had every batch ending by its ``as_of`` (a
    snapshot that lacks some would be a live-path loss, or a partition still catching up)."""
    ends = {p: [(o, float(orjson.loads(raw)["end"])) for o, raw in part]
            for p, part in records.items()}

    def complete(snap: Mapping[str, Any]) -> bool:
        seen = snap["inputs"]["partitions"]
        if set(snap["inputs"]["evaluated_at"].values()) != {snap["as_of"]}:
            return False
        for partition, part in ends.items():
            due = [o for o, end in part if end <= snap["as_of"]]
            if due and int(seen.get(str(partition), 0)) <= max(due):
                return False
        return True

    candidates = [s for s in live["snapshots"]
                  if abs(s["as_of"] - at) <= MAX_CHECK_DISTANCE_S and complete(s)]
    assert candidates, f"no complete live snapshot within {MAX_CHECK_DISTANCE_S} s of {at}"
    return min(candidates, key=lambda s: abs(s["as_of"] - at))


# ---- 1. the same events through both pipelines ------------------------------------------------


def replay(settings: Settings, config: Any, snap: Mapping[str, Any],
           records: Mapping[int, list[tuple[int, bytes]]], blocks: Sequence[dict[str, Any]]
           ) -> tuple[dict[str, Any], Any]:
    """The offline pipeline fed what the live worker had applied when it made ``snap``."""
    pipeline = worlds.OfflinePipeline(settings, config, settings.partitions.compacted_shares)
    seen = snap["inputs"]["partitions"]
    for partition, part in records.items():
        for offset, raw in part:
            if offset < int(seen.get(str(partition), 0)):
                pipeline.apply_batch(raw, partition)
    for block in blocks:
        if block["height"] <= snap["network"]["tip_height"]:
            pipeline.apply_block(worlds.encode(block))
    made = pipeline.snapshot(t_eval=float(snap["as_of"]))
    assert made is not None
    return made


def direct_from_simulator(settings: Settings, config: Any, events: Sequence[dict[str, Any]],
                          as_of: float) -> dict[str, Any]:
    """Every simulated event straight into the offline pipeline (no Kafka), each pool on the
    partition the offline evaluator gives it (``partitions=2``)."""
    pipeline = worlds.OfflinePipeline(settings, config, partitions=2)
    pools: list[str] = []
    for event in events:
        if event["type"] == "share_batch":
            pools += [] if event["pool"] in pools else [event["pool"]]
            pipeline.apply_batch(worlds.encode(event), pools.index(event["pool"]))
        elif event["type"] == "block":
            pipeline.apply_block(worlds.encode(event))
    made = pipeline.snapshot(t_eval=as_of)
    assert made is not None
    return made[0]


def assert_same_estimates(live: Mapping[str, Any], offline: Mapping[str, Any]) -> None:
    assert offline["as_of"] == live["as_of"]
    for name in NETWORK_FIELDS:
        assert offline["network"][name] == pytest.approx(live["network"][name],
                                                         rel=SAME_EVENTS_REL), name
    served = {e["region"]: e for e in [*live["regions"], *live["subdivisions"]]}
    mine = {e["region"]: e for e in [*offline["regions"], *offline["subdivisions"]]}
    assert set(mine) == set(served)
    for code, entry in served.items():
        for name in REGION_FIELDS:
            assert mine[code][name] == pytest.approx(entry[name], rel=SAME_EVENTS_REL), \
                (code, name)


def check_truth(truth: ev.Truth, coverage: Sequence[tuple[float, float]],
                as_of: float) -> worlds.CheckTruth:
    """The simulator's truth at ``as_of`` as the offline scorer takes it."""
    at = np.array([as_of])
    codes = list(truth.shares)
    network = float(truth.hashrate_at(ev.NETWORK, at)[0])
    before = [c for t, c in coverage if t <= as_of]
    return worlds.CheckTruth(
        t=as_of, network_hs=network, network_window_hs=network, coverage=before[-1],
        shares={c: float(truth.share_at(c, at)[0]) for c in codes},
        hashrates={c: float(truth.hashrate_at(c, at)[0]) for c in codes},
        sample_shares={c: float(truth.sample_share_at(c, at)[0]) for c in codes},
        pool_window_hs={},
    )


def assert_same_verdicts(live: Mapping[str, Any], offline: Mapping[str, Any], merged: Any,
                         truth: ev.Truth, coverage: Sequence[tuple[float, float]]) -> None:
    """Each evaluator's scorer judges its own snapshot against the simulator's truth: the same
    verdict for the network interval and for every region's share and hashrate interval."""
    as_of = float(live["as_of"])
    scored = ev.interval_coverage(truth, [live], as_of - 1.0, as_of + 1.0)
    records = worlds.snapshot_records(0, 0.0, offline, merged,
                                      check_truth(truth, coverage, as_of))
    held = {(r.series, r.kind): r.lower is not None and r.upper is not None
            and r.lower <= r.truth <= r.upper for r in records}
    assert held[(ev.NETWORK, "network")] == bool(scored[ev.NETWORK].hashrate_coverage)
    served = {e["region"]: e for e in [*live["regions"], *live["subdivisions"]]}
    for code, cov in scored.items():
        if code == ev.NETWORK:
            continue
        if (code, "share") not in held:
            # A listed country this world does not have: the live scorer judges its interval
            # against a true share of 0, the offline one records only the world's own regions.
            assert served[code]["observed"] is False, code
            assert bool(cov.share_coverage), code
            continue
        assert held[(code, "share")] == bool(cov.share_coverage), code
        assert held[(code, "hashrate")] == bool(cov.hashrate_coverage), code


# ---- 2. the offline evaluator's own world of the same seed -------------------------------------


def assert_same_world(offset: float, live: Mapping[str, Any],
                      records: Sequence[worlds.Record], truth: ev.Truth,
                      coverage: Sequence[tuple[float, float]]) -> None:
    """The offline evaluator's world 0 at ``offset`` against the live snapshot of that check:
    the same true world, overlapping intervals, and each path near its own truth."""
    mine = {(r.series, r.kind): r for r in records if r.check == offset}
    as_of = float(live["as_of"])
    at = np.array([as_of])
    net, cov = mine[(ev.NETWORK, "network")], mine[(ev.NETWORK, "coverage")]
    true_hs = float(truth.hashrate_at(ev.NETWORK, at)[0])
    true_c = float(np.interp(as_of, *zip(*coverage, strict=True)))
    assert net.truth == pytest.approx(true_hs, rel=WANDER_TOLERANCE)
    assert cov.truth == pytest.approx(true_c, rel=WANDER_TOLERANCE)
    live_net = live["network"]
    assert_close_intervals("network", true_hs, (live_net["hashrate_hs"],
                           *live_net["hashrate_ci95_hs"]), (net.estimate, net.lower, net.upper))
    assert_close_intervals("coverage", true_c, (live_net["coverage"], *live_net["coverage_ci95"]),
                           (cov.estimate, cov.lower, cov.upper))
    listed = {e["region"]: e for e in [*live["regions"], *live["subdivisions"]]}
    # Listed countries no sampled pool shows (``observed`` false; this world has none of them)
    # are served as [0, bound] and scored by the offline evaluator only if the world has them.
    served = {code: e for code, e in listed.items() if e.get("observed", True)}
    assert all(e["share"] == 0.0 and e["share_ci95"][0] == 0.0
               for code, e in listed.items() if code not in served)
    assert {s for (s, k), r in mine.items() if k == "share" and r.estimate is not None} \
        == set(served)
    window_truth = sample_window_truth(truth, coverage, as_of, float(live["window_s"]))
    for code, entry in served.items():
        share = mine[(code, "share")]
        true_share = float(truth.share_at(code, at)[0])
        assert share.truth == pytest.approx(true_share, rel=2 * WANDER_TOLERANCE), code
        assert_close_intervals(code, true_share, (entry["share"], *entry["share_ci95"]),
                               (share.estimate, share.lower, share.upper))
        sample = mine[(code, "sample_hashrate")]
        assert_sample_near_truth((code, "live"), entry["sample_hashrate_hs"],
                                 entry["sample_hashrate_ci95_hs"], window_truth(code))
        assert_sample_near_truth((code, "offline"), sample.estimate,
                                 (sample.lower, sample.upper), sample.truth)


Estimate = tuple[float | None, float | None, float | None]


def assert_close_intervals(what: str, truth: float, live: Estimate, offline: Estimate) -> None:
    """The two paths' 95 % intervals overlap, and each estimate is within 3 of its own
    half-widths of the truth (a calibrated interval misses that by chance in < 1e-3)."""
    bounds = []
    for path, (estimate, lower, upper) in (("live", live), ("offline", offline)):
        assert estimate is not None and lower is not None and upper is not None, (what, path)
        assert abs(estimate - truth) <= 3 * (upper - lower) / 2, (what, path, estimate, truth)
        bounds.append((lower, upper))
    (live_lower, live_upper), (offline_lower, offline_upper) = bounds
    assert live_lower <= offline_upper and offline_lower <= live_upper, (
        f"{what}: 95 % intervals {bounds[0]} and {bounds[1]} do not overlap")


def sample_window_truth(truth: ev.Truth, coverage: Sequence[tuple[float, float]], as_of: float,
                        window_s: float) -> Any:
    """Per region, the sampled pools' true hashrate there, averaged over the window (coverage ×
    network × the region's part of the sample, from the truth file's 60-s points)."""
    grid = np.linspace(as_of - window_s, as_of, ev.WINDOW_POINTS)
    sampled = (np.interp(grid, *zip(*coverage, strict=True))
               * truth.hashrate_at(ev.NETWORK, grid))
    return lambda code: float(np.mean(sampled * truth.sample_share_at(code, grid)))


def assert_sample_near_truth(what: Any, estimate: float | None,
                             interval: Sequence[float | None], truth: float) -> None:
    """A region's sample hashrate within 2 of its sampling half-widths (≈ 4 σ of the share
    counts) plus ``WINDOW_TRUTH_REL`` of its truth."""
    lower, upper = interval
    assert estimate is not None and lower is not None and upper is not None, what
    allowed = WINDOW_TRUTH_REL * truth + 2 * (upper - lower) / 2
    assert abs(estimate - truth) <= allowed, (what, estimate / truth - 1)
