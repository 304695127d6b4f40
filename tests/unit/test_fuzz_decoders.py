"""Fuzzing every decoder that hostile or broken feeds can reach.

The contract (README, "Contracts"): every input ends in an estimate or in ``dead-letter`` with
the field and the reason. So ``decode_input`` and the partitions' ``apply`` may raise
:class:`InvalidEvent` (naming a field) and nothing else, whatever the bytes; the compactor
accounts for every message (credited, passed through, rejected, duplicate or dead-lettered);
and its fast path credits exactly what the full validation accepts.

The tests at the end pin defects found here, fixed since: they keep them from coming back.

The compactor and the decoder are given one fixed clock, ``NOW``, where their verdicts are
compared: event times more than ``max_future_skew_s`` ahead of the clock are refused.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import iptocc
import orjson
import pytest
from aiokafka import ConsumerRecord
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from streams.contracts import (
    MAX_FUTURE_BLOCK_TIME_S,
    BlockEvent,
    InvalidEvent,
    PriceEvent,
    ShareBatchEvent,
    ShareEvent,
    decode_input,
)
from streams.core.blocks import load_pool_directory
from streams.core.regions import normalise_region
from streams.core.shares import ShareOutcome
from streams.pipeline.compactor import ShareCompactor
from streams.pipeline.state import ChainPartition, MarketPartition, ShareBatchPartition
from streams.settings import Settings, get_settings
from tests.conftest import PROJECT_ROOT, TEST_DATA

T0 = 1_795_000_000.0
NOW = T0 + 3600.0  # the clock the compactor and the decoder are given
SKEW = Settings().max_future_skew_s
YEAR_2100 = datetime(2100, 1, 1, tzinfo=UTC).timestamp()
TOPIC = "shares"
POOLS = load_pool_directory(PROJECT_ROOT / "streams" / "data" / "pools-v2.json")
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Region labels as feeds write them: canonical, lower case, padded; all assigned ISO codes.
REGIONS = ("US", "US-TX", "us-ga", " KZ ", "CN-SC", "ca", "ZZ", "RU", "MY", "DE", "IS")
# Labels that match the region pattern but name no assigned ISO 3166 code.
UNASSIGNED_REGIONS = ("XX", "QQ", "US-XX", "CN-ZZZ")
# Public addresses iptocc places in a country, and one it cannot place.
IPS = ("8.8.8.8", "1.1.1.1", "81.2.69.160", "2001:4860:4860::8888", "10.0.0.1")

# Fields that model-level checks may name instead of the field that was corrupted.
CROSS_FIELD = {"share": {"region"}, "share_batch": {"end", "difficulty_sum", "difficulty_sq_sum"},
               "block": set(), "price": set()}
MODEL_FIELDS = {"share": set(ShareEvent.model_fields), "share_batch":
                set(ShareBatchEvent.model_fields), "block": set(BlockEvent.model_fields),
                "price": set(PriceEvent.model_fields)}


def _real_blocks() -> list[dict[str, Any]]:
    """The five real mainnet blocks of tests/data (a valid block is hard to make up)."""
    path = TEST_DATA / "real_blocks.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


REAL_BLOCKS = _real_blocks()


# ---- strategies ---------------------------------------------------------------------------------

printable_labels = st.text(min_size=1, max_size=64).filter(str.isprintable)
# Times a feed may send (up to T0, before the wall clock), and times too far ahead of NOW to
# accept that are still before 2100 (the absolute bound).
event_times = st.floats(min_value=1.2e9, max_value=T0)
future_times = st.one_of(st.floats(min_value=NOW + SKEW + 0.001, max_value=YEAR_2100,
                                   exclude_max=True),
                         st.integers(min_value=int(NOW + SKEW) + 1,
                                     max_value=int(YEAR_2100) - 1))
difficulties = st.one_of(st.floats(min_value=1e-3, max_value=1e15),
                         st.integers(min_value=1, max_value=10**15))


@st.composite
def valid_shares(draw: st.DrawFn, *, with_id: bool | None = None) -> dict[str, Any]:
    share: dict[str, Any] = {"type": "share", "ts": draw(event_times),
                             "pool": draw(printable_labels), "difficulty": draw(difficulties),
                             "region": draw(st.sampled_from(REGIONS))}
    if draw(st.booleans()):
        share["accepted"] = draw(st.booleans())
    if draw(st.booleans()):
        share["worker"] = draw(st.text(max_size=80))
    if with_id or (with_id is None and draw(st.booleans())):
        share["id"] = draw(st.text(min_size=1, max_size=128))
    return share


@st.composite
def valid_batches(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(min_value=0, max_value=10**7))
    start = draw(event_times)
    body: dict[str, Any] = {"type": "share_batch", "pool": draw(printable_labels),
                            "region": draw(st.sampled_from(REGIONS)), "start": start,
                            "end": start + draw(st.floats(min_value=0.0, max_value=10.0)),
                            "count": count, "difficulty_sum": 0.0, "difficulty_sq_sum": 0.0}
    if count:
        mean = draw(st.floats(min_value=1.0, max_value=1e12))
        # Σd² lies in [S²/n, S²]: place it anywhere in between (middle of the range in log).
        spread = draw(st.floats(min_value=1.0, max_value=float(count)))
        total = mean * count
        body.update(difficulty_sum=total, difficulty_sq_sum=total * total / count * spread)
    return body


@st.composite
def valid_blocks(draw: st.DrawFn) -> dict[str, Any]:
    block = dict(draw(st.sampled_from(REAL_BLOCKS)))
    if draw(st.booleans()):
        block.pop("coinbase_hex", None)
        block.pop("coinbase_value_sat", None)
    return block


valid_prices = st.builds(
    lambda ts, price, source: {"type": "price", "ts": ts, "btc_usd": price,
                               **({"source": source} if source is not None else {})},
    event_times, st.floats(min_value=1e-6, max_value=1e9), st.none() | st.text(max_size=20))

valid_events = st.one_of(valid_shares(), valid_batches(), valid_blocks(), valid_prices)

# Numbers orjson can write (64-bit integers, finite doubles), strings that look like numbers.
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=80),
    st.sampled_from(["NaN", "nan", "inf", "-inf", "Infinity", "1e400", "-1e309", "0x10",
                     "", " ", "\x00", "😀", "\u202e", "1795000000"]),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                        children, max_size=4),
    max_leaves=12,
)


@st.composite
def corrupted_events(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid event with one field replaced by an arbitrary JSON value or removed."""
    event = dict(draw(valid_events))
    name = draw(st.sampled_from(sorted(MODEL_FIELDS[event["type"]] - {"type"})))
    if draw(st.integers(0, 4)) == 0:
        event.pop(name, None)
    else:
        event[name] = draw(json_values)
    return event, name


# ---- decode_input -------------------------------------------------------------------------------


def _decode_or_named(raw: bytes | dict[str, Any], now: float | None = None) -> Any:
    """decode_input's result, or its InvalidEvent after checking it names a field."""
    try:
        return decode_input(raw, now=now)
    except InvalidEvent as error:
        assert error.field, f"InvalidEvent without a field for {raw!r:.200}"
        assert error.reason
        return error


@FAST
@given(valid_events)
def test_valid_events_decode_to_what_was_sent(event: dict[str, Any]) -> None:
    decoded = decode_input(orjson.dumps(event))
    assert decoded.type == event["type"]
    for name, value in event.items():
        if name == "region":
            assert getattr(decoded, name) == value.strip().upper()
        elif name in ("hash", "prev_hash", "bits", "coinbase_hex"):
            assert getattr(decoded, name) == value.lower()
        elif name in MODEL_FIELDS[event["type"]]:
            assert getattr(decoded, name) == value, name


@FAST
@given(st.binary(max_size=2000))
@example(b"\xff\xfe not utf8")
@example(b"\xed\xa0\x80")  # a UTF-8 encoded surrogate
@example(b"")
@example(b"null")
@example(b"[" * 5000)
@example(b'{"type": []}')
def test_random_bytes_raise_only_invalid_event(raw: bytes) -> None:
    result = _decode_or_named(raw)
    if not isinstance(result, InvalidEvent):  # random bytes that happen to be a valid event
        assert result.type in MODEL_FIELDS


@FAST
@given(json_values)
def test_any_json_document_raises_only_invalid_event(document: Any) -> None:
    result = _decode_or_named(orjson.dumps(document))
    if not isinstance(document, dict):
        assert isinstance(result, InvalidEvent) and result.field == "$"
    elif document.get("type") not in MODEL_FIELDS:
        assert isinstance(result, InvalidEvent) and result.field == "type"


@FAST
@given(corrupted_events())
def test_a_corrupted_field_is_named(case: tuple[dict[str, Any], str]) -> None:
    event, corrupted = case
    result = _decode_or_named(orjson.dumps(event))
    if isinstance(result, InvalidEvent):
        assert result.field in {corrupted} | CROSS_FIELD[event["type"]], (result, corrupted)
    else:
        assert result.type == event["type"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999",
                                     "1" + "0" * 400, "-" + "9" * 400])
@pytest.mark.parametrize("kind, field", [("share", "ts"), ("share", "difficulty"),
                                         ("share_batch", "difficulty_sum"),
                                         ("price", "btc_usd")])
def test_numbers_json_cannot_hold_are_unparseable_messages(literal: str, kind: str,
                                                           field: str) -> None:
    base = {"share": {"type": "share", "ts": T0, "pool": "p", "region": "US", "difficulty": 1.0},
            "share_batch": {"type": "share_batch", "pool": "p", "region": "US", "start": T0,
                            "end": T0 + 1, "count": 1, "difficulty_sum": 1.0,
                            "difficulty_sq_sum": 1.0},
            "price": {"type": "price", "ts": T0, "btc_usd": 1.0}}[kind]
    raw = orjson.dumps({**base, field: 12345.5}).replace(b"12345.5", literal.encode())
    with pytest.raises(InvalidEvent) as caught:
        decode_input(raw)
    assert caught.value.field == "$"


@pytest.mark.parametrize("text", ["NaN", "nan", "inf", "-inf", "Infinity", "1e400", "-1e309"])
@pytest.mark.parametrize("field", ["ts", "difficulty"])
def test_non_finite_numbers_as_strings_name_the_field(text: str, field: str) -> None:
    share = {"type": "share", "ts": T0, "pool": "p", "region": "US", "difficulty": 1.0}
    with pytest.raises(InvalidEvent) as caught:
        decode_input(orjson.dumps({**share, field: text}))
    assert caught.value.field == field


@pytest.mark.parametrize("ts, valid", [
    (5e-324, True), (1e-300, True), (1.0, True), (T0, True), (YEAR_2100 - 0.001, True),
    (YEAR_2100, False), (1e13, False), (float(2**64), False), (1e308, False),
])
def test_times_are_bounded_to_before_2100(ts: float, valid: bool) -> None:
    """Later "Unix seconds" are a unit mistake (ms, µs) or garbage (contracts, MAX_TIMESTAMP),
    even to a clock that has reached 2100."""
    raw = orjson.dumps({"type": "share", "ts": ts, "pool": "p", "region": "US",
                        "difficulty": 1.0})
    if valid:
        assert decode_input(raw, now=YEAR_2100).ts == ts  # type: ignore[union-attr]
    else:
        with pytest.raises(InvalidEvent) as caught:
            decode_input(raw, now=YEAR_2100)
        assert caught.value.field == "ts"


@pytest.mark.parametrize("pool, valid", [
    ("⛏️ mining 😀", True), ("مجمع التعدين", True), ("矿池", True), ("a" * 64, True),
    ("a" * 65, False), ("", False), ("left\u200fright", False), ("rtl\u202eoverride", False),
    ("nul\x00", False), ("new\nline", False), ("zero\u200dwidth", False), ("\x1b[31mred", False),
])
def test_pool_labels_printable_and_bounded(pool: str, valid: bool) -> None:
    raw = orjson.dumps({"type": "share", "ts": T0, "pool": pool, "region": "US",
                        "difficulty": 1.0})
    if valid:
        assert decode_input(raw).pool == pool  # type: ignore[union-attr]
    else:
        with pytest.raises(InvalidEvent) as caught:
            decode_input(raw)
        assert caught.value.field == "pool"


@FAST
@given(st.text(max_size=70))
def test_any_pool_or_region_text_is_accepted_or_named(text: str) -> None:
    for name in ("pool", "region"):
        share = {"type": "share", "ts": T0, "pool": "p", "region": "US", "difficulty": 1.0,
                 name: text}
        result = _decode_or_named(orjson.dumps(share))
        assert not isinstance(result, InvalidEvent) or result.field == name


TEN_MB = 10 * 1024 * 1024


@pytest.mark.parametrize("raw", [
    b"[" * TEN_MB,
    b'"' + b"a" * TEN_MB + b'"',
    b"\xff" * TEN_MB,
    b'{"type":"share","pool":"' + b"p" * TEN_MB + b'"}',
], ids=["nested", "string", "not-utf8", "huge-pool"])
def test_ten_megabyte_junk_is_rejected_quickly(raw: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidEvent) as caught:
        decode_input(raw)
    assert caught.value.field in ("$", "pool", "ts")
    assert time.perf_counter() - started < 2.0


def test_a_ten_megabyte_message_is_dead_lettered_by_the_compactor() -> None:
    """decode_input has no size limit (a 10 MB ``worker`` is a valid share); the compactor
    refuses messages above ``max_message_bytes`` before decoding them."""
    raw = orjson.dumps({"type": "share", "ts": T0, "pool": "p", "region": "US",
                        "difficulty": 1.0, "worker": "w" * TEN_MB})
    assert decode_input(raw).type == "share"
    compactor = ShareCompactor(Settings())
    started = time.perf_counter()
    compactor.ingest([_record(raw, 7)], TOPIC, 0)
    assert time.perf_counter() - started < 2.0
    assert not compactor.pending.ts
    (letter,) = [orjson.loads(d) for d in compactor.pending.dead_letters]
    assert (letter["field"], letter["offset"]) == ("$", 7)
    assert "exceeds" in letter["error"]
    assert base64.b64decode(letter["raw_b64"]) == raw


# ---- the compactor ------------------------------------------------------------------------------


def _record(value: bytes | None, offset: int) -> ConsumerRecord[Any, bytes]:
    size = len(value) if value is not None else 0
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, None, value, None, 0, size, ())


def _share_counter(outcome: str) -> float:
    return REGISTRY.get_sample_value("hashatlas_shares_total", {"outcome": outcome}) or 0.0


def _dead_share_messages() -> st.SearchStrategy[bytes | None]:
    """Messages that are unusable by construction (known truth for the ledger)."""
    share = {"type": "share", "ts": T0, "pool": "p", "region": "US", "difficulty": 1.0}
    batch = {"type": "share_batch", "pool": "p", "region": "US", "start": T0, "end": T0 + 1,
             "count": 2, "difficulty_sum": 2.0, "difficulty_sq_sum": 2.0}
    return st.one_of(
        st.none(),
        st.binary(max_size=200).map(lambda b: b"\xff" + b),  # never UTF-8
        st.just(b"[1, 2]"), st.just(b'"share"'), st.just(b"{}"),
        st.sampled_from(UNASSIGNED_REGIONS).map(lambda r: orjson.dumps({**share, "region": r})),
        st.floats(max_value=0.0).map(lambda d: orjson.dumps({**share, "difficulty": d})),
        st.just(orjson.dumps({**share, "ts": "Infinity"})),
        st.just(orjson.dumps({**share, "region": None})),
        st.just(orjson.dumps({**batch, "difficulty_sq_sum": 5.0})),  # above (Σd)²
        st.just(orjson.dumps({**batch, "region": "XX"})),
        st.just(orjson.dumps({**batch, "end": T0 - 1})),
        future_times.map(lambda t: orjson.dumps({**share, "ts": t})),
        future_times.map(lambda t: orjson.dumps({**batch, "start": t, "end": t})),
        st.sampled_from(REAL_BLOCKS).map(orjson.dumps),
        st.just(orjson.dumps({"type": "price", "ts": T0, "btc_usd": 1.0})),
        st.just(orjson.dumps({**share, "worker": "w" * 5000})),  # above max_message_bytes
    )


@st.composite
def share_topic_traffic(draw: st.DrawFn) -> list[tuple[bytes | None, str, dict[str, Any]]]:
    """Messages for ``shares`` with what must happen to each: the truth the ledger is checked
    against, decided by construction (ids are per pool, checked only for accepted shares)."""
    out: list[tuple[bytes | None, str, dict[str, Any]]] = []
    seen_ids: set[tuple[str, str]] = set()
    ids = st.sampled_from(["a", "b", "c"])
    pools = st.sampled_from(["foundry-usa", "antpool", "😀pool"])
    for _ in range(draw(st.integers(min_value=1, max_value=60))):
        kind = draw(st.sampled_from(["plain", "id", "ip", "rejected", "batch", "dead"]))
        if kind == "dead":
            out.append((draw(_dead_share_messages()), "dead", {}))
            continue
        if kind == "batch":
            batch = draw(valid_batches())
            out.append((orjson.dumps(batch), "passthrough", batch))
            continue
        share = draw(valid_shares(with_id=False))
        share["pool"] = draw(pools)
        share.pop("accepted", None)
        outcome = "credited"
        if kind == "rejected":
            share["accepted"] = False
            outcome = "rejected"
        if kind == "ip":
            share.pop("region")
            share["ip"] = draw(st.sampled_from(IPS))
        if kind in ("id", "rejected") and draw(st.booleans()):
            share["id"] = draw(ids)
            key = (share["pool"], share["id"])
            if outcome == "credited":
                outcome = "duplicate" if key in seen_ids else "credited"
                seen_ids.add(key)
        out.append((orjson.dumps(share), outcome, share))
    return out


def _expected_region(share: dict[str, Any]) -> str:
    if "region" in share:
        return normalise_region(share["region"])
    return iptocc.country_code(share["ip"]) or "ZZ"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(share_topic_traffic(), st.integers(min_value=1, max_value=7))
def test_compactor_accounts_for_every_message(
    traffic: list[tuple[bytes | None, str, dict[str, Any]]], chunk: int
) -> None:
    compactor = ShareCompactor(Settings(max_message_bytes=4096, dedup_capacity=1000),
                               clock=lambda: NOW)
    before = {outcome: _share_counter(outcome) for outcome in ("rejected", "duplicate")}
    records = [_record(raw, offset) for offset, (raw, _, _) in enumerate(traffic)]
    for i in range(0, len(records), chunk):
        compactor.ingest(records[i:i + chunk], TOPIC, 0)
    pending = compactor.pending
    truth = Counter(outcome for _, outcome, _ in traffic)
    ledger = {
        "credited": len(pending.ts), "passthrough": len(pending.passthrough),
        "dead": len(pending.dead_letters),
        "rejected": _share_counter("rejected") - before["rejected"],
        "duplicate": _share_counter("duplicate") - before["duplicate"],
    }
    assert ledger == {k: truth.get(k, 0) for k in ledger}
    assert sum(ledger.values()) == len(traffic)  # none lost, none counted twice

    # Dead letters: exactly the unusable offsets, each with a field and its original bytes.
    letters = [orjson.loads(d) for d in pending.dead_letters]
    dead_offsets = [offset for offset, (_, outcome, _) in enumerate(traffic) if outcome == "dead"]
    assert [letter["offset"] for letter in letters] == dead_offsets
    for letter in letters:
        assert letter["field"] and letter["topic"] == TOPIC
        assert base64.b64decode(letter["raw_b64"]) == (traffic[letter["offset"]][0] or b"")

    # Credited shares: the very (pool, region, time, difficulty) that were sent.
    credited = sorted((share["pool"], _expected_region(share), float(share["ts"]),
                       float(share["difficulty"]))
                      for _, outcome, share in traffic if outcome == "credited")
    got = sorted((*compactor.keys.key(k), t, d) for k, t, d in zip(pending.key_ids, pending.ts,
                                                    pending.difficulty, strict=True))
    assert got == credited

    # What leaves for the workers: valid share_batch events carrying every credited share.
    batches = [decode_input(value) for _, _, value in compactor.encoded_batches()]
    assert all(isinstance(b, ShareBatchEvent) for b in batches)
    passed = [share for _, outcome, share in traffic if outcome == "passthrough"]
    assert sum(b.count for b in batches if isinstance(b, ShareBatchEvent)) == (
        len(credited) + sum(p["count"] for p in passed))
    assert sum(b.difficulty_sum for b in batches if isinstance(b, ShareBatchEvent)) == (
        pytest.approx(sum(c[3] for c in credited) + sum(p["difficulty_sum"] for p in passed),
                      rel=1e-9))


@FAST
@given(st.lists(st.one_of(st.binary(max_size=300), json_values.map(orjson.dumps),
                          corrupted_events().map(lambda case: orjson.dumps(case[0]))),
                min_size=1, max_size=30))
def test_compactor_loses_nothing_whatever_arrives(messages: list[bytes]) -> None:
    compactor = ShareCompactor(Settings(), clock=lambda: NOW)
    before = {outcome: _share_counter(outcome) for outcome in ("rejected", "duplicate")}
    compactor.ingest([_record(raw, i) for i, raw in enumerate(messages)], TOPIC, 0)
    pending = compactor.pending
    handled = (len(pending.ts) + len(pending.passthrough) + len(pending.dead_letters)
               + _share_counter("rejected") - before["rejected"]
               + _share_counter("duplicate") - before["duplicate"])
    assert handled == len(messages)
    assert all(orjson.loads(d)["field"] for d in pending.dead_letters)


@st.composite
def share_like(draw: st.DrawFn) -> dict[str, Any]:
    """Plain shares (region given, no id) with the fields the fast path reads mutated."""
    share = draw(valid_shares(with_id=False))
    share.pop("worker", None)
    for name in draw(st.sets(st.sampled_from(["ts", "difficulty", "pool", "region",
                                              "accepted"]), max_size=2)):
        share[name] = draw(st.one_of(json_values, future_times, st.sampled_from(
            [*UNASSIGNED_REGIONS, " us-tx ", "us", "ß", True, 0, -1.0, 1e308, 2**63,
             NOW + SKEW, NOW + SKEW + 0.001, YEAR_2100])))
    return share


@FAST
@given(share_like())
@example({"type": "share", "ts": T0, "pool": "p", "region": "ß", "difficulty": 1.0})
@example({"type": "share", "ts": True, "pool": "p", "region": "US", "difficulty": 1.0})
@example({"type": "share", "ts": T0, "pool": "p", "region": "US", "difficulty": 5e-324})
@example({"type": "share", "ts": NOW + SKEW, "pool": "p", "region": "US", "difficulty": 1.0})
@example({"type": "share", "ts": int(NOW + SKEW) + 1, "pool": "p", "region": "US",
          "difficulty": 1.0})
def test_fast_path_credits_exactly_what_full_validation_accepts(share: dict[str, Any]) -> None:
    compactor = ShareCompactor(Settings(), clock=lambda: NOW)
    rejected_before = _share_counter("rejected")
    compactor.ingest([_record(orjson.dumps(share), 0)], TOPIC, 0)
    credited = len(compactor.pending.ts) == 1
    event: Any = _decode_or_named(orjson.dumps(share), now=NOW)
    region: str | None = None
    if isinstance(event, ShareEvent) and event.region is not None:
        try:
            region = normalise_region(event.region)
        except ValueError:
            region = None
    usable = isinstance(event, ShareEvent) and event.accepted and region is not None
    assert credited == usable, (share, event)
    if credited:
        assert isinstance(event, ShareEvent)
        assert compactor.keys.key(compactor.pending.key_ids[0]) == (event.pool, region)
        assert compactor.pending.ts == [event.ts]
        assert compactor.pending.difficulty == [event.difficulty]
    elif isinstance(event, ShareEvent) and not event.accepted:
        assert _share_counter("rejected") == rejected_before + 1
    else:
        assert len(compactor.pending.dead_letters) == 1


# ---- the workers' partitions --------------------------------------------------------------------


# Times beyond ~9.2e19 s would overflow the share windows' bucket index; the contract refuses them
# long before (event times at most max_future_skew_s ahead of the wall clock).
bounded_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
              st.floats(min_value=-1e18, max_value=1e18), st.text(max_size=40)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                        children, max_size=3),
    max_leaves=8,
)


@st.composite
def partition_junk(draw: st.DrawFn) -> bytes | None:
    event = dict(draw(valid_events))
    fields = sorted(MODEL_FIELDS[event["type"]])
    for name in draw(st.sets(st.sampled_from(fields), max_size=3)):
        event[name] = draw(bounded_json_values)
    return draw(st.one_of(st.none(), st.binary(max_size=200), st.just(orjson.dumps(event)),
                          bounded_json_values.map(orjson.dumps)))


@FAST
@given(st.lists(partition_junk(), min_size=1, max_size=12))
def test_partitions_raise_only_invalid_event(messages: list[bytes | None]) -> None:
    shares = ShareBatchPartition.restore(None, Settings())
    chain = ChainPartition.restore(None, POOLS)
    market = MarketPartition.restore(None)
    applied = 0
    for raw in messages:
        for apply in (shares.apply, chain.apply, market.apply):
            try:
                apply(raw)
                applied += 1
            except InvalidEvent as error:
                assert error.field and error.reason
    assert applied <= len(messages)  # a message is of one kind: at most one partition takes it
    chain.summary(2016)  # what the worker then writes must still compute
    shares.partial(max(shares.max_event_ts, T0), Settings().windows_s)


# ---- defects found by this fuzzing (fail once fixed: then drop the marker) ----------------------


@pytest.mark.parametrize("raw", [b'{"type": []}', b'{"type": {"share": 1}}',
                                 b'{"type": [1], "ts": 1795000000.0}'])
def test_a_non_string_type_is_invalid(raw: bytes) -> None:
    """Once a TypeError (unhashable `type`), which stopped the compactor on that message again
    after every restart."""
    with pytest.raises(InvalidEvent) as caught:
        decode_input(raw)
    assert caught.value.field == "type"


def test_the_compactor_survives_a_non_string_type() -> None:
    compactor = ShareCompactor(Settings())
    compactor.ingest([_record(b'{"type": []}', 0)], TOPIC, 0)
    assert len(compactor.pending.dead_letters) == 1


@pytest.mark.parametrize("ts", [YEAR_2100, 1e13, 1e300])
def test_fast_path_refuses_times_from_2100(ts: float) -> None:
    share = {"type": "share", "ts": ts, "pool": "p", "region": "US", "difficulty": 1.0}
    compactor = ShareCompactor(Settings())
    compactor.ingest([_record(orjson.dumps(share), 0)], TOPIC, 0)
    assert not compactor.pending.ts
    (letter,) = [orjson.loads(d) for d in compactor.pending.dead_letters]
    assert letter["field"] == "ts"


@pytest.mark.parametrize("field, value", [("worker", 5), ("ip", 5), ("worker", ["x"])])
def test_fast_path_rejects_a_share_full_validation_rejects(field: str, value: Any) -> None:
    share = {"type": "share", "ts": T0, "pool": "p", "region": "US", "difficulty": 1.0,
             field: value}
    with pytest.raises(InvalidEvent):
        decode_input(orjson.dumps(share))
    compactor = ShareCompactor(Settings())
    compactor.ingest([_record(orjson.dumps(share), 0)], TOPIC, 0)
    assert not compactor.pending.ts
    assert len(compactor.pending.dead_letters) == 1


@pytest.mark.parametrize("ip", ["not-an-ip", "999.1.1.1", "1.2.3", ""])
def test_a_malformed_ip_is_dead_lettered(ip: str) -> None:
    compactor = ShareCompactor(Settings())
    share = {"type": "share", "ts": T0, "pool": "p", "ip": ip, "difficulty": 1.0}
    compactor.ingest([_record(orjson.dumps(share), 0)], TOPIC, 0)
    assert not compactor.pending.ts
    (letter,) = [orjson.loads(d) for d in compactor.pending.dead_letters]
    assert letter["field"] == "ip"


def test_a_huge_difficulty_does_not_take_good_shares_down_with_it() -> None:
    compactor = ShareCompactor(Settings())
    good = {"type": "share", "ts": T0, "pool": "p", "region": "US", "difficulty": 65536.0}
    evil = {**good, "ts": T0 + 1, "difficulty": 1e200}
    compactor.ingest([_record(orjson.dumps(good), 0), _record(orjson.dumps(evil), 1)], TOPIC, 0)
    state = ShareBatchPartition.restore(None, Settings())
    credited = 0
    for _, _, value in compactor.encoded_batches():
        # The evil share alone may be refused; the good one must get through.
        with contextlib.suppress(InvalidEvent):
            credited += state.apply(value) is ShareOutcome.CREDITED
    assert credited >= 1


def test_one_event_far_in_the_future_does_not_silence_the_rest() -> None:
    """Once times were bounded only by 2100: one share_batch a year ahead moved the partition's
    latest event time, and the fine-retention rule then made every later real event late, for
    all pools. The workers decode with the wall clock, hence a year from now."""
    state = ShareBatchPartition.restore(None, Settings())

    def batch(pool: str, start: float) -> bytes:
        return orjson.dumps({"type": "share_batch", "pool": pool, "region": "US",
                             "start": start, "end": start + 5.0, "count": 10,
                             "difficulty_sum": 10 * 65536.0,
                             "difficulty_sq_sum": 10 * 65536.0**2})

    assert state.apply(batch("antpool", T0)) is ShareOutcome.CREDITED
    with contextlib.suppress(InvalidEvent):  # rejecting it outright is a fix too
        state.apply(batch("evil", time.time() + 365 * 86400.0))
    assert state.apply(batch("antpool", T0 + 10.0)) is ShareOutcome.CREDITED
    assert state.apply(batch("foundry-usa", T0 + 10.0)) is ShareOutcome.CREDITED


def test_the_workers_refuse_a_share_batch_from_the_future() -> None:
    state = ShareBatchPartition.restore(None, Settings())
    start = time.time() + 86400.0
    raw = orjson.dumps({"type": "share_batch", "pool": "p", "region": "US", "start": start,
                        "end": start + 5.0, "count": 1, "difficulty_sum": 1.0,
                        "difficulty_sq_sum": 1.0})
    with pytest.raises(InvalidEvent) as caught:
        state.apply(raw)
    assert caught.value.field == "start"
    assert state.max_event_ts == 0.0


@FAST
@given(valid_events, future_times)
def test_an_event_from_the_future_is_invalid_naming_its_time(event: dict[str, Any],
                                                             future: float) -> None:
    event = dict(event)
    field = {"share": "ts", "price": "ts", "share_batch": "start", "block": "time"}[event["type"]]
    if event["type"] == "share_batch":
        event["start"] = event["end"] = future
    elif event["type"] == "block":  # blocks may be two hours further ahead (consensus rule)
        future = max(int(future), int(NOW + SKEW + MAX_FUTURE_BLOCK_TIME_S) + 1)
    event[field] = future
    with pytest.raises(InvalidEvent) as caught:
        decode_input(orjson.dumps(event), now=NOW)
    assert caught.value.field == field
    assert "max_future_skew_s" in caught.value.reason


@pytest.mark.parametrize("kind, ahead, valid", [
    ("share", 0.0, True), ("share", SKEW, True), ("share", SKEW + 0.001, False),
    ("share", 365 * 86400.0, False), ("price", SKEW, True), ("price", SKEW + 1.0, False),
    ("batch_end", SKEW, True), ("batch_end", SKEW + 1.0, False),
    ("block", SKEW + MAX_FUTURE_BLOCK_TIME_S, True),
    ("block", SKEW + MAX_FUTURE_BLOCK_TIME_S + 1.0, False),
])
def test_times_may_be_ahead_of_the_clock_by_the_skew_only(kind: str, ahead: float,
                                                         valid: bool) -> None:
    t = NOW + ahead
    event: dict[str, Any] = {
        "share": {"type": "share", "ts": t, "pool": "p", "region": "US", "difficulty": 1.0},
        "price": {"type": "price", "ts": t, "btc_usd": 1.0},
        "batch_end": {"type": "share_batch", "pool": "p", "region": "US", "start": NOW,
                      "end": t, "count": 1, "difficulty_sum": 1.0, "difficulty_sq_sum": 1.0},
        "block": {**REAL_BLOCKS[0], "time": int(t)},
    }[kind]
    if valid:
        decode_input(orjson.dumps(event), now=NOW)
    else:
        with pytest.raises(InvalidEvent) as caught:
            decode_input(orjson.dumps(event), now=NOW)
        assert caught.value.field == {"share": "ts", "price": "ts", "batch_end": "end",
                                      "block": "time"}[kind]


def test_the_skew_is_a_parameter() -> None:
    raw = orjson.dumps({"type": "share", "ts": NOW + 1.0, "pool": "p", "region": "US",
                        "difficulty": 1.0})
    decode_input(raw, now=NOW, max_future_skew_s=1.0)
    with pytest.raises(InvalidEvent, match=r"max_future_skew_s \(0 s\)"):
        decode_input(raw, now=NOW, max_future_skew_s=0.0)


def test_by_default_the_bound_is_the_setting_ahead_of_the_wall_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workers call ``decode_input(raw)``: the process's setting and the wall clock."""
    monkeypatch.setenv("HASHATLAS_MAX_FUTURE_SKEW_S", "10")
    get_settings.cache_clear()
    try:
        share = {"type": "share", "pool": "p", "region": "US", "difficulty": 1.0}
        decode_input(orjson.dumps({**share, "ts": time.time() + 5.0}))
        with pytest.raises(InvalidEvent) as caught:
            decode_input(orjson.dumps({**share, "ts": time.time() + 60.0}))
        assert caught.value.field == "ts"
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("skew", [0.0, SKEW])
def test_the_compactor_dead_letters_events_from_the_future(skew: float) -> None:
    compactor = ShareCompactor(Settings(max_future_skew_s=skew), clock=lambda: NOW)
    share = {"type": "share", "ts": NOW + skew, "pool": "p", "region": "US", "difficulty": 1.0}
    batch = {"type": "share_batch", "pool": "p", "region": "US", "start": NOW + skew + 1.0,
             "end": NOW + skew + 2.0, "count": 1, "difficulty_sum": 1.0,
             "difficulty_sq_sum": 1.0}
    messages = [share, {**share, "ts": NOW + skew + 0.5},  # fast path
                {**share, "ts": NOW + skew + 0.5, "id": "x"},  # full validation
                batch, {**batch, "start": NOW, "end": NOW + skew}]
    compactor.ingest([_record(orjson.dumps(m), i) for i, m in enumerate(messages)], TOPIC, 0)
    assert compactor.pending.ts == [NOW + skew]
    assert len(compactor.pending.passthrough) == 1
    letters = [orjson.loads(d) for d in compactor.pending.dead_letters]
    assert [(letter["offset"], letter["field"]) for letter in letters] == [
        (1, "ts"), (2, "ts"), (3, "start")]
    assert all("max_future_skew_s" in letter["error"] for letter in letters)


@pytest.mark.parametrize("start", [1e20, 1e300])
def test_a_share_batch_beyond_int64_buckets_is_invalid(start: float) -> None:
    """Once an OverflowError from the share windows' bucket index, which the agent's loop (it
    catches InvalidEvent) did not handle."""
    state = ShareBatchPartition.restore(None, Settings())
    raw = orjson.dumps({"type": "share_batch", "pool": "p", "region": "US", "start": start,
                        "end": start, "count": 1, "difficulty_sum": 1.0,
                        "difficulty_sq_sum": 1.0})
    with pytest.raises(InvalidEvent):
        state.apply(raw)


@pytest.mark.parametrize("region", UNASSIGNED_REGIONS)
def test_share_batch_partition_rejects_unassigned_regions(region: str) -> None:
    state = ShareBatchPartition.restore(None, Settings())
    raw = orjson.dumps({"type": "share_batch", "pool": "p", "region": region, "start": T0,
                        "end": T0 + 1, "count": 1, "difficulty_sum": 1.0,
                        "difficulty_sq_sum": 1.0})
    with pytest.raises(InvalidEvent) as caught:
        state.apply(raw)
    assert caught.value.field == "region"



# ---- the future-time bound is fixed with the record (#18) --------------------------------------

APPENDED = float(int(time.time()) - 3600)  # appended an hour ago (whole ms), replayed now


def _batch_ending(end: float) -> bytes:
    return orjson.dumps({"type": "share_batch", "pool": "p", "region": "US", "start": end - 5.0,
                         "end": end, "count": 1, "difficulty_sum": 1.0,
                         "difficulty_sq_sum": 1.0})


@pytest.mark.parametrize("ahead, valid", [(SKEW, True), (SKEW + 1.0, False)])
def test_a_replayed_share_batch_is_judged_by_its_record_time(ahead: float, valid: bool) -> None:
    """Judged against the wall clock, a batch dead-lettered as too far ahead when first read
    became valid when replayed later (after a crash), changing the estimates on replay."""
    state = ShareBatchPartition.restore(None, Settings())
    raw = _batch_ending(APPENDED + ahead)
    if valid:
        assert state.apply(raw, APPENDED) is ShareOutcome.CREDITED
    else:
        with pytest.raises(InvalidEvent, match="max_future_skew_s"):
            state.apply(raw, APPENDED)


@pytest.mark.parametrize("kind", ["block", "price"])
def test_replayed_blocks_and_prices_are_judged_by_their_record_time(kind: str) -> None:
    ahead = SKEW + 1.0 + (MAX_FUTURE_BLOCK_TIME_S if kind == "block" else 0.0)
    if kind == "block":
        line = (TEST_DATA / "real_blocks.jsonl").read_text().splitlines()[-1]
        raw = orjson.dumps({**orjson.loads(line), "time": int(APPENDED + ahead) + 1})
        state: ChainPartition | MarketPartition = ChainPartition.restore(
            None, load_pool_directory(PROJECT_ROOT / "streams" / "data" / "pools-v2.json"))
    else:
        raw = orjson.dumps({"type": "price", "ts": APPENDED + ahead, "btc_usd": 1.0,
                            "source": "t"})
        state = MarketPartition.restore(None)
    state.apply(raw)  # read at the wall clock, an hour later: accepted
    with pytest.raises(InvalidEvent, match="max_future_skew_s"):
        state.apply(raw, APPENDED)


def test_the_compactor_judges_each_share_by_its_record_time() -> None:
    compactor = ShareCompactor(Settings())  # its clock is the wall clock, an hour later
    shares = [orjson.dumps({"type": "share", "ts": APPENDED + ahead, "pool": "p",
                            "region": "US", "difficulty": 1.0}) for ahead in (SKEW, SKEW + 1.0)]
    stamp = int(APPENDED * 1000)
    records = [ConsumerRecord(TOPIC, 0, offset, stamp, 1, None, value, None, 0, len(value), ())
               for offset, value in enumerate(shares)]
    compactor.ingest(records, TOPIC, 0)
    assert len(compactor.pending.ts) == 1
    (letter,) = [orjson.loads(d) for d in compactor.pending.dead_letters]
    assert (letter["field"], letter["offset"]) == ("ts", 1)
