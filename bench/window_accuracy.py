"""Window estimator vs ckpool's decaying average on simulated share streams with known truth.

Each trial is one (pool, region) stream that starts at t = 0: a compound Poisson process whose
rate gives a set number of shares per 5-minute window, with either one fixed difficulty or a
vardiff-like mix (difficulty 2^k, k uniform in 10..20 per share, so n_eff ≈ 0.27·count). The true
hashrate is rate · E[d] · 2³². Both estimators see the same shares:

- `window_300`: `ShareWindows.estimates(now, 300)` (Ĥ, 95 % interval);
- `window_600`: the same over 600 s. Its mean delay (T/2 = 300 s) equals that of ckpool's 5-minute
  average (an exponential kernel delays by τ = 300 s), and so does its noise, so it is the
  like-for-like comparison at equal responsiveness;
- `ckpool_300`: ckpool's 5-minute decaying average as ckpool shows it (value after the latest
  share), and `ckpool_300_decayed` the same decayed to `now` with no new shares.

Steady state: `now` is 12 windows after the start (ckpool's memory of its zero start is then
e⁻¹² ≈ 6e-6) plus a uniform offset so window edges fall anywhere in a bucket. Reported: bias =
mean(estimate/truth) − 1 (± two standard errors), RMSE of estimate/truth − 1, and the fraction of
95 % intervals that hold the truth. Warm-up: estimate/truth averaged at `now` = one window
(= one time constant) after the start; `window_300_literal` is Σd·2³²/(now − first share) with the
first share counted, the bare formula, for comparison.

Run: `.venv/bin/python -m bench.window_accuracy [--trials N] [--seed S]`
(writes bench/results/window_accuracy.json). tests/unit/test_shares.py imports `simulate_stream`
and `evaluate_scenario` so that the test and the benchmark measure the same thing.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from streams.core.decay import HASHES_PER_DIFFICULTY, decay_time, decaying_average_series
from streams.core.shares import ShareWindows

WINDOW_S = 300.0
WARM_WINDOWS = 12
FIXED_DIFFICULTY = 65536.0
VARDIFF_EXPONENTS = np.arange(10, 21)
SHARES_PER_WINDOW = (2.0, 14.0, 70.0, 500.0, 5000.0)
MIXES = ("fixed", "vardiff")
POOL, REGION = "sim-pool", "US"


@dataclass(frozen=True)
class Stream:
    """One simulated share stream starting at t = 0, with its true hashrate."""

    ts: np.ndarray
    difficulty: np.ndarray
    truth_hs: float


def mean_difficulty(mix: str) -> float:
    if mix == "fixed":
        return FIXED_DIFFICULTY
    if mix == "vardiff":
        return float(np.mean(2.0**VARDIFF_EXPONENTS))
    raise ValueError(f"unknown difficulty mix {mix!r}")


def simulate_stream(
    rng: np.random.Generator, shares_per_window: float, mix: str, duration_s: float
) -> Stream:
    """Poisson share times on [0, duration_s] with difficulties of the given mix."""
    rate = shares_per_window / WINDOW_S
    count = int(rng.poisson(rate * duration_s))
    ts = np.sort(rng.uniform(0.0, duration_s, count))
    if mix == "fixed":
        difficulty = np.full(count, FIXED_DIFFICULTY)
    else:
        difficulty = 2.0 ** rng.choice(VARDIFF_EXPONENTS, size=count)
    return Stream(ts, difficulty, rate * mean_difficulty(mix) * HASHES_PER_DIFFICULTY)


@dataclass
class _Samples:
    """Per-trial ratios estimate/truth (and interval hits) of one estimator."""

    ratio: list[float] = field(default_factory=list)
    covered: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class Accuracy:
    bias: float
    bias_2se: float
    rmse: float
    coverage95: float | None


@dataclass(frozen=True)
class ScenarioResult:
    shares_per_window: float
    mix: str
    trials: int
    steady: dict[str, Accuracy]
    warmup_ratio: dict[str, float]
    warmup_coverage95: float


def _accuracy(samples: _Samples) -> Accuracy:
    ratio = np.asarray(samples.ratio)
    error = ratio - 1.0
    return Accuracy(
        bias=float(error.mean()),
        bias_2se=float(2.0 * error.std(ddof=1) / np.sqrt(ratio.size)),
        rmse=float(np.sqrt(np.mean(error**2))),
        coverage95=float(np.mean(samples.covered)) if samples.covered else None,
    )


def _window(stream: Stream, now: float, window_s: float) -> tuple[float, tuple[float, float]]:
    """ShareWindows fed the shares up to `now`: (Ĥ, interval); 0 before any share."""
    upto = np.searchsorted(stream.ts, now, side="right")
    windows = ShareWindows()
    windows.add_shares(POOL, REGION, stream.ts[:upto], stream.difficulty[:upto])
    estimate = windows.estimates(now, window_s).get((POOL, REGION))
    if estimate is None:
        return 0.0, (0.0, float("inf"))
    return estimate.hashrate_hs, estimate.ci95_hs


def _ckpool(stream: Stream, rates: np.ndarray, now: float) -> tuple[float, float]:
    """ckpool's 5-minute average at `now`: (as shown, decayed to now) in H/s."""
    upto = int(np.searchsorted(stream.ts, now, side="right"))
    if upto == 0:
        return 0.0, 0.0
    shown = float(rates[upto - 1])
    decayed = decay_time(shown, 0.0, now - float(stream.ts[upto - 1]), WINDOW_S)
    return shown * HASHES_PER_DIFFICULTY, decayed * HASHES_PER_DIFFICULTY


def evaluate_scenario(
    rng: np.random.Generator, shares_per_window: float, mix: str, trials: int
) -> ScenarioResult:
    """Run `trials` independent streams and score every estimator on them."""
    steady = {name: _Samples() for name in ("window_300", "window_600", "ckpool_300",
                                            "ckpool_300_decayed")}
    warm = {name: _Samples() for name in ("window_300", "window_300_literal", "ckpool_300",
                                          "ckpool_300_decayed")}
    for _ in range(trials):
        now = WARM_WINDOWS * WINDOW_S + float(rng.uniform(0.0, WINDOW_S))
        stream = simulate_stream(rng, shares_per_window, mix, now)
        truth = stream.truth_hs
        rates = decaying_average_series(stream.ts, stream.difficulty, WINDOW_S, 0.0)
        for name, window_s in (("window_300", WINDOW_S), ("window_600", 2.0 * WINDOW_S)):
            value, (lower, upper) = _window(stream, now, window_s)
            steady[name].ratio.append(value / truth)
            steady[name].covered.append(lower <= truth <= upper)
        shown, decayed = _ckpool(stream, rates, now)
        steady["ckpool_300"].ratio.append(shown / truth)
        steady["ckpool_300_decayed"].ratio.append(decayed / truth)

        value, (lower, upper) = _window(stream, WINDOW_S, WINDOW_S)
        warm["window_300"].ratio.append(value / truth)
        warm["window_300"].covered.append(lower <= truth <= upper)
        early = stream.ts[stream.ts <= WINDOW_S]
        literal = 0.0
        if early.size and early[0] < WINDOW_S:
            credited = stream.difficulty[: early.size].sum()
            literal = credited * HASHES_PER_DIFFICULTY / (WINDOW_S - early[0])
        warm["window_300_literal"].ratio.append(literal / truth)
        shown, decayed = _ckpool(stream, rates, WINDOW_S)
        warm["ckpool_300"].ratio.append(shown / truth)
        warm["ckpool_300_decayed"].ratio.append(decayed / truth)
    return ScenarioResult(
        shares_per_window=shares_per_window,
        mix=mix,
        trials=trials,
        steady={name: _accuracy(s) for name, s in steady.items()},
        warmup_ratio={name: float(np.mean(s.ratio)) for name, s in warm.items()},
        warmup_coverage95=float(np.mean(warm["window_300"].covered)),
    )


def _print_table(results: list[ScenarioResult]) -> None:
    print("Steady state (12 windows after start): bias ± 2 SE, RMSE, 95% interval coverage")
    print(f"{'shares/5min':>11} {'mix':>8} {'estimator':>19} {'bias':>16} {'RMSE':>7} "
          f"{'cover':>6}")
    for result in results:
        for name, acc in result.steady.items():
            cover = "" if acc.coverage95 is None else f"{acc.coverage95:6.3f}"
            print(
                f"{result.shares_per_window:>11g} {result.mix:>8} {name:>19} "
                f"{acc.bias:+8.4f} ±{acc.bias_2se:6.4f} {acc.rmse:7.4f} {cover:>6}"
            )
    print()
    print("Warm-up: mean estimate/truth one window (= one time constant) after the start")
    names = list(results[0].warmup_ratio)
    print(f"{'shares/5min':>11} {'mix':>8} " + " ".join(f"{n:>19}" for n in names)
          + f" {'cover(w300)':>11}")
    for result in results:
        cells = " ".join(f"{result.warmup_ratio[n]:>19.4f}" for n in names)
        print(f"{result.shares_per_window:>11g} {result.mix:>8} {cells} "
              f"{result.warmup_coverage95:>11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000, help="streams per scenario")
    parser.add_argument("--seed", type=int, default=20241124)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "window_accuracy.json"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    results = [
        evaluate_scenario(rng, rate, mix, args.trials)
        for mix in MIXES
        for rate in SHARES_PER_WINDOW
    ]
    _print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"seed": args.seed, "trials": args.trials, "window_s": WINDOW_S,
               "scenarios": [asdict(r) for r in results]}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
