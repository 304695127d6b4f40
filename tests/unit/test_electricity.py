"""Electricity estimate (CBECI method) and hashprice, checked against CCAF's published series and
hand-computed cases."""

from __future__ import annotations

import argparse
import calendar
import csv
import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from streams.commands import cbeci as cbeci_command
from streams.core.electricity import (
    HardwareTable,
    Machine,
    annualized_twh,
    cbeci_daily,
    hashprice_usd_ph_day,
    load_electricity_price_table,
    load_electricity_prices,
    load_hardware,
    parse_electricity_price_table,
    parse_electricity_prices,
    parse_hardware_csv,
    power_band_w,
    profitability_threshold_j_gh,
    regional_power_bands,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_HARDWARE = PROJECT_ROOT / "streams" / "data" / "hardware.csv"
SHIPPED_PRICES = PROJECT_ROOT / "streams" / "data" / "electricity_prices.yaml"
CCAF_SOURCE = "CCAF ccaf_cbeci_api server_config/miners.csv"

# Bounds measured with the shipped table and the Coin Metrics file in tests/data, method 1.2.0.
BOUNDS_MAX_REL_ERROR_2019 = 1e-6  # measured 5.99e-7
UPPER_MAX_REL_ERROR_2018 = 2e-6  # measured 1.58e-6
BEST_REL_ERROR_RANGE_2019 = (-0.115, -0.035)  # measured -0.1109 … -0.0385 (CCAF's list is larger)
# Issue #12: CCAF's own miners.csv, as published, through the command: measured 5.99e-7.
CCAF_MINERS_BOUNDS_MAX_REL_ERROR = 1e-4


def unix(year: int, month: int, day: int) -> float:
    return float(calendar.timegm(datetime.date(year, month, day).timetuple()))


# ------------------------------------------------------------------------------------------
# Real data
# ------------------------------------------------------------------------------------------


def read_columns(path: Path) -> dict[str, list[str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [row[key] for row in rows] for key in rows[0]}


@pytest.fixture(scope="module")
def coinmetrics(test_data: Path) -> dict[str, list[str]]:
    return read_columns(test_data / "cbeci" / "coinmetrics_btc_daily.csv")


@pytest.fixture(scope="module")
def published(test_data: Path) -> dict[str, npt.NDArray[np.float64]]:
    columns = read_columns(test_data / "cbeci" / "ccaf_published_daily.csv")
    result = {k: np.array(v, dtype=float) for k, v in columns.items() if k != "date"}
    result["date"] = np.array(columns["date"], dtype="datetime64[D]")
    return result


@pytest.fixture(scope="module")
def hardware() -> HardwareTable:
    return load_hardware(SHIPPED_HARDWARE)


def float_column(columns: dict[str, list[str]], name: str) -> npt.NDArray[np.float64]:
    return np.array(columns[name], dtype=float)


def test_coinmetrics_hashrate_identity(coinmetrics: dict[str, list[str]]) -> None:
    """HashRate = BlkCnt · DiffMean · 2³² / 86400 / 10¹² TH/s: the hashrate CBECI uses is the
    implied work rate of the day's blocks."""
    hashrate = float_column(coinmetrics, "HashRate")
    implied = (
        float_column(coinmetrics, "BlkCnt")
        * float_column(coinmetrics, "DiffMean")
        * 2**32
        / 86400
        / 1e12
    )
    np.testing.assert_allclose(implied, hashrate, rtol=1e-12)


def test_shipped_table_holds_ccaf_list_unchanged(
    test_data: Path, hardware: HardwareTable
) -> None:
    columns = read_columns(test_data / "cbeci" / "miners.csv")
    ccaf = [i for i, source in enumerate(hardware.sources) if source == CCAF_SOURCE]
    assert [hardware.models[i] for i in ccaf] == columns["Miner_name"]
    np.testing.assert_array_equal(
        hardware.released_unix[ccaf], np.array(columns["UNIX_date_of_release"], dtype=float)
    )
    np.testing.assert_array_equal(
        hardware.efficiency_j_gh[ccaf], np.array(columns["Efficiency_J_Gh"], dtype=float)
    )


def test_shipped_table_converts_newer_machines(test_data: Path, hardware: HardwareTable) -> None:
    columns = read_columns(test_data / "asic_efficiency.csv")
    by_source = {
        (hardware.sources[i], hardware.models[i]): i
        for i in range(len(hardware))
        if hardware.sources[i] != CCAF_SOURCE
    }
    assert len(by_source) == len(columns["model"])
    for maker, model, month, j_th, source in zip(
        columns["manufacturer"],
        columns["model"],
        columns["released"],
        columns["efficiency_j_th"],
        columns["source"],
        strict=True,
    ):
        i = by_source[(source, f"{maker} {model}")]
        year, mon = (int(part) for part in month.split("-"))
        assert hardware.released_unix[i] == unix(year, mon, 1)
        assert hardware.efficiency_j_gh[i] == pytest.approx(float(j_th) / 1000, rel=1e-12)


def reproduce(
    coinmetrics: dict[str, list[str]], hardware: HardwareTable
) -> dict[str, npt.NDArray[np.float64]]:
    series = cbeci_daily(
        np.array(coinmetrics["time"], dtype="datetime64[D]"),
        float_column(coinmetrics, "HashRate"),
        float_column(coinmetrics, "IssTotUSD") + float_column(coinmetrics, "FeeTotUSD"),
        hardware,
        price_usd_kwh=0.05,
        method="1.2.0",
    )
    return {
        "power_gw_lower": series.power_gw_lower,
        "power_gw_best": series.power_gw_best,
        "power_gw_upper": series.power_gw_upper,
        "twh_lower": series.twh_lower,
        "twh_best": series.twh_best,
        "twh_upper": series.twh_upper,
    }


def test_reproduces_ccaf_published_daily_series(
    coinmetrics: dict[str, list[str]],
    published: dict[str, npt.NDArray[np.float64]],
    hardware: HardwareTable,
) -> None:
    """Lower and upper to < 1e-6 from 2019-04-26 (the first day whose 7-day window lies inside our
    data), upper from 2018-01-23 (before then CCAF's list had a 2.0 J/GH entry the public one
    lacks); the best guess is 3.9–11.1% low because CCAF's private list had extra rows."""
    ours = reproduce(coinmetrics, hardware)
    dates = published["date"]
    assert np.array_equal(dates, np.array(coinmetrics["time"], dtype="datetime64[D]"))
    from_2019 = dates >= np.datetime64("2019-04-26")
    early_2018 = (dates >= np.datetime64("2018-01-23")) & (dates <= np.datetime64("2018-03-31"))
    assert from_2019.sum() == 128 and early_2018.sum() == 68

    for column in ("power_gw_lower", "power_gw_upper", "twh_lower", "twh_upper"):
        relative = ours[column][from_2019] / published[column][from_2019] - 1
        assert np.max(np.abs(relative)) < BOUNDS_MAX_REL_ERROR_2019, column
    for column in ("power_gw_upper", "twh_upper"):
        relative = ours[column][early_2018] / published[column][early_2018] - 1
        assert np.max(np.abs(relative)) < UPPER_MAX_REL_ERROR_2018, column
    low, high = BEST_REL_ERROR_RANGE_2019
    for column in ("power_gw_best", "twh_best"):
        relative = ours[column][from_2019] / published[column][from_2019] - 1
        assert low < relative.min() and relative.max() < high, column


def test_windows_restart_after_a_gap(
    coinmetrics: dict[str, list[str]],
    published: dict[str, npt.NDArray[np.float64]],
    hardware: HardwareTable,
) -> None:
    """Why a gap must restart the windows: move the 2018 days to just before 2019-04-20, so that
    the 14-day threshold window reaches into early-2018 prices, and the upper bound of late April
    2019 admits machines CCAF did not count."""
    dates = np.array(coinmetrics["time"], dtype="datetime64[D]")
    first_2019 = int(np.argmax(dates >= np.datetime64("2019-01-01")))
    no_gap = dates.copy()
    no_gap[:first_2019] = dates[first_2019] - np.arange(first_2019, 0, -1)
    series = cbeci_daily(
        no_gap,
        float_column(coinmetrics, "HashRate"),
        float_column(coinmetrics, "IssTotUSD") + float_column(coinmetrics, "FeeTotUSD"),
        hardware,
        method="1.2.0",
    )
    window = (dates >= np.datetime64("2019-04-26")) & (dates <= np.datetime64("2019-05-03"))
    relative = series.power_gw_upper[window] / published["power_gw_upper"][window] - 1
    assert np.max(np.abs(relative)) > 0.1


# ------------------------------------------------------------------------------------------
# Hand-computed cases
# ------------------------------------------------------------------------------------------

DAY = unix(2023, 6, 15)


def hand_table() -> HardwareTable:
    """On 2023-06-15 with θ = 0.05 J/GH, A–D are eligible; weights (1.4.0) by calendar months
    since release + 2: A −1 → 0, B 15 → year 1 → 0.8, C 37 → year 3 → 0.4, D 51 → year 4 → 0.2."""
    return HardwareTable.from_machines(
        [
            Machine("A", unix(2023, 5, 1), 0.020, "hand"),
            Machine("B", unix(2022, 1, 10), 0.030, "hand"),
            Machine("C", unix(2020, 3, 1), 0.040, "hand"),
            Machine("D", unix(2019, 1, 1), 0.045, "hand"),  # 1825 days end 2023-12-31
            Machine("E", unix(2018, 1, 1), 0.025, "hand"),  # 1825 days ended 2022-12-31
            Machine("F", unix(2023, 1, 1), 0.060, "hand"),  # above θ
            Machine("G", unix(2023, 7, 1), 0.010, "hand"),  # not yet released
        ]
    )


def test_threshold_formula() -> None:
    # R = 6e6 USD/day, H = 1e8 TH/s, p = 0.05: (6e6 / 8.64e12) / (0.05 / 3.6e6) / 1000 = 0.05
    assert profitability_threshold_j_gh(6e6, 1e8, 0.05) == pytest.approx(0.05, rel=1e-12)
    both = profitability_threshold_j_gh(np.array([6e6, 12e6]), np.array([1e8, 1e8]), 0.1)
    np.testing.assert_allclose(both, [0.025, 0.05], rtol=1e-12)


def test_weighted_best_guess_method_1_4_0() -> None:
    band = power_band_w(1e20, 0.05, hand_table(), DAY, "1.4.0")
    gigahashes = 1e11
    # best: (0.8·0.030 + 0.4·0.040 + 0.2·0.045) / (0.8 + 0.4 + 0.2) = 0.049 / 1.4 = 0.035
    assert band.best_w == pytest.approx(0.035 * gigahashes * 1.10, rel=1e-12)
    assert band.lower_w == pytest.approx(0.020 * gigahashes * 1.01, rel=1e-12)
    assert band.upper_w == pytest.approx(0.045 * gigahashes * 1.20, rel=1e-12)


def test_unweighted_best_guess_method_1_2_0() -> None:
    band = power_band_w(1e20, 0.05, hand_table(), DAY, "1.2.0")
    # (0.020 + 0.030 + 0.040 + 0.045) / 4 = 0.03375
    assert band.best_w == pytest.approx(0.03375 * 1e11 * 1.10, rel=1e-12)


def test_weighted_best_guess_falls_back_to_plain_mean_when_all_weights_are_zero() -> None:
    """On 2023-05-15 at θ = 0.025 only A (released 2023-05-01, not yet deployed) is eligible."""
    band = power_band_w(1e20, 0.025, hand_table(), unix(2023, 5, 15), "1.4.0")
    assert band.best_w == pytest.approx(0.020 * 1e11 * 1.10, rel=1e-12)
    assert band.upper_w == pytest.approx(0.020 * 1e11 * 1.20, rel=1e-12)


def test_daily_series_with_constant_inputs_matches_hand_values() -> None:
    """θ = 0.05 every day of June 2023 (R = 0.06·H), so smoothing changes nothing."""
    dates = np.arange(np.datetime64("2023-06-10"), np.datetime64("2023-06-21"))
    hashrate = np.full(dates.size, 1e8)
    series = cbeci_daily(dates, hashrate, 0.06 * hashrate, hand_table())
    np.testing.assert_allclose(series.power_gw_lower, 0.020 * 100 * 1.01, rtol=1e-12)
    np.testing.assert_allclose(series.power_gw_best, 0.035 * 100 * 1.10, rtol=1e-12)
    np.testing.assert_allclose(series.power_gw_upper, 0.045 * 100 * 1.20, rtol=1e-12)
    np.testing.assert_allclose(series.twh_best, 0.035 * 100 * 1.10 * 8.766, rtol=1e-12)


def test_eligibility_boundaries_are_strict() -> None:
    released = unix(2020, 1, 1)
    expires = released + 1825 * 86400  # 2024-12-30
    table = HardwareTable.from_machines(
        [
            Machine("old", unix(2010, 1, 1), 0.5, "hand"),
            Machine("X", released, 0.03, "hand"),
            Machine("Y", unix(2022, 1, 1), 0.04, "hand"),
        ]
    )

    def lower_j_gh(at: float, threshold: float) -> float:
        return power_band_w(1e9, threshold, table, at, "1.2.0").lower_w / 1.01

    # On its release instant X does not count yet: nothing is eligible ("old" is past 5 years),
    # so the band falls back to the most efficient machine released before, "old".
    assert lower_j_gh(released, 1.0) == pytest.approx(0.5)
    assert lower_j_gh(released + 1, 1.0) == pytest.approx(0.03)
    assert lower_j_gh(expires - 1, 1.0) == pytest.approx(0.03)
    assert lower_j_gh(expires, 1.0) == pytest.approx(0.04)  # X is exactly 1825 days old
    # Efficiency must be strictly below θ: at θ = 0.04, Y does not count.
    assert power_band_w(1e9, 0.04, table, expires - 1, "1.2.0").upper_w == pytest.approx(
        0.03 * 1.20
    )


def test_live_fallback_when_nothing_is_profitable() -> None:
    band = power_band_w(1e20, 0.001, hand_table(), DAY, "1.4.0")
    # Most efficient machine released before 2023-06-15 is A (0.020); G is not released yet.
    assert band.lower_w == pytest.approx(0.020 * 1e11 * 1.01)
    assert band.best_w == pytest.approx(0.020 * 1e11 * 1.10)
    assert band.upper_w == pytest.approx(0.020 * 1e11 * 1.20)
    with pytest.raises(ValueError, match="released before"):
        power_band_w(1e20, 0.05, hand_table(), unix(2000, 1, 1))


def test_daily_carries_previous_power_forward_within_a_run_only() -> None:
    """One machine at 0.055 J/GH; the daily θ is 0.1 for three days then 0, so the 14-day mean is
    0.1, 0.1, 0.1, 0.075, 0.06, 0.05, 0.043: nothing is eligible on days 6 and 7, which repeat
    day 5's *power* although the hashrate doubled."""
    table = HardwareTable.from_machines([Machine("M", unix(2015, 1, 1), 0.055, "hand")])
    days = np.arange(7) + int(unix(2016, 1, 1) // 86400)
    hashrate = np.array([1e6, 1e6, 1e6, 1e6, 1e6, 2e6, 2e6])
    revenue = np.array([0.12e6, 0.12e6, 0.12e6, 0, 0, 0, 0])  # θ = R / (24 H p) = 0.1 or 0
    series = cbeci_daily(days, hashrate, revenue, table, method="1.2.0")
    np.testing.assert_allclose(
        series.threshold_j_gh, [0.1, 0.1, 0.1, 0.075, 0.06, 0.05, 0.3 / 7], rtol=1e-12
    )
    np.testing.assert_allclose(series.power_gw_lower, 0.055 * 1e6 / 1e6 * 1.01, rtol=1e-12)

    gapped = days.copy()
    gapped[5:] += 30  # days 6 and 7 now form a new run: θ = 0 there and nothing to carry
    series = cbeci_daily(gapped, hashrate, revenue, table, method="1.2.0")
    assert np.all(np.isnan(series.power_gw_lower[5:]))
    assert np.all(series.threshold_j_gh[5:] == 0)


def test_regional_bands_cheaper_power_admits_more_machines() -> None:
    bands = regional_power_bands(
        {"KZ": 1e20, "DE": 1e20, "US-TX": 1e20, "US-NY": 1e20},
        0.025,
        hardware=hand_table(),
        at_unix=DAY,
        prices={"KZ": 0.025, "DE": 0.0625, "US": 0.04},
        default_price=0.05,
        method="1.4.0",
    )
    # θ_KZ = 0.05 → A–D; θ_DE = 0.02 → none below (fallback to A); θ_US = 0.03125 → A, B.
    assert bands["KZ"].upper_w == pytest.approx(0.045 * 1e11 * 1.20)
    assert bands["DE"].upper_w == pytest.approx(0.020 * 1e11 * 1.20)
    assert bands["US-TX"].upper_w == pytest.approx(0.030 * 1e11 * 1.20)
    assert bands["US-NY"] == bands["US-TX"]  # a subdivision without a price uses its country's
    assert bands["KZ"].upper_w > bands["US-TX"].upper_w > bands["DE"].upper_w
    for band in bands.values():
        assert band.lower_w <= band.best_w <= band.upper_w


def test_regional_bands_on_shipped_table_are_ordered(hardware: HardwareTable) -> None:
    at = unix(2024, 11, 1)
    prices = {"KZ": 0.03, "US": 0.05, "DE": 0.12}
    bands = regional_power_bands(
        dict.fromkeys(prices, 2e20), 0.03, hardware=hardware, at_unix=at, prices=prices
    )
    assert bands["KZ"].upper_w > bands["US"].upper_w > bands["DE"].upper_w
    for band in bands.values():
        assert 0 < band.lower_w <= band.best_w <= band.upper_w


def test_annualized_twh() -> None:
    assert annualized_twh(1e9) == pytest.approx(8.766, rel=1e-15)


def test_hashprice_hand_example() -> None:
    # (3.125 + 0.25) BTC × 144 × 60 000 USD / 600 000 PH/s = 486 × 60 000 / 6e5 = 48.6
    value = hashprice_usd_ph_day(312_500_000, 25_000_000, 144, 60_000, 6e20)
    assert value == pytest.approx(48.6, rel=1e-12)
    with pytest.raises(ValueError, match="network_hashrate_hs"):
        hashprice_usd_ph_day(312_500_000, 0, 144, 60_000, 0)


# ------------------------------------------------------------------------------------------
# Files and validation
# ------------------------------------------------------------------------------------------


def test_hardware_csv_errors_name_line_and_column() -> None:
    good = "model,released_unix,efficiency_j_gh,source\nS9,1485907200,0.098,x\n"
    assert len(parse_hardware_csv(good)) == 1
    with pytest.raises(ValueError, match="line 3: efficiency_j_gh is not a number"):
        parse_hardware_csv(good + "S19,1588291200,fast,x\n")
    with pytest.raises(ValueError, match="line 3: released_unix is empty"):
        parse_hardware_csv(good + "S19,,0.03,x\n")
    with pytest.raises(ValueError, match="line 1: unknown header 'model,released_unix,source'"):
        parse_hardware_csv("model,released_unix,source\nS9,1,x\n")


CCAF_HEADER = "Miner_name,UNIX_date_of_release,Efficiency_J_Gh,Qty\n"


def test_hardware_csv_reads_ccaf_miners_format() -> None:
    table = parse_hardware_csv(
        "\ufeff" + CCAF_HEADER + "Bitmain Antminer S9,1464739200,0.098,1000\n"
        "Bitmain Antminer S19 (95Th),1588291200,0.03421,1000\n"
    )
    assert table.models == ("Bitmain Antminer S9", "Bitmain Antminer S19 (95Th)")
    assert list(table.released_unix) == [1464739200.0, 1588291200.0]
    assert list(table.efficiency_j_gh) == [0.098, 0.03421]
    assert set(table.sources) == {"CCAF miners.csv"}


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("S9,1464739200,fast,1000\n", "line 2: Efficiency_J_Gh is not a number: 'fast'"),
        ("S9,,0.098,1000\n", "line 2: UNIX_date_of_release is empty"),
        (
            "S9,1464739200,0.098,1000\nS19,1588291200,-0.03,1\n",
            "line 3: Efficiency_J_Gh must be > 0",
        ),
        (",1464739200,0.098,1000\n", "line 2: Miner_name is empty"),
        ("S9,1464739200,0.098,1000,extra\n", "line 2: more fields than the header"),
    ],
)
def test_hardware_csv_ccaf_errors_name_line_and_column(rows: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        parse_hardware_csv(CCAF_HEADER + rows)


def test_shipped_table_has_a_source_for_every_row_and_reaches_today(
    hardware: HardwareTable,
) -> None:
    assert all(source.strip() for source in hardware.sources)
    assert len(set(hardware.models)) == len(hardware.models)
    assert hardware.released_unix.max() >= unix(2025, 1, 1)  # issue #12: today's machines
    assert np.all(hardware.efficiency_j_gh[hardware.released_unix >= unix(2025, 1, 1)] < 0.02)


def test_shipped_prices_load_with_a_source_and_date_for_every_region() -> None:
    default, regions = load_electricity_price_table(SHIPPED_PRICES)
    assert default == 0.05
    assert {"US-TX", "US-GA", "US-KY", "US-ND", "US-NY", "US-OK", "KZ", "ET"} <= set(regions)
    for code, entry in regions.items():
        assert entry.source and entry.date, code
        assert 0.005 <= entry.usd_kwh <= 0.25, code  # industrial tariffs, not household ones
        assert entry.date[:4] >= "2022", code
    plain_default, plain = load_electricity_prices(SHIPPED_PRICES)
    assert plain_default == default
    assert plain == {code: entry.usd_kwh for code, entry in regions.items()}


def test_price_file_parses_regions_and_keeps_norway() -> None:
    default, regions = parse_electricity_prices(
        "default_usd_kwh: 0.06\nregions:\n  US-TX: 0.045\n  NO: 0.04\n  ZZ: 0.05\n"
    )
    assert default == 0.06
    assert regions == {"US-TX": 0.045, "NO": 0.04, "ZZ": 0.05}


def test_price_file_reads_entries_with_source_and_date() -> None:
    default, regions = parse_electricity_price_table(
        "regions:\n"
        "  US-TX: {usd_kwh: 0.0634, source: EIA Electric Power Monthly 5.6.B, date: 2025-08}\n"
        "  NO: {usd_kwh: 0.04, source: somewhere, date: 2024-06-30, note: converted}\n"
        "  KZ: {usd_kwh: 0.05, source: somewhere, date: 2024}\n"
        "  CA: 0.04\n"
    )
    assert default == 0.05
    assert regions["US-TX"].usd_kwh == 0.0634 and regions["US-TX"].date == "2025-08"
    assert regions["US-TX"].source == "EIA Electric Power Monthly 5.6.B"
    assert regions["NO"].date == "2024-06-30" and regions["NO"].note == "converted"
    assert regions["KZ"].date == "2024"
    assert regions["CA"].usd_kwh == 0.04 and regions["CA"].source == ""
    assert parse_electricity_prices("regions: {CA: {usd_kwh: 0.04, source: s, date: 2024}}") == (
        0.05, {"CA": 0.04}
    )


def test_price_file_names_every_bad_entry() -> None:
    text = "default_usd_kwh: 0.05\nregions: {us: 0.1, XX: 0.2, DE: abc, FR: -0.1, US-TX: 0.04}\n"
    with pytest.raises(ValueError) as info:
        parse_electricity_prices(text)
    message = str(info.value)
    for bad in ("regions.us", "regions.XX", "regions.DE", "regions.FR"):
        assert bad in message
    assert "regions.US-TX" not in message


def test_price_file_names_every_bad_field_of_an_entry() -> None:
    text = (
        "regions:\n"
        "  US-TX: {usd_kwh: 0.06, date: 2025-08}\n"
        "  US-GA: {usd_kwh: cheap, source: s, date: 2025-08}\n"
        "  RU: {usd_kwh: 0.05, source: s, date: last year}\n"
        "  KZ: {usd_kwh: 0.05, source: '', date: 2024}\n"
        "  NO: {usd_kwh: 0.05, source: s, date: 2024, currency: NOK}\n"
        "  CA: {usd_kwh: 0.04, source: s, date: 2024-13}\n"
        "  PY: {usd_kwh: 0.04, source: s, date: 2024}\n"
    )
    with pytest.raises(ValueError) as info:
        parse_electricity_price_table(text)
    message = str(info.value)
    for bad in (
        "regions.US-TX: missing source",
        "regions.US-GA.usd_kwh: 'cheap' is not a number",
        "regions.RU.date: 'last year'",
        "regions.KZ.source: must be a non-empty text",
        "regions.NO: unknown key(s) currency",
        "regions.CA.date",
    ):
        assert bad in message
    assert "regions.PY" not in message


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashatlas")
    cbeci_command.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


def test_cli_writes_the_reproduced_series(
    test_data: Path, published: dict[str, npt.NDArray[np.float64]], tmp_path: Path
) -> None:
    out = tmp_path / "cbeci.csv"
    source = test_data / "cbeci" / "coinmetrics_btc_daily.csv"
    argv = ["cbeci", "--coinmetrics", str(source), "--method", "1.2.0", "--out", str(out)]
    assert run_cli(argv) == 0
    columns = read_columns(out)
    assert list(columns) == list(cbeci_command.OUTPUT_COLUMNS)
    assert np.array_equal(np.array(columns["date"], dtype="datetime64[D]"), published["date"])
    from_2019 = published["date"] >= np.datetime64("2019-04-26")
    for column in ("power_gw_lower", "twh_upper"):
        relative = float_column(columns, column)[from_2019] / published[column][from_2019] - 1
        assert np.max(np.abs(relative)) < BOUNDS_MAX_REL_ERROR_2019


def test_cli_reproduces_ccaf_bounds_from_its_own_miners_csv(
    test_data: Path, published: dict[str, npt.NDArray[np.float64]], tmp_path: Path
) -> None:
    """Issue #12: CCAF's miners.csv exactly as published, through `hashatlas cbeci --hardware`,
    gives CCAF's published 2019 lower and upper bounds (method 1.2.0, 0.05 USD/kWh)."""
    out = tmp_path / "cbeci.csv"
    argv = [
        "cbeci",
        "--coinmetrics", str(test_data / "cbeci" / "coinmetrics_btc_daily.csv"),
        "--hardware", str(test_data / "cbeci" / "miners.csv"),
        "--method", "1.2.0",
        "--out", str(out),
    ]
    assert run_cli(argv) == 0
    columns = read_columns(out)
    assert np.array_equal(np.array(columns["date"], dtype="datetime64[D]"), published["date"])
    from_2019 = published["date"] >= np.datetime64("2019-04-26")
    assert from_2019.sum() == 128
    for column in ("power_gw_lower", "power_gw_upper", "twh_lower", "twh_upper"):
        relative = float_column(columns, column)[from_2019] / published[column][from_2019] - 1
        assert np.max(np.abs(relative)) <= CCAF_MINERS_BOUNDS_MAX_REL_ERROR, column


def test_cli_unknown_hardware_header_exits_2(
    test_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "machines.csv"
    table.write_text("name,year,j_th\nS9,2016,98\n")
    argv = ["cbeci", "--coinmetrics", str(test_data / "cbeci" / "coinmetrics_btc_daily.csv"),
            "--hardware", str(table)]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert "line 1: unknown header 'name,year,j_th'" in err
    assert "Miner_name,UNIX_date_of_release,Efficiency_J_Gh,Qty" in err


def test_cli_writes_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "cm.csv"
    source.write_text(
        "time,HashRate,IssTotUSD,FeeTotUSD,PriceUSD\n"
        "2009-01-03,1e-6,,,\n"  # no USD yet: skipped with a warning
        "2023-06-15,100000000,5000000,1000000,30000\n"
    )
    assert run_cli(["cbeci", "--coinmetrics", str(source)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == ",".join(cbeci_command.OUTPUT_COLUMNS)
    assert lines[1].startswith("2023-06-15,")
    assert "skipped 1 row" in captured.err and "line 2" in captured.err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("time,HashRate,IssTotUSD\n2019-04-20,1,2\n", "line 1: missing column(s) FeeTotUSD"),
        (
            "time,HashRate,IssTotUSD,FeeTotUSD\n2019-04-20,1,2,3\n2019-04-21,fast,2,3\n",
            "line 3: column HashRate: not a number: 'fast'",
        ),
        ("time,HashRate,IssTotUSD,FeeTotUSD\n20/04/2019,1,2,3\n", "line 2: column time"),
    ],
)
def test_cli_bad_input_exits_2_naming_column_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(content)
    assert run_cli(["cbeci", "--coinmetrics", str(source)]) == 2
    assert expected in capsys.readouterr().err
