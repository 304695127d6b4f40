"""`hashatlas cbeci --coinmetrics FILE.csv`: the daily CBECI power band from Coin Metrics data.

Reproduces CCAF's daily series offline (same inputs, same rules, see `streams.core.electricity`),
so the live estimates can be checked against a published history. Reads Coin Metrics' daily CSV
(`time`, `HashRate` in TH/s, `IssTotUSD`, `FeeTotUSD`; other columns ignored) and writes
`date,power_gw_lower,power_gw_best,power_gw_upper,twh_lower,twh_best,twh_upper`.

`--hardware` takes the project's table or CCAF's own `miners.csv` unchanged; with the latter and
`--method 1.2.0`, CCAF's published lower and upper bounds are reproduced (see README).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from streams.core.electricity import (
    METHODS,
    REFERENCE_PRICE_USD_KWH,
    CbeciSeries,
    cbeci_daily,
    load_hardware,
)

DEFAULT_HARDWARE_FILE = Path(__file__).resolve().parents[1] / "data" / "hardware.csv"
EXIT_BAD_INPUT = 2
EXIT_CANNOT_WRITE = 1
REQUIRED_COLUMNS = ("time", "HashRate", "IssTotUSD", "FeeTotUSD")
OUTPUT_COLUMNS = (
    "date",
    "power_gw_lower",
    "power_gw_best",
    "power_gw_upper",
    "twh_lower",
    "twh_best",
    "twh_upper",
)
PROGRESS_EVERY_ROWS = 1000


class CoinMetricsError(ValueError):
    """A Coin Metrics file that cannot be used; the message names the column and line."""


@dataclass(frozen=True)
class CoinMetricsDaily:
    dates: npt.NDArray[np.datetime64]
    hashrate_ths: npt.NDArray[np.float64]
    revenue_usd_day: npt.NDArray[np.float64]
    skipped_lines: tuple[int, ...]  # rows with an empty required value (days before USD prices)


class _Progress:
    """One self-overwriting status line, only for a person watching a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._enabled = stream.isatty()

    def show(self, message: str) -> None:
        if self._enabled:
            self._stream.write("\r\x1b[K" + message)
            self._stream.flush()

    def finish(self) -> None:
        if self._enabled:
            self._stream.write("\n")
            self._stream.flush()


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `cbeci`."""
    cbeci = subparsers.add_parser(
        "cbeci",
        help="daily electricity band (CBECI method) from a Coin Metrics CSV",
        description="Compute the daily lower/best/upper power (GW) and annualised energy (TWh) "
        "of Bitcoin mining from Coin Metrics daily data. A gap in the dates restarts the "
        "rolling windows. Bad input exits with status 2.",
    )
    cbeci.add_argument(
        "--coinmetrics",
        type=Path,
        required=True,
        metavar="FILE.csv",
        help="Coin Metrics daily CSV with time, HashRate (TH/s), IssTotUSD and FeeTotUSD",
    )
    cbeci.add_argument(
        "--hardware",
        type=Path,
        default=DEFAULT_HARDWARE_FILE,
        metavar="FILE.csv",
        help="machine list: the project's model,released_unix,efficiency_j_gh,source table "
        "(default: the shipped one) or CCAF's miners.csv as published "
        "(Miner_name,UNIX_date_of_release,Efficiency_J_Gh,Qty); told apart by the header",
    )
    cbeci.add_argument(
        "--price",
        type=_positive_float,
        default=REFERENCE_PRICE_USD_KWH,
        metavar="USD_PER_KWH",
        help=f"electricity price (default {REFERENCE_PRICE_USD_KWH})",
    )
    cbeci.add_argument(
        "--method",
        choices=METHODS,
        default=METHODS[0],
        help="CCAF method version: 1.4.0 weights the best guess by machine age, 1.2.0 does not",
    )
    cbeci.add_argument(
        "--out", type=Path, metavar="FILE", help="write the CSV here instead of stdout"
    )
    cbeci.set_defaults(func=run_cbeci)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def parse_coinmetrics_daily(handle: TextIO, progress: _Progress | None = None) -> CoinMetricsDaily:
    """Read the columns CBECI needs; rows with an empty required value are skipped and listed."""
    reader = csv.DictReader(handle)
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CoinMetricsError(f"line 1: missing column(s) {', '.join(missing)}")
    dates: list[np.datetime64] = []
    hashrates: list[float] = []
    revenues: list[float] = []
    skipped: list[int] = []
    for row in reader:
        line = reader.line_num
        if progress is not None and line % PROGRESS_EVERY_ROWS == 0:
            progress.show(f"cbeci: reading line {line}")
        if any(not (row.get(c) or "").strip() for c in REQUIRED_COLUMNS):
            skipped.append(line)
            continue
        day = _parse_day(row["time"], line)
        if dates and day <= dates[-1]:
            raise CoinMetricsError(
                f"line {line}: column time: {row['time']!r} is not after the previous row's date"
            )
        hashrate = _parse_number(row, "HashRate", line)
        if hashrate <= 0:
            raise CoinMetricsError(f"line {line}: column HashRate: must be > 0")
        issuance = _parse_number(row, "IssTotUSD", line)
        fees = _parse_number(row, "FeeTotUSD", line)
        for column, value in (("IssTotUSD", issuance), ("FeeTotUSD", fees)):
            if value < 0:
                raise CoinMetricsError(f"line {line}: column {column}: must be >= 0")
        dates.append(day)
        hashrates.append(hashrate)
        revenues.append(issuance + fees)
    if not dates:
        raise CoinMetricsError("no row with all of " + ", ".join(REQUIRED_COLUMNS))
    return CoinMetricsDaily(
        dates=np.array(dates, dtype="datetime64[D]"),
        hashrate_ths=np.array(hashrates),
        revenue_usd_day=np.array(revenues),
        skipped_lines=tuple(skipped),
    )


def _parse_day(text: str, line: int) -> np.datetime64:
    """Coin Metrics writes `2019-04-20` (older exports `2019-04-20T00:00:00.000000000Z`)."""
    stripped = text.strip()
    try:
        day = datetime.date.fromisoformat(stripped[:10])
    except ValueError:
        day = None
    time_part = stripped[10:]
    if day is None or (time_part and not time_part.startswith("T00:00:00")):
        raise CoinMetricsError(f"line {line}: column time: not a date: {text!r}")
    return np.datetime64(day, "D")


def _parse_number(row: dict[str, str], column: str, line: int) -> float:
    text = row[column]
    try:
        value = float(text)
    except ValueError:
        raise CoinMetricsError(f"line {line}: column {column}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise CoinMetricsError(f"line {line}: column {column}: not finite: {text!r}")
    return value


def _format(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ""


def write_series(series: CbeciSeries, out: TextIO, progress: _Progress | None = None) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(OUTPUT_COLUMNS)
    columns = (
        series.power_gw_lower,
        series.power_gw_best,
        series.power_gw_upper,
        series.twh_lower,
        series.twh_best,
        series.twh_upper,
    )
    for i, day in enumerate(series.dates):
        if progress is not None and i % PROGRESS_EVERY_ROWS == 0:
            progress.show(f"cbeci: writing row {i + 1} of {series.dates.size}")
        writer.writerow([str(day), *(_format(column[i]) for column in columns)])


def run_cbeci(args: argparse.Namespace) -> int:
    progress = _Progress(sys.stderr)
    try:
        hardware = load_hardware(args.hardware)
    except (OSError, ValueError) as exc:
        print(f"error: cannot use hardware table {args.hardware}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        with open(args.coinmetrics, encoding="utf-8", newline="") as handle:
            data = parse_coinmetrics_daily(handle, progress)
    except (OSError, UnicodeDecodeError, CoinMetricsError) as exc:
        progress.finish()
        print(f"error: {args.coinmetrics}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if data.skipped_lines:
        progress.finish()
        print(
            f"warning: {args.coinmetrics}: skipped {len(data.skipped_lines)} row(s) with an empty "
            f"{'/'.join(REQUIRED_COLUMNS)} value (first: line {data.skipped_lines[0]}); "
            "the rolling windows restart after each gap",
            file=sys.stderr,
        )
    progress.show(f"cbeci: computing {data.dates.size} days")
    series = cbeci_daily(
        data.dates,
        data.hashrate_ths,
        data.revenue_usd_day,
        hardware,
        price_usd_kwh=args.price,
        method=args.method,
    )
    try:
        if args.out is None:
            write_series(series, sys.stdout, progress)
        else:
            with open(args.out, "w", encoding="utf-8", newline="") as out:
                write_series(series, out, progress)
    except OSError as exc:
        progress.finish()
        print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_WRITE
    progress.show(f"cbeci: wrote {series.dates.size} days")
    progress.finish()
    return 0
