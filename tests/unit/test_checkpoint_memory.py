"""A worker's checkpoint of full windows costs about the rings' own size while it is built (#18).

The worker's RSS rose through the first hour of a soak (0.83 MiB/min): every 2 s each partition's
state is checkpointed, and the checkpoint was built as a Python list per bucket slot, a Python
float per cell; the more slots event time had filled (the fine ring in an hour, the coarse one in
a day), the higher that peak, and the heap kept its high-water mark. Built from numpy rows it
writes the same bytes at a fraction of the peak.
"""

from __future__ import annotations

import tracemalloc

import orjson

from streams.pipeline.state import ShareBatchPartition, decode_checkpoint, encode_checkpoint
from streams.settings import Settings

SERIES = 24
T0 = 1_790_000_000.0


def full_partition() -> ShareBatchPartition:
    """`SERIES` series with data in every slot of both rings (a day, then its last hour)."""
    settings = Settings()
    state = ShareBatchPartition.restore(None, settings)
    times = [T0 + i * settings.coarse_bucket_s for i in range(int(86_400 / 300) - 12)]
    times += [T0 + 82_800 + i * settings.fine_bucket_s for i in range(360)]
    for t in times:
        for k in range(SERIES):
            state.apply(orjson.dumps({
                "type": "share_batch", "pool": f"pool-{k % 6}", "region": ["US", "KZ", "CN",
                                                                           "RU"][k // 6],
                "start": t + 1.0, "end": t + 2.0, "count": 10 + k,
                "difficulty_sum": (10 + k) * 65536.0,
                "difficulty_sq_sum": (10 + k) * 65536.0**2}), t + 3.0)
    return state


def peak_bytes(build: object) -> int:
    tracemalloc.start()
    try:
        build()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_full_checkpoint_is_built_within_four_times_the_json_it_writes() -> None:
    state = full_partition()
    assert state.windows.key_count == SERIES
    assert state.windows.stored_buckets() >= SERIES * (276 + 368) * 0.95  # rings full
    checkpoint = state.checkpoint()
    as_lists = encode_checkpoint({"next_offset": state.next_offset,
                                  "max_event_ts": state.max_event_ts,
                                  "windows": state.windows.to_state(),
                                  "concentration": state.concentration.to_state()})
    assert checkpoint == as_lists  # the same bytes in the changelog
    restored = ShareBatchPartition.restore(checkpoint, Settings())
    assert restored.windows.to_state() == state.windows.to_state()
    json_bytes = len(orjson.dumps(decode_checkpoint(checkpoint)))
    peak = peak_bytes(state.checkpoint)
    print(f"\ncheckpoint of {SERIES} full series: peak {peak / SERIES / 1024:.0f} KiB per "
          f"series while built, {json_bytes / SERIES / 1024:.0f} KiB of JSON per series")
    # Built from lists the peak was 6.6 times the JSON (179 KiB per series: a float object and a
    # list slot per cell besides it); from numpy rows 2.9 times (78 KiB: the rings' copy, the
    # JSON and orjson's buffer).
    assert peak < 4 * json_bytes
