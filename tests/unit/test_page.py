"""The map page's files: served by the API itself, all vendored with licences, small."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pycountry

from api.main import create_app
from api.routes.page import STATIC_DIR
from streams.settings import Settings

VENDOR = STATIC_DIR / "vendor"


def client() -> httpx.AsyncClient:
    # ASGITransport does not run the lifespan (Redis): the page needs no Redis.
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def page_assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/static/[^"]+)"', html)


async def test_the_page_and_every_asset_it_names_are_served_from_the_api() -> None:
    async with client() as http:
        page = await http.get("/")
        assets = page_assets(page.text)
        statuses = {asset: (await http.get(asset)).status_code for asset in assets}
        paths = (await http.get("/openapi.json")).json()["paths"]
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/static/map.js" in assets and len(assets) >= 8
    assert set(statuses.values()) == {200}, statuses
    # Nothing the page names leaves the machine.
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text)
    assert "http" not in (STATIC_DIR / "map.js").read_text().replace("http://www.w3.org", "")
    assert "/" not in paths  # the page is not part of the API's schema


def test_every_vendored_package_has_its_licence_and_is_in_the_readme() -> None:
    readme = (VENDOR / "README.md").read_text()
    folders = [p for p in VENDOR.iterdir() if p.is_dir()]
    assert len(folders) >= 6
    for folder in folders:
        assert (folder / "LICENSE").stat().st_size > 100, folder
        assert f"`{folder.name}/`" in readme, folder.name


def test_the_page_weighs_less_than_a_megabyte() -> None:
    served = [p for p in STATIC_DIR.rglob("*")
              if p.is_file() and p.suffix in {".html", ".js", ".css", ".json"}]
    assert sum(p.stat().st_size for p in served) < 1_000_000


def test_codes_json_is_current_and_names_real_iso_codes() -> None:
    codes = json.loads((STATIC_DIR / "codes.json").read_text())
    subprocess.run([sys.executable, str(STATIC_DIR / "make_codes.py")], check=True,
                   capture_output=True)
    assert json.loads((STATIC_DIR / "codes.json").read_text()) == codes
    assert codes["world"]["840"] == "US" and codes["world"]["156"] == "CN"
    assert codes["US"]["48"] == "US-TX"
    assert codes["CN"]["CN.XJ"] == "CN-XJ" and codes["CN"]["CN.HE"] == "CN-HA"  # Henan
    assert codes["CA"]["CA.QC"] == "CA-QC" and codes["CA"]["CA.NF"] == "CA-NL"
    for view in ("US", "CN", "CA"):
        for code in codes[view].values():
            assert pycountry.subdivisions.get(code=code) is not None, code
