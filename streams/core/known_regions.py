"""The reference list of regions known to mine bitcoin (``streams/data/mining_regions.csv``).

The snapshot lists these countries even when no sampled share comes from them, flagged as not
observed and with a bound on their network share (``streams.core.unobserved_regions``). Each
row names a public source and the date it describes; ``share_pct`` is the share that source
gave (empty when it named the country without a figure). The figures are kept for the reader;
the estimate does not use them (they are years old and shares move).

Pure: parses text given to it; every bad row is reported with its line and field.
"""

from __future__ import annotations

import csv
import datetime
import io
from dataclasses import dataclass

from streams.core.regions import is_subdivision, normalise_region

COLUMNS = ("region", "as_of", "share_pct", "source", "note")


@dataclass(frozen=True)
class KnownRegion:
    """One country of the reference list, with what its source said and when."""

    region: str
    as_of: datetime.date
    share_pct: float | None
    source: str
    note: str


def _row(line: int, row: dict[str, str]) -> KnownRegion:
    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"mining regions, line {line}, field {field}: {why}")

    try:
        region = normalise_region(row.get("region") or "")
    except ValueError as error:
        raise bad("region", str(error)) from None
    if is_subdivision(region):
        raise bad("region", f"{region} is a subdivision; the list holds countries")
    try:
        as_of = datetime.date.fromisoformat((row.get("as_of") or "").strip())
    except ValueError:
        raise bad("as_of", "needs a date YYYY-MM-DD") from None
    raw_share = (row.get("share_pct") or "").strip()
    try:
        share = float(raw_share) if raw_share else None
    except ValueError:
        raise bad("share_pct", f"{raw_share!r} is not a number") from None
    if share is not None and not 0.0 <= share <= 100.0:
        raise bad("share_pct", f"{share} is outside 0..100")
    source = (row.get("source") or "").strip()
    if not source:
        raise bad("source", "every row needs a source")
    return KnownRegion(region, as_of, share, source, (row.get("note") or "").strip())


def parse_known_regions(text: str) -> list[KnownRegion]:
    """The rows of a reference list in CSV (columns ``COLUMNS``); one row per country."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"mining regions: missing columns {', '.join(missing)}")
    rows = [_row(line, row) for line, row in enumerate(reader, start=2)]
    seen: set[str] = set()
    for row in rows:
        if row.region in seen:
            raise ValueError(f"mining regions: {row.region} is listed twice")
        seen.add(row.region)
    return rows
