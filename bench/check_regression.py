"""Compare new benchmark figures with a baseline; exit non-zero when one regresses.

Direction-aware: rates and ratios are better higher, latencies and memory better lower. A
figure regresses when it is worse than the baseline by more than the tolerance (relative;
default 15%, per figure with --tolerance-for KEY=FRACTION). A figure the baseline has and the
new file lacks counts as a regression too. The baseline defaults to the committed file
(`git show HEAD:bench/results/latest.json`); a quick run is never compared with a full one.

    .venv/bin/python -m bench.check_regression [NEW] [--baseline FILE] [--tolerance 0.15]
        [--tolerance-for freshness_p99_s_at_10k=0.3] [--require-baseline]

Exit codes: 0 no regression (or no baseline, unless --require-baseline), 1 regression,
2 nothing comparable (no baseline with --require-baseline, or quick vs full).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LATEST = PROJECT_ROOT / "bench" / "results" / "latest.json"
COMMITTED = "bench/results/latest.json"

HIGHER_SUFFIXES = ("_per_s", "_rps", "_to_ceiling", "_to_naive", "_to_bare", "_speedup")
LOWER_SUFFIXES = ("_ms", "_mb", "_s")


def direction(key: str) -> str | None:
    """'higher' or 'lower' is better, from the figure's unit; None when it cannot tell."""
    bare = key.split("_at_")[0].replace("_1m_workers", "")
    if bare.endswith(HIGHER_SUFFIXES) or "_per_s_" in key:
        return "higher"
    if bare.endswith(LOWER_SUFFIXES):
        return "lower"
    return None


def committed_baseline() -> dict[str, Any] | None:
    done = subprocess.run(["git", "show", f"HEAD:{COMMITTED}"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    body: dict[str, Any] = json.loads(done.stdout)
    return body


def compare(new: dict[str, Any], baseline: dict[str, Any], tolerance: float,
            per_key: dict[str, float]) -> list[dict[str, Any]]:
    """One row per baseline figure: values, relative change and the verdict."""
    rows = []
    for key, base in baseline.items():
        if key == "setup" or not isinstance(base, int | float) or isinstance(base, bool):
            continue
        better = direction(key)
        value = new.get(key)
        row: dict[str, Any] = {"figure": key, "baseline": base, "new": value,
                               "better": better or "?", "change": None}
        if not isinstance(value, int | float):
            row["verdict"] = "MISSING"
            rows.append(row)
            continue
        allowed = per_key.get(key, tolerance)
        change = (value - base) / abs(base) if base else 0.0
        row["change"] = change
        if better == "higher":
            worse = value < base * (1.0 - allowed) if base > 0 else value < base
        elif better == "lower":
            worse = value > base * (1.0 + allowed) if base > 0 else value > base
        else:
            worse = False
        row["verdict"] = "REGRESSED" if worse else "ok"
        rows.append(row)
    return rows


def parse_tolerances(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or not value:
            raise SystemExit(f"--tolerance-for expects KEY=FRACTION, got {item!r}")
        out[key] = float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("new", nargs="?", type=Path, default=LATEST)
    parser.add_argument("--baseline", type=Path, default=None,
                        help=f"default: git show HEAD:{COMMITTED}")
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--tolerance-for", action="append", default=[], metavar="KEY=FRACTION")
    parser.add_argument("--require-baseline", action="store_true")
    args = parser.parse_args(argv)

    new = json.loads(args.new.read_text())
    if args.baseline is not None:
        baseline: dict[str, Any] | None = json.loads(args.baseline.read_text())
        source = str(args.baseline)
    else:
        baseline = committed_baseline()
        source = f"HEAD:{COMMITTED}"
    if baseline is None:
        print(f"no baseline ({source} not found): nothing to compare")
        return 2 if args.require_baseline else 0
    quick_new = bool(new.get("setup", {}).get("quick"))
    quick_base = bool(baseline.get("setup", {}).get("quick"))
    if quick_new != quick_base:
        print(f"not comparable: the new run is {'quick' if quick_new else 'full'}, the baseline "
              f"{'quick' if quick_base else 'full'}")
        return 2

    rows = compare(new, baseline, args.tolerance, parse_tolerances(args.tolerance_for))
    width = max((len(r["figure"]) for r in rows), default=10)
    print(f"baseline: {source}  (tolerance {args.tolerance:.0%} unless set per figure)")
    print(f"{'figure':<{width}}  {'baseline':>14}  {'new':>14}  {'change':>8}  better  verdict")
    for r in rows:
        change = "" if r["change"] is None else f"{100 * r['change']:+.1f}%"
        new_text = "-" if r["new"] is None else f"{r['new']:,.3f}"
        print(f"{r['figure']:<{width}}  {r['baseline']:>14,.3f}  {new_text:>14}  {change:>8}  "
              f"{r['better']:<6}  {r['verdict']}")
    bad = [r["figure"] for r in rows if r["verdict"] != "ok"]
    if bad:
        print(f"\nregressed: {', '.join(bad)}")
        return 1
    print("\nno regression")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
