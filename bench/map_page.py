"""The map page's weight and first render, in headless Chromium, against a running API.

Point it at an API that has estimates (a demo on your own ports, see README "The map"):
each of --loads loads of ``/`` runs with the browser cache disabled and records

* first render: from navigation start to the page's ``hashatlas-first-render`` mark (the map,
  headline and table drawn with the first estimate), plus DOMContentLoaded and load;
* weight: bytes of every file the page loads (HTML, CSS, JS, geometry, codes), as sent (gzip
  where the API compresses) and decoded, and the API data it reads at start apart.

Prints the medians and writes bench/results/map_page.json. Traffic goes to the given URL only
(keep it on 127.0.0.1); bounded by --loads.

    .venv/bin/python -m bench.map_page --url http://127.0.0.1:8000/ [--loads 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

RESULTS = Path(__file__).parent / "results" / "map_page.json"
DATA_PATHS = ("/v1/",)

MEASURE = """
const nav = performance.getEntriesByType('navigation')[0];
const mark = performance.getEntriesByName('hashatlas-first-render')[0];
const entries = [nav, ...performance.getEntriesByType('resource')];
return {
  first_render_ms: mark ? mark.startTime : null,
  dom_content_loaded_ms: nav.domContentLoadedEventEnd,
  load_ms: nav.loadEventEnd,
  files: entries.map(e => ({url: e.name, transfer: e.transferSize, decoded: e.decodedBodySize})),
};
"""


def browser() -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    return driver


def load_once(driver: Any, url: str) -> dict[str, Any]:
    driver.get("about:blank")
    driver.get(url)
    deadline = time.monotonic() + 20
    while not driver.execute_script("return document.body && document.body.dataset.rendered"):
        if time.monotonic() > deadline:
            raise RuntimeError("the page did not render within 20 s (does the API have data?)")
        time.sleep(0.05)
    time.sleep(0.3)  # the load event and late resource entries
    result: dict[str, Any] = driver.execute_script(MEASURE)
    return result


def summarise(files: list[dict[str, Any]]) -> dict[str, int]:
    assets = [f for f in files if not any(p in f["url"] for p in DATA_PATHS)]
    data = [f for f in files if any(p in f["url"] for p in DATA_PATHS)]
    return {
        "asset_files": len(assets),
        "asset_bytes_sent": sum(f["transfer"] for f in assets),
        "asset_bytes_decoded": sum(f["decoded"] for f in assets),
        "data_bytes_sent": sum(f["transfer"] for f in data),
        "data_bytes_decoded": sum(f["decoded"] for f in data),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000/")
    parser.add_argument("--loads", type=int, default=7)
    args = parser.parse_args()
    driver = browser()
    try:
        load_once(driver, args.url)  # warm up the server (and the OS's file cache)
        runs = [load_once(driver, args.url) for _ in range(args.loads)]
    finally:
        driver.quit()
    weight = summarise(runs[-1]["files"])
    result = {
        "url": args.url, "loads": args.loads,
        "first_render_ms_median": statistics.median(r["first_render_ms"] for r in runs),
        "first_render_ms_max": max(r["first_render_ms"] for r in runs),
        "dom_content_loaded_ms_median": statistics.median(
            r["dom_content_loaded_ms"] for r in runs),
        "load_ms_median": statistics.median(r["load_ms"] for r in runs),
        **weight,
        "files": runs[-1]["files"],
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"first render   median {result['first_render_ms_median']:.0f} ms, "
          f"max {result['first_render_ms_max']:.0f} ms over {args.loads} cold loads "
          f"(DOMContentLoaded {result['dom_content_loaded_ms_median']:.0f} ms, "
          f"load {result['load_ms_median']:.0f} ms)")
    print(f"page weight    {weight['asset_files']} files, "
          f"{weight['asset_bytes_sent'] / 1e3:.0f} kB sent "
          f"({weight['asset_bytes_decoded'] / 1e3:.0f} kB decoded); API data at start "
          f"{weight['data_bytes_sent'] / 1e3:.0f} kB sent "
          f"({weight['data_bytes_decoded'] / 1e3:.0f} kB decoded)")
    for f in runs[-1]["files"]:
        print(f"  {f['transfer']:>8,} {f['decoded']:>8,}  {f['url']}")


if __name__ == "__main__":
    main()
