"""The two-hour, two-sampled-pool scenario the unit tests build variants of (regions, pool
mixes, extra keys), so a change of the base scenario is made once."""

from __future__ import annotations

SMALL_BASE = """
name: small
duration: 2h
step_s: 10
seed: 3
network: {hashrate_ehs: 100, noise_sigma: 0.0}
chain: {start_height: 800000, retarget: false, difficulty: 14.0e12, history_blocks: 300}
market: {btc_usd: 30000}
machines:
  - {model: S19, hashrate_ths: [95, 110], share_pct: 100}
"""


def small_scenario_yaml(regions: str, antpool_pct: int, foundry_mix: str = "",
                        viabtc_mix: str = "", extra: str = "") -> str:
    """Foundry USA (25 %, sampled, a share per 10 s) and ViaBTC (15 %, sampled, per 5 s), with
    optional `mix: {...}` entries, and AntPool (`antpool_pct`, not sampled)."""
    foundry = f", mix: {foundry_mix}" if foundry_mix else ""
    viabtc = f", mix: {viabtc_mix}" if viabtc_mix else ""
    return (f"{SMALL_BASE}regions: {regions}\npools:\n"
            f"  - {{name: Foundry USA, network_share_pct: 25, sampled: true, "
            f"share_interval: 10s{foundry}}}\n"
            f"  - {{name: ViaBTC, network_share_pct: 15, sampled: true, "
            f"share_interval: 5s{viabtc}}}\n"
            f"  - {{name: AntPool, network_share_pct: {antpool_pct}}}\n{extra}")
