"""How concentrated each (pool, region)'s hashrate is in mining accounts, from proxies' batches.

A proxy may report, per batch, ``account_difficulty_sq_sum`` A = Σ over accounts of (Σd of the
account's shares)², beside Σd = D and Σd² = Q. If shares fall to accounts in proportion to
their hashrate (π_a), E[A] = Q + (D² − Q)·Σπ_a², so (A − Q)/(D² − Q) is an unbiased estimate of
the accounts' concentration HHI = Σπ_a² in that batch, free of the Poisson noise of small counts.
Batches are combined weighted by their work D over the last ``window_s`` of event time. Nothing
here identifies an account: only sums arrive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]
#: One (pool, region)'s sums: Σ D·HHI and Σ D of batches with a usable report, Σ D without.
ConcentrationRow = tuple[float, float, float]


def batch_concentration(difficulty_sum: float, difficulty_sq_sum: float,
                        account_sq_sum: float) -> float | None:
    """HHI of the accounts behind one batch, or None when it says nothing (fewer than 2 shares'
    worth of spread: D² = Q)."""
    spread = difficulty_sum * difficulty_sum - difficulty_sq_sum
    if not spread > 1e-12 * difficulty_sum * difficulty_sum:
        return None
    return min(1.0, max(0.0, (account_sq_sum - difficulty_sq_sum) / spread))


def pair_concentration(row: ConcentrationRow, default: float) -> float:
    """The work-weighted HHI of a (pool, region); unreported work counts at ``default``."""
    weighted, reported, unreported = row
    work = reported + unreported
    if work <= 0.0:
        return default
    return (weighted + default * unreported) / work


@dataclass
class AccountConcentration:
    """Per (pool, region), per ``bucket_s`` of event time, the sums of ``ConcentrationRow``."""

    bucket_s: float = 60.0
    window_s: float = 3600.0
    cells: dict[Key, dict[int, list[float]]] = field(default_factory=dict)

    def add(self, key: Key, end: float, difficulty_sum: float, difficulty_sq_sum: float,
            account_sq_sum: float | None) -> None:
        if difficulty_sum <= 0.0:
            return
        cell = self.cells.setdefault(key, {}).setdefault(
            math.floor(end / self.bucket_s), [0.0, 0.0, 0.0])
        if account_sq_sum is None:
            cell[2] += difficulty_sum
            return
        hhi = batch_concentration(difficulty_sum, difficulty_sq_sum, account_sq_sum)
        if hhi is not None:
            cell[0] += difficulty_sum * hhi
            cell[1] += difficulty_sum

    def expire(self, now: float) -> None:
        first = math.floor((now - self.window_s) / self.bucket_s)
        for key in list(self.cells):
            buckets = self.cells[key]
            for bucket in [b for b in buckets if b < first]:
                del buckets[bucket]
            if not buckets:
                del self.cells[key]

    def rows(self, now: float) -> list[list[Any]]:
        """[pool, region, Σ D·HHI, Σ D reported, Σ D unreported] over the window to ``now``."""
        first = math.floor((now - self.window_s) / self.bucket_s)
        last = math.floor(now / self.bucket_s)
        out = []
        for (pool, region), buckets in self.cells.items():
            weighted = reported = unreported = 0.0
            for bucket, cell in buckets.items():
                if first <= bucket <= last:
                    weighted += cell[0]
                    reported += cell[1]
                    unreported += cell[2]
            if reported + unreported > 0.0:
                out.append([pool, region, weighted, reported, unreported])
        return out

    def to_state(self) -> list[list[Any]]:
        return [[pool, region, [[b, *cell] for b, cell in buckets.items()]]
                for (pool, region), buckets in self.cells.items()]

    @classmethod
    def from_state(cls, state: list[list[Any]] | None) -> AccountConcentration:
        tracker = cls()
        for pool, region, buckets in state or []:
            tracker.cells[(str(pool), str(region))] = {
                int(b[0]): [float(x) for x in b[1:]] for b in buckets}
        return tracker
