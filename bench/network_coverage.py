"""Coverage of the network nowcast's 95 % interval over many worlds, with its sampling error.

The offline evaluator (``hashatlas evaluate``) runs every interval the API serves; the network
nowcast needs only three of its inputs: the headline window's sampled hashrate and its standard
error, the chain summary's coverage window (finder and work of the last 2016 blocks) and its
block rate. This bench runs the evaluator's worlds (``FastWorld``, ``OfflinePipeline``: the
worker's partition states, merge and snapshot, exactly as ``run_world``), keeps those inputs per
(world, check) with the true network hashrate at the snapshot's ``as_of``, and checks that
``assess_coverage`` + ``nowcast_network_hashrate`` on them give back the interval the snapshot
served (to the last bit). Any calibration of ĉ can then be scored on the same inputs in
milliseconds: coverage, median width, and the coverage's standard error from a bootstrap over
worlds (the checks of one world share its chain, so they are not independent).

Run: ``nice -n 10 .venv/bin/python -m bench.network_coverage --scenario scenarios/steady.yaml
--worlds 400 --seed 2 [--cache FILE.pkl] [--memory 120 200 --disagreement-z 1 1.96]`` (prints
the default calibration's coverage, and each combination asked for; the cache keeps the inputs
for re-scoring). About 1 s of CPU per world of a one-day scenario, 0.2 s when re-scored.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from streams.core.blocks import load_pool_directory
from streams.core.network import (
    DEFAULT_COVERAGE_MEMORY_BLOCKS,
    DEFAULT_DISAGREEMENT_Z,
    DEFAULT_SHIFT_RECENT_BLOCKS,
    DEFAULT_SHIFT_Z,
    BlockHashrate,
    assess_coverage,
    nowcast_network_hashrate,
)
from streams.core.snapshot import implausible_pools
from streams.models.chain import COVERAGE_BLOCKS, ChainSummary
from streams.pipeline.state import ChainPartition
from streams.settings import Settings
from streams.sim.scenario import Scenario, load_scenario
from streams.sim.worlds import (
    BASE_START_TS,
    WORLD_SPACING_S,
    FastWorld,
    OfflinePipeline,
    check_offsets,
    data_dir,
    default_config,
    encode,
)


@dataclass(frozen=True)
class NowcastCase:
    """What the network nowcast saw at one check of one world, the truth, and what was served."""

    world: int
    check: float
    as_of: float
    truth_hs: float
    sample_hs: float | None
    sample_se_hs: float
    sampled_pools: frozenset[str]
    coverage_pools: tuple[str, ...]
    coverage_works: np.ndarray
    blocks: BlockHashrate | None
    #: The snapshot's interval, for the first ``verify_worlds`` worlds only.
    served_ci95_hs: tuple[float, float] | None = None


@dataclass(frozen=True)
class Calibration:
    """The settings of ĉ a run is scored with (the worker's defaults unless given)."""

    memory_blocks: float = DEFAULT_COVERAGE_MEMORY_BLOCKS
    recent_blocks: int = DEFAULT_SHIFT_RECENT_BLOCKS
    shift_z: float = DEFAULT_SHIFT_Z
    disagreement_z: float = DEFAULT_DISAGREEMENT_Z


def _cases_of_world(scenario: Scenario, index: int, seed: int, settings: Settings,
                    checks: Sequence[float], verify_worlds: int) -> list[NowcastCase]:
    """``run_world``'s loop, keeping the network nowcast's inputs instead of records."""
    config = default_config(settings)
    rng = np.random.default_rng([seed, index, 0xC0DE])
    start_ts = BASE_START_TS + index * WORLD_SPACING_S + float(rng.random()) * scenario.step_s
    world = FastWorld(scenario, seed=seed * 100_003 + index, start_ts=start_ts)
    head = settings.headline_window_s
    windows = sorted({head, *[w for w in settings.windows_s if w <= head]})
    feed_s = head + 2 * scenario.step_s + max([float(x) for x in world.world.feed_lag] + [0.0])
    blocks = world.blocks(max(checks))
    chain = ChainPartition.restore(None, load_pool_directory(data_dir() / "pools-v2.json"))
    position = 0
    out = []
    for offset in sorted(checks):
        while position < len(blocks) and blocks[position]["time"] <= start_ts + offset:
            chain.apply(encode(blocks[position]))
            position += 1
        pipeline = OfflinePipeline(settings, config, chain=chain)
        batches, step_starts, rates, network = world.batches(offset, feed_s)
        for batch in batches:
            pipeline.apply_batch(encode(batch.body), batch.pool_index)
        case = _case(index, offset, pipeline, serve=index < verify_worlds)
        if case is None:
            continue
        truth = world.truth(case.as_of, [head, *windows], step_starts, rates, network)
        out.append(replace(case, truth_hs=truth.network_hs))
    return out


def _case(index: int, offset: float, pipeline: OfflinePipeline, serve: bool
          ) -> NowcastCase | None:
    """The nowcast's inputs as ``build_snapshot`` takes them (``_headline_totals``,
    ``_network_view``); with ``serve`` the snapshot is built too, to keep what it served."""
    config = pipeline.config
    served = None
    if serve:
        made = pipeline.snapshot()
        if made is None:
            return None
        snap, merged = made
        summary = pipeline._summary[1]
        served = snap["network"].get("hashrate_ci95_hs")
    else:
        merged = pipeline.merged()
        if merged is None:
            return None
        summary = (pipeline.chain.summary(COVERAGE_BLOCKS) if pipeline.chain.chain
                   else ChainSummary())
    headline = {key: t for key, t in merged.windows.get(config.headline_window_s, {}).items()
                if t.effective_seconds > 0}
    flagged = implausible_pools(headline, summary, config.plausibility_factor,
                                config.plausibility_min_blocks)
    totals = [(pool, t) for (pool, _), t in headline.items() if pool not in flagged]
    rate = summary.rates.get(config.block_window)
    sample_hs = float(sum(t.hashrate_hs for _, t in totals))
    return NowcastCase(
        world=index, check=offset, as_of=merged.as_of, truth_hs=math.nan,
        sample_hs=sample_hs if sample_hs > 0 else None,
        sample_se_hs=math.sqrt(sum(t.se_hs**2 for _, t in totals)),
        sampled_pools=frozenset(pool for pool, t in totals if t.difficulty_sum > 0),
        coverage_pools=tuple(summary.coverage_pools),
        coverage_works=np.asarray(summary.coverage_works, dtype=np.float64),
        blocks=(BlockHashrate(rate.hashrate_hs, (rate.lower_hs, rate.upper_hs), rate.blocks,
                              rate.span_s) if rate else None),
        served_ci95_hs=(served[0], served[1]) if served else None,
    )


def collect(scenario: Scenario, worlds: int, seed: int, *, verify_worlds: int = 20,
            settings: Settings | None = None) -> list[NowcastCase]:
    """The nowcast's inputs at every check of ``worlds`` worlds (the evaluator's seeds)."""
    settings = settings or Settings()
    checks = check_offsets(scenario)
    return [case for index in range(worlds)
            for case in _cases_of_world(scenario, index, seed, settings, checks, verify_worlds)]


def interval(case: NowcastCase, calibration: Calibration) -> tuple[float, float] | None:
    """The nowcast's interval for one case under ``calibration`` (the snapshot's code path)."""
    assessment = None
    if case.coverage_pools:
        assessment = assess_coverage(
            case.coverage_pools, case.coverage_works, case.sampled_pools,
            memory_blocks=calibration.memory_blocks, recent_blocks=calibration.recent_blocks,
            shift_z=calibration.shift_z)
    estimate = nowcast_network_hashrate(case.sample_hs, case.sample_se_hs,
                                        assessment.coverage if assessment else None, case.blocks,
                                        disagreement_z=calibration.disagreement_z)
    return estimate.ci95_hs if estimate else None


def score(cases: Sequence[NowcastCase], calibration: Calibration, *, boot: int = 2000,
          rng_seed: int = 0) -> dict[str, object]:
    """Coverage (share of checks whose interval holds the truth; no interval is a miss), its
    world-bootstrap standard error, median full width relative to the truth, per check."""
    worlds = sorted({c.world for c in cases})
    row = {w: i for i, w in enumerate(worlds)}
    checks = sorted({c.check for c in cases})
    hits = np.zeros((len(worlds), len(checks)))
    present = np.zeros_like(hits)
    widths = []
    for case in cases:
        ci = interval(case, calibration)
        i, j = row[case.world], checks.index(case.check)
        present[i, j] = 1.0
        if ci is not None:
            hits[i, j] = float(ci[0] <= case.truth_hs <= ci[1])
            widths.append((ci[1] - ci[0]) / case.truth_hs)
    rng = np.random.default_rng(rng_seed)
    draws = rng.integers(0, len(worlds), size=(boot, len(worlds)))
    boot_cov = hits[draws].sum(axis=(1, 2)) / present[draws].sum(axis=(1, 2))
    return {
        "calibration": calibration.__dict__, "worlds": len(worlds), "checks": int(present.sum()),
        "coverage": float(hits.sum() / present.sum()), "coverage_se": float(boot_cov.std()),
        "median_width": float(np.median(widths)) if widths else None,
        "by_check": {f"{c / 3600:g}h": float(hits[:, j].sum() / present[:, j].sum())
                     for j, c in enumerate(checks)},
    }


def served_matches(cases: Sequence[NowcastCase]) -> int:
    """How many served intervals the default calibration reproduces exactly; raises on one it
    does not (the bench would then score something other than what the worker serves)."""
    checked = [c for c in cases if c.served_ci95_hs is not None]
    for case in checked:
        if interval(case, Calibration()) != case.served_ci95_hs:
            raise SystemExit(f"world {case.world} at {case.check:g} s: the recomputed interval "
                             "differs from the served one")
    return len(checked)


def scan(cases: Sequence[NowcastCase], memories: Sequence[float],
         disagreement_zs: Sequence[float]) -> list[dict[str, object]]:
    """Every combination of memory and disagreement threshold, scored on the same cases."""
    return [score(cases, Calibration(memory_blocks=m, disagreement_z=z))
            for m in memories for z in disagreement_zs]


def _load_or_collect(args: argparse.Namespace) -> tuple[list[NowcastCase], int | None]:
    if args.cache and args.cache.exists():  # served by the code that collected it, maybe older
        with args.cache.open("rb") as handle:
            return pickle.load(handle), None
    cases = collect(load_scenario(args.scenario), args.worlds, args.seed)
    verified = served_matches(cases)
    if args.cache:
        with args.cache.open("wb") as handle:
            pickle.dump(cases, handle)
    return cases, verified


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--worlds", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, help="pickle of the collected inputs (reused)")
    parser.add_argument("--memory", type=float, nargs="*", default=[],
                        help="also score these ĉ memories (blocks)")
    parser.add_argument("--disagreement-z", type=float, nargs="*", default=[],
                        help="... with these Birge thresholds (1: the textbook rule)")
    args = parser.parse_args()
    cases, verified = _load_or_collect(args)
    result = {"served_intervals_reproduced": verified, **score(cases, Calibration())}
    if args.memory or args.disagreement_z:
        result["scan"] = scan(cases, args.memory or [DEFAULT_COVERAGE_MEMORY_BLOCKS],
                              args.disagreement_z or [DEFAULT_DISAGREEMENT_Z])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    # Through the package, so that the cache pickles ``bench.network_coverage.NowcastCase``
    # (importable by other scripts), not ``__main__.NowcastCase``.
    from bench.network_coverage import main as package_main

    package_main()
