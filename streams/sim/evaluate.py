"""How close the pipeline came to the simulated truth: share and hashrate errors, alert quality.

The comparison is pure (truth, history points, alerts and optional snapshots in; a report out);
the readers at the bottom fetch those from Redis, the HTTP API or the ``estimates`` topic.

What is measured
* Per region and the network, over the points after the warm-up: mean absolute error of the
  share in percentage points, its bias and 90th percentile; the relative error of the hashrate
  (|Ĥ/H − 1|, mean, bias, 90th percentile). Truth is linearly interpolated to each point's time.
  A point stands for the 300 s window that ends at its time, so during a shock part of the error
  is the window's lag; nothing is shifted to hide that. ``sample_bias_pp`` is what a perfect
  estimator would still be off by, because the sample itself is distorted (VPN exits, pools whose
  hashers are not spread like the network): the error of the sample's expected share.
* History points carry no intervals. Interval coverage is computed only from full snapshots
  (``estimates`` topic): how often the 95 % interval held the truth.
* Shocks: the true change each scripted shock made to every country's share between its onset
  and full effect (and over its recovery), and to the shocked subdivision's own share (the
  detector tracks subdivisions too; an alert on another subdivision of the country does not
  match it). A change of at least ``min_change_pp`` is a shift an
  alert may rightly report: for the shocked country it is *expected* (detected, with the delay
  from onset, or missed), for other countries it is *secondary* (their share really moved, an
  alert is right but none is required). A shock whose own country moves less than that is
  ``below_threshold``; a shock met by an alert already firing for it is ``covered``. VPN shocks
  change nothing real: alerts they cause are false alarms, labelled with the shock.
* False alarms: firing alerts after the warm-up that match no true shift in region, direction and
  time window (onset to full effect + ``tolerance_s``), per simulated week of evaluated time.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.core.regions import country_of

FloatArray = npt.NDArray[np.float64]
NETWORK = "network"
SECONDS_PER_WEEK = 7 * 86400.0
DEFAULT_WARMUP_S = 900.0
DEFAULT_MIN_CHANGE_PP = 1.0
DEFAULT_TOLERANCE_S = 6 * 3600.0


# ---- truth --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    """The simulator's truth file: header (scenario, shocks) and per-step values."""

    header: dict[str, Any]
    t: FloatArray
    network_hs: FloatArray
    shares: dict[str, FloatArray]
    hashrates: dict[str, FloatArray]
    sample_shares: dict[str, FloatArray]

    @property
    def start(self) -> float:
        return float(self.header["start"])

    @property
    def end(self) -> float:
        return float(self.header.get("end", self.t[-1]))

    @property
    def shocks(self) -> list[dict[str, Any]]:
        return list(self.header.get("shocks", []))

    def share_at(self, code: str, times: FloatArray) -> FloatArray:
        """True share at ``times`` (0 for a region the world does not have)."""
        if code == NETWORK:
            return np.ones_like(times)
        series = self.shares.get(code)
        return np.zeros_like(times) if series is None else np.interp(times, self.t, series)

    def hashrate_at(self, code: str, times: FloatArray) -> FloatArray:
        series = self.network_hs if code == NETWORK else self.hashrates.get(code)
        return np.zeros_like(times) if series is None else np.interp(times, self.t, series)

    def sample_share_at(self, code: str, times: FloatArray) -> FloatArray:
        if code == NETWORK:
            return np.ones_like(times)
        series = self.sample_shares.get(code)
        return np.zeros_like(times) if series is None else np.interp(times, self.t, series)

    @property
    def countries(self) -> list[str]:
        return [code for code in self.shares if "-" not in code]


def parse_truth(lines: Iterable[str | bytes]) -> Truth:
    """Read truth JSONL: a ``scenario`` header line, then ``truth`` lines in time order."""
    header: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"truth line {number}: not JSON ({exc.msg})") from None
        kind = record.get("type") if isinstance(record, dict) else None
        if kind == "scenario":
            header = record
        elif kind == "truth":
            rows.append(record)
        else:
            raise ValueError(f"truth line {number}: expected type 'scenario' or 'truth'")
    if header is None:
        raise ValueError("truth file has no 'scenario' header line")
    if not rows:
        raise ValueError("truth file has no 'truth' lines")
    rows.sort(key=lambda r: r["t"])
    codes = list(dict.fromkeys(code for row in rows for code in row["regions"]))

    def column(key: str, index: int | None) -> dict[str, FloatArray]:
        out = {}
        for code in codes:
            values = []
            for row in rows:
                value = row.get(key, {}).get(code)
                if index is not None:
                    value = None if value is None else value[index]
                values.append(0.0 if value is None else float(value))
            out[code] = np.array(values)
        return out

    return Truth(
        header=header,
        t=np.array([float(r["t"]) for r in rows]),
        network_hs=np.array([float(r["network_hs"]) for r in rows]),
        shares=column("regions", 0),
        hashrates=column("regions", 1),
        sample_shares=column("sample_shares", None),
    )


def load_truth(path: str | Path) -> Truth:
    with open(path, encoding="utf-8") as handle:
        return parse_truth(handle)


# ---- history errors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesError:
    """Errors of one series (a region or the network) over the evaluated points."""

    series: str
    points: int
    mean_true_share: float
    share_mae_pp: float | None
    share_bias_pp: float | None
    share_p90_pp: float | None
    sample_bias_pp: float | None
    hashrate_mae_rel: float | None
    hashrate_bias_rel: float | None
    hashrate_p90_rel: float | None
    in_truth: bool = True


def _finite(points: Sequence[Mapping[str, Any]], key: str) -> tuple[FloatArray, FloatArray]:
    kept = [(float(p["t"]), float(p[key])) for p in points
            if isinstance(p.get(key), int | float) and math.isfinite(p[key])]
    if not kept:
        return np.empty(0), np.empty(0)
    times, values = zip(*kept, strict=True)
    return np.array(times), np.array(values)


def series_errors(truth: Truth, series: str, points: Sequence[Mapping[str, Any]],
                  t_from: float, t_to: float) -> SeriesError:
    """Share and hashrate errors of one history series over [t_from, t_to]."""
    window = [p for p in points if t_from <= float(p["t"]) <= t_to]
    in_truth = series == NETWORK or series in truth.shares
    share_t, share_est = _finite(window, "share")
    hs_t, hs_est = _finite(window, "hashrate_hs")
    share_stats: tuple[float | None, ...] = (None, None, None, None)
    mean_true = 0.0
    if share_t.size and series != NETWORK:
        true_share = truth.share_at(series, share_t)
        mean_true = float(true_share.mean())
        error_pp = (share_est - true_share) * 100.0
        design_pp = (truth.sample_share_at(series, share_t) - true_share) * 100.0
        share_stats = (float(np.abs(error_pp).mean()), float(error_pp.mean()),
                       float(np.percentile(np.abs(error_pp), 90)), float(design_pp.mean()))
    elif series == NETWORK:
        mean_true = 1.0
    hs_stats: tuple[float | None, ...] = (None, None, None)
    if hs_t.size:
        true_hs = truth.hashrate_at(series, hs_t)
        known = true_hs > 0
        if known.any():
            relative = hs_est[known] / true_hs[known] - 1.0
            hs_stats = (float(np.abs(relative).mean()), float(relative.mean()),
                        float(np.percentile(np.abs(relative), 90)))
    return SeriesError(
        series=series, points=max(share_t.size, hs_t.size), mean_true_share=mean_true,
        share_mae_pp=share_stats[0], share_bias_pp=share_stats[1], share_p90_pp=share_stats[2],
        sample_bias_pp=share_stats[3], hashrate_mae_rel=hs_stats[0],
        hashrate_bias_rel=hs_stats[1], hashrate_p90_rel=hs_stats[2], in_truth=in_truth,
    )


def total_variation_pp(truth: Truth, history: Mapping[str, Sequence[Mapping[str, Any]]],
                       t_from: float, t_to: float) -> float | None:
    """Mean over time of ½ Σ_countries |ŝ − s| in pp: how much of the map is misplaced."""
    times = sorted({float(p["t"]) for code, pts in history.items()
                    if code != NETWORK and "-" not in code for p in pts
                    if t_from <= float(p["t"]) <= t_to})
    if not times:
        return None
    grid = np.array(times)
    index = {t: i for i, t in enumerate(times)}
    countries = set(truth.countries) | {c for c in history if c != NETWORK and "-" not in c}
    distance = np.zeros(grid.size)
    for code in countries:
        estimate = np.zeros(grid.size)
        for p in history.get(code, []):
            t = float(p["t"])
            if t in index and isinstance(p.get("share"), int | float):
                estimate[index[t]] = float(p["share"])
        distance += np.abs(estimate - truth.share_at(code, grid))
    return float(distance.mean() / 2 * 100.0)


# ---- interval coverage ------------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalCoverage:
    """How often a series' 95 % intervals held the truth.

    ``*_coverage`` compares with the truth at the snapshot's ``as_of``; ``*_window_coverage``
    with the truth averaged over the snapshot's window, which is what a windowed estimate
    estimates: the first also counts the window's lag behind a moving truth as a miss.
    """

    series: str
    snapshots: int
    share_coverage: float | None
    share_window_coverage: float | None
    hashrate_coverage: float | None
    hashrate_window_coverage: float | None


WINDOW_POINTS = 31


def interval_coverage(truth: Truth, snapshots: Iterable[Mapping[str, Any]],
                      t_from: float, t_to: float) -> dict[str, IntervalCoverage]:
    """Coverage of ``share_ci95`` and ``hashrate_ci95_hs`` per series, from full snapshots."""
    hits: dict[str, dict[str, list[bool]]] = {}

    def note(series: str, kind: str, interval: Sequence[float] | None,
             instant: float, window_mean: float) -> None:
        if not interval:
            return
        kinds = hits.setdefault(series, {})
        kinds.setdefault(kind, []).append(interval[0] <= instant <= interval[1])
        kinds.setdefault(kind + "_window", []).append(interval[0] <= window_mean <= interval[1])

    for snapshot in snapshots:
        as_of = float(snapshot.get("as_of", math.nan))
        if not t_from <= as_of <= t_to:
            continue
        window = float(snapshot.get("window_s") or 0.0)
        grid = np.linspace(as_of - window, as_of, WINDOW_POINTS)
        network = snapshot.get("network") or {}
        hashrate = truth.hashrate_at(NETWORK, grid)
        note(NETWORK, "hashrate", network.get("hashrate_ci95_hs"), float(hashrate[-1]),
             float(hashrate.mean()))
        for entry in [*snapshot.get("regions", []), *snapshot.get("subdivisions", [])]:
            code = entry["region"]
            share = truth.share_at(code, grid)
            note(code, "share", entry.get("share_ci95"), float(share[-1]), float(share.mean()))
            hashrate = truth.hashrate_at(code, grid)
            note(code, "hashrate", entry.get("hashrate_ci95_hs"), float(hashrate[-1]),
                 float(hashrate.mean()))

    def rate(values: list[bool] | None) -> float | None:
        return float(np.mean(values)) if values else None

    return {
        series: IntervalCoverage(
            series=series,
            snapshots=max(len(v) for v in kinds.values()),
            share_coverage=rate(kinds.get("share")),
            share_window_coverage=rate(kinds.get("share_window")),
            hashrate_coverage=rate(kinds.get("hashrate")),
            hashrate_window_coverage=rate(kinds.get("hashrate_window")),
        )
        for series, kinds in hits.items()
    }


# ---- shocks and alerts ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedShift:
    """A true change of a country's share that a scripted shock caused."""

    shock: str
    phase: str  # "onset" or "recovery"
    country: str
    direction: str
    start: float
    end: float
    change_pp: float
    primary: bool


def expected_shifts(truth: Truth, min_change_pp: float = DEFAULT_MIN_CHANGE_PP,
                    tolerance_s: float = DEFAULT_TOLERANCE_S) -> list[ExpectedShift]:
    """Every country share change of at least ``min_change_pp`` that a shock phase made."""
    out = []
    for shock in truth.shocks:
        if shock["direction"] == "vpn":
            continue
        phases = [("onset", shock["onset"], shock["full_effect"])]
        if shock.get("recovery_start") is not None:
            phases.append(("recovery", shock["recovery_start"], shock["recovery_end"]))
        # A subdivision's shock is also expected on the subdivision itself (#14: tracked too).
        own = [shock["region"]] if shock.get("region") and "-" in shock["region"] \
            and shock["region"] in truth.shares else []
        for phase, begin, finish in phases:
            times = np.array([begin - 1e-6, max(finish, begin)])
            for country in [*truth.countries, *own]:
                before, after = truth.share_at(country, times)
                change = (after - before) * 100.0
                if abs(change) >= min_change_pp:
                    out.append(ExpectedShift(
                        shock=shock["name"], phase=phase, country=country,
                        direction="up" if change > 0 else "down", start=float(begin),
                        end=float(finish) + tolerance_s, change_pp=float(change),
                        primary=phase == "onset" and country in (shock["country"], *own),
                    ))
    return out


@dataclass(frozen=True)
class AlertRecord:
    """One alert (by id), its detection and, when known, its resolution."""

    id: str
    region: str
    direction: str
    detected_at: float
    started_at: float | None
    resolved_at: float | None
    magnitude_pp: float | None

    @property
    def country(self) -> str:
        return country_of(self.region)

    def firing_at(self, t: float) -> bool:
        return self.detected_at <= t and (self.resolved_at is None or t < self.resolved_at)


def consolidate_alerts(records: Iterable[Mapping[str, Any]]) -> list[AlertRecord]:
    """One record per alert id from firing/resolved state changes (any order, duplicates ok)."""
    by_id: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("type", "regional_shift") != "regional_shift" or "id" not in record:
            continue
        merged = by_id.setdefault(str(record["id"]), {})
        for key, value in record.items():
            if value is not None and (key not in merged or record.get("state") == "resolved"):
                merged[key] = value
    alerts = [
        AlertRecord(
            id=alert_id, region=str(a["region"]), direction=str(a["direction"]),
            detected_at=float(a["detected_at"]),
            started_at=float(a["started_at"]) if a.get("started_at") is not None else None,
            resolved_at=float(a["resolved_at"]) if a.get("resolved_at") is not None else None,
            magnitude_pp=float(a["magnitude_pp"]) if a.get("magnitude_pp") is not None else None,
        )
        for alert_id, a in by_id.items()
    ]
    return sorted(alerts, key=lambda a: a.detected_at)


@dataclass(frozen=True)
class ShockResult:
    """How the detector did on one scripted shock."""

    shock: str
    kind: str
    region: str | None
    country: str | None
    direction: str
    onset: float
    change_pp: float | None
    status: str  # detected | missed | covered | below_threshold | vpn | switch | pools_only
    alert_id: str | None = None
    delay_s: float | None = None
    started_at_error_s: float | None = None


@dataclass(frozen=True)
class AlertVerdict:
    """One alert judged against truth."""

    id: str
    region: str
    direction: str
    detected_at: float
    verdict: str  # expected | secondary | recovery | false | warmup
    shock: str | None = None


@dataclass(frozen=True)
class AlertScore:
    shocks: list[ShockResult]
    alerts: list[AlertVerdict]
    false_alarms: int
    evaluated_weeks: float

    @property
    def false_alarms_per_week(self) -> float | None:
        return self.false_alarms / self.evaluated_weeks if self.evaluated_weeks > 0 else None

    @property
    def misses(self) -> int:
        return sum(1 for s in self.shocks if s.status == "missed")


def _matches(alert: AlertRecord, shift: ExpectedShift) -> bool:
    """Same code (a shift of a subdivision: the subdivision itself; of a country: the country
    or any of its subdivisions), direction and time window."""
    code = alert.region if "-" in shift.country else alert.country
    return (code == shift.country and alert.direction == shift.direction
            and shift.start <= alert.detected_at <= shift.end)


def _shock_result(truth: Truth, shock: Mapping[str, Any], shifts: list[ExpectedShift],
                  alerts: list[AlertRecord]) -> ShockResult:
    """How one shock was seen: detected (with its delay), covered by an alert already firing,
    missed, below the threshold, or not a move of a region's hashrate at all."""
    common = {"shock": shock["name"], "kind": shock["kind"], "region": shock["region"],
              "country": shock["country"], "direction": shock["direction"],
              "onset": float(shock["onset"])}
    if shock["direction"] in ("vpn", "switch") or shock.get("country") is None:
        # vpn and switch change no hashrate of a region; a pools-only shock names none.
        status = shock["direction"] if shock["direction"] in ("vpn", "switch") else "pools_only"
        return ShockResult(**common, change_pp=None, status=status)
    primary = [s for s in shifts if s.shock == shock["name"] and s.primary]
    if not primary:
        at = np.array([shock["onset"] - 1e-6, shock["full_effect"]])
        before, after = truth.share_at(shock["country"], at)
        return ShockResult(**common, change_pp=float((after - before) * 100),
                           status="below_threshold")
    shift = primary[0]
    found = next((a for a in alerts if _matches(a, shift)), None)
    if found is not None:
        return ShockResult(
            **common, change_pp=shift.change_pp, status="detected", alert_id=found.id,
            delay_s=found.detected_at - shift.start,
            started_at_error_s=(None if found.started_at is None
                                else found.started_at - shift.start))
    ongoing = next((a for a in alerts if a.country == shift.country
                    and a.direction == shift.direction and a.firing_at(shift.start)), None)
    return ShockResult(**common, change_pp=shift.change_pp,
                       status="covered" if ongoing is not None else "missed",
                       alert_id=ongoing.id if ongoing is not None else None)


def _alert_verdict(truth: Truth, alert: AlertRecord, shifts: list[ExpectedShift],
                   evaluated_from: float) -> AlertVerdict:
    """One alert judged: during warm-up, expected, a recovery or secondary move, or false
    (naming the VPN shock that explains it, if one does)."""
    if alert.detected_at < evaluated_from:
        return AlertVerdict(alert.id, alert.region, alert.direction, alert.detected_at, "warmup")
    matching = [s for s in shifts if _matches(alert, s)]
    if matching:
        best = min(matching, key=lambda s: (not s.primary, s.phase != "onset", s.start))
        verdict = ("expected" if best.primary
                   else "recovery" if best.phase == "recovery" else "secondary")
        return AlertVerdict(alert.id, alert.region, alert.direction, alert.detected_at,
                            verdict, best.shock)
    cause = next((s["name"] for s in truth.shocks if s["direction"] == "vpn"
                  and alert.country in (s["country"], country_of(s["exit_region"]))
                  and alert.detected_at >= s["onset"]), None)
    return AlertVerdict(alert.id, alert.region, alert.direction, alert.detected_at, "false",
                        cause)


def score_alerts(truth: Truth, records: Iterable[Mapping[str, Any]], *,
                 warmup_s: float = DEFAULT_WARMUP_S,
                 min_change_pp: float = DEFAULT_MIN_CHANGE_PP,
                 tolerance_s: float = DEFAULT_TOLERANCE_S) -> AlertScore:
    """Detection delay and misses per shock, and every alert's verdict (see module docstring)."""
    alerts = consolidate_alerts(records)
    shifts = expected_shifts(truth, min_change_pp, tolerance_s)
    evaluated_from = truth.start + warmup_s
    results = [_shock_result(truth, shock, shifts, alerts) for shock in truth.shocks]
    verdicts = [_alert_verdict(truth, alert, shifts, evaluated_from) for alert in alerts]
    weeks = max(0.0, truth.end - evaluated_from) / SECONDS_PER_WEEK
    return AlertScore(shocks=results, alerts=verdicts,
                      false_alarms=sum(v.verdict == "false" for v in verdicts),
                      evaluated_weeks=weeks)


# ---- the report -------------------------------------------------------------------------------


@dataclass
class Report:
    scenario: str
    start: float
    end: float
    evaluated_from: float
    network: SeriesError | None
    regions: list[SeriesError]
    total_variation_pp: float | None
    alerts: AlertScore
    intervals: dict[str, IntervalCoverage] | None = None
    notes: list[str] = field(default_factory=list)


def evaluate(truth: Truth, history: Mapping[str, Sequence[Mapping[str, Any]]],
             alert_records: Iterable[Mapping[str, Any]],
             snapshots: Iterable[Mapping[str, Any]] | None = None, *,
             warmup_s: float = DEFAULT_WARMUP_S, min_change_pp: float = DEFAULT_MIN_CHANGE_PP,
             tolerance_s: float = DEFAULT_TOLERANCE_S) -> Report:
    """The whole comparison; ``history`` maps a series (region code or 'network') to points."""
    t_from, t_to = truth.start + warmup_s, truth.end
    network = (series_errors(truth, NETWORK, history[NETWORK], t_from, t_to)
               if history.get(NETWORK) else None)
    codes = (set(history) - {NETWORK}) | set(truth.shares)
    regions = [series_errors(truth, code, history.get(code, []), t_from, t_to)
               for code in codes]
    regions.sort(key=lambda e: (-e.mean_true_share, e.series))
    notes = []
    if snapshots is None:
        notes.append("history points carry no intervals: 95 % interval coverage needs the "
                     "snapshot stream (--intervals-from-kafka)")
    if not any(e.points for e in regions):
        notes.append("no regional history points in the evaluated span")
    return Report(
        scenario=str(truth.header.get("name", "?")), start=truth.start, end=truth.end,
        evaluated_from=t_from, network=network, regions=regions,
        total_variation_pp=total_variation_pp(truth, history, t_from, t_to),
        alerts=score_alerts(truth, alert_records, warmup_s=warmup_s,
                            min_change_pp=min_change_pp, tolerance_s=tolerance_s),
        intervals=(interval_coverage(truth, snapshots, t_from, t_to)
                   if snapshots is not None else None),
        notes=notes,
    )


def report_json(report: Report) -> dict[str, Any]:
    body = asdict(report)
    body["alerts"]["false_alarms_per_week"] = report.alerts.false_alarms_per_week
    body["alerts"]["misses"] = report.alerts.misses
    return body


def _num(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _region_lines(report: Report, max_regions: int) -> list[str]:
    """The per-region table, and the network interval's coverage."""
    lines: list[str] = []
    lines.append("")
    header = (f"{'region':8s} {'pts':>5s} {'true %':>7s} {'MAE pp':>7s} {'bias pp':>8s} "
              f"{'p90 pp':>7s} {'sample pp':>9s} {'H |rel| %':>9s} {'H bias %':>8s}")
    if report.intervals is not None:
        header += f" {'cov s':>6s} {'cov sw':>6s} {'cov H':>6s}"
    lines.append(header)
    shown = [e for e in report.regions if e.points][:max_regions]
    for e in shown:
        row = (f"{e.series:8s} {e.points:5d} {e.mean_true_share * 100:7.2f} "
               f"{_num(e.share_mae_pp):>7s} {_num(e.share_bias_pp):>8s} "
               f"{_num(e.share_p90_pp):>7s} {_num(e.sample_bias_pp):>9s} "
               f"{_num(e.hashrate_mae_rel, 100):>9s} {_num(e.hashrate_bias_rel, 100):>8s}")
        if report.intervals is not None:
            coverage = report.intervals.get(e.series)
            row += (f" {_num(coverage.share_coverage if coverage else None, 100, 0):>6s}"
                    f" {_num(coverage.share_window_coverage if coverage else None, 100, 0):>6s}"
                    f" {_num(coverage.hashrate_coverage if coverage else None, 100, 0):>6s}")
        if not e.in_truth:
            row += "  (not in truth: true share 0)"
        lines.append(row)
    hidden = len([e for e in report.regions if e.points]) - len(shown)
    if hidden > 0:
        lines.append(f"… {hidden} more regions in --json")
    if report.intervals is not None and NETWORK in report.intervals:
        cov = report.intervals[NETWORK]
        lines.append(f"network 95 % interval held the truth in "
                     f"{_num(cov.hashrate_coverage, 100, 1)} % of {cov.snapshots} snapshots "
                     f"({_num(cov.hashrate_window_coverage, 100, 1)} % for the window mean)")
        lines.append("cov s / cov sw / cov H: % of snapshots whose 95 % interval held the true "
                     "share (at as_of / window mean) and hashrate")
    return lines


def _alert_lines(report: Report) -> list[str]:
    """Per shock how it was seen; the alerts by verdict, and each false alarm."""
    lines: list[str] = []
    score = report.alerts
    lines += ["", f"{'shock':28s} {'region':7s} {'dir':4s} {'Δ pp':>7s} {'status':15s} "
                  f"{'delay min':>9s} {'onset err min':>13s}"]
    for s in score.shocks:
        lines.append(
            f"{s.shock[:28]:28s} {s.region or 'pools':7s} {s.direction:4s} {_num(s.change_pp):>7s} "
            f"{s.status:15s} {_num(s.delay_s, 1 / 60, 1):>9s} "
            f"{_num(s.started_at_error_s, 1 / 60, 1):>13s}")
    if not score.shocks:
        lines.append("(no scripted shocks)")
    counts: dict[str, int] = {}
    for verdict in score.alerts:
        counts[verdict.verdict] = counts.get(verdict.verdict, 0) + 1
    per_week = score.false_alarms_per_week
    lines += ["", f"alerts: {len(score.alerts)} ("
                  + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")",
              f"misses: {score.misses}; false alarms: {score.false_alarms} over "
              f"{score.evaluated_weeks:.2f} simulated weeks = "
              f"{_num(per_week)} per week"]
    for verdict in score.alerts:
        if verdict.verdict == "false":
            cause = f" (caused by vpn shock {verdict.shock})" if verdict.shock else ""
            lines.append(f"  false alarm {verdict.region} {verdict.direction} at "
                         f"+{(verdict.detected_at - report.start) / 3600:.2f} h{cause}")
    return lines


def format_report(report: Report, max_regions: int = 20) -> str:
    """A plain-text table of the report for the terminal."""
    lines = [
        f"scenario {report.scenario}: {(report.end - report.start) / 3600:.1f} h simulated, "
        f"evaluated from +{(report.evaluated_from - report.start) / 60:.0f} min",
    ]
    if report.network is not None:
        n = report.network
        lines.append(
            f"network hashrate: {n.points} points, mean |rel err| "
            f"{_num(n.hashrate_mae_rel, 100)} %, bias {_num(n.hashrate_bias_rel, 100)} %, "
            f"p90 {_num(n.hashrate_p90_rel, 100)} %")
    if report.total_variation_pp is not None:
        lines.append(f"map misplaced (½Σ|ŝ−s| over countries): {report.total_variation_pp:.2f} pp")
    lines += _region_lines(report, max_regions)
    lines += _alert_lines(report)
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


# ---- readers (edge: Redis, HTTP, Kafka) --------------------------------------------------------


def read_from_redis(redis_url: str, prefix: str, start: float, end: float
                    ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """History series and alert records the pipeline wrote to Redis within [start, end]."""
    import redis

    from streams.rediskeys import RedisKeys

    keys = RedisKeys(prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        history_prefix = keys.history("")
        history: dict[str, list[dict[str, Any]]] = {}
        for key in client.scan_iter(match=history_prefix + "*", count=500):
            name = key.decode() if isinstance(key, bytes) else str(key)
            members: list[Any] = client.zrangebyscore(name, start, end)
            history[name[len(history_prefix):]] = [json.loads(m) for m in members]
        records: list[Any] = client.zrangebyscore(keys.alerts, start, "+inf")
        alerts = [json.loads(m) for m in records]
    finally:
        client.close()
    return history, alerts


def read_from_api(base_url: str, series: Iterable[str], start: float, end: float,
                  step_s: float = 60.0, timeout_s: float = 30.0, transport: Any = None
                  ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """History per series via ``GET /v1/estimates/history`` and alerts via ``GET /v1/alerts``.

    A series the API does not know (404) is left out; ``transport`` is httpx's, for tests.
    """
    import httpx

    history: dict[str, list[dict[str, Any]]] = {}
    with httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                      transport=transport) as client:
        for code in series:
            params: dict[str, Any] = {"start": start, "end": end, "step": step_s}
            if code != NETWORK:
                params["region"] = code
            response = client.get("/v1/estimates/history", params=params)
            if response.status_code == 404:
                continue
            response.raise_for_status()
            history[code] = list(response.json().get("points", []))
        response = client.get("/v1/alerts", params={"since": start, "limit": 1000})
        response.raise_for_status()
        alerts = list(response.json().get("alerts", []))
    return history, alerts


async def read_estimates_topic(options: Mapping[str, Any], topic: str, start: float,
                               end: float, idle_timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Every snapshot on the ``estimates`` topic with ``as_of`` in [start, end], from offset 0."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, **options, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    snapshots: list[dict[str, Any]] = []
    try:
        # Without a group the consumer takes every partition once it has the topic's metadata.
        deadline = asyncio.get_running_loop().time() + idle_timeout_s
        while not consumer.assignment() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        partitions = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        if not partitions:
            return snapshots
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(timeout_ms=int(idle_timeout_s * 1000),
                                           max_records=5000)
            if not batch:
                break
            for tp, messages in batch.items():
                for message in messages:
                    if message.value is None:
                        continue
                    snapshot = json.loads(message.value)
                    if start <= float(snapshot.get("as_of", -1.0)) <= end:
                        snapshots.append(snapshot)
                if messages and messages[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return snapshots


def write_plot(report: Report, truth: Truth,
               history: Mapping[str, Sequence[Mapping[str, Any]]],
               path: str | Path, top: int = 6) -> None:
    """Truth vs estimate for the network hashrate and the top countries' shares (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = (truth.t - truth.start) / 3600.0
    figure, (network_axis, share_axis) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    network_axis.plot(hours, truth.network_hs / 1e18, color="black", label="truth")
    t_net, h_net = _finite(history.get(NETWORK, []), "hashrate_hs")
    if t_net.size:
        network_axis.plot((t_net - truth.start) / 3600.0, h_net / 1e18, color="tab:red",
                          linewidth=0.8, label="estimate")
    network_axis.set_ylabel("network hashrate (EH/s)")
    network_axis.legend(loc="best")
    countries = [e.series for e in report.regions if "-" not in e.series][:top]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, code in enumerate(countries):
        color = colors[index % len(colors)]
        share_axis.plot(hours, truth.share_at(code, truth.t) * 100, color=color, label=code)
        t_est, s_est = _finite(history.get(code, []), "share")
        if t_est.size:
            share_axis.plot((t_est - truth.start) / 3600.0, s_est * 100, color=color,
                            linestyle="--", linewidth=0.8)
    for verdict in report.alerts.alerts:
        style = "-" if verdict.verdict != "false" else ":"
        share_axis.axvline((verdict.detected_at - truth.start) / 3600.0, color="grey",
                           linestyle=style, linewidth=0.6)
    for shock in truth.shocks:
        for axis in (network_axis, share_axis):
            axis.axvspan((shock["onset"] - truth.start) / 3600.0,
                         (shock["full_effect"] - truth.start) / 3600.0 + 1e-3,
                         color="orange", alpha=0.15)
    share_axis.set_ylabel("share of network (%) — solid truth, dashed estimate")
    share_axis.set_xlabel("hours since scenario start (orange: shocks; grey: alerts)")
    share_axis.legend(loc="best", ncol=3)
    figure.suptitle(f"hashatlas vs truth: {report.scenario}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
