"""Region codes as the API accepts them: ISO 3166-1 alpha-2, ISO 3166-2, or ``ZZ`` (unknown)."""

from __future__ import annotations

import pycountry

REGION_CODE_PATTERN = r"^[A-Za-z]{2}(-[A-Za-z0-9]{1,3})?$"
UNKNOWN_REGION = "ZZ"


def is_known_region(code: str) -> bool:
    """Whether ``code`` names a real ISO 3166 country or subdivision (or ``ZZ``, unknown)."""
    if code == UNKNOWN_REGION:
        return True
    if "-" in code:
        return pycountry.subdivisions.get(code=code) is not None
    return pycountry.countries.get(alpha_2=code) is not None


def unknown_region_detail(code: str) -> str:
    return f"unknown region {code}: not an ISO 3166 country or subdivision code"
