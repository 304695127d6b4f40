"""The site registry: the shipped rows, the contract's checks, the summaries and the CLI."""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
from pathlib import Path

import pycountry
import pytest

from streams.cli import main
from streams.commands import sites as command
from streams.core import sites as core
from streams.settings import Settings

SHIPPED = command.SHIPPED_SITES_FILE
HEADER = ",".join(core.COLUMNS)
GOOD = "Op A,Site 1,US,US-TX,31.0,-97.0,100,50,mining,2024-01-31,Op A 10-K 2023 p. 4,"


def shipped_rows() -> list[dict[str, str]]:
    with SHIPPED.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# ---- the shipped registry ----------------------------------------------------------------------


def test_every_shipped_row_is_valid() -> None:
    registry = core.parse_csv(SHIPPED.read_text(encoding="utf-8"))
    assert registry.errors == ()
    assert len(registry.sites) == len(shipped_rows()) >= 40


def test_every_shipped_row_has_a_source_a_date_and_iso_codes() -> None:
    for row in shipped_rows():
        assert row["source"].strip(), row
        assert "http" in row["source"] or "10-K" in row["source"] or "10-Q" in row["source"], row
        datetime.date.fromisoformat(row["as_of"])
        assert pycountry.countries.get(alpha_2=row["country"]) is not None, row
        subdivision = pycountry.subdivisions.get(code=row["subdivision"])
        assert subdivision is not None and subdivision.country_code == row["country"], row
        assert row["status"] in core.STATUSES


def test_shipped_registry_has_a_status_history_with_capacity_moved_to_hpc() -> None:
    sites = command.shipped_sites()
    denton = [s for s in sites if s.key == ("Core Scientific", "Denton")]
    assert [s.status for s in sorted(denton, key=lambda s: s.as_of)] == ["mining", "hpc"]
    moves = core.moved_to_hpc(sites)
    assert moves and moves[0]["moved_mw"] == 125.0


@pytest.mark.parametrize("by", core.GROUPINGS)
def test_printed_totals_equal_the_rows_sums(by: core.GroupBy,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sites", "summary", "--by", by, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    state = core.latest(command.shipped_sites())
    expected_energised = math.fsum(s.energised_mw or 0.0 for s in state)
    expected_planned = math.fsum(s.planned_mw or 0.0 for s in state)
    assert document["total"]["energised_mw"] == pytest.approx(expected_energised)
    assert document["total"]["planned_mw"] == pytest.approx(expected_planned)
    assert math.fsum(r["energised_mw"] for r in document["rows"]) == pytest.approx(
        expected_energised)
    assert sum(r["sites"] for r in document["rows"]) == document["total"]["sites"] == len(state)


def test_table_and_csv_print_the_same_totals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sites", "summary", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    total = rows[-1]
    assert total["region"] == "total"
    assert math.fsum(float(r["energised_mw"]) for r in rows[:-1]) == pytest.approx(
        float(total["energised_mw"]))
    assert main(["sites", "summary"]) == 0
    table = capsys.readouterr().out
    assert f"{float(total['energised_mw']):,.1f}" in table


# ---- the contract --------------------------------------------------------------------------------


BROKEN = "\n".join([
    HEADER,
    GOOD,                                                                     # line 2: good
    "Op B,Site 2,XX,,,,10,,mining,2024-01-31,src,",                           # 3: bad country
    "Op B,Site 3,US,US-ZZ,,,10,,mining,2024-01-31,src,",                      # 4: bad subdivision
    "Op B,Site 4,CA,US-TX,,,10,,mining,2024-01-31,src,",                      # 5: wrong country
    "Op C,Site 5,US,US-GA,,,-5,,mining,2024-01-31,src,",                      # 6: negative MW
    "Op C,Site 6,US,US-GA,,,5,,dreaming,2024-01-31,src,",                     # 7: unknown status
    "Op C,Site 7,US,US-GA,,,5,,mining,2024-01-31,,",                          # 8: no source
    "Op C,Site 8,US,US-GA,,,5,,mining,,src,",                                 # 9: no date
    "Op C,Site 9,US,US-GA,,,,,mining,2024-01-31,src,",                        # 10: no MW
    "Op C,Site 10,US,US-GA,95,10,5,,mining,2024-01-31,src,",                  # 11: latitude
    "Op D,Site 11,CA,CA-QC,,,20,0,curtailed,2023-06-30,Op D annual report,",  # 12: good
])


def test_broken_rows_are_reported_row_by_row_and_good_rows_kept() -> None:
    registry = core.parse_csv(BROKEN)
    assert [s.site for s in registry.sites] == ["Site 1", "Site 11"]
    found = {(e.row, e.field) for e in registry.errors}
    assert found == {(3, "country"), (4, "subdivision"), (5, "subdivision"),
                     (6, "energised_mw"), (7, "status"), (8, "source"), (9, "as_of"),
                     (10, "energised_mw"), (11, "latitude")}


def test_geojson_registry_against_the_same_contract() -> None:
    def feature(properties: dict[str, object], point: list[float] | None) -> dict[str, object]:
        geometry = None if point is None else {"type": "Point", "coordinates": point}
        return {"type": "Feature", "geometry": geometry, "properties": properties}

    good = {"operator": "Op", "site": "S", "country": "US", "subdivision": "US-NY",
            "energised_mw": 30, "status": "hpc", "as_of": "2025-01-01", "source": "PR"}
    text = json.dumps({"type": "FeatureCollection", "features": [
        feature(good, [-78.9, 43.3]),
        feature({**good, "planned_mw": -1}, None),
        feature({**good, "source": ""}, [200.0, 0.0]),
    ]})
    registry = core.parse_registry(text, "mine.geojson")
    assert len(registry.sites) == 1
    assert registry.sites[0].latitude == 43.3 and registry.sites[0].longitude == -78.9
    assert {(e.row, e.field) for e in registry.errors} == {
        (2, "planned_mw"), (3, "source"), (3, "longitude")}
    round_trip = core.parse_geojson(json.dumps(core.to_geojson(registry.sites)))
    assert round_trip.sites[0].as_dict() == registry.sites[0].as_dict()


def test_unreadable_registry_is_an_error() -> None:
    with pytest.raises(core.RegistryError):
        core.parse_csv("name,value\na,1\n")
    with pytest.raises(core.RegistryError):
        core.parse_geojson('{"type": "Feature"}')


def test_validate_exits_non_zero_listing_each_bad_row(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.csv"
    path.write_text(BROKEN, encoding="utf-8")
    assert main(["sites", "validate", str(path)]) == command.EXIT_BAD_ROWS
    out = capsys.readouterr().out
    for row, field in ((3, "country"), (6, "energised_mw"), (7, "status"), (8, "source")):
        assert f"row {row}: {field}:" in out
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "\n" + GOOD + "\n", encoding="utf-8")
    assert main(["sites", "validate", str(good)]) == 0
    assert main(["sites", "validate", str(tmp_path / "missing.csv")]) == command.EXIT_BAD_INPUT


def test_summary_uses_the_good_rows_of_an_added_registry(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(BROKEN, encoding="utf-8")
    assert main(["sites", "summary", "--sites", str(path), "--mode", "replace",
                 "--format", "json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["total"] == {"key": "total", "energised_mw": 120.0, "planned_mw": 50.0,
                                 "sites": 2, "unstated_energised": 0}
    assert "row 3: country" in captured.err
    assert main(["sites", "summary", "--sites", str(path), "--format", "json"]) == 0
    extended = json.loads(capsys.readouterr().out)
    assert extended["total"]["sites"] == len(core.latest(command.shipped_sites())) + 2


def test_sites_file_setting_extends_or_replaces(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(HEADER + "\n" + GOOD + "\n", encoding="utf-8")
    shipped = command.shipped_sites()
    extended = command.load_sites(Settings(sites_file=path))
    assert len(extended) == len(shipped) + 1
    replaced = command.load_sites(Settings(sites_file=path, sites_mode="replace"))
    assert [s.site for s in replaced] == ["Site 1"]


# ---- summaries -----------------------------------------------------------------------------------


def site(name: str, status: str, day: str, energised: float | None, planned: float | None = None,
         region: str = "US-TX") -> core.Site:
    return core.Site(operator="Op", site=name, country=region[:2], subdivision=region,
                     latitude=None, longitude=None, energised_mw=energised, planned_mw=planned,
                     status=status, as_of=datetime.date.fromisoformat(day), source="src")


def test_latest_status_at_a_date_and_history() -> None:
    rows = [site("A", "mining", "2023-01-01", 100), site("A", "hpc", "2024-06-01", None, 200),
            site("B", "mining", "2024-01-01", 50, region="US-GA")]
    at_2023 = core.latest(rows, datetime.date(2023, 12, 31))
    assert [(s.site, s.status) for s in at_2023] == [("A", "mining")]
    assert [(s.site, s.status) for s in core.latest(rows)] == [("A", "hpc"), ("B", "mining")]
    history = core.region_history(rows, "US")
    assert [h["as_of"] for h in history] == ["2023-01-01", "2024-01-01", "2024-06-01"]
    assert history[1]["by_status"]["mining"]["energised_mw"] == 150.0
    assert history[2]["by_status"]["mining"]["energised_mw"] == 50.0
    assert history[2]["by_status"]["hpc"]["planned_mw"] == 200.0
    assert core.moved_to_hpc(rows) == [{"as_of": "2024-06-01", "moved_mw": 100.0,
                                        "cumulative_mw": 100.0, "sites": ["Op / A"]}]


def test_share_and_utilisation_bands() -> None:
    lower, best, upper = core.share_band(7.4e9, (10e9, 20e9, 40e9))
    assert (lower, best, upper) == pytest.approx((0.185, 0.37, 0.74))
    with pytest.raises(ValueError):
        core.share_band(1.0, (3.0, 2.0, 1.0))
    assert core.utilisation((1e9, 2e9, 3e9), 4e9) == pytest.approx((0.25, 0.5, 0.75))
    assert core.utilisation((1e9, 2e9, 3e9), 0.0) is None
    capacity = core.mining_capacity_w([site("A", "mining", "2024-01-01", 100),
                                       site("B", "hpc", "2024-01-01", 100),
                                       site("C", "curtailed", "2024-01-01", 50, region="US-GA")])
    assert capacity == {"US": 150e6, "US-TX": 100e6, "US-GA": 50e6}
    entries = [{"region": "US", "power_w": {"lower": 75e6, "best": 150e6, "upper": 300e6}},
               {"region": "CN", "power_w": {"lower": 1.0, "best": 2.0, "upper": 3.0}},
               {"region": "US-TX", "power_w": None}]
    assert core.site_utilisation(entries, capacity) == [
        {"region": "US", "mining_capacity_w": 150e6,
         "utilisation": {"lower": 0.5, "best": 1.0, "upper": 2.0}}]


def test_extend_replaces_a_row_of_the_same_site_and_date() -> None:
    base = [site("A", "mining", "2024-01-01", 100), site("B", "mining", "2024-01-01", 10)]
    extra = [site("A", "curtailed", "2024-01-01", 100)]
    combined = core.combine(base, extra, "extend")
    assert sorted((s.site, s.status) for s in combined) == [("A", "curtailed"), ("B", "mining")]
    assert core.combine(base, extra, "replace") == tuple(extra)
