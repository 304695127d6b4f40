"""Every PromQL expression of the dashboards and the rules, run by a real Prometheus (Debian's
``prometheus``) against the real metric families of the pipeline and the API.

A small HTTP server in the test serves ``streams.metrics`` (the collectors the compactor and
the workers expose) and ``api.metrics.render_metrics`` reading a real Redis that holds a snapshot
in the publisher's key layout. The values make one coherent incident in which every alert's
condition holds, so every expression must return data: the share feed has stalled (the share
counters stand still while the consumer lag on ``shares`` grows and the snapshot says it is
stale), a price source sends 5 % malformed messages, and the shift detector reports KZ.
The network figures are CCAF's and Coin Metrics' for 2019-08-31 (tests/data/cbeci), so the
dashboards' derived numbers (EH/s, TWh/yr) are checked against published values.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import random
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pycountry
import pytest
import redis
import yaml
from fastapi import FastAPI
from prometheus_client import REGISTRY, generate_latest

from api.deps import redis_lifespan
from api.metrics import RequestMetrics, render_metrics
from streams import metrics as pipeline
from streams.contracts import RegionalShiftAlert
from streams.models.snapshot import EstimateSnapshot
from streams.rediskeys import RedisKeys
from streams.settings import Settings
from tests.conftest import free_port
from tests.integration.api_helpers import pattern_chain

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
RULE_FILES = [PROMETHEUS_DIR / "rules" / "recording.yml", PROMETHEUS_DIR / "rules" / "alerts.yml"]

DAY = "2019-08-31"
HOURS_PER_YEAR = 8766.0
BANDS = ("lower", "best", "upper")
# CCAF's country shares, Sep 2019 – Apr 2020 average (METHOD.md); the rest is unknown (ZZ).
SHARES = {"CN": 0.6508, "US": 0.0724, "RU": 0.0690, "KZ": 0.0617, "MY": 0.0433, "IR": 0.0382,
          "CA": 0.0082, "DE": 0.0056}
SHARES["ZZ"] = 1.0 - sum(SHARES.values())
XINJIANG_SHARE = 0.3576
SHIFTED_REGION = "KZ"
PREFIX = "promqltest"
SCRAPE_INTERVAL_S = 1
MIN_SCRAPES = 3
RATE_INTERVAL = "1m"


def _row(path: Path, key: str) -> dict[str, str]:
    with path.open() as handle:
        return next(row for row in csv.DictReader(handle) if row[key] == DAY)


@dataclass(frozen=True)
class Day:
    """The published figures of one real day."""

    hashrate_hs: float
    power_w: dict[str, float]
    twh: dict[str, float]
    hashprice_usd_ph_day: float


def load_day(test_data: Path) -> Day:
    coinmetrics = _row(test_data / "cbeci" / "coinmetrics_btc_daily.csv", "time")
    ccaf = _row(test_data / "cbeci" / "ccaf_published_daily.csv", "date")
    hashrate_hs = float(coinmetrics["HashRate"]) * 1e12
    revenue_usd = float(coinmetrics["IssTotUSD"]) + float(coinmetrics["FeeTotUSD"])
    return Day(
        hashrate_hs=hashrate_hs,
        power_w={band: float(ccaf[f"power_gw_{band}"]) * 1e9 for band in BANDS},
        twh={band: float(ccaf[f"twh_{band}"]) for band in BANDS},
        hashprice_usd_ph_day=revenue_usd / (hashrate_hs / 1e15),
    )


def _band(power_w: dict[str, float], fraction: float) -> dict[str, float]:
    return {band: value * fraction for band, value in power_w.items()}


def _twh(power_w: dict[str, float]) -> dict[str, float]:
    return {band: value * HOURS_PER_YEAR / 1e12 for band, value in power_w.items()}


def _region_entry(code: str, share: float, day: Day) -> dict[str, Any]:
    country = pycountry.countries.get(alpha_2=code)
    subdivision = pycountry.subdivisions.get(code=code) if "-" in code else None
    name = country.name if country else subdivision.name if subdivision else "Unknown"
    half_width = 1.96 * math.sqrt(share * (1 - share) / 4000)
    power = _band(day.power_w, share)
    return {
        "region": code, "name": name, "share": share,
        "share_ci95": [max(0.0, share - half_width), share + half_width],
        "sampling_ci95": [max(0.0, share - half_width), share + half_width],
        "share_se_parts": {"sampling": half_width / 1.96, "pool_weights": 0.0,
                           "heterogeneity": 0.0, "clustering": 0.0},
        "hashrate_hs": share * day.hashrate_hs,
        "hashrate_ci95_hs": [(share - half_width) * day.hashrate_hs,
                             (share + half_width) * day.hashrate_hs],
        "sample_hashrate_hs": 0.4 * share * day.hashrate_hs, "sample_hashrate_ci95_hs": None,
        "power_w": power, "annualized_twh": _twh(power), "electricity_usd_kwh": 0.05,
        "subdivisions": ["CN-XJ"] if code == "CN" else [],
    }


def build_snapshot(day: Day, now: float) -> dict[str, Any]:
    """A snapshot as the publisher writes it, stale because no share input arrives."""
    snapshot = {
        "type": "estimate", "as_of": now - 48.0, "published_at": now, "window_s": 300,
        "stale": True, "max_event_ts": now - 48.0,
        "network": {
            "hashrate_hs": day.hashrate_hs,
            "hashrate_ci95_hs": [0.96 * day.hashrate_hs, 1.04 * day.hashrate_hs],
            "source": "fused", "sources": ["shares", "blocks"], "coverage": 0.41,
            "sample_hashrate_hs": 0.41 * day.hashrate_hs, "power_w": day.power_w,
            "annualized_twh": _twh(day.power_w),
            "hashprice_usd_ph_day": day.hashprice_usd_ph_day, "coverage_ci95": None,
            "coverage_status": None, "coverage_long_window": None, "coverage_shift_z": None,
            "interval_note": None,
            "unlisted_region_share_max": 1.0,
            "profitability_threshold_j_gh": None, "block_hashrate_hs": None,
            "block_hashrate_ci95_hs": None, "blocks_seen": 0, "tip_height": None,
            "implausible_pools": {},
        },
        "regions": [_region_entry(code, share, day) for code, share in SHARES.items()],
        "subdivisions": [_region_entry("CN-XJ", XINJIANG_SHARE, day)],
        "pools": pools_of_the_day(day, now),
        "site_utilisation": [],
    }
    EstimateSnapshot.model_validate(snapshot)
    return snapshot


SAMPLED_POOL = "f2pool"


def pools_of_the_day(day: Day, now: float) -> dict[str, Any]:
    """The pools section the leader would publish: 300 blocks at the day's difficulty, F2Pool
    sampled but seen only in part (its shares show 8 %, its blocks 1 in 5: diverging), a few
    pools and unknown blocks."""
    from streams.core.pools import PoolMemory, pools_section

    pattern = ["f2pool", "antpool", "btc-com", "poolin", "unknown"]
    blocks = 300
    chain = pattern_chain(pattern, blocks, first_height=592_000, first_time=now - 600.0 * blocks,
                          difficulty=day.hashrate_hs * 600 / 2**32, subsidy_sat=1_250_000_000,
                          fees_sat=30_000_000, names={p: p for p in pattern})
    coverage = [f.name for f in fields(chain) if f.name.startswith("coverage_")]

    class Rate:
        hashrate_hs = 0.08 * day.hashrate_hs

    memory = PoolMemory()
    rates = {900.0: {(SAMPLED_POOL, "CN"): Rate()}}
    for seen in range(100, blocks):  # the leader sees the blocks arrive, one at a time
        view = replace(chain, **{name: getattr(chain, name)[:seen] for name in coverage})
        pools_section(chain.coverage_times[seen - 1] + 1.0, rates, view, day.hashrate_hs,
                      None, None, memory)
    return pools_section(now, rates, chain, day.hashrate_hs,
                         (0.96 * day.hashrate_hs, 1.04 * day.hashrate_hs), None, memory)


def shift_alert(now: float) -> dict[str, Any]:
    alert = {
        "type": "regional_shift", "id": f"{SHIFTED_REGION}-{int(now) - 1800}",
        "region": SHIFTED_REGION, "direction": "down", "detected_at": now - 900.0,
        "started_at": now - 1800.0, "share_before": 0.18, "share_after": SHARES[SHIFTED_REGION],
        "magnitude_pp": (SHARES[SHIFTED_REGION] - 0.18) * 100,
        "relative_change": SHARES[SHIFTED_REGION] / 0.18 - 1, "score": 14.2,
        "state": "firing", "updated_at": now - 900.0,
    }
    RegionalShiftAlert.model_validate(alert)
    return alert


class Incident:
    """Moves the real metrics the way the processes would during the incident."""

    def __init__(self, redis_url: str, day: Day) -> None:
        self.settings = Settings(redis_url=redis_url, redis_prefix=PREFIX)
        self.redis = redis.Redis.from_url(redis_url)
        self.keys = RedisKeys(PREFIX)
        self.day = day
        self.api = RequestMetrics()
        self.random = random.Random(20190831)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.time()

    def start(self) -> None:
        # Before the stall: the share path worked, so its series exist and then stand still.
        pipeline.EVENTS_CONSUMED.labels("shares").inc(120_000)
        pipeline.EVENTS_CONSUMED.labels("share-batches").inc(2_400)
        pipeline.EVENTS_DEAD_LETTERED.labels("share-batches").inc(0)
        pipeline.EVENTS_CONSUMED.labels("blocks").inc(3)
        for outcome, count in (("credited", 118_000), ("rejected", 1_500), ("duplicate", 400),
                               ("late", 100)):
            pipeline.SHARES.labels(outcome).inc(count)
        pipeline.SHARE_BATCHES_EMITTED.inc(2_400)
        pipeline.ALERTS_PUBLISHED.labels("firing").inc()
        now = time.time()
        self.redis.zadd(self.keys.alerts, {orjson.dumps(shift_alert(now)): now - 900.0})
        self._tick()
        self.thread.start()

    def _tick(self) -> None:
        now = time.time()
        elapsed = now - self.started
        started = time.perf_counter()
        body = orjson.dumps(build_snapshot(self.day, now))
        self.redis.hset(self.keys.snapshot, mapping={
            "json": body, "etag": f"{int(now * 1000):x}", "as_of": str(now - 48.0),
            "published_at": str(now)})
        pipeline.SNAPSHOTS_PUBLISHED.inc()
        pipeline.SNAPSHOT_PUBLISH_SECONDS.observe(
            time.perf_counter() - started + self.random.uniform(0.002, 0.02))
        pipeline.CHECKPOINTS.inc()
        pipeline.EVENTS_CONSUMED.labels("market").inc(20)
        pipeline.EVENTS_DEAD_LETTERED.labels("market").inc(1)
        pipeline.CONSUMER_LAG.labels("shares").set(20_000 + 1_500 * elapsed)
        pipeline.CONSUMER_LAG.labels("share-batches").set(0)
        pipeline.EVENT_TIME_LAG.labels("shares").set(48.0 + elapsed)
        pipeline.EVENT_TIME_LAG.labels("market").set(self.random.uniform(0.2, 1.5))
        for _ in range(5):
            self.api.observe("/v1/estimates/current", "GET", 200,
                             self.random.uniform(0.0003, 0.002))
        self.api.observe("/v1/regions/{region}", "GET", 200, self.random.uniform(0.0005, 0.003))
        self.api.observe("/v1/regions/{region}", "GET", 404, self.random.uniform(0.0004, 0.001))
        self.api.observe("/metrics", "GET", 200, self.random.uniform(0.002, 0.008))
        self.api.sse_clients.set(3)

    def _run(self) -> None:
        while not self.stop.wait(0.25):
            self._tick()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.redis.close()

    async def api_exposition(self) -> bytes:
        """What the API's GET /metrics answers, with the store wired as the API wires it."""
        app = FastAPI()
        app.state.settings = self.settings
        async with redis_lifespan(app):
            return await render_metrics(app.state.store, self.api, self.settings.stale_after_s)


def serve(incident: Incident) -> ThreadingHTTPServer:
    """/pipeline: the pipeline processes' registry; /metrics: the API's exposition."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/pipeline":
                body = generate_latest(REGISTRY)
            elif self.path == "/metrics":
                body = asyncio.run(incident.api_exposition())
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def prometheus_config(target: str) -> dict[str, Any]:
    """The shipped prometheus.yml, with its hashatlas jobs pointed at the test server."""
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=f"{SCRAPE_INTERVAL_S}s", scrape_timeout="1s",
                            evaluation_interval=f"{SCRAPE_INTERVAL_S}s")
    config["rule_files"] = [str(PROMETHEUS_DIR / path) for path in config["rule_files"]]
    config.pop("alerting", None)
    jobs = []
    for job in config["scrape_configs"]:
        if not job["job_name"].startswith("hashatlas-"):
            continue
        job["static_configs"] = [{"targets": [target]}]
        job["metrics_path"] = "/metrics" if job["job_name"] == "hashatlas-api" else "/pipeline"
        jobs.append(job)
    assert {job["job_name"] for job in jobs} == {"hashatlas-api", "hashatlas-compactor",
                                                 "hashatlas-worker"}
    config["scrape_configs"] = jobs
    return config


class PrometheusAPI:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as error:
            answer = json.load(error)
        return answer

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", f"{expr}\n{answer.get('error')}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


@pytest.fixture(scope="module")
def day(test_data: Path) -> Day:
    return load_day(test_data)


@pytest.fixture(scope="module")
def prometheus(redis_server: str, day: Day,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusAPI]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (apt-get install -y prometheus)")
    incident = Incident(redis_server, day)
    incident.start()
    server = serve(incident)
    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(f"127.0.0.1:{server.server_port}")))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    api = PrometheusAPI(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 40
        scraped = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                counts = api.query('count_over_time(up{job=~"hashatlas-.*"}[1m])')
                ups = api.query('up{job=~"hashatlas-.*"}')
                scraped = (len(counts) == 3 and all(float(s["value"][1]) >= MIN_SCRAPES
                                                    for s in counts)
                           and all(s["value"][1] == "1" for s in ups))
            except OSError:
                pass
            if scraped:
                break
            time.sleep(0.5)
        if not scraped:
            targets = [(t["labels"]["job"], t["health"], t["lastError"])
                       for t in api.get("/api/v1/targets")["data"]["activeTargets"]]
            pytest.fail(f"Prometheus did not scrape the test targets {MIN_SCRAPES} times in "
                        f"40 s: {targets}\n" + (workdir / "prometheus.log").read_text()[-3000:])
        yield api
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
        server.shutdown()
        server.server_close()
        incident.close()


# ---- the expressions ---------------------------------------------------------------------------


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and annotation of every dashboard."""
    found = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        panels = [p for top in board["panels"] for p in [top, *top.get("panels", [])]]
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((f"{path.stem}: {panel['title']} [{target['refId']}]",
                              target["expr"]))
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                found.append((f"{path.stem}: annotation {annotation['name']}",
                              annotation["expr"]))
    return found


def rule_exprs() -> list[tuple[str, str]]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((rule.get("alert") or rule["record"], rule["expr"]))
    return found


def grafana_to_promql(expr: str, region: str = SHIFTED_REGION) -> str:
    """What Grafana sends for one selected region (the datasource variable is not in exprs)."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    expr = re.sub(r"\$\{?region\}?", region, expr)
    expr = re.sub(r"\$\{?pool\}?", SAMPLED_POOL, expr)
    assert "$" not in expr, expr
    return expr


def test_every_dashboard_expression_returns_data(prometheus: PrometheusAPI) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 40
    empty = [where for where, expr in exprs if not prometheus.query(grafana_to_promql(expr))]
    assert empty == [], f"dashboard queries with no data: {empty}"


def test_every_rule_expression_returns_data(prometheus: PrometheusAPI) -> None:
    """All alert conditions hold in this incident, so no expression may come back empty."""
    exprs = rule_exprs()
    assert len(exprs) == 17
    empty = [name for name, expr in exprs if not prometheus.query(expr)]
    assert empty == [], f"rule expressions with no data: {empty}"


def test_alert_conditions_name_what_is_wrong(prometheus: PrometheusAPI) -> None:
    exprs = dict(rule_exprs())

    def labels(alert: str, key: str) -> set[str]:
        return {sample["metric"].get(key, "") for sample in prometheus.query(exprs[alert])}

    assert labels("HashatlasRegionalShift", "region") == {SHIFTED_REGION}
    assert labels("HashatlasPoolDivergence", "pool") == {SAMPLED_POOL}
    assert labels("HashatlasDeadLetters", "topic") == {"market"}
    assert labels("HashatlasConsumerLagGrowing", "topic") == {"shares"}
    assert len(prometheus.query(exprs["HashatlasFeedStalled"])) == 1
    assert len(prometheus.query(exprs["HashatlasEstimatesStale"])) == 1
    (ratio,) = prometheus.query(exprs["topic:hashatlas_events_dead_lettered:ratio_rate5m"]
                                + ' > 0')
    assert float(ratio["value"][1]) == pytest.approx(1 / 20)
    # Prometheus itself evaluated the shipped alert rules: the regional shift is firing.
    firing = prometheus.query('ALERTS{alertname="HashatlasRegionalShift", alertstate="firing"}')
    assert [sample["metric"]["region"] for sample in firing] == [SHIFTED_REGION]


def test_region_variable_lists_the_snapshot_regions(prometheus: PrometheusAPI) -> None:
    answer = prometheus.get("/api/v1/label/region/values", **{
        "match[]": "hashatlas_region_share_ratio"})
    assert answer["status"] == "success"
    assert set(answer["data"]) == set(SHARES)


def _panel_target(board: str, title: str, legend: str) -> str:
    panels = json.loads((DASHBOARD_DIR / f"{board}.json").read_text())["panels"]
    panel = next(p for p in panels if p["title"] == title)
    return str(next(t["expr"] for t in panel["targets"] if t["legendFormat"] == legend))


def _value(prometheus: PrometheusAPI, expr: str) -> float:
    (sample,) = prometheus.query(grafana_to_promql(expr))
    return float(sample["value"][1])


def test_live_map_figures_match_published_values(prometheus: PrometheusAPI, day: Day) -> None:
    # Coin Metrics' HashRate (TH/s) for the day, in EH/s.
    hashrate = _value(prometheus, _panel_target("live-map", "Network hashrate (EH/s)", "best"))
    assert hashrate == pytest.approx(84.03317665768328, rel=1e-12)
    # CCAF's own annualised TWh for the day, from its GW band.
    for band in BANDS:
        twh = _value(prometheus, _panel_target("live-map", "Annualised energy (TWh/yr)", band))
        assert twh == pytest.approx(day.twh[band], rel=1e-12), band
    hashprice = _value(prometheus, _panel_target("live-map", "Hashprice (USD/PH/day)",
                                                 "hashprice"))
    assert hashprice == pytest.approx(239.873, rel=1e-5)


def test_geomap_query_gives_every_country_share(prometheus: PrometheusAPI) -> None:
    board = json.loads((DASHBOARD_DIR / "live-map.json").read_text())
    (geomap,) = [p for p in board["panels"] if p["type"] == "geomap"]
    all_regions = "(" + "|".join(sorted(SHARES)) + ")"  # what Grafana sends for "All"
    result = prometheus.query(grafana_to_promql(geomap["targets"][0]["expr"], all_regions))
    shares = {s["metric"]["region"]: float(s["value"][1]) for s in result}
    countries = {code: share for code, share in SHARES.items() if code != "ZZ"}
    assert shares == pytest.approx(countries, rel=1e-12)
    assert all(set(s["metric"]) == {"region"} for s in result)
