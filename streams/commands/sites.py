"""`hashatlas sites validate FILE` and `hashatlas sites summary`: the mining-site registry.

The shipped registry is ``streams/data/sites.csv`` (sources in streams/data/README.md). The
setting ``sites_file`` (``HASHATLAS_SITES_FILE``) and ``--sites FILE`` add a registry of your own
(CSV or GeoJSON): with ``sites_mode`` ``extend`` (the default) its rows are added to the shipped
ones (a row of the same operator, site and ``as_of`` replaces the shipped row); with ``replace``
it is used instead of them. Bad rows of an added registry are listed on stderr and left out.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from streams.core import sites as core
from streams.settings import Settings

SHIPPED_SITES_FILE = Path(__file__).resolve().parents[1] / "data" / "sites.csv"
EXIT_BAD_ROWS = 1
EXIT_BAD_INPUT = 2
FORMATS = ("table", "csv", "json")


class SitesFileError(ValueError):
    """A registry file that cannot be read; the message names the file."""


def read_registry(path: Path) -> core.Registry:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SitesFileError(f"{path}: {exc}") from None
    try:
        return core.parse_registry(text, path.name)
    except core.RegistryError as exc:
        raise SitesFileError(f"{path}: {exc}") from None


@lru_cache(maxsize=1)
def shipped_sites() -> tuple[core.Site, ...]:
    """The shipped registry (every row valid: tests/unit/test_sites.py checks it)."""
    return read_registry(SHIPPED_SITES_FILE).sites


def load_sites(settings: Settings, extra: Path | None = None, mode: core.Mode | None = None,
               warn: Any = None) -> tuple[core.Site, ...]:
    """Shipped rows, then ``settings.sites_file``, then ``extra``, each combined by
    ``mode`` (default ``settings.sites_mode``). Bad rows are passed to ``warn`` and left out."""
    sites = shipped_sites()
    for path, how in ((settings.sites_file, settings.sites_mode),
                      (extra, mode or settings.sites_mode)):
        if path is None:
            continue
        registry = read_registry(Path(path))
        if warn is not None:
            for error in registry.errors:
                warn(f"{path}: {error} (row left out)")
        sites = core.combine(sites, registry.sites, how)
    return sites


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `sites` with its `validate` and `summary` actions."""
    parser = subparsers.add_parser(
        "sites", help="the registry of mining sites and their power capacity",
        description="Check a site registry, or summarise the capacity it lists.",
    )
    actions = parser.add_subparsers(dest="sites_action", required=True)

    validate = actions.add_parser(
        "validate", help="check a registry (CSV or GeoJSON); exits 1 listing each bad row",
        description="Check every row against the registry contract (ISO 3166 codes, MW >= 0, "
        "known status, date and source required). Exit 0 if all rows are good, 1 if some are "
        "bad (each listed with its row and field), 2 if the file cannot be read at all.",
    )
    validate.add_argument("file", type=Path, metavar="FILE")
    validate.set_defaults(func=run_validate)

    summary = actions.add_parser(
        "summary", help="capacity by region, country, status or operator",
        description="Energised and planned MW of each site's latest row (or its row at --at), "
        "grouped. The shipped registry is used, plus (or replaced by) HASHATLAS_SITES_FILE and "
        "--sites.",
    )
    summary.add_argument("--by", choices=core.GROUPINGS, default="region",
                         help="region = subdivision where given, else country (default)")
    summary.add_argument("--format", choices=FORMATS, default="table", dest="output_format")
    summary.add_argument("--at", type=_date, default=None, metavar="YYYY-MM-DD",
                         help="each site's state on this date (default: its latest row)")
    summary.add_argument("--sites", type=Path, default=None, metavar="FILE",
                         help="a registry of your own (CSV or GeoJSON)")
    summary.add_argument("--mode", choices=("extend", "replace"), default=None,
                         help="--sites extends or replaces the registry (default: sites_mode)")
    summary.add_argument("--network-power-gw", type=_band, default=None,
                         metavar="LOWER,BEST,UPPER",
                         help="also print mining capacity as a share of this network power band")
    summary.set_defaults(func=run_summary)


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _band(text: str) -> tuple[float, float, float]:
    try:
        lower, best, upper = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"need three numbers LOWER,BEST,UPPER: {text!r}"
                                         ) from None
    if not 0 < lower <= best <= upper:
        raise argparse.ArgumentTypeError("need 0 < LOWER <= BEST <= UPPER")
    return lower, best, upper


def run_validate(args: argparse.Namespace) -> int:
    try:
        registry = read_registry(args.file)
    except SitesFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for error in registry.errors:
        print(f"{args.file}: {error}")
    bad_rows = len({error.row for error in registry.errors})
    print(f"{args.file}: {len(registry.sites)} good row(s), {bad_rows} bad row(s)",
          file=sys.stderr)
    return EXIT_BAD_ROWS if registry.errors else 0


def summary_document(sites: Sequence[core.Site], by: core.GroupBy, at: datetime.date | None,
                     network_power_gw: tuple[float, float, float] | None) -> dict[str, Any]:
    state = core.latest(sites, at)
    rows = core.summarise(state, by)
    total = core.totals(state)
    dates = sorted(site.as_of for site in state)
    document: dict[str, Any] = {
        "by": by, "at": at.isoformat() if at else None,
        "rows_as_of": [dates[0].isoformat(), dates[-1].isoformat()] if dates else None,
        "rows": [row.as_dict() for row in rows], "total": total.as_dict(),
        "moved_to_hpc": core.moved_to_hpc([s for s in sites if at is None or s.as_of <= at]),
    }
    if network_power_gw is not None:
        mining_w = sum(s.energised for s in state if s.status in core.MINING_STATUSES) * 1e6
        low_gw, best_gw, high_gw = network_power_gw
        lower, best, upper = core.share_band(mining_w, (low_gw * 1e9, best_gw * 1e9,
                                                        high_gw * 1e9))
        document["share_of_network_power"] = {
            "mining_capacity_mw": mining_w / 1e6, "network_power_gw": list(network_power_gw),
            "share": {"lower": lower, "best": best, "upper": upper}}
    return document


def _mw(value: float) -> str:
    return f"{value:,.1f}"


def render(document: dict[str, Any], output_format: str) -> str:
    if output_format == "json":
        return json.dumps(document, indent=2) + "\n"
    rows = [*document["rows"], document["total"]]
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([document["by"], "energised_mw", "planned_mw", "sites"])
        for row in rows:
            writer.writerow([row["key"], row["energised_mw"], row["planned_mw"], row["sites"]])
        return buffer.getvalue()
    header = (document["by"], "energised MW", "planned MW", "sites")
    table = [header, *[(r["key"], _mw(r["energised_mw"]), _mw(r["planned_mw"]), str(r["sites"]))
                       for r in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    lines = []
    for n, line in enumerate(table):
        if n == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join([line[0].ljust(widths[0]),
                                *(cell.rjust(width) for cell, width in zip(line[1:], widths[1:],
                                                                           strict=True))]))
    span = document["rows_as_of"]
    if span:
        which = f"state at {document['at']}" if document["at"] else "latest row"
        lines.append(f"(each site's {which}; rows dated {span[0]} to {span[1]})")
    for move in document["moved_to_hpc"]:
        lines.append(f"moved from mining to HPC on {move['as_of']}: {_mw(move['moved_mw'])} MW "
                     f"({', '.join(move['sites'])}); cumulative {_mw(move['cumulative_mw'])} MW")
    share = document.get("share_of_network_power")
    if share:
        band = share["share"]
        lines.append(f"mining capacity {_mw(share['mining_capacity_mw'])} MW = "
                     f"{band['best']:.1%} of the network's best power estimate "
                     f"(range {band['lower']:.1%} to {band['upper']:.1%})")
    return "\n".join(lines) + "\n"


def run_summary(args: argparse.Namespace) -> int:
    from streams.settings import get_settings

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    try:
        sites = load_sites(get_settings(), args.sites, args.mode, warn)
    except SitesFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    document = summary_document(sites, args.by, args.at, args.network_power_gw)
    sys.stdout.write(render(document, args.output_format))
    return 0
