"""bench/network_coverage.py scores what the worker serves, and its standard error is per world."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.network_coverage import Calibration, collect, interval, score, served_matches
from streams.sim.scenario import parse_scenario
from tests.small_scenarios import small_scenario_yaml

SMALL = small_scenario_yaml('{US: 50, KZ: 50}', antpool_pct=60)


def test_recomputed_intervals_are_the_served_ones() -> None:
    cases = collect(parse_scenario(SMALL), worlds=2, seed=5, verify_worlds=2)
    assert len(cases) == 8  # 2 worlds × 4 checks
    assert served_matches(cases) == 8
    assert all(np.isfinite(c.truth_hs) and c.truth_hs > 0 for c in cases)
    # a case served under another calibration is caught
    other = interval(cases[0], Calibration(memory_blocks=60.0))
    assert other is not None and other != cases[0].served_ci95_hs
    with pytest.raises(SystemExit):
        served_matches([replace(cases[0], served_ci95_hs=other)])


def test_score_counts_checks_and_resamples_whole_worlds() -> None:
    cases = collect(parse_scenario(SMALL), worlds=3, seed=6, verify_worlds=0)
    result = score(cases, Calibration(), boot=500)
    assert result["worlds"] == 3 and result["checks"] == 12
    # one world's truth moved far outside its intervals: it misses all 4 of its checks, and
    # resampling whole worlds gives the spread of a 3-world mean of 1, 1 and 0 (of their hits)
    far = [replace(c, truth_hs=c.truth_hs * 10) if c.world == 0 else c for c in cases]
    held = score([c for c in cases if c.world > 0], Calibration())
    assert held["coverage"] == 1.0  # the two other worlds hold the truth at every check here
    moved = score(far, Calibration(), boot=4000)
    assert moved["coverage"] == pytest.approx(8 / 12)
    assert moved["coverage_se"] == pytest.approx(np.sqrt(2 / 9 / 3), abs=0.02)
