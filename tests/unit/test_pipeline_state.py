"""Per-partition worker state: label caps, checkpoints that restore exactly, junk rejected."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.contracts import InvalidEvent
from streams.core.blocks import load_pool_directory
from streams.core.shares import ShareOutcome
from streams.pipeline.state import (
    OVERFLOW_POOL,
    Admission,
    ChainPartition,
    MarketPartition,
    ResumeCheck,
    ShareBatchPartition,
)
from streams.settings import Settings

T0 = 1_795_000_000.0
POOLS_FILE = Path(__file__).resolve().parents[2] / "streams" / "data" / "pools-v2.json"


def _batch(pool: str, region: str, t: float, count: int = 10) -> bytes:
    return orjson.dumps({"type": "share_batch", "pool": pool, "region": region, "start": t,
                         "end": t + 5.0, "count": count, "difficulty_sum": count * 4.0,
                         "difficulty_sq_sum": count * 16.0})


def test_a_label_flood_is_capped_and_nothing_is_lost() -> None:
    settings = Settings(max_pools=5, max_series=12)
    state = ShareBatchPartition.restore(None, settings)
    regions = ["US", "KZ", "CN", "RU", "CA", "DE", "MY", "IR", "NO", "SE"]
    for i in range(1000):  # 1000 fake pools over 10 regions
        state.apply(_batch(f"pool-{i}", regions[i % 10], T0 + i * 0.01))
    keys = state.windows.keys()
    assert len(keys) <= 12 + 1  # the cap, plus the (other, ZZ) row it overflows into
    assert len({pool for pool, _ in keys}) <= 5 + 1
    assert any(pool == OVERFLOW_POOL for pool, _ in keys)
    estimates = state.windows.estimates(T0 + 20.0, 300.0)
    assert sum(e.difficulty_sum for e in estimates.values()) == pytest.approx(1000 * 40.0)


def test_share_state_checkpoint_restores_exactly() -> None:
    settings = Settings()
    state = ShareBatchPartition.restore(None, settings)
    for i in range(50):
        state.apply(_batch("foundry-usa" if i % 2 else "antpool", "US-TX" if i % 3 else "KZ",
                           T0 + 7.0 * i))
    state.next_offset = 50
    restored = ShareBatchPartition.restore(state.checkpoint(), settings)
    assert restored.next_offset == 50 and restored.max_event_ts == state.max_event_ts
    now = T0 + 400.0
    assert restored.partial(now, settings.windows_s) == state.partial(now, settings.windows_s)


def test_account_concentration_survives_a_checkpoint_and_reaches_the_partial() -> None:
    settings = Settings()
    state = ShareBatchPartition.restore(None, settings)
    body = {"type": "share_batch", "pool": "p", "region": "US", "start": T0, "end": T0 + 10.0,
            "count": 4, "difficulty_sum": 8.0, "difficulty_sq_sum": 16.0,
            "accounts": 2, "account_difficulty_sq_sum": 40.0}
    state.apply(orjson.dumps(body))
    state.apply(orjson.dumps({**body, "start": T0 + 10.0, "end": T0 + 20.0,
                              "accounts": None, "account_difficulty_sq_sum": None}))
    restored = ShareBatchPartition.restore(state.checkpoint(), settings)
    partial = restored.partial(T0 + 30.0, settings.windows_s)
    # (A − Q)/(D² − Q) = (40 − 16)/(64 − 16) = 0.5 on 8 of work; 8 more unreported.
    assert [list(row) for row in partial.concentration] == [["p", "US", 4.0, 8.0, 8.0]]
    assert partial == state.partial(T0 + 30.0, settings.windows_s)
    with pytest.raises(InvalidEvent) as error:
        state.apply(orjson.dumps({**body, "account_difficulty_sq_sum": 70.0}))
    assert error.value.field == "account_difficulty_sq_sum"


def test_junk_is_rejected_with_a_field() -> None:
    state = ShareBatchPartition.restore(None, Settings())
    for raw, field in ((None, "$"), (b"{}", "type"), (b'{"type":"price","ts":1,"btc_usd":2}',
                                                       "type")):
        with pytest.raises(InvalidEvent) as error:
            state.apply(raw)
        assert error.value.field == field
    too_long = orjson.dumps({"type": "share_batch", "pool": "p", "region": "US", "start": T0,
                             "end": T0 + 7200.0, "count": 1, "difficulty_sum": 1.0,
                             "difficulty_sq_sum": 1.0})
    with pytest.raises(InvalidEvent, match="end"):
        state.apply(too_long)


def test_chain_checkpoint_restores_the_chain(test_data: Path) -> None:
    pools = load_pool_directory(POOLS_FILE)
    state = ChainPartition.restore(None, pools)
    for line in (test_data / "real_blocks.jsonl").read_bytes().splitlines():
        state.apply(line)
    state.next_offset = 5
    restored = ChainPartition.restore(state.checkpoint(), pools)
    assert [b.pool for b in restored.chain.blocks()] == [b.pool for b in state.chain.blocks()]
    assert [b.work for b in restored.chain.blocks()] == [b.work for b in state.chain.blocks()]
    assert restored.summary(2016) == state.summary(2016)


def test_market_keeps_the_newest_price_whatever_the_order() -> None:
    state = MarketPartition.restore(None)
    state.apply(b'{"type":"price","ts":20,"btc_usd":2.0}')
    state.apply(b'{"type":"price","ts":10,"btc_usd":1.0}')
    assert state.btc_usd == 2.0
    restored = MarketPartition.restore(state.checkpoint())
    assert (restored.btc_usd, restored.ts) == (2.0, 20.0)


def test_the_version_moves_when_a_batch_is_credited_and_only_then() -> None:
    settings = Settings()
    state = ShareBatchPartition.restore(None, settings)
    assert state.apply(_batch("p", "US", T0)) is ShareOutcome.CREDITED
    assert state.version == 1
    with pytest.raises(InvalidEvent):
        state.apply(b"{}")
    assert state.apply(_batch("p", "US", T0 - 3600.0)) is ShareOutcome.LATE
    assert state.version == 1
    # An unchanged version gives an unchanged partial only at the same evaluation time: the
    # windows slide with it.
    partial = state.partial(T0 + 10.0, settings.windows_s)
    assert state.partial(T0 + 10.0, settings.windows_s) == partial
    assert state.partial(T0 + 200.0, settings.windows_s) != partial


def test_resume_check_applies_a_continuous_partition_and_one_marker_offset_once_settled(
) -> None:
    check = ResumeCheck()
    assert check.admit(0, 10, 10) is Admission.APPLY
    check.checkpointed(0)
    assert check.admit(0, 11, 12) is Admission.APPLY  # a transaction marker at 11
    assert check.admit(0, 13, 13) is Admission.APPLY


def test_resume_check_rereads_a_restored_partition_that_resumes_past_its_next_offset() -> None:
    """Faust resuming one record late (seen after quick rebalances): read again, apply the
    record it had skipped, and drop what was fetched before the seek."""
    check = ResumeCheck()
    assert check.admit(1, 534, 535) is Admission.REREAD
    assert check.reread_from(1) == 533  # the last record applied: see reread_from
    assert check.admit(1, 534, 536) is Admission.STALE  # fetched before the seek
    assert check.admit(1, 534, 534) is Admission.APPLY  # what the re-read brings
    assert check.admit(1, 535, 535) is Admission.APPLY


def test_resume_check_rereads_any_jump_before_the_first_checkpoint_after_a_restore() -> None:
    """Seen: a record skipped a few records after a restore, where one offset is also what a
    transaction marker looks like."""
    check = ResumeCheck()
    assert check.admit(3, 92, 92) is Admission.APPLY
    assert check.admit(3, 99, 100) is Admission.REREAD
    assert check.admit(3, 99, 99) is Admission.APPLY


def test_resume_check_believes_a_jump_the_reread_shows_again() -> None:
    check = ResumeCheck()
    assert check.admit(2, 638, 638) is Admission.APPLY
    check.checkpointed(2)
    assert check.admit(2, 639, 750) is Admission.REREAD  # more than a marker
    assert check.admit(2, 639, 750) is Admission.APPLY  # an aborted transaction: it is real
    check.checkpointed(2)
    assert check.admit(2, 751, 752) is Admission.APPLY


def test_resume_check_checks_again_after_a_partition_is_forgotten() -> None:
    check = ResumeCheck()
    assert check.admit(3, 5, 5) is Admission.APPLY
    check.checkpointed(3)
    check.forget(3)  # revoked, or restored from a checkpoint
    assert check.admit(3, 6, 7) is Admission.REREAD
    assert check.admit(0, 0, 0) is Admission.APPLY  # other partitions are independent
