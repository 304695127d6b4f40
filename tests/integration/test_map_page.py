"""The map page at ``/`` in a real browser (Debian's headless Chromium, driven by Selenium),
against the real pipeline: simulator → Kafka → compactor → worker → Redis → API.

One pipeline serves the whole module, fed by ``scenarios/steady.yaml`` replayed at 30× from an
hour ago up to now, with Russia blacked out to a tenth 15 simulated minutes in so that a real
``regional_shift`` alert fires. The tests run in file order: page load, map, headline, SSE,
alert, and last the stale banner (the simulator is stopped). Each test saves a screenshot in its
tmp dir; with UPDATE_MAP_SCREENSHOTS=1 the world and US views are also copied to ``docs/map/``
for the README.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver  # a dev dependency: missing, the tests fail rather than skip
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from streams.settings import Partitions, Settings, Topics
from streams.topics import create_topics
from tests.conftest import PROJECT_ROOT, free_port
from tests.integration.pipeline_helpers import CliProcess, Compactor, Worker

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS = PROJECT_ROOT / "docs" / "map"
SPEED = 30.0
SPAN_S = 3600.0
SHOCK_REGION = "RU"
STALE_AFTER_S = 10.0

#: Set to 1 to refresh the README's screenshots in docs/map/ (otherwise they stay in tmp dirs).
UPDATE_DOCS = os.environ.get("UPDATE_MAP_SCREENSHOTS") == "1"


@pytest.fixture(autouse=True, scope="module")
def _browser_installed() -> None:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("needs Debian's chromium and chromium-driver: "
                    "`hashatlas stack install --browser` (make test does it) installs them")


class LivePipeline:
    def __init__(self, settings: Settings, api_url: str, simulator: CliProcess,
                 processes: list[CliProcess]) -> None:
        self.settings, self.api_url = settings, api_url
        self.simulator, self.processes = simulator, processes

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.api_url + path, timeout=5) as response:
            return json.loads(response.read())

    def logs(self) -> str:
        return "\n---\n".join(f"{p.log_path.name}:\n{p.log_tail(20)}" for p in self.processes)


def shocked_scenario(path: Path) -> Path:
    # Edited as text: a YAML round trip would turn Norway's `NO` into false.
    text = (PROJECT_ROOT / "scenarios" / "steady.yaml").read_text()
    # Provinces of China and Canada too, so that their drill-downs have something to draw.
    edits = {"\nduration: 1d\n": f"\nduration: {int(SPAN_S)}s\n",
             "\n  CN: 13.84\n": "\n  CN-XJ: 4.0\n  CN-SC: 1.5\n  CN: 8.34\n",
             "\n  CA: 2.935\n": "\n  CA-QC: 1.2\n  CA-AB: 0.5\n  CA: 1.235\n",
             "\nshocks: []": (f"\nshocks:\n  - {{name: map-test-blackout, kind: blackout, "
                              f"region: {SHOCK_REGION}, at: 15m, over: 1m, factor: 0.1}}")}
    for old, new in edits.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


def wait_until(check: Callable[[], Any], timeout_s: float, what: str,
               detail: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s} s\n{detail()}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def pipeline(kafka_bootstrap: str, redis_server: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePipeline]:
    run = uuid.uuid4().hex[:8]
    topics = Topics(**{name: f"t{run}-{value}" for name, value in Topics().model_dump().items()})
    port = free_port()
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_server, redis_prefix=f"ha{run}",
        app_id=f"hashatlas-map-{run}", topics=topics,
        partitions=Partitions(shares=2, compacted_shares=2), compact_interval_s=0.2,
        stale_after_s=STALE_AFTER_S, api_port=port,
    )
    asyncio.run(create_topics(settings))
    workdir = tmp_path_factory.mktemp("map-pipeline")
    scenario = shocked_scenario(workdir / "scenario.yaml")
    processes: list[CliProcess] = [
        Compactor(settings, workdir, "compactor"),
        Worker(settings, workdir, "worker"),
        CliProcess(settings, workdir, "api", ["api", "--port", str(port)]),
    ]
    simulator = CliProcess(settings, workdir, "simulator", [
        "simulate", str(scenario), "--speed", str(SPEED), "--step", "30",
        "--start", str(time.time() - SPAN_S)])
    processes.append(simulator)
    live = LivePipeline(settings, f"http://127.0.0.1:{port}", simulator, processes)
    try:
        def has_estimate() -> bool:
            if simulator.proc.poll() not in (None, 0):
                raise AssertionError(f"the simulator failed:\n{simulator.log_tail()}")
            try:
                return bool(live.get("/v1/estimates/current")["regions"])
            except OSError:
                return False
        wait_until(has_estimate, 120, "a first estimate from the API", live.logs)
        yield live
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(browser: Any, pipeline: LivePipeline) -> Any:
    browser.get(pipeline.api_url + "/")
    wait_until(lambda: browser.execute_script("return document.body.dataset.rendered"), 20,
               "the page's first render")
    return browser


def screenshot(driver: Any, tmp_path: Path, name: str, docs: bool = False,
               blur: bool = True) -> Path:
    if blur:  # a focused region shows its tooltip over the map
        driver.execute_script("document.activeElement && document.activeElement.blur()")
        time.sleep(0.3)
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    if docs and UPDATE_DOCS:
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / path.name)
    return path


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def body_data(driver: Any, name: str) -> str | None:
    return driver.execute_script(f"return document.body.dataset.{name} ?? null")


def test_page_loads_without_console_errors(page: Any, pipeline: LivePipeline,
                                           tmp_path: Path) -> None:
    time.sleep(2)  # let the stream, history and alerts requests complete
    screenshot(page, tmp_path, "loaded")
    assert console_errors(page) == []
    assert page.title.startswith("hashatlas")
    assert page.find_element(By.ID, "stale-banner").is_displayed() is False
    # Every request the page made went to this API: nothing leaves the machine.
    urls = page.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(url.startswith(pipeline.api_url + "/") for url in urls), urls


def test_map_draws_every_country_and_the_subdivisions_with_data(
        page: Any, pipeline: LivePipeline, tmp_path: Path) -> None:
    world = json.loads((PROJECT_ROOT / "api/static/vendor/world-atlas-2.0.2/"
                        "countries-110m.json").read_text())
    countries = page.find_elements(By.CSS_SELECTOR, "#map path.region")
    assert len(countries) == len(world["objects"]["countries"]["geometries"]) == 177
    snapshot = pipeline.get("/v1/estimates/current")
    coloured = set(page.execute_script(
        "return [...document.querySelectorAll('#map path.region[data-share]')]"
        ".map(p => p.dataset.code)"))
    codes = set(json.loads((PROJECT_ROOT / "api/static/codes.json").read_text())["world"].values())
    with_data = {r["region"] for r in snapshot["regions"] if r["share"] > 0}
    assert with_data & codes <= coloured, with_data - coloured
    assert {"US", "RU", "CN", "CA", "KZ"} <= coloured
    screenshot(page, tmp_path, "world", docs=True)

    # Regions with data are reached with Tab (in the page's order, after the map's level
    # buttons), those without data are not tab stops.
    page.execute_script("document.activeElement && document.activeElement.blur()")
    for _ in range(10):
        ActionChains(page).send_keys(Keys.TAB).perform()
        focused = page.switch_to.active_element
        if focused.tag_name == "path":
            break
    assert focused.tag_name == "path" and focused.get_attribute("data-share"), focused.tag_name
    ActionChains(page).send_keys(Keys.TAB).perform()
    assert page.switch_to.active_element.get_attribute("data-share")
    # Keyboard drill-down: focus the United States, Enter: the states with data are drawn.
    us = page.find_element(By.CSS_SELECTOR, '#map path.region[data-code="US"]')
    page.execute_script("arguments[0].focus()", us)
    us.send_keys(Keys.ENTER)
    wait_until(lambda: page.find_elements(By.CSS_SELECTOR, '#map path[data-code="US-TX"]'), 5,
               "the US states map")
    states = {r["region"] for r in pipeline.get("/v1/estimates/current")["subdivisions"]
              if r["region"].startswith("US-")}
    assert states >= {"US-TX", "US-GA", "US-NY", "US-NH"}
    drawn = set(page.execute_script(
        "return [...document.querySelectorAll('#map path.region[data-share]')]"
        ".map(p => p.dataset.code)"))
    assert drawn == states
    states |= {"CN-XJ", "CN-SC", "CA-QC", "CA-AB"}
    assert len(page.find_elements(By.CSS_SELECTOR, "#map path.region")) >= 51
    assert "United States" in page.find_element(By.ID, "detail-title").text
    texas = page.find_element(By.CSS_SELECTOR, '#map path.region[data-code="US-TX"]')
    page.execute_script("arguments[0].focus()", texas)  # focus shows the tooltip
    tooltip = page.find_element(By.ID, "tooltip")
    wait_until(tooltip.is_displayed, 3, "the tooltip on focus")
    assert "Texas" in tooltip.text and "95 % interval" in tooltip.text
    time.sleep(1)
    screenshot(page, tmp_path, "us-states", docs=True, blur=False)
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait_until(lambda: len(page.find_elements(By.CSS_SELECTOR, "#map path.region")) == 177, 5,
               "the world map again after Escape")
    # China's and Canada's provinces, the same way.
    for country, provinces in (("CN", {"CN-XJ", "CN-SC"}), ("CA", {"CA-QC", "CA-AB"})):
        path = page.find_element(By.CSS_SELECTOR, f'#map path.region[data-code="{country}"]')
        page.execute_script("arguments[0].focus()", path)
        path.send_keys(Keys.ENTER)
        wait_until(lambda c=country: page.find_elements(
            By.CSS_SELECTOR, f'#map path.region[data-code^="{c}-"]'), 5, f"the {country} map")
        drawn = set(page.execute_script(
            "return [...document.querySelectorAll('#map path.region[data-share]')]"
            ".map(p => p.dataset.code)"))
        assert drawn == provinces, (country, drawn)
        screenshot(page, tmp_path, f"{country.lower()}-provinces", docs=country == "CN")
        page.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        wait_until(lambda: len(page.find_elements(By.CSS_SELECTOR, "#map path.region")) == 177,
                   5, "the world map again after Escape")
    # The text table lists every region and subdivision.
    rows = page.execute_script(
        "return [...document.querySelectorAll('#regions-table tbody tr')].map(r => r.dataset.code)")
    assert set(rows) >= with_data | states
    assert console_errors(page) == []


def test_headline_equals_the_current_estimate(page: Any, pipeline: LivePipeline,
                                              tmp_path: Path) -> None:
    read = ("return {published_at: +document.body.dataset.publishedAt, "
            "hashrate: +document.getElementById('net-hashrate').dataset.value, "
            "power: +document.getElementById('net-power').dataset.value, "
            "twh: +document.getElementById('net-twh').dataset.value, "
            "hashprice: +document.getElementById('net-hashprice').dataset.value, "
            "coverage: +document.getElementById('net-coverage').dataset.value}")

    def same_snapshot() -> tuple[dict[str, float], dict[str, Any]] | None:
        shown = page.execute_script(read)
        current = pipeline.get("/v1/estimates/current")
        # One snapshot: successive ones can share as_of (the event clock) and still differ.
        return (shown, current) if shown["published_at"] == current["published_at"] else None

    shown, current = wait_until(same_snapshot, 20, "the page and the API on one snapshot")
    network = current["network"]
    assert shown["hashrate"] == network["hashrate_hs"]
    assert shown["power"] == network["power_w"]["best"]
    assert shown["twh"] == network["annualized_twh"]["best"]
    assert shown["hashprice"] == network["hashprice_usd_ph_day"]
    assert shown["coverage"] == network["coverage"]
    text = page.find_element(By.ID, "net-hashrate").text
    assert text.endswith(("EH/s", "PH/s")), text
    assert "95 %" in page.find_element(By.ID, "net-hashrate-ci").text
    screenshot(page, tmp_path, "headline")


def test_an_sse_update_changes_the_page_within_seconds(page: Any, tmp_path: Path) -> None:
    events = int(body_data(page, "events") or 0)
    as_of = body_data(page, "asOf")
    shown = page.find_element(By.ID, "net-asof").text
    wait_until(lambda: int(body_data(page, "events") or 0) > events
               and body_data(page, "asOf") != as_of, 5, "an SSE estimate on the page")
    assert page.find_element(By.ID, "net-asof").text != shown
    screenshot(page, tmp_path, "updated")


def test_a_regional_alert_appears_on_the_page(page: Any, pipeline: LivePipeline,
                                              tmp_path: Path) -> None:
    def fired() -> list[dict[str, Any]]:
        return [a for a in pipeline.get("/v1/alerts")["alerts"] if a["region"] == SHOCK_REGION]

    wait_until(fired, 240, f"a {SHOCK_REGION} regional_shift alert from the pipeline",
               pipeline.logs)
    item = wait_until(lambda: page.find_elements(
        By.CSS_SELECTOR, f'#alerts li.alert[data-region="{SHOCK_REGION}"]'), 5,
        "the alert on the page")[0]
    assert "Russia" in item.text and "pp" in item.text
    screenshot(page, tmp_path, "alert", docs=True)


def test_usable_on_a_phone_sized_window(page: Any, tmp_path: Path) -> None:
    page.set_window_size(390, 844)
    try:
        time.sleep(1)
        width = page.execute_script("return document.documentElement.clientWidth")
        # Nothing wider than the screen but the table, which scrolls inside its own box.
        assert page.execute_script("return document.documentElement.scrollWidth") <= width
        map_box = page.find_element(By.ID, "map").rect
        assert 0 < map_box["width"] <= width
        screenshot(page, tmp_path, "phone", docs=True)
    finally:
        page.set_window_size(1280, 1000)


def test_the_stale_banner_appears_when_the_feed_stops(page: Any, pipeline: LivePipeline,
                                                      tmp_path: Path) -> None:
    pipeline.simulator.stop()
    banner = page.find_element(By.ID, "stale-banner")
    wait_until(banner.is_displayed, STALE_AFTER_S + 20, "the stale banner", pipeline.logs)
    assert "Stale data" in banner.text
    assert body_data(page, "stale") == "true"
    assert "stale" in page.find_element(By.ID, "live").text
    screenshot(page, tmp_path, "stale", docs=True)
    assert console_errors(page) == []
