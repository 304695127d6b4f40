"""The compactor's key table: capped, so a flood of invented labels cannot exhaust memory, and
no share lost to the cap (the overflow is summed under ``other`` and counted)."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY

from streams.core.compaction import OVERFLOW_POOL, KeyTable, summarise_shares
from streams.pipeline.compactor import ShareCompactor
from streams.settings import Settings

T0 = 1_795_000_000.0


def _overflow_counter() -> float:
    return REGISTRY.get_sample_value("hashatlas_compactor_overflow_shares_total") or 0.0


def _record(value: bytes, offset: int) -> ConsumerRecord[Any, bytes]:
    return ConsumerRecord("shares", 0, offset, 0, 0, None, value, None, 0, len(value), ())


def test_ids_are_dense_and_stable() -> None:
    table = KeyTable(capacity=10)
    assert [table.id_of("a", "US"), table.id_of("b", "US"), table.id_of("a", "KZ")] == [0, 1, 2]
    assert table.id_of("a", "US") == 0
    assert [table.key(i) for i in range(3)] == [("a", "US"), ("b", "US"), ("a", "KZ")]
    assert not table.full


def test_a_full_table_sums_new_pools_under_other_per_region() -> None:
    table = KeyTable(capacity=2)
    table.id_of("a", "US")
    table.id_of("b", "US")
    assert table.full
    flood = [table.id_of(f"flood-{i}", region) for i in range(1000) for region in ("US", "KZ")]
    assert len(table) == 4  # the two keys and one overflow key per region
    assert {table.key(i) for i in flood} == {(OVERFLOW_POOL, "US"), (OVERFLOW_POOL, "KZ")}
    assert table.id_of("a", "US") == 0  # known keys keep their own id


def test_only_shares_summed_because_of_the_cap_count_as_overflow() -> None:
    table = KeyTable(capacity=2)
    real_other = table.id_of(OVERFLOW_POOL, "US")  # a pool that really is called "other"
    table.id_of("a", "US")
    folded = table.id_of("new", "US")
    assert table.key(folded) == table.key(real_other) and folded != real_other
    totals = summarise_shares([real_other] * 3 + [folded] * 5, [T0] * 8, [1.0] * 8, 10.0)
    assert table.overflow_count(totals) == 5
    assert KeyTable(capacity=2).overflow_count(totals) == 0


def test_a_label_flood_loses_no_share_and_is_counted() -> None:
    compactor = ShareCompactor(Settings(max_compactor_keys=10), clock=lambda: T0 + 60.0)
    shares = [{"type": "share", "ts": T0 + i * 0.01, "pool": f"pool-{i}",
               "region": ("US", "KZ")[i % 2], "difficulty": 2.0} for i in range(1000)]
    # Half through the fast path, half through full validation (an id takes that path).
    messages = [orjson.dumps({**share, "id": str(i)} if i % 2 else share)
                for i, share in enumerate(shares)]
    before = _overflow_counter()
    compactor.ingest([_record(raw, i) for i, raw in enumerate(messages)], "shares", 0)
    assert len(compactor.pending.ts) == 1000 and not compactor.pending.dead_letters
    assert len(compactor.keys) == 12  # 10 pools, then (other, US) and (other, KZ)

    batches = [orjson.loads(value) for _, _, value in compactor.encoded_batches()]
    assert sum(batch["count"] for batch in batches) == 1000
    assert sum(batch["difficulty_sum"] for batch in batches) == 2000.0
    assert {batch["pool"] for batch in batches} == {*(f"pool-{i}" for i in range(10)), "other"}
    assert _overflow_counter() - before == 990
