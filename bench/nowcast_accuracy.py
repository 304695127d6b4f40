"""Nowcast accuracy on simulated networks with known truth.

Each simulated path has a true network hashrate (slow drift and random walk, a daily curtailment
window, one step change), blocks drawn as a Poisson process whose rate is hashrate / block work
(with difficulty retargets every 2016 blocks and noisy header timestamps), a sampled pool set
holding a fixed fraction c ≈ 0.4 of the hashrate (each block is theirs with probability c), and
the sample's share counts per minute drawn as Poisson (standing for aggregated share batches).

At many instants t the script compares, against the truth = mean hashrate over [t − 1 h, t]:
- GetNetworkHashPS(120) alone,
- the share-based estimate H_S / ĉ alone (H_S over the last hour, ĉ over the last 2016 blocks),
- the fused nowcast,
and reports the RMSE and mean of the log error of each, their ratio and the 95% interval coverage.
Two scenarios: the step scales every pool alike (coverage constant, the design case), and the step
happens only outside the sampled pools (coverage jumps, ĉ lags: the known weak spot).

Run: `.venv/bin/python -m bench.nowcast_accuracy [--paths N] [--seed S]`
(writes bench/results/nowcast_accuracy.json). The unit tests import `simulate_path` and
`evaluate_paths` from this file so that the benchmark and the test measure the same thing.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from streams.core.network import (
    DEFAULT_COVERAGE_WINDOW_BLOCKS,
    coverage_from_blocks,
    network_hashrate_from_blocks,
    nowcast_network_hashrate,
)

MINUTE_S = 60.0
DAY_MIN = 1440
RETARGET_BLOCKS = 2016
TARGET_BLOCK_INTERVAL_S = 600.0
SAMPLED_POOL = "sampled"
OTHER_POOL = "other"


@dataclass(frozen=True)
class SimulatedPath:
    """One simulated world: truth per minute, the block chain and the sample's share counts."""

    hashrate_per_minute_hs: np.ndarray  # true network hashrate, constant within each minute
    block_found_s: np.ndarray  # when each block was really found (its availability time)
    block_header_time_s: np.ndarray  # the header timestamp miners wrote (integer, noisy)
    block_work: np.ndarray  # expected hashes per block (difficulty · 2³²)
    block_sampled: np.ndarray  # bool: found by the sampled pools
    shares_per_minute: np.ndarray  # accepted shares of the sample in each minute
    share_difficulty: float  # pool difficulty of every share (1 = 2³² hashes)
    true_coverage: float  # sampled pools' share of the hashrate (before the step, if it moves)
    evaluation_start_s: float  # instants before this lack a full coverage window


def _true_log_hashrate(
    rng: np.random.Generator, minutes: int, eval_start_min: int
) -> tuple[np.ndarray, np.ndarray]:
    """(drift + random walk + daily curtailment window, one step change inside the evaluation)."""
    t_day = np.arange(minutes) / DAY_MIN
    drift_per_day = rng.uniform(-0.005, 0.01)
    walk = np.cumsum(rng.normal(0.0, 0.01 / np.sqrt(DAY_MIN), minutes))
    # Curtailment: a 3-5 h window each day (e.g. a grid's evening peak) with 1-hour ramps.
    depth = rng.uniform(0.03, 0.10)
    start_h = rng.uniform(14.0, 18.0)
    length_h = rng.uniform(3.0, 5.0)
    hour = (t_day % 1.0) * 24.0
    ramp_in = np.clip(hour - start_h, 0.0, 1.0)
    ramp_out = np.clip(start_h + length_h - hour, 0.0, 1.0)
    curtailed = np.minimum(ramp_in, ramp_out) * ((hour >= start_h) & (hour <= start_h + length_h))
    # Step: a regional shutdown or a big farm coming online, mostly down.
    step_min = int(rng.integers(eval_start_min, minutes - 6 * 60))
    step_size = rng.uniform(0.08, 0.15) * (-1.0 if rng.random() < 0.75 else 1.0)
    step = np.where(np.arange(minutes) >= step_min, step_size, 0.0)
    return drift_per_day * t_day + walk + np.log1p(-depth * curtailed), step


def _draw_blocks(rng: np.random.Generator, hashrate: np.ndarray, h0: float, minutes: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Block times and works: block k is found when the cumulative work done reaches the previous
    total plus work_k · Exp(1), with difficulty retargets every 2016 blocks."""
    grid_s = np.arange(minutes + 1) * MINUTE_S
    cum_work = np.concatenate(([0.0], np.cumsum(hashrate * MINUTE_S)))
    # difficulty slightly off at the start, as after a change of hashrate
    work_per_block = h0 * TARGET_BLOCK_INTERVAL_S * rng.uniform(0.9, 1.1)
    left_in_epoch = int(rng.integers(1, RETARGET_BLOCKS + 1))
    epoch_first_time = 0.0
    done = 0.0
    found: list[np.ndarray] = []
    works: list[np.ndarray] = []
    while True:
        targets = done + work_per_block * np.cumsum(rng.exponential(1.0, left_in_epoch))
        inside = targets < cum_work[-1]
        times = np.interp(targets[inside], cum_work, grid_s)
        found.append(times)
        works.append(np.full(times.size, work_per_block))
        if not inside.all():
            break
        done = targets[-1]
        expected_span = left_in_epoch * TARGET_BLOCK_INTERVAL_S
        span = times[-1] - epoch_first_time
        work_per_block *= float(np.clip(expected_span / span, 0.25, 4.0))
        epoch_first_time = times[-1]
        left_in_epoch = RETARGET_BLOCKS
    return np.concatenate(found), np.concatenate(works)


def simulate_path(
    rng: np.random.Generator,
    days: float = 21.0,
    eval_days: float = 7.0,
    base_hashrate_hs: float = 7e20,
    step_hits_sampled: bool = True,
) -> SimulatedPath:
    """Draw one path; the first `days − eval_days` days only build up block history.

    With `step_hits_sampled` the step scales every pool alike (coverage stays c); without it the
    step happens only outside the sampled pools, so the true coverage jumps at the step while ĉ,
    a two-week block mean, follows slowly: the nowcast's known weak spot.
    """
    minutes = int(days * DAY_MIN)
    eval_start_min = int((days - eval_days) * DAY_MIN)
    h0 = base_hashrate_hs * rng.uniform(0.8, 1.2)
    log_smooth, log_step = _true_log_hashrate(rng, minutes, eval_start_min)
    hashrate = h0 * np.exp(log_smooth + log_step)
    coverage = rng.uniform(0.35, 0.45)
    sampled_hashrate = coverage * (hashrate if step_hits_sampled else h0 * np.exp(log_smooth))

    found_s, block_work = _draw_blocks(rng, hashrate, h0, minutes)
    header_s = np.round(found_s + rng.normal(0.0, 30.0, found_s.size))
    minute_of_block = np.minimum((found_s / MINUTE_S).astype(np.int64), minutes - 1)
    sampled_share = sampled_hashrate[minute_of_block] / hashrate[minute_of_block]
    sampled = rng.random(found_s.size) < sampled_share

    shares_per_minute_at_start = rng.uniform(200.0, 2000.0)
    share_difficulty = coverage * h0 * MINUTE_S / (shares_per_minute_at_start * 2.0**32)
    share_rate = sampled_hashrate * MINUTE_S / (share_difficulty * 2.0**32)
    return SimulatedPath(
        hashrate_per_minute_hs=hashrate,
        block_found_s=found_s,
        block_header_time_s=header_s,
        block_work=block_work,
        block_sampled=sampled,
        shares_per_minute=rng.poisson(share_rate),
        share_difficulty=share_difficulty,
        true_coverage=coverage,
        evaluation_start_s=eval_start_min * MINUTE_S,
    )


@dataclass(frozen=True)
class Evaluation:
    """Log errors (estimate / truth) of each estimator and whether the truth was inside its CI."""

    log_err_blocks: np.ndarray
    log_err_shares: np.ndarray
    log_err_nowcast: np.ndarray
    blocks_ci_hit: np.ndarray
    shares_ci_hit: np.ndarray
    nowcast_ci_hit: np.ndarray
    nowcast_sources: list[str]


def evaluate_path(
    path: SimulatedPath,
    step_s: float = 1800.0,
    horizon_s: float = 3600.0,
    block_window: int = 120,
    coverage_window: int = DEFAULT_COVERAGE_WINDOW_BLOCKS,
) -> Evaluation:
    """Evaluate every estimator at instants every `step_s` of the evaluation period."""
    horizon_min = int(horizon_s / MINUTE_S)
    end_s = path.hashrate_per_minute_hs.size * MINUTE_S
    instants = np.arange(path.evaluation_start_s + step_s, end_s + 1.0, step_s)
    pools = np.where(path.block_sampled, SAMPLED_POOL, OTHER_POOL)
    cum_h = np.concatenate(([0.0], np.cumsum(path.hashrate_per_minute_hs)))
    cum_shares = np.concatenate(([0], np.cumsum(path.shares_per_minute)))
    hashes_per_share = path.share_difficulty * 2.0**32
    out: dict[str, list[float]] = {k: [] for k in ("b", "s", "n", "bh", "sh", "nh")}
    sources: list[str] = []
    for t in instants:
        m = round(float(t) / MINUTE_S)
        truth = (cum_h[m] - cum_h[m - horizon_min]) / horizon_min
        known = int(np.searchsorted(path.block_found_s, t, side="right"))
        lo_b = max(0, known - (block_window + 1))
        blocks = network_hashrate_from_blocks(
            path.block_header_time_s[lo_b:known], path.block_work[lo_b:known], block_window
        )
        lo_c = max(0, known - coverage_window)
        coverage = coverage_from_blocks(
            pools[lo_c:known].tolist(), path.block_work[lo_c:known], {SAMPLED_POOL}
        )
        n_shares = float(cum_shares[m] - cum_shares[m - horizon_min])
        sample_hs = n_shares * hashes_per_share / horizon_s
        sample_se = np.sqrt(n_shares) * hashes_per_share / horizon_s
        nowcast = nowcast_network_hashrate(sample_hs, sample_se, coverage, blocks)
        shares_only = nowcast_network_hashrate(sample_hs, sample_se, coverage, None)
        if blocks is None or coverage is None or nowcast is None or shares_only is None:
            raise AssertionError("simulation too short: an estimator had no input")
        out["b"].append(np.log(blocks.hashrate_hs / truth))
        out["s"].append(np.log(shares_only.hashrate_hs / truth))
        out["n"].append(np.log(nowcast.hashrate_hs / truth))
        out["bh"].append(float(blocks.ci95_hs[0] <= truth <= blocks.ci95_hs[1]))
        out["sh"].append(float(shares_only.ci95_hs[0] <= truth <= shares_only.ci95_hs[1]))
        out["nh"].append(float(nowcast.ci95_hs[0] <= truth <= nowcast.ci95_hs[1]))
        sources.append(nowcast.source)
    return Evaluation(
        log_err_blocks=np.array(out["b"]),
        log_err_shares=np.array(out["s"]),
        log_err_nowcast=np.array(out["n"]),
        blocks_ci_hit=np.array(out["bh"], dtype=bool),
        shares_ci_hit=np.array(out["sh"], dtype=bool),
        nowcast_ci_hit=np.array(out["nh"], dtype=bool),
        nowcast_sources=sources,
    )


@dataclass(frozen=True)
class Summary:
    paths: int
    instants: int
    horizon_s: float
    rmse_log_blocks_120: float
    rmse_log_shares_over_coverage: float
    rmse_log_nowcast: float
    ratio_blocks_over_nowcast: float
    bias_log_blocks_120: float
    bias_log_shares_over_coverage: float
    bias_log_nowcast: float
    ci95_coverage_blocks_120: float
    ci95_coverage_shares_over_coverage: float
    ci95_coverage_nowcast: float
    nowcast_source_counts: dict[str, int]


def _rmse(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def _hit_rate(hits: list[np.ndarray]) -> float:
    return float(np.mean(np.concatenate(hits)))


def evaluate_paths(
    paths: int,
    seed: int,
    step_s: float = 1800.0,
    horizon_s: float = 3600.0,
    step_hits_sampled: bool = True,
) -> Summary:
    """Simulate `paths` independent worlds and pool the errors of all their instants.

    Paths matter more than instants: ĉ's error is shared by the instants of a path for days.
    """
    rng = np.random.default_rng(seed)
    evals = [
        evaluate_path(
            simulate_path(rng, step_hits_sampled=step_hits_sampled),
            step_s=step_s,
            horizon_s=horizon_s,
        )
        for _ in range(paths)
    ]
    b = np.concatenate([e.log_err_blocks for e in evals])
    s = np.concatenate([e.log_err_shares for e in evals])
    n = np.concatenate([e.log_err_nowcast for e in evals])
    src = [x for e in evals for x in e.nowcast_sources]
    return Summary(
        paths=paths,
        instants=int(b.size),
        horizon_s=horizon_s,
        rmse_log_blocks_120=_rmse(b),
        rmse_log_shares_over_coverage=_rmse(s),
        rmse_log_nowcast=_rmse(n),
        ratio_blocks_over_nowcast=_rmse(b) / _rmse(n),
        bias_log_blocks_120=float(b.mean()),
        bias_log_shares_over_coverage=float(s.mean()),
        bias_log_nowcast=float(n.mean()),
        ci95_coverage_blocks_120=_hit_rate([e.blocks_ci_hit for e in evals]),
        ci95_coverage_shares_over_coverage=_hit_rate([e.shares_ci_hit for e in evals]),
        ci95_coverage_nowcast=_hit_rate([e.nowcast_ci_hit for e in evals]),
        nowcast_source_counts={k: src.count(k) for k in sorted(set(src))},
    )


SCENARIOS = {
    "step_hits_all_pools": True,  # coverage stays c: the design case
    "step_outside_sample": False,  # coverage jumps at the step: the known weak spot
}


def _print_table(name: str, summary: Summary) -> None:
    rows = [
        ("GetNetworkHashPS(120)", summary.rmse_log_blocks_120, summary.bias_log_blocks_120,
         summary.ci95_coverage_blocks_120),
        ("shares / coverage(2016)", summary.rmse_log_shares_over_coverage,
         summary.bias_log_shares_over_coverage, summary.ci95_coverage_shares_over_coverage),
        ("nowcast (fused)", summary.rmse_log_nowcast, summary.bias_log_nowcast,
         summary.ci95_coverage_nowcast),
    ]  # fmt: skip
    print(
        f"\n[{name}] {summary.paths} paths, {summary.instants} instants, truth = mean of last 1 h"
    )
    print(f"{'estimator':<26}{'RMSE log':>10}{'bias log':>10}{'CI95 cover':>12}")
    for label, rmse, bias, cover in rows:
        print(f"{label:<26}{rmse:>10.4f}{bias:>+10.4f}{cover:>12.3f}")
    print(f"ratio RMSE GetNetworkHashPS(120) / nowcast: {summary.ratio_blocks_over_nowcast:.2f}")
    print(f"nowcast sources: {summary.nowcast_source_counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20240501)
    parser.add_argument("--step-s", type=float, default=1800.0, help="seconds between instants")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "nowcast_accuracy.json"
    )
    args = parser.parse_args()
    results: dict[str, object] = {
        "settings": {
            "paths": args.paths,
            "seed": args.seed,
            "instant_step_s": args.step_s,
            "horizon_s": 3600.0,
            "block_window": 120,
            "coverage_window_blocks": DEFAULT_COVERAGE_WINDOW_BLOCKS,
            "sample_window_s": 3600.0,
        }
    }
    for name, step_hits_sampled in SCENARIOS.items():
        summary = evaluate_paths(
            args.paths, args.seed, step_s=args.step_s, step_hits_sampled=step_hits_sampled
        )
        _print_table(name, summary)
        results[name] = asdict(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
