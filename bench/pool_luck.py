"""Pool luck and divergence flags on simulated pools with known hashrate (issue #15).

Simulated world (streams/sim/pools.py): a constant network at the matching difficulty, sampled
pools of 30, 15, 8 and 3 % of it; blocks arrive as a Poisson process and go to a pool by its true
share; each sampled pool's shares per block interval are Poisson at its visible hashrate.

Reports:
- coverage of the 95 % luck interval (Garwood on blocks found ÷ expected) for 144, 1008 and
  2016-block windows, over non-overlapping windows of many seeds (target 93–97 %);
- share of simulated days on which an honest pool is flagged (`pool_divergence` firing at any
  block of the day; detector run at every block, ledger warmed up for 2016 blocks; target < 1 %);
- after how many blocks a proxy that sees half of a pool is flagged, the ledger starting with the
  proxy (as after a restart): median and 90th percentile over seeds, per pool size.

Run: `.venv/bin/python -m bench.pool_luck [--seeds N] [--days N] [--out DIR]`
(writes DIR/pool_luck.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from streams.core.pools import DivergenceParams
from streams.sim.pools import flag_run, luck_coverage

SHARES = [0.30, 0.15, 0.08, 0.03]


def coverage_of_luck(seeds: range) -> dict[str, Any]:
    """Coverage of the 95 % luck interval, overall, per window and per pool size."""
    coverage = luck_coverage(seeds, SHARES, windows_per_seed=20)
    covered = sum(c for c, _ in coverage.values())
    tried = sum(t for _, t in coverage.values())
    by_pool = {}
    for share in SHARES:
        one = luck_coverage(seeds, [share], windows_per_seed=10)
        by_pool[str(share)] = {str(n): round(c / t, 4) for n, (c, t) in one.items()}
    return {"overall": covered / tried, "tries": tried,
            "by_window": {str(n): c / t for n, (c, t) in coverage.items()},
            "by_pool_and_window": by_pool}


def honest_flag_rates(seed: int, days: int, params: DivergenceParams) -> dict[str, Any]:
    """Per pool size: the share of simulated days on which a fully seen pool is flagged."""
    honest = {}
    chunk = 50
    for pool, share in enumerate(SHARES):
        flagged = counted = 0
        for i in range(0, days, chunk):
            f, d, _ = flag_run(seed * 7919 + pool * 1000 + i, SHARES, pool,
                               min(chunk, days - i), params=params, warmup_blocks=2016)
            flagged, counted = flagged + f, counted + d
        honest[str(share)] = {"flagged_days": flagged, "days": counted,
                              "rate": flagged / counted}
    return honest


def half_proxy_detection(seed: int, runs: int, params: DivergenceParams) -> dict[str, Any]:
    """Per pool size: after how many blocks a pool seen only in half is flagged."""
    result = {}
    for pool, share in enumerate(SHARES):
        firsts = [flag_run(seed * 104729 + s, SHARES, pool, 28, visible=0.5,
                           params=params)[2] for s in range(runs)]
        found = np.array([f for f in firsts if f is not None], dtype=float)
        result[str(share)] = {
            "runs": len(firsts),
            "flagged_within_28_days": len(found),
            "median_blocks": float(np.median(found)) if found.size else None,
            "p90_blocks": float(np.percentile(found, 90)) if found.size else None,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="seeds for coverage and detection")
    parser.add_argument("--days", type=int, default=500, help="simulated days per pool, honest")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    started = time.time()
    params = DivergenceParams()
    result = {
        "bench": "pool_luck",
        "params": {"fire_p": params.fire_p, "resolve_p": params.resolve_p,
                   "min_covered_blocks": params.min_covered_blocks},
        "pool_shares": SHARES,
        "seeds": args.seeds,
        "luck_coverage": coverage_of_luck(range(args.seed * 1000, args.seed * 1000 + args.seeds)),
        "honest_flagged_day_rate": honest_flag_rates(args.seed, args.days, params),
        "half_proxy_detection": half_proxy_detection(args.seed, min(args.seeds, 40), params),
        "elapsed_s": time.time() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pool_luck.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
