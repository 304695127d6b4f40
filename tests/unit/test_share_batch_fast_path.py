"""The workers' fast path for ``share_batch`` messages against the contract it short-cuts.

``ShareBatchPartition.apply`` reads a plainly valid batch (what the compactor writes) without
the pydantic model. It must take exactly the model's decisions: whatever it accepts, the model
accepts with the same values, and a partition fed any messages ends in the same state, with the
same InvalidEvent (field and reason) per message, as the implementation that sent every message
through the model (``apply_by_contract`` below, the pre-fast-path ``apply``).
"""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import orjson
import pytest
from aiokafka import ConsumerRecord
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streams.contracts import (
    InvalidEvent,
    ShareBatchEvent,
    decode_input,
    latest_event_time,
)
from streams.core.regions import normalise_region
from streams.core.shares import ShareOutcome
from streams.pipeline.compactor import ShareCompactor
from streams.pipeline.state import ShareBatchPartition, plain_batch_fields
from streams.settings import Settings

T0 = 1_795_000_000.0
NOW = T0 + 3600.0  # the wall clock the partitions and the decoder are given
SKEW = Settings().max_future_skew_s
LATEST = latest_event_time(NOW, SKEW)
FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Labels as feeds write them: canonical, lower case, padded; unassigned codes; malformed ones.
REGION_LABELS = ("US", "US-TX", "us-ga", " KZ ", "ZZ", "de", "CN-SC", "XX", "US-XX", "U S", "",
                 "US\n", "USA", "ß")
POOL_LABELS = ("foundry-usa", "antpool", "⛏️ mining 😀", "a" * 64, "a" * 65, "", "new\nline",
               "rtl\u202eoverride")
FIELDS = ("type", "start", "end", "pool", "region", "count", "difficulty_sum",
          "difficulty_sq_sum")


def _code_by_contract(label: str) -> str | None:
    body = {"type": "share_batch", "pool": "p", "region": label, "start": T0, "end": T0,
            "count": 0, "difficulty_sum": 0.0, "difficulty_sq_sum": 0.0}
    try:
        event = decode_input(body, now=NOW)
        assert isinstance(event, ShareBatchEvent)
        return normalise_region(event.region)
    except (InvalidEvent, ValueError):
        return None


#: What a partition learns from the contract: accepted labels and their codes.
ACCEPTED_CODES = {label: code for label in REGION_LABELS
                  if (code := _code_by_contract(label)) is not None}


# ---- strategies ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
              st.sampled_from(["1795000000.0", "NaN", "inf", "share_batch"])),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                        children, max_size=3),
    max_leaves=6,
)
# Times around the windows' and the contract's edges: long ago, now, just past the future bound.
edge_times = st.one_of(
    st.floats(min_value=T0 - 5000.0, max_value=LATEST + 30.0),
    st.sampled_from([T0, LATEST, math.nextafter(LATEST, math.inf), LATEST - 3820.0, 5e-324]),
)
# Σd² as a multiple of Σd²/count: the contract's bounds are [1 − 1e-9, count · (1 + 1e-9)].
SQUARE_FACTORS = (1 - 2e-9, 1 - 1e-9, 1.0, "count", "count_high", "count_over")


def _mostly(draw: st.DrawFn, usual: st.SearchStrategy[Any], edges: st.SearchStrategy[Any]
            ) -> Any:
    """A usual value three times in four, else an edge case."""
    return draw(edges if draw(st.integers(0, 3)) == 0 else usual)


@st.composite
def compactor_batches(draw: st.DrawFn, regions: tuple[str, ...] = tuple(ACCEPTED_CODES)
                      ) -> dict[str, Any]:
    """``share_batch`` bodies shaped as the compactor writes them (float times and sums, an int
    count): mostly valid (labels mostly from ``regions``), the rest just outside the contract's
    bounds."""
    count = _mostly(draw, st.integers(min_value=1, max_value=10**6),
                    st.sampled_from([0, 1, 2, 10**12]))
    start = _mostly(draw, st.floats(min_value=T0 - 100.0, max_value=T0 + 100.0), edge_times)
    end = _mostly(draw, st.floats(min_value=0.0, max_value=9.99).map(lambda d: start + d),
                  st.one_of(st.just(start), edge_times,
                            st.floats(min_value=start - 1.0, max_value=start + 4000.0)))
    total = squares = 0.0
    if count:
        total = count * draw(st.one_of(st.floats(min_value=1e-3, max_value=1e12),
                                       st.sampled_from([65536.0, 2.0**20])))
        factor = _mostly(draw, st.floats(min_value=1.0, max_value=float(count)),
                         st.sampled_from(SQUARE_FACTORS))
        factor = {"count": count, "count_high": count * (1 + 1e-9),
                  "count_over": count * (1 + 2e-9)}.get(factor, factor)
        squares = total * total / count * float(factor)
    elif draw(st.booleans()):  # sums without shares
        total, squares = draw(st.sampled_from([(1.0, 1.0), (0.0, 1.0), (-0.0, 0.0)]))
    return {"type": "share_batch", "start": start, "end": end,
            "pool": _mostly(draw, st.sampled_from(POOL_LABELS[:4]), st.sampled_from(POOL_LABELS)),
            "region": _mostly(draw, st.sampled_from(regions), st.sampled_from(REGION_LABELS)),
            "count": count, "difficulty_sum": total, "difficulty_sq_sum": squares}


@st.composite
def batch_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A compactor-shaped batch with a few fields replaced or removed."""
    body = draw(compactor_batches())
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
        if draw(st.integers(0, 4)) == 0:
            body.pop(name, None)
        else:
            body[name] = draw(st.one_of(json_values, st.sampled_from(
                ["share", "price", 0, 1, -1, True, 1795000000, 2**63, 1e300, -1.0, 0.0])))
    if draw(st.integers(0, 9)) == 0:
        body["extra"] = draw(json_values)
    return body


@st.composite
def messages(draw: st.DrawFn) -> bytes | None:
    """A partition's traffic: mostly batches over a few labels (learnt from the contract, then
    read by the fast path), else anything."""
    if draw(st.integers(0, 9)) < 6:
        return orjson.dumps(draw(compactor_batches(regions=("US", "us-ga", "ZZ"))))
    junk: bytes | None = draw(st.one_of(
        batch_bodies().map(orjson.dumps), st.none(), st.binary(max_size=40),
        json_values.map(orjson.dumps),
        st.just(orjson.dumps({"type": "price", "ts": T0, "btc_usd": 1.0}))))
    return junk


# ---- the contract's reading, and the pre-fast-path apply ----------------------------------------


def read_by_contract(raw: bytes) -> tuple[Any, ...] | None:
    """The batch fields as the model reads them (region normalised), None if it refuses."""
    try:
        event = decode_input(raw, now=NOW, max_future_skew_s=SKEW)
        if not isinstance(event, ShareBatchEvent):
            return None
        region = normalise_region(event.region)
    except (InvalidEvent, ValueError):
        return None
    return (event.pool, region, event.start, event.end, event.count, event.difficulty_sum,
            event.difficulty_sq_sum)


def apply_by_contract(state: ShareBatchPartition, raw: bytes | None) -> ShareOutcome:
    """``ShareBatchPartition.apply`` as it was before the fast path: the model for everything."""
    if raw is None:
        raise InvalidEvent("$", "empty message (no value)")
    event = decode_input(raw, now=NOW, max_future_skew_s=state.max_future_skew_s)
    if not isinstance(event, ShareBatchEvent):
        raise InvalidEvent("type", f"expected share_batch, got {event.type}")
    try:
        region_code = normalise_region(event.region)
    except ValueError as exc:
        raise InvalidEvent("region", str(exc)) from None
    pool, region, _ = state.labels(event.pool, region_code)
    try:
        outcome = state.windows.add_batch(pool, region, event.start, event.end, event.count,
                                          event.difficulty_sum, event.difficulty_sq_sum)
    except ValueError as exc:
        raise InvalidEvent("end", str(exc)) from None
    if outcome is ShareOutcome.CREDITED:
        state.max_event_ts = max(state.max_event_ts, event.end)
        state.concentration.add((pool, region), event.end, event.difficulty_sum,
                                event.difficulty_sq_sum, event.account_difficulty_sq_sum)
    return outcome


def _outcome(apply: Any, state: ShareBatchPartition, raw: bytes | None) -> Any:
    try:
        return apply(state, raw)
    except InvalidEvent as error:
        return ("invalid", error.field, error.reason)


# ---- properties ---------------------------------------------------------------------------------


@FAST
@given(st.one_of(compactor_batches(), batch_bodies()))
@example({"type": "share_batch", "start": T0, "end": LATEST, "pool": "p", "region": "US",
          "count": 1, "difficulty_sum": 2.0, "difficulty_sq_sum": 4.0})
@example({"type": "share_batch", "start": T0, "end": math.nextafter(LATEST, math.inf),
          "pool": "p", "region": "US", "count": 1, "difficulty_sum": 2.0,
          "difficulty_sq_sum": 4.0})
@example({"type": "share_batch", "start": T0, "end": T0, "pool": "p", "region": "US",
          "count": 0, "difficulty_sum": -0.0, "difficulty_sq_sum": 0.0})
@example({"type": "share_batch", "start": T0, "end": T0, "pool": "p", "region": "US",
          "count": 0, "difficulty_sum": 0.0, "difficulty_sq_sum": 1.0})
@example({"type": "share_batch", "start": T0, "end": T0, "pool": "p", "region": "US",
          "count": 1, "difficulty_sum": -2.0, "difficulty_sq_sum": 4.0})
@example({"type": "share_batch", "start": T0, "end": T0, "pool": "p", "region": "US",
          "count": 2, "difficulty_sum": 0.0, "difficulty_sq_sum": 0.0})
@example({"type": "share_batch", "start": T0, "end": T0, "pool": "p", "region": "US",
          "count": 1, "difficulty_sum": 2, "difficulty_sq_sum": 4.0})
@example({"type": "share_batch", "start": T0, "end": T0, "pool": "p", "region": "US",
          "count": 1, "difficulty_sum": 2.0, "difficulty_sq_sum": 4})
@example({"type": "share_batch", "start": 1795000000, "end": T0, "pool": "p", "region": "US",
          "count": 1, "difficulty_sum": 2.0, "difficulty_sq_sum": 4.0})
@example({"type": "share_batch", "start": T0, "end": T0, "pool": "p", "region": "US",
          "count": True, "difficulty_sum": 2.0, "difficulty_sq_sum": 4.0})
@example({"type": "share_batch", "start": T0, "end": T0, "pool": "p", "region": "US",
          "count": 3, "difficulty_sum": 3.0, "difficulty_sq_sum": 3.0 * (1 - 1e-9)})
def test_what_the_fast_path_reads_the_contract_reads_alike(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    fields = plain_batch_fields(orjson.loads(raw), ACCEPTED_CODES, LATEST)
    if fields is not None:
        # repr tells 1 from 1.0 and -0.0 from 0.0, which == does not.
        assert repr(fields) == repr(read_by_contract(raw))


@FAST
@given(compactor_batches())
def test_the_fast_path_takes_every_valid_batch_the_compactor_writes(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    fields = plain_batch_fields(orjson.loads(raw), ACCEPTED_CODES, LATEST)
    assert (fields is None) == (read_by_contract(raw) is None)


@FAST
@given(st.lists(messages(), min_size=1, max_size=40),
       st.sampled_from([Settings(), Settings(max_pools=2, max_series=3)]))
def test_a_partition_ends_as_if_every_message_went_through_the_contract(
    raws: list[bytes | None], limits: Settings
) -> None:
    fast = ShareBatchPartition.restore(None, limits)
    reference = ShareBatchPartition.restore(None, limits)
    with mock.patch("time.time", return_value=NOW):
        for raw in raws:
            expected = _outcome(apply_by_contract, reference, raw)
            assert _outcome(ShareBatchPartition.apply, fast, raw) == expected, raw
    assert fast.max_event_ts == reference.max_event_ts
    assert fast.windows.to_state() == reference.windows.to_state()
    assert fast.partial(NOW, limits.windows_s) == reference.partial(NOW, limits.windows_s)


@pytest.mark.parametrize(("extra", "valid"), [
    ({"account_difficulty_sq_sum": 6.0, "accounts": 2, "workers": 3}, True),
    ({"account_difficulty_sq_sum": None, "accounts": None, "workers": None}, True),
    ({"account_difficulty_sq_sum": 16.0}, True),
    ({"account_difficulty_sq_sum": 16}, True),  # an int: the contract's to read
    ({"account_difficulty_sq_sum": 5.9}, False),  # below Σd²
    ({"account_difficulty_sq_sum": 16.5}, False),  # above (Σd)²
    ({"accounts": 4}, False),  # more accounts than shares
    ({"workers": -1}, False),
    ({"accounts": 1.0}, False),
])
def test_account_fields_are_read_alike_by_both_paths(extra: dict[str, Any], valid: bool) -> None:
    """The optional account fields: the fast path takes them only when plainly valid, and a
    partition credits (and tracks concentration) exactly as the contract alone would."""
    body = {"type": "share_batch", "start": T0, "end": T0 + 5.0, "pool": "p", "region": "US",
            "count": 3, "difficulty_sum": 4.0, "difficulty_sq_sum": 6.0, **extra}
    raw = orjson.dumps(body)
    fast = ShareBatchPartition.restore(None, Settings())
    fast.region_codes.update(ACCEPTED_CODES)
    reference = ShareBatchPartition.restore(None, Settings())
    with mock.patch("time.time", return_value=NOW):
        expected = _outcome(apply_by_contract, reference, raw)
        assert _outcome(ShareBatchPartition.apply, fast, raw) == expected
    assert (expected is ShareOutcome.CREDITED) == valid
    assert fast.partial(NOW, [300.0]) == reference.partial(NOW, [300.0])
    if valid and extra.get("account_difficulty_sq_sum") is not None:
        ((_, _, weighted, reported, unreported),) = fast.concentration.rows(NOW)
        value = float(extra["account_difficulty_sq_sum"])
        assert (weighted, reported, unreported) == pytest.approx(
            (4.0 * (value - 6.0) / (16.0 - 6.0), 4.0, 0.0))


def test_the_fast_path_learns_a_region_label_from_the_contract() -> None:
    state = ShareBatchPartition.restore(None, Settings())
    body = {"type": "share_batch", "start": T0, "end": T0 + 5.0, "pool": "p", "region": " us-tx ",
            "count": 2, "difficulty_sum": 4.0, "difficulty_sq_sum": 8.0}
    assert plain_batch_fields(body, state.region_codes, LATEST) is None  # not yet known
    with mock.patch("time.time", return_value=NOW):
        assert state.apply(orjson.dumps(body)) is ShareOutcome.CREDITED
    assert state.region_codes == {" us-tx ": "US-TX"}
    assert plain_batch_fields(body, state.region_codes, LATEST) == (
        "p", "US-TX", T0, T0 + 5.0, 2, 4.0, 8.0)


@pytest.mark.parametrize("region", ["XX", "US-XX", "U S"])
def test_a_refused_region_label_is_not_learnt(region: str) -> None:
    state = ShareBatchPartition.restore(None, Settings())
    raw = orjson.dumps({"type": "share_batch", "start": T0, "end": T0, "pool": "p",
                        "region": region, "count": 0, "difficulty_sum": 0.0,
                        "difficulty_sq_sum": 0.0})
    with pytest.raises(InvalidEvent) as caught:
        state.apply(raw)
    assert caught.value.field == "region"
    assert state.region_codes == {}


def test_what_the_compactor_writes_takes_the_fast_path() -> None:
    """Single shares summed, and a batch passed through (integer times and sums in, as a feed
    may write them): every message the workers get is read without the model."""
    shares = [{"type": "share", "ts": T0 + i, "pool": "antpool", "region": "us-tx",
               "difficulty": 65536} for i in range(30)]
    passed = {"type": "share_batch", "start": int(T0), "end": int(T0) + 5, "pool": "foundry-usa",
              "region": "KZ", "count": 2, "difficulty_sum": 8, "difficulty_sq_sum": 32}
    compactor = ShareCompactor(Settings(), clock=lambda: NOW)
    records = [ConsumerRecord("shares", 0, offset, 0, 0, None, orjson.dumps(body), None, 0, 0,
                              ()) for offset, body in enumerate([*shares, passed])]
    compactor.ingest(records, "shares", 0)
    written = [orjson.loads(value) for _, _, value in compactor.encoded_batches()]
    assert len(written) == 4  # three 10 s buckets of shares, and the batch
    codes = {"US-TX": "US-TX", "KZ": "KZ"}
    assert all(plain_batch_fields(body, codes, LATEST) is not None for body in written)
