"""Bounds that do not vanish where the sample sees little or nothing of a region.

A region no sampled pool sees has sample share 0, and every variance of
``streams.core.network_shares`` is 0 there (τ² = κ·s(1 − s) at s = 0), yet the unsampled pools
(1 − ĉ of the network) may mine in it. The honest question is which network shares s are
consistent with seeing 0: with pools' mixes spread like the listed regions show
(``PooledHeterogeneity``: variance κ̂·s(1 − s) per pool), the network's share differs from the
sample's by Var = scale·s(1 − s), and {s : s² ≤ 1.96²·scale·s(1 − s)} is [0, a/(1 + a)],
a = 1.96²·scale (the upper end of a Wilson-type score interval at 0): wide when the pools
observed mine in few regions each (κ̂ near 1) and much of the network is unsampled, narrow when
the sampled pools mix alike.

Seeing some of a region at the sampled pools makes a large share at the unsampled ones no less
likely (under exchangeable pools, more likely), so no listed region's upper bound is below that
bound: a region seen at a tiny share never gets a tighter interval than one not seen at all.

The reference list of known mining regions (``streams/data/mining_regions.csv``) says which
regions to list when unseen; any one of them may hold the whole bound, so bounds do not add up.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace

from streams.core.network_shares import PooledHeterogeneity, ShareUncertainty
from streams.core.regions import Z95, RegionShare


def unobserved_bound(scale: float, z: float = Z95) -> float:
    """The largest network share s with s² ≤ z²·scale·s(1 − s): a/(1 + a), a = z²·scale."""
    a = z * z * max(scale, 0.0)
    return a / (1.0 + a)


def _floored(entry: RegionShare, bound: float) -> RegionShare:
    """The entry with its upper end raised to ``bound`` where it is lower; ``share_se`` grows
    to (upper − share)/1.96 so that the regional hashrate carries the same width."""
    if entry.share_ci95[1] >= bound:
        return entry
    return replace(entry, share_ci95=(entry.share_ci95[0], bound),
                   share_se=max(entry.share_se, (bound - entry.share) / Z95),
                   interval_basis="unobserved_bound")


def _unobserved(code: str, upper: float) -> tuple[RegionShare, ShareUncertainty]:
    entry = RegionShare(region=code, share=0.0, share_ci95=(0.0, upper),
                        sample_hashrate_hs=0.0, sample_se_hs=0.0, share_se=upper / Z95,
                        sampling_ci95=(0.0, 0.0), sampling_se=0.0, observed=False,
                        interval_basis="unobserved_bound")
    return entry, ShareUncertainty(sampling=0.0, pool_weights=0.0,
                                   heterogeneity=upper / Z95, clustering=0.0)


def bounded_shares(
    shares: Mapping[str, RegionShare], parts: Mapping[str, ShareUncertainty],
    pooled: PooledHeterogeneity, known: Collection[str],
) -> tuple[dict[str, RegionShare], dict[str, ShareUncertainty]]:
    """Listed regions with their upper ends raised to the unobserved bound where lower, plus
    every ``known`` region the sample does not list (share 0, ``observed`` False, [0, bound]).
    Nothing is added when the sample lists no region at all: no pools, no spread to go by."""
    bound = unobserved_bound(pooled.scale)
    out = {code: _floored(entry, bound) for code, entry in shares.items()}
    out_parts = dict(parts)
    if not shares:
        return out, out_parts
    for code in known:
        if code not in out:
            out[code], out_parts[code] = _unobserved(code, bound)
    return out, out_parts
