"""The event contracts of CONTRACTS.md as typed models.

Inputs are validated strictly enough that whatever passes can be credited without further checks;
whatever fails raises :class:`InvalidEvent` naming the field, so the pipeline can dead-letter it
with a reason a feed operator can act on.
"""

from __future__ import annotations

import base64
import math
import re
import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from streams.settings import get_settings

REGION_PATTERN = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX_BITS = re.compile(r"^[0-9a-f]{8}$")
HEX_ANY = re.compile(r"^(?:[0-9a-f]{2})*$")
MAX_LABEL_LENGTH = 64
MAX_COINBASE_HEX = 200_000

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
#: 2100-01-01: later "Unix seconds" are a unit mistake (ms, µs) or garbage, not a time.
MAX_TIMESTAMP = 4_102_444_800
Timestamp = Annotated[float, Field(allow_inf_nan=False, gt=0, lt=MAX_TIMESTAMP)]
#: Bitcoin nodes accept a block up to two hours ahead of their clock (a consensus rule), so a
#: block may be that much further ahead than other events.
MAX_FUTURE_BLOCK_TIME_S = 7200.0
#: Far above any share difficulty a pool assigns (network difficulty is ~1e14), low enough
#: that sums of squares stay finite.
MAX_DIFFICULTY = 1e18


class InvalidEvent(ValueError):
    """An input that cannot be used; ``field`` names what was wrong (``"$"`` for the whole)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _normalise_region(value: object) -> object:
    if isinstance(value, str):
        code = value.strip().upper()
        if not REGION_PATTERN.match(code):
            raise ValueError("must be an ISO 3166-1 alpha-2 or ISO 3166-2 code, or ZZ")
        return code
    return value


def _label(value: str) -> str:
    if not value or len(value) > MAX_LABEL_LENGTH:
        raise ValueError(f"must be 1 to {MAX_LABEL_LENGTH} characters")
    if not value.isprintable():
        raise ValueError("must not contain control characters")
    return value


def _hex_matching(pattern: re.Pattern[str], message: str) -> BeforeValidator:
    def check(value: object) -> object:
        if isinstance(value, str):
            value = value.lower()
            if not pattern.match(value):
                raise ValueError(message)
        return value

    return BeforeValidator(check)


PoolLabel = Annotated[str, AfterValidator(_label)]
RegionCode = Annotated[str, BeforeValidator(_normalise_region)]
Hash64 = Annotated[str, _hex_matching(HEX64, "must be 64 hex digits")]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ShareEvent(_Event):
    """One accepted (or rejected) share at the difficulty the pool assigned."""

    type: Literal["share"]
    ts: Timestamp
    pool: PoolLabel
    worker: str | None = None
    region: RegionCode | None = None
    ip: str | None = None
    difficulty: FiniteFloat = Field(gt=0, le=MAX_DIFFICULTY)
    accepted: StrictBool = True
    id: str | None = Field(default=None, max_length=128)


    @model_validator(mode="after")
    def _located(self) -> ShareEvent:
        if self.region is None and self.ip is None:
            raise ValueError("region: either region or ip is required")
        return self


class ShareBatchEvent(_Event):
    """Shares a proxy already summed per pool, region and interval (the fast path)."""

    type: Literal["share_batch"]
    start: Timestamp
    end: Timestamp
    pool: PoolLabel
    region: RegionCode
    count: int = Field(ge=0, strict=True)
    difficulty_sum: FiniteFloat = Field(ge=0)
    difficulty_sq_sum: FiniteFloat = Field(ge=0)
    #: Optional, for the regional intervals' clustering term (``core/account_concentration``):
    #: distinct workers and mining accounts (the stratum login before its first '.') behind the
    #: batch, and Σ over accounts of (Σd of the account's shares)². Sums only: nobody named.
    workers: int | None = Field(default=None, ge=0, strict=True)
    accounts: int | None = Field(default=None, ge=0, strict=True)
    account_difficulty_sq_sum: FiniteFloat | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> ShareBatchEvent:
        if self.end < self.start:
            raise ValueError("end: must not be before start")
        self._accounts_consistent()
        if self.count == 0:
            if self.difficulty_sum or self.difficulty_sq_sum:
                raise ValueError("difficulty_sum: must be 0 when count is 0")
            return self
        if self.difficulty_sum <= 0:
            raise ValueError("difficulty_sum: must be positive when count > 0")
        # Positive difficulties bound the sum of squares: S^2/n <= Q <= S^2.
        s, q = self.difficulty_sum, self.difficulty_sq_sum
        if q < s * s / self.count * (1 - 1e-9) or q > s * s * (1 + 1e-9):
            raise ValueError(
                "difficulty_sq_sum: inconsistent with count and difficulty_sum "
                "(need difficulty_sum²/count ≤ difficulty_sq_sum ≤ difficulty_sum²)"
            )
        return self

    def _accounts_consistent(self) -> None:
        """Accounts' squared sums lie between the shares' (one share each) and the batch's
        (one account): Σd² ≤ A ≤ (Σd)²; at most as many accounts as shares."""
        a = self.account_difficulty_sq_sum
        if a is not None and not (self.difficulty_sq_sum * (1 - 1e-9) <= a
                                  <= self.difficulty_sum**2 * (1 + 1e-9)):
            raise ValueError("account_difficulty_sq_sum: must lie between difficulty_sq_sum "
                             "and difficulty_sum²")
        if self.accounts is not None and self.accounts > self.count:
            raise ValueError("accounts: more accounts than shares")


class BlockEvent(_Event):
    """One block of the best chain; a later one at the same height replaces it (reorg)."""

    type: Literal["block"]
    height: int = Field(ge=0, strict=True)
    hash: Hash64
    prev_hash: Hash64 | None = None
    time: int = Field(gt=0, lt=MAX_TIMESTAMP)
    bits: Annotated[str, _hex_matching(HEX_BITS, "must be 8 hex digits (compact target)")]
    coinbase_hex: Annotated[
        str, _hex_matching(HEX_ANY, "must be an even number of hex digits")
    ] | None = Field(default=None, max_length=MAX_COINBASE_HEX)
    coinbase_value_sat: int | None = Field(default=None, ge=0)
    pool: str | None = None


class PriceEvent(_Event):
    """A BTC/USD price observation, for hashprice."""

    type: Literal["price"]
    ts: Timestamp
    btc_usd: FiniteFloat = Field(gt=0)
    source: str | None = None


InputEvent = Annotated[
    ShareEvent | ShareBatchEvent | BlockEvent | PriceEvent, Field(discriminator="type")
]
_input_adapter: TypeAdapter[ShareEvent | ShareBatchEvent | BlockEvent | PriceEvent] = TypeAdapter(
    InputEvent
)


def _field_and_reason(error: dict[str, Any]) -> tuple[str, str]:
    loc = [str(part) for part in error.get("loc", ()) if part not in INPUT_TAGS]
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    # Model-level checks name their field at the start of the message ("end: ...").
    if not loc and ": " in message:
        field, message = message.split(": ", 1)
        return field, message
    return ".".join(loc) or "$", message


INPUT_TAGS = frozenset({"share", "share_batch", "block", "price"})


InputEventT = ShareEvent | ShareBatchEvent | BlockEvent | PriceEvent


def decision_time(record_time_s: float | None, wall_now: float) -> float:
    """The "now" an event's future-time bound is taken against: its Kafka record's timestamp
    (set when it was produced or appended, fixed with the record) so that a replay decides as
    the first reading did; the wall clock only for a record without one."""
    return record_time_s if record_time_s is not None and record_time_s > 0 else wall_now


def latest_event_time(now: float, max_future_skew_s: float) -> float:
    """The latest event time accepted at wall-clock ``now``: a little clock skew is tolerated,
    but a time further ahead would make every real event behind it late (and none is valid
    from 2100 on)."""
    return min(now + max_future_skew_s, math.nextafter(MAX_TIMESTAMP, 0.0))


def _refuse_future_times(event: InputEventT, now: float, max_future_skew_s: float) -> None:
    times: tuple[tuple[str, float], ...]
    bound, allowed = "max_future_skew_s", max_future_skew_s
    if isinstance(event, ShareBatchEvent):
        times = (("start", event.start), ("end", event.end))
    elif isinstance(event, BlockEvent):
        times = (("time", event.time),)
        bound, allowed = "2 h + max_future_skew_s", MAX_FUTURE_BLOCK_TIME_S + max_future_skew_s
    else:
        times = (("ts", event.ts),)
    latest = latest_event_time(now, allowed)
    for field, value in times:
        if value > latest:
            raise InvalidEvent(field, f"{value - now:.0f} s ahead of the wall clock, more than "
                                      f"{bound} ({allowed:g} s) allows")


def decode_input(
    raw: bytes | str | dict[str, Any],
    *,
    now: float | None = None,
    max_future_skew_s: float | None = None,
) -> InputEventT:
    """Parse and validate one input message; raise :class:`InvalidEvent` naming the bad field.

    Event times may be at most ``max_future_skew_s`` (default: the process's setting) ahead of
    ``now`` (default: the wall clock), so one event from the future cannot silence the rest.
    """
    if isinstance(raw, dict):
        payload: Any = raw
    else:
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("$", f"not valid UTF-8 JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise InvalidEvent("$", "must be a JSON object")
    kind = payload.get("type")
    if not isinstance(kind, str) or kind not in INPUT_TAGS:
        raise InvalidEvent("type", f"unknown event type {str(kind)[:40]!r}")
    try:
        event = _input_adapter.validate_python(payload)
    except ValidationError as exc:
        raise InvalidEvent(*_field_and_reason(dict(exc.errors()[0]))) from None
    _refuse_future_times(
        event,
        time.time() if now is None else now,
        get_settings().max_future_skew_s if max_future_skew_s is None else max_future_skew_s,
    )
    return event


# ---- outputs (the snapshot's model is streams.models.snapshot.EstimateSnapshot) --------------


class RegionalShiftAlert(BaseModel):
    type: Literal["regional_shift"] = "regional_shift"
    id: str
    region: str
    direction: Literal["up", "down"]
    #: Which test fired: "step" (CUSUM against the slow baseline) or "trend" (the last hours
    #: against the reference of hours older than a day: slow migrations).
    test: Literal["step", "trend"] = "step"
    detected_at: float
    started_at: float
    share_before: float
    share_after: float
    magnitude_pp: float
    relative_change: float
    score: float
    #: Regions whose share moved past the threshold only because this region's share moved
    #: (shares sum to one; their move against the rest of the map is at most half their plain
    #: move): reported here instead of as alerts of their own.
    mirrors: list[str] = []
    state: Literal["firing", "resolved"]


class PoolDivergenceAlert(BaseModel):
    """A sampled pool whose shares and blocks disagree beyond their joint interval (#15)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["pool_divergence"] = "pool_divergence"
    id: str
    pool: str
    direction: Literal["blocks_above_shares", "blocks_below_shares"]
    detected_at: float
    window_blocks: int
    blocks_found: int
    expected_blocks: float
    luck: float | None
    p_value: float
    state: Literal["firing", "resolved"]


class DeadLetter(BaseModel):
    """An input that could not be used, with where it came from and why."""

    topic: str
    partition: int
    offset: int
    error: str
    field: str
    raw_b64: str

    @classmethod
    def of(
        cls, topic: str, partition: int, offset: int, error: InvalidEvent, raw: bytes
    ) -> DeadLetter:
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            error=str(error),
            field=error.field,
            raw_b64=base64.b64encode(raw).decode("ascii"),
        )

