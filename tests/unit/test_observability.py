"""Observability and packaging files: Prometheus config and rules (checked and unit-tested by
promtool), the Alertmanager example (amtool), Grafana provisioning and dashboards, and the
compose file. Their PromQL is run against a real Prometheus in tests/integration/test_promql.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIGS = [PROMETHEUS_DIR / "prometheus.yml", PROMETHEUS_DIR / "prometheus.compose.yml"]
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
PROVISIONING = ROOT / "grafana" / "provisioning"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

DATASOURCE_UID = "hashatlas-prometheus"
DATASOURCE_REF = "${datasource}"
REGION_QUERY = "label_values(hashatlas_region_share_ratio, region)"
RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase)\(")
GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)")
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__all"}
PANELS_WITHOUT_QUERIES = {"row", "text"}


def run_tool(tool: str, *args: str | Path) -> str:
    """Run a Prometheus tool; fail (never skip) when it is missing or reports a problem."""
    binary = shutil.which(tool)
    if binary is None:
        package = "prometheus-alertmanager" if tool == "amtool" else "prometheus"
        pytest.fail(f"{tool} is not installed: apt-get install -y {package}")
    result = subprocess.run([binary, *map(str, args)], capture_output=True, text=True,
                            timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{tool} {' '.join(map(str, args))} failed:\n{output}"
    return output


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS_DIR / "rules" / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def all_rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in load_yaml(path)["groups"]
            for rule in group["rules"]]


def dashboard(name: str) -> dict[str, Any]:
    board: dict[str, Any] = json.loads((DASHBOARD_DIR / f"{name}.json").read_text())
    return board


def panels_of(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def exprs_of(board: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in panels_of(board) for target in panel.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    return exprs


def range_arguments(expr: str) -> list[str]:
    """The argument text of every rate(/irate(/increase( call, up to its closing parenthesis."""
    arguments = []
    for match in RANGE_FUNCTION.finditer(expr):
        depth, start = 1, match.end()
        position = start
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[position], 0)
            position += 1
        arguments.append(expr[start:position - 1])
    return arguments


# ---- Prometheus ----------------------------------------------------------------------------


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_promtool_accepts_the_config_and_its_rule_files(config: Path) -> None:
    output = run_tool("promtool", "check", "config", config)
    assert "2 rule files found" in output


def test_promtool_accepts_the_rules() -> None:
    assert {p.name for p in RULE_FILES} == {"alerts.yml", "recording.yml"}
    output = run_tool("promtool", "check", "rules", *RULE_FILES)
    assert output.count("SUCCESS") == len(RULE_FILES)


def test_promtool_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool tests in deploy/prometheus/tests"
    output = run_tool("promtool", "test", "rules", *RULE_TESTS)
    assert output.count("SUCCESS") == len(RULE_TESTS), output


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names == {"HashatlasRegionalShift", "HashatlasEstimatesStale", "HashatlasFeedStalled",
                     "HashatlasConsumerLagGrowing", "HashatlasDeadLetters",
                     "HashatlasPoolDivergence"}
    assert names - fired == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"


def test_alerts_carry_severity_and_a_summary() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    shift = next(r for r in alert_rules() if r["alert"] == "HashatlasRegionalShift")
    assert "by (region)" in shift["expr"] and "hashatlas_alerts_firing" in shift["expr"]


def test_rules_use_explicit_ranges_only() -> None:
    for rule in all_rules():
        assert "$__" not in rule["expr"], rule
        for argument in range_arguments(rule["expr"]):
            assert re.search(r"\[\d+[smh]\]", argument), (rule, argument)


def test_scrape_jobs_match_the_processes_and_the_rules() -> None:
    local = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert local["global"]["scrape_interval"] == "5s"
    targets = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
               for job in local["scrape_configs"]}
    assert targets["hashatlas-api"] == ["127.0.0.1:8000"]
    assert targets["hashatlas-compactor"] == ["127.0.0.1:9110"]
    assert targets["hashatlas-worker"] == [f"127.0.0.1:{port}" for port in range(9111, 9115)]
    # The ports are the pipeline's defaults: compactor at metrics_port_base, first worker +1.
    defaults = Settings()
    assert (defaults.api_port, defaults.metrics_port_base) == (8000, 9110)
    # Jobs the rules select on exist in both the local and the compose config.
    rule_jobs = {job for rule in all_rules() for job in re.findall(r'job="([^"]+)"', rule["expr"])}
    assert rule_jobs
    for config in PROMETHEUS_CONFIGS:
        jobs = {job["job_name"] for job in load_yaml(config)["scrape_configs"]}
        assert rule_jobs <= jobs, config.name


def test_rule_topic_names_are_the_default_topics() -> None:
    topics = Settings().topics
    feed = next(r for r in alert_rules() if r["alert"] == "HashatlasFeedStalled")
    assert f'topic=~"{topics.shares}|{topics.compacted_shares}"' in feed["expr"]


# ---- Alertmanager ----------------------------------------------------------------------------


def test_amtool_accepts_the_alertmanager_example() -> None:
    output = run_tool("amtool", "check-config", ALERTMANAGER_CONFIG)
    assert "SUCCESS" in output


def test_regional_shift_routes_to_the_webhook_grouped_by_region() -> None:
    output = run_tool("amtool", "config", "routes", "test",
                      f"--config.file={ALERTMANAGER_CONFIG}",
                      "alertname=HashatlasRegionalShift", "region=KZ", "severity=warning")
    assert output.split()[0] == "regional-shift-webhook"
    config = load_yaml(ALERTMANAGER_CONFIG)
    route = next(r for r in config["route"]["routes"] if r["receiver"] == "regional-shift-webhook")
    assert "region" in route["group_by"]
    receiver = next(r for r in config["receivers"] if r["name"] == "regional-shift-webhook")
    assert receiver["webhook_configs"][0]["url"] == "http://127.0.0.1:8765/alerts"
    other = run_tool("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
                     "alertname=HashatlasFeedStalled")
    assert other.split()[0] == "hashatlas-oncall"


# ---- Grafana -------------------------------------------------------------------------------


def test_dashboards_are_the_expected_with_unique_uids() -> None:
    assert {p.stem for p in DASHBOARDS} == {"live-map", "regions", "pipeline", "capacity",
                                            "pools"}
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    assert all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_lint(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["schemaVersion"] == 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    assert source["current"]["value"] == DATASOURCE_UID

    panels = panels_of(board)
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids), "duplicate panel ids"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] in PANELS_WITHOUT_QUERIES:
            continue
        assert panel["datasource"]["uid"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no target"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_REF, panel["title"]
            assert target["expr"].strip(), f"empty expr in {panel['title']!r}"
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"]["uid"] == DATASOURCE_REF, annotation["name"]

    exprs = exprs_of(board)
    for expr in exprs:
        for argument in range_arguments(expr):
            assert argument.rstrip().endswith("[$__rate_interval]"), expr
        for name in GRAFANA_VARIABLE.findall(expr):
            assert name in variables or name in GRAFANA_BUILTINS, f"undefined ${name} in {expr}"
    for panel in panels:
        for name in GRAFANA_VARIABLE.findall(panel["title"]):
            assert name in variables, f"undefined ${name} in {panel['title']!r}"
        if "repeat" in panel:
            assert panel["repeat"] in variables, panel["title"]
    assert "region" in variables or not any("$region" in e for e in exprs)


@pytest.mark.parametrize("name", ["live-map", "regions"])
def test_region_variable(name: str) -> None:
    region = {v["name"]: v for v in dashboard(name)["templating"]["list"]}["region"]
    assert region["type"] == "query"
    assert region["query"]["query"] == REGION_QUERY == region["definition"]
    assert region["datasource"]["uid"] == DATASOURCE_REF
    assert region["multi"] and region["includeAll"]


def test_live_map_geomap_shows_country_shares_by_iso_code() -> None:
    board = dashboard("live-map")
    geomaps = [p for p in panels_of(board) if p["type"] == "geomap"]
    assert len(geomaps) == 1
    geomap = geomaps[0]
    (layer,) = geomap["options"]["layers"]
    assert layer["location"] == {"mode": "lookup", "lookup": "region",
                                 "gazetteer": "public/gazetteer/countries.json"}
    (target,) = geomap["targets"]
    assert "hashatlas_region_share_ratio" in target["expr"]
    assert 'region=~"[A-Z]{2}"' in target["expr"]
    assert target["instant"] and target["format"] == "table"
    stats = {p["title"]: p for p in panels_of(board) if p["type"] == "stat"}
    for wanted in ("Network hashrate (EH/s)", "Network power", "Annualised energy (TWh/yr)",
                   "Hashprice (USD/PH/day)", "Coverage"):
        assert wanted in stats
    hashrate = [t["legendFormat"] for t in stats["Network hashrate (EH/s)"]["targets"]]
    power = [t["legendFormat"] for t in stats["Network power"]["targets"]]
    assert hashrate == power == ["lower", "best", "upper"]


def test_regions_dashboard_bands_and_alert_annotations() -> None:
    board = dashboard("regions")
    panels = panels_of(board)
    bands = [p for p in panels if any(
        o["matcher"]["options"] == "upper" and any(
            prop["id"] == "custom.fillBelowTo" and prop["value"] == "lower"
            for prop in o["properties"])
        for o in p.get("fieldConfig", {}).get("overrides", []))]
    titles = {p["title"] for p in bands}
    assert {"$region hashrate, 95% interval", "$region share, 95% interval",
            "$region power band"} <= titles
    annotation_exprs = [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    assert any('ALERTS{alertname="HashatlasRegionalShift"' in e for e in annotation_exprs)
    assert any("hashatlas_alerts_firing" in e for e in annotation_exprs)


def test_pipeline_dashboard_covers_the_pipeline_and_api_metrics() -> None:
    exprs = " ".join(exprs_of(dashboard("pipeline")))
    for metric in ("hashatlas_events_consumed_total", "hashatlas_events_dead_lettered_total",
                   "hashatlas_processing_lag_seconds", "hashatlas_consumer_lag_messages",
                   "hashatlas_snapshot_age_seconds",
                   "hashatlas_snapshot_publish_duration_seconds_bucket",
                   "hashatlas_api_requests_total", "hashatlas_api_request_duration_seconds_bucket"):
        assert metric in exprs, metric


def test_grafana_provisioning_points_at_the_dashboards_and_the_datasource() -> None:
    (source,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert (source["uid"], source["type"]) == (DATASOURCE_UID, "prometheus")
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "hashatlas.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    grafana = load_yaml(COMPOSE_FILE)["services"]["grafana"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert source["url"] == "http://prometheus:9090"


# ---- docker-compose.yml and Dockerfile ------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return loaded


def test_compose_services_and_their_dependencies() -> None:
    services = compose()["services"]
    assert {"kafka", "redis", "compactor", "worker", "api", "simulator", "prometheus",
            "grafana"} <= set(services)
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert spec["condition"] in conditions, (name, dependency)
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    waits_for_health = {name for name, s in services.items()
                        if any(d["condition"] == "service_healthy"
                               for d in s.get("depends_on", {}).values())}
    assert {"compactor", "worker", "api", "simulator", "grafana"} <= waits_for_health
    for long_running in ("kafka", "redis", "compactor", "worker", "api", "prometheus",
                         "grafana"):
        assert "healthcheck" in services[long_running], long_running
    assert "container_name" not in services["worker"] and "ports" not in services["worker"], (
        "a scaled worker cannot have a fixed name or host port")


def test_compose_runs_the_hashatlas_commands() -> None:
    services = compose()["services"]
    image = {name for name, s in services.items() if s.get("image") == "hashatlas:local"}
    assert {"compactor", "worker", "api", "simulator"} <= image
    assert all(services[name].get("build") == "." for name in image)
    assert services["compactor"]["command"][0] == "compactor"
    assert services["worker"]["command"][0] == "worker"
    assert services["api"]["command"] == ["api"]
    assert services["simulator"]["command"] == ["simulate", "scenarios/steady.yaml",
                                                "--speed", "60"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "INTERNAL://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    for name in image:
        env = services[name]["environment"]
        assert env["HASHATLAS_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["HASHATLAS_REDIS_URL"].startswith("redis://redis:")


def test_compose_commands_parse_with_the_real_cli() -> None:
    """Each hashatlas service's command is accepted by `hashatlas`'s own argument parser."""
    from streams.cli import build_parser

    invalid = []
    for name, service in compose()["services"].items():
        if service.get("image") != "hashatlas:local":
            continue
        try:
            build_parser().parse_args(service["command"])
        except SystemExit:
            invalid.append(f"{name}: hashatlas {' '.join(service['command'])}")
    assert invalid == [], "commands the hashatlas CLI rejects"


def test_compose_settings_are_real_settings() -> None:
    """Every HASHATLAS_* variable the compose file sets names a field of Settings."""
    fields = Settings.model_fields
    for name, service in compose()["services"].items():
        for variable in service.get("environment", {}):
            if not variable.startswith("HASHATLAS_"):
                continue
            field, _, nested = variable.removeprefix("HASHATLAS_").lower().partition("__")
            assert field in fields, f"{name}: {variable} is not a setting"
            if nested:
                model = getattr(Settings(), field)
                assert nested in type(model).model_fields, f"{name}: {variable}"


def test_compose_mounts_and_files_exist() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    prometheus = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    config = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    assert (PROMETHEUS_DIR / Path(config.split("=", 1)[1]).name).is_file()
    scenario = services["simulator"]["command"][1]
    assert (ROOT / scenario).is_file(), f"simulator scenario {scenario} missing"


def test_dockerfile_builds_from_files_that_exist() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM python:3.11-slim"]
    assert "RUN pip install ." in lines
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for line in lines:
        if line.startswith("COPY "):
            *sources, _destination = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
                assert source not in ignored, f"{source} is excluded by .dockerignore"
