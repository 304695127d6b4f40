"""Write api/static/codes.json: the vendored map geometry's feature ids as ISO 3166 codes.

world-atlas names countries by ISO 3166-1 numeric id, us-atlas names states by FIPS code
(whose features carry the state's name). Run again after changing a vendored atlas:
``python api/static/make_codes.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pycountry

HERE = Path(__file__).parent
WORLD = HERE / "vendor/world-atlas-2.0.2/countries-110m.json"
STATES = HERE / "vendor/us-atlas-3.0.1/states-albers-10m.json"


def main() -> None:
    world = json.loads(WORLD.read_text())
    countries = {}
    for geometry in world["objects"]["countries"]["geometries"]:
        if "id" in geometry:
            country = pycountry.countries.get(numeric=geometry["id"])
            if country is not None:
                countries[geometry["id"]] = country.alpha_2
    us_names = {sub.name: sub.code for sub in pycountry.subdivisions.get(country_code="US")}
    states = {}
    for geometry in json.loads(STATES.read_text())["objects"]["states"]["geometries"]:
        code = us_names.get(geometry["properties"]["name"])
        if code is not None:
            states[geometry["id"]] = code
    out = {"world": countries, "US": states}
    (HERE / "codes.json").write_text(json.dumps(out, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"codes.json: {len(countries)} countries, {len(states)} US states and territories")


if __name__ == "__main__":
    main()
