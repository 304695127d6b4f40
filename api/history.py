"""History requests, shared by region and pool history: the query parameters (declared once),
their defaults and 422 checks, downsampling to the requested step, and CSV output.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

import orjson
from fastapi import Header, Query

from api.problems import invalid_parameter

MAX_HISTORY_POINTS = 100_000
DEFAULT_HISTORY_SPAN_S = 86_400.0
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"


class HistoryFormat(StrEnum):
    json = "json"
    csv = "csv"


# The query parameters of every history route (one declaration; the routes add their subject).
HistoryStart = Annotated[float | None, Query(ge=0, allow_inf_nan=False,
                                             description="Unix seconds (default: end − 24 h)")]
HistoryEnd = Annotated[float | None, Query(ge=0, allow_inf_nan=False,
                                           description="Unix seconds (default: now)")]
HistoryStep = Annotated[float | None, Query(gt=0, allow_inf_nan=False,
                                            description="seconds (default: the stored step)")]
HistoryFormatQuery = Annotated[HistoryFormat | None, Query(alias="format")]
AcceptHeader = Annotated[str | None, Header(include_in_schema=False)]


def history_span(start: float | None, end: float | None, step: float | None,
                 stored_step: float) -> tuple[float, float, float]:
    """A history request's start, end and step with their defaults (the last 24 h, the stored
    step); 422 problems naming the parameter for an empty span, a step finer than what is
    stored, or more than MAX_HISTORY_POINTS points."""
    now = time.time()
    if end is None:
        end = now if start is None else max(now, start)
    if start is None:
        start = max(0.0, end - DEFAULT_HISTORY_SPAN_S)
    if end < start:
        raise invalid_parameter("end", f"must not be before start ({start})")
    step = stored_step if step is None else step
    if step < stored_step * (1 - 1e-9):
        raise invalid_parameter("step", f"must be at least the stored step ({stored_step} s)")
    if (end - start) / step > MAX_HISTORY_POINTS:
        raise invalid_parameter(
            "step",
            f"span / step gives more than {MAX_HISTORY_POINTS} points: "
            "use a larger step or a shorter span",
        )
    return start, end, step


def wants_csv(output_format: HistoryFormat | None, accept: str | None) -> bool:
    """``format=csv``, or no ``format`` and an Accept header preferring CSV."""
    return output_format is HistoryFormat.csv or (output_format is None and prefers_csv(accept))


def prefers_csv(accept: str | None) -> bool:
    """CSV when the client names ``text/csv`` and does not rank ``application/json`` higher."""
    if not accept:
        return False
    quality: dict[str, float] = {}
    for item in accept.split(","):
        media_type, *parameters = (part.strip() for part in item.split(";"))
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media_type.lower()] = q
    csv_q = quality.get("text/csv", 0.0)
    return csv_q > 0 and csv_q >= quality.get("application/json", 0.0)


def last_point_per_step(
    rows: list[tuple[bytes, float]], step: float, stored_step: float
) -> list[bytes]:
    """Downsample: the last stored point of each step-long bucket (buckets start at multiples
    of ``step`` since the epoch, so they do not move with ``start``). At the stored step every
    stored point is kept. ``rows`` must be sorted by time."""
    if step <= stored_step * (1 + 1e-9):
        return [member for member, _ in rows]
    kept: list[bytes] = []
    last_bucket: int | None = None
    for member, t in rows:
        bucket = math.floor(t / step)
        if bucket == last_bucket:
            kept[-1] = member
        else:
            kept.append(member)
        last_bucket = bucket
    return kept


def points_csv(points: list[dict[str, Any]], columns: Sequence[str]) -> bytes:
    """CSV with a header row; a missing or null value is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for point in points:
        writer.writerow(["" if point.get(column) is None else point[column]
                         for column in columns])
    return buffer.getvalue().encode()


def json_array_of_objects(members: list[bytes]) -> list[dict[str, Any]]:
    """Stored members parsed; a member that is not a JSON object is corrupt data (a 500)."""
    parsed = [orjson.loads(member) for member in members]
    for item in parsed:
        if not isinstance(item, dict):
            raise ValueError("a stored member is not a JSON object")
    return parsed
