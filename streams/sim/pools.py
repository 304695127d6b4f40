"""Simulated pools with known hashrate, to calibrate luck intervals and divergence flags.

A constant network of hashrate H at the matching difficulty (one block per 600 s on average):
block intervals are exponential, each block's finder is drawn by the pools' true shares, and
each sampled pool's shares in a block interval are Poisson at its *visible* hashrate (a proxy
seeing half a pool shows half). The ledger's expected blocks per block are the measured shares'
difficulty over the network difficulty, exactly what `LuckLedger` records from live rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streams.core.pools import WINDOWS, DivergenceDetector, DivergenceParams, pool_luck
from streams.core.units import HASHES_PER_DIFFICULTY

NETWORK_HS = 6.0e20
SHARE_DIFFICULTY = 2.0**20  # ~ a hundred thousand shares per block interval for a 20 % pool

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SimulatedChain:
    """Per block: its finder (pool index), the pools' measured and true expected blocks."""

    finder: IntArray  # (blocks,)
    expected_measured: FloatArray  # (blocks, pools)
    expected_true: FloatArray  # (blocks, pools)


def simulate_chain(
    rng: np.random.Generator, blocks: int, shares: Sequence[float],
    visible: Sequence[float] | None = None, visible_from: int = 0,
) -> SimulatedChain:
    """`shares`: the pools' true fractions of the network (the rest is other miners).

    `visible[i]` is the fraction of pool i the share sample sees from block `visible_from` on
    (1 before it)."""
    share_arr = np.asarray(shares, dtype=np.float64)
    visible_arr = np.ones_like(share_arr) if visible is None else np.asarray(visible, float)
    difficulty = NETWORK_HS * 600.0 / HASHES_PER_DIFFICULTY
    dt = rng.exponential(600.0, size=blocks)
    probs = np.append(share_arr, max(0.0, 1.0 - share_arr.sum()))
    finder = rng.choice(probs.size, size=blocks, p=probs / probs.sum())
    true_rate = share_arr[None, :] * NETWORK_HS * dt[:, None]  # hashes per block interval
    expected_true = true_rate / (difficulty * HASHES_PER_DIFFICULTY)
    seen = np.ones((blocks, share_arr.size))
    seen[visible_from:, :] = visible_arr[None, :]
    counts = rng.poisson(true_rate * seen / (SHARE_DIFFICULTY * HASHES_PER_DIFFICULTY))
    expected_measured = (counts * SHARE_DIFFICULTY / difficulty).astype(np.float64)
    return SimulatedChain(finder.astype(np.int64), expected_measured, expected_true)


def _window_sums(values: FloatArray, n: int) -> FloatArray:
    """Sum over the last n rows ending at each row (fewer at the start)."""
    cum = np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(values, axis=0)])
    idx = np.arange(1, values.shape[0] + 1)
    return cum[idx] - cum[np.maximum(0, idx - n)]


def luck_coverage(
    seeds: Sequence[int], shares: Sequence[float], windows: Sequence[int] = WINDOWS,
    windows_per_seed: int = 20,
) -> dict[int, tuple[int, int]]:
    """(covered, tried) per window: does the luck interval hold the true luck?

    True luck = true expected blocks / measured expected blocks; the interval holds it when
    Garwood(found) holds the true expected count. Windows do not overlap, so tries are
    independent."""
    result = {n: [0, 0] for n in windows}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        longest = max(windows)
        chain = simulate_chain(rng, longest * windows_per_seed, shares)
        for n in windows:
            for start in range(0, chain.finder.size - n + 1, n):
                end = start + n
                for pool in range(len(shares)):
                    found = int(np.count_nonzero(chain.finder[start:end] == pool))
                    measured = float(chain.expected_measured[start:end, pool].sum())
                    truth = float(chain.expected_true[start:end, pool].sum()) / measured
                    luck = pool_luck(found, measured, n, n)
                    assert luck.luck_ci95 is not None
                    result[n][1] += 1
                    result[n][0] += int(luck.luck_ci95[0] <= truth <= luck.luck_ci95[1])
    return {n: (c, t) for n, (c, t) in result.items()}


def flag_run(
    seed: int, shares: Sequence[float], pool: int, days: int, visible: float = 1.0,
    params: DivergenceParams | None = None, windows: Sequence[int] = WINDOWS,
    warmup_blocks: int = 0,
) -> tuple[int, int, int | None]:
    """Run the detector at every block on one pool for `days` simulated days.

    The ledger starts `warmup_blocks` before the first day (0: it starts with the first day, as
    after a restart). Returns (days with a firing alert at some block, days, blocks from the
    ledger's start until the first firing or None)."""
    rng = np.random.default_rng(seed)
    total = warmup_blocks + days * 144
    chain = simulate_chain(rng, total, shares, [visible if i == pool else 1.0
                                               for i in range(len(shares))])
    hits = (chain.finder == pool).astype(np.float64)
    found_sums = {n: _window_sums(hits, n).astype(np.int64) for n in windows}
    expected_sums = {n: _window_sums(chain.expected_measured[:, pool], n) for n in windows}
    detector = DivergenceDetector(params)
    flagged_days: set[int] = set()
    first: int | None = None
    name = f"pool{pool}"
    for t in range(total):
        lucks = {}
        for n in windows:
            covered = min(n, t + 1)
            lucks[n] = pool_luck(int(found_sums[n][t]), float(expected_sums[n][t]), n, covered)
        detector.update(float(t), {name: lucks})
        if name in detector.active:
            if first is None:
                first = t + 1
            if t >= warmup_blocks:
                flagged_days.add((t - warmup_blocks) // 144)
    return len(flagged_days), days, first
