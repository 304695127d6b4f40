"""The real pipeline and API, scraped by Debian's real Prometheus with the shipped config and
rules: every dashboard and rule expression parses, and every metric it names is really exported
by the running processes (the incident test in test_promql.py checks the values)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from streams.settings import Settings, settings_env
from tests.conftest import free_port
from tests.integration.conftest import produce
from tests.integration.pipeline_helpers import Worker, wait_for_snapshot
from tests.integration.test_promql import (
    PROMETHEUS_DIR,
    PrometheusAPI,
    dashboard_exprs,
    grafana_to_promql,
    rule_exprs,
)

METRIC = re.compile(r"\b(hashatlas[_:][a-zA-Z0-9_:]+)")
#: Series that exist only while something is wrong (none is, in this healthy run).
ONLY_WHEN_FIRING = {"hashatlas_alerts_firing"}
#: Luck exists once the leader has seen blocks arrive live with share rates (the real blocks here
#: are historical); tests/integration/test_pool_alerts.py covers that path.
ONLY_AFTER_LIVE_BLOCKS = {"hashatlas_pool_luck_ratio", "hashatlas_pool_luck_lower_ratio",
                          "hashatlas_pool_luck_upper_ratio"}


def _start(args: list[str], settings: Settings, workdir: Path,
           name: str) -> subprocess.Popen[bytes]:
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "streams.cli", *args], cwd=workdir,
                            env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT)


def _recorded(rule_file: Path) -> set[str]:
    return {rule["record"] for group in yaml.safe_load(rule_file.read_text())["groups"]
            for rule in group["rules"] if "record" in rule}


async def test_live_pipeline_exports_every_metric_the_dashboards_and_rules_use(
    isolated_settings: Settings, tmp_path: Path, test_data: Path
) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (apt-get install -y prometheus)"
    api_port, compactor_port, worker_port, prom_port = (free_port() for _ in range(4))
    settings = isolated_settings.model_copy(update={"api_port": api_port})
    await produce(settings, settings.topics.blocks,
                  (test_data / "real_blocks.jsonl").read_bytes().splitlines())
    await produce(settings, settings.topics.market,
                  [{"type": "price", "ts": time.time(), "btc_usd": 95_000.0}])
    worker = Worker(settings, tmp_path, "worker", metrics_port=worker_port)
    compactor = _start(["compactor", "--metrics-port", str(compactor_port)], settings,
                       tmp_path, "compactor")
    api = _start(["api"], settings, tmp_path, "api")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets = {"hashatlas-api": api_port, "hashatlas-compactor": compactor_port,
               "hashatlas-worker": worker_port}
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / path) for path in config["rule_files"]]
    config.pop("alerting", None)
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]}
        for job in config["scrape_configs"] if job["job_name"] in targets]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prometheus = PrometheusAPI(f"http://127.0.0.1:{prom_port}")
    try:
        now = time.time()
        shares = [{"type": "share", "ts": now - 60 + i * 0.05, "pool": "foundry-usa",
                   "region": ("US-TX", "KZ", "CA")[i % 3], "difficulty": 65536.0}
                  for i in range(1200)]
        await produce(settings, settings.topics.shares, [*shares, b"not json"])
        await wait_for_snapshot(settings, lambda s: s["network"]["blocks_seen"] == 5
                                and bool(s["regions"]), 90, [worker])
        for path in ("/v1/estimates/current", "/v1/regions/US", "/v1/regions/XX"):
            with contextlib.suppress(urllib.error.HTTPError):  # the 404 is wanted too
                urllib.request.urlopen(f"http://127.0.0.1:{api_port}{path}", timeout=5).read()
        # Every target scraped again after the snapshot was there: scrapes from before it
        # (Prometheus runs from the start) would miss the snapshot's gauges.
        ready_at = time.time()
        deadline = time.monotonic() + 40
        while True:
            ups = prometheus.query('up{job=~"hashatlas-.*"}') if _answers(prom_port) else []
            counts = (prometheus.query('count_over_time(up{job=~"hashatlas-.*"}[1m])')
                      if ups else [])
            if len(ups) == 3 and all(u["value"][1] == "1" for u in ups) and all(
                    float(c["value"][1]) >= 3 for c in counts) and all(
                    float(t["value"][1]) > ready_at
                    for t in prometheus.query('timestamp(up{job=~"hashatlas-.*"})')):
                break
            assert time.monotonic() < deadline, f"targets not scraped: {ups}"
            await asyncio.sleep(0.5)

        recorded = _recorded(PROMETHEUS_DIR / "rules" / "recording.yml")
        exprs = [*dashboard_exprs(), *rule_exprs()]
        names = set()
        for _, expr in exprs:
            prometheus.query(grafana_to_promql(expr, region="US"))  # asserts it parses
            names |= {n for n in METRIC.findall(expr) if n not in recorded}
        exempt = ONLY_WHEN_FIRING | ONLY_AFTER_LIVE_BLOCKS
        exported = {n for n in names if n not in exempt
                    and prometheus.query(f'count({{__name__="{n}"}})')}
        missing = sorted(names - exempt - exported)
        assert missing == [], f"metrics the dashboards/rules use that nothing exports: {missing}"
        assert len(names) > 20
    finally:
        prom.terminate()
        for proc in (api, compactor):
            proc.terminate()
            proc.wait(timeout=30)
        worker.stop()
        prom.wait(timeout=15)


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1).read()
    except OSError:
        return False
    return True
