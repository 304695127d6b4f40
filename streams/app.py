"""The Faust worker: agents over ``share-batches``, ``blocks`` and ``market``, and the leader.

Every agent runs the same checkpointed loop (see ``streams.pipeline_state``): take a batch of
events without acknowledging them, apply those at or past the partition's ``next_offset``,
and at the checkpoint interval write the partition's state to its changelog, flush, and only
then acknowledge. Faust therefore never commits an offset the checkpoint does not cover.

Each worker writes, for the partitions it owns, the window totals to Redis; the leader merges
them (regional shares need every pool) and publishes the snapshot.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import faust
import orjson
import redis.asyncio as aioredis
from faust.types import TP
from redis.exceptions import RedisError

from streams.contracts import DeadLetter, InvalidEvent
from streams.core.blocks import load_pool_directory
from streams.core.electricity import Method, load_electricity_prices, load_hardware
from streams.core.pools import ATTRIBUTION_CONFIDENCE, hashprice_sats_th_day, pool_groups
from streams.core.shares import ShareOutcome
from streams.core.snapshot import EstimationConfig
from streams.kafka import client_options
from streams.metrics import (
    CHECKPOINTS,
    CONSUMER_LAG,
    EVENT_TIME_LAG,
    EVENTS_CONSUMED,
    EVENTS_DEAD_LETTERED,
    OFFSET_REREADS,
    SHARE_BATCHES_APPLIED,
)
from streams.outbox import Outbox
from streams.pipeline_state import (
    Admission,
    ChainPartition,
    MarketPartition,
    ResumeCheck,
    ShareBatchPartition,
)
from streams.publisher import SnapshotPublisher
from streams.rediskeys import RedisKeys
from streams.settings import Settings

log = logging.getLogger("hashatlas.worker")

DATA_DIR = Path(__file__).resolve().parent / "data"
TAKE_MAX = 10_000
TAKE_WITHIN_S = 0.2
COVERAGE_BLOCKS = 2016
RECENT_BLOCKS_KEPT = 2016


class PartitionState(Protocol):
    next_offset: int
    unacked: list[Any]
    last_checkpoint: float

    def checkpoint(self) -> bytes: ...


S = TypeVar("S", bound=PartitionState)


class CheckpointedInput(Generic[S]):
    """One input topic's per-partition states, their changelog table and the ack discipline."""

    def __init__(self, app: faust.App, settings: Settings, topic: str, partitions: int,
                 restore: Callable[[bytes | None], S],
                 apply: Callable[[S, bytes | None, float | None], object]):
        self.app = app
        self.settings = settings
        self.topic_name = topic
        self.topic = app.topic(topic, key_serializer="raw", value_serializer="raw",
                               partitions=partitions)
        self.table = app.Table(f"{topic}-checkpoints", default=None, partitions=partitions,
                               key_type=bytes, value_type=bytes)
        self.restore = restore
        self.apply = apply
        self.states: dict[int, S] = {}
        self.owned: set[int] = set()
        self.accepting = False
        self.assigned_generation: int | None = None
        self.assigned_at = 0.0
        self.resume_check = ResumeCheck()
        self.committed: dict[int, int] = {}
        self.stream: Any = None
        self.last_event_wall = 0.0

    def owns(self, partition: int) -> bool:
        """Owned from the rebalance that assigned it until the next one starts revoking.

        Not ``consumer.assignment()``: that still lists every partition after Faust's
        revocation is done, until the new assignment arrives, and an event delivered in that gap
        would be applied to a state nobody checkpoints any more."""
        return partition in self.owned

    def assign(self, assigned: set[TP]) -> None:
        self.owned = {tp.partition for tp in assigned if tp.topic == self.topic_name}
        self.assigned_generation = self.app.consumer_generation_id
        self.assigned_at = time.monotonic()

    def recovered(self) -> None:
        """Faust has read the changelogs back: states may be restored, events applied.

        Not before: a state restored from a table still catching up would start from an old
        checkpoint and miss the events between it and the last commit. (Faust's own
        ``recovery.completed`` stays set from the previous rebalance, and ``app.rebalancing``
        stays set a while after the flow resumes.)"""
        if self.assigned_generation == self.app.consumer_generation_id:
            self.accepting = True

    def recovery_stalled_s(self) -> float:
        """How long this worker has held an assignment without Faust finishing its recovery."""
        if self.accepting or self.assigned_generation is None:
            return 0.0
        return time.monotonic() - self.assigned_at

    def release(self, events: list[Any]) -> None:
        """Tell Faust these events are done without acknowledging them: Faust commits nothing
        for them; offsets are committed by ``commit_checkpointed`` only.

        Events are released once a flushed checkpoint covers them, when the checkpoint already
        did, or when this worker no longer owns their partition (its next owner reads them
        again from the last commit). Left pending, Faust's next rebalance would wait for them
        forever."""
        pending = self.app.consumer.unacked
        for event in events:
            event.message.acked = True
            pending.discard(event.message)

    def state(self, partition: int) -> S:
        state = self.states.get(partition)
        if state is None:
            state = self.restore(self.table.data.get(str(partition).encode()))
            self.resume_check.forget(partition)
            self.states[partition] = state
        return state

    def restore_owned(self) -> None:
        """Load the checkpoint of every owned partition, also those that receive nothing new."""
        if not self.accepting:
            return
        for partition in list(self.owned):
            self.state(partition)

    def lag(self) -> int:
        """Messages of the owned partitions not applied yet (end of log − next offset)."""
        behind = 0
        for partition in list(self.owned):
            state = self.states.get(partition)
            if state is not None:
                end = self.app.consumer.highwater(TP(self.topic_name, partition))
                if end is not None:
                    behind += max(0, end - state.next_offset)
        return behind

    def revoke(self, revoked: set[TP]) -> None:
        """Drop the revoked partitions' states; a new owner (maybe this worker again)
        restores them from their checkpoints."""
        self.accepting = False
        self.assigned_generation = None
        for tp in revoked:
            if tp.topic == self.topic_name:
                self.owned.discard(tp.partition)
                self.resume_check.forget(tp.partition)
                self.committed.pop(tp.partition, None)
                state = self.states.pop(tp.partition, None)
                if state is not None and state.unacked:
                    self.release(state.unacked)
                    state.unacked = []

    async def process(self, events: list[Any]) -> None:
        """Apply a batch, dead-letter what cannot be used, checkpoint when due."""
        if not self.accepting:
            # Taken before the rebalance stopped the flow: every state is revoked (eager
            # rebalancing), and Faust seeks to the last commit before the flow resumes.
            self.release(events)
            return
        dead: list[bytes] = []
        reread: set[int] = set()
        credited = late = 0  # share batches, counted per call: an inc() per event costs
        for event in events:
            message = event.message
            partition = message.partition
            if partition not in self.owned:
                self.release([event])  # revoked while buffered: its new owner applies it
                continue
            state = self.state(partition)
            if message.offset < state.next_offset:
                self.release([event])  # already inside the restored checkpoint
                continue
            admission = self.resume_check.admit(partition, state.next_offset, message.offset)
            if admission is not Admission.APPLY:
                if admission is Admission.REREAD:
                    OFFSET_REREADS.labels(self.topic_name).inc()
                    log.info("%s partition %d goes on at offset %d, not %d: reading it again",
                             self.topic_name, partition, message.offset, state.next_offset)
                self.release([event])
                reread.add(partition)
                continue
            try:
                outcome = self.apply(state, message.value, message.timestamp)
                if outcome is ShareOutcome.CREDITED:
                    credited += 1
                elif isinstance(outcome, ShareOutcome):
                    late += 1  # late or otherwise not credited
            except InvalidEvent as error:
                letter = DeadLetter.of(self.topic_name, message.partition, message.offset,
                                       error, message.value or b"")
                dead.append(letter.model_dump_json().encode())
            state.next_offset = message.offset + 1
            state.unacked.append(event)
        for partition in reread:
            await self.app.consumer.seek(TP(self.topic_name, partition),
                                         self.resume_check.reread_from(partition))
        if credited:
            SHARE_BATCHES_APPLIED.labels("credited").inc(credited)
        if late:
            SHARE_BATCHES_APPLIED.labels("late").inc(late)
        if events:
            EVENTS_CONSUMED.labels(self.topic_name).inc(len(events))
            self.last_event_wall = time.time()
        dead_letter_topic = self.settings.topics.dead_letter
        for body in dead:
            await self.app.producer.send(dead_letter_topic, None, body, None, None, None)
        EVENTS_DEAD_LETTERED.labels(self.topic_name).inc(len(dead))
        await self.checkpoint_due()

    async def seek_pending_rereads(self) -> None:
        """Seek again where a re-read has not begun: Faust drops what the seek brings if a
        record fetched before it arrives after it (its read position jumps past them)."""
        for partition in self.resume_check.pending():
            if self.owns(partition):
                await self.app.consumer.seek(TP(self.topic_name, partition),
                                             self.resume_check.reread_from(partition))

    async def checkpoint_due(self, force: bool = False) -> None:
        """Checkpoint states with events applied since their last checkpoint, flush, then
        release those events and commit."""
        now = time.monotonic()
        to_ack: list[Any] = []
        for partition, state in list(self.states.items()):
            if not state.unacked or not self.owns(partition):
                continue
            if not force and now - state.last_checkpoint < self.settings.checkpoint_interval_s:
                continue
            key = str(partition).encode()
            value = state.checkpoint()
            self.table.data[key] = value
            self.table.send_changelog(partition, key, value)
            to_ack.extend(state.unacked)
            state.unacked = []
            state.last_checkpoint = now
            self.resume_check.checkpointed(partition)
            CHECKPOINTS.inc()
        if to_ack:
            await self.app.producer.flush()
            self.release(to_ack)
        await self.commit_checkpointed()

    async def commit_checkpointed(self) -> None:
        """Commit each owned partition at its state's next offset, once a flushed checkpoint
        covers it (no event applied since).

        Not Faust's commit: it commits offsets from the events acknowledged and from the ones
        it saw skipped, and misses transaction markers (none counted after offset 0, nor where
        it seeks onto one): a partition's commit then stops for good (seen with many small
        compactor transactions) and every restart re-reads all since."""
        offsets = {}
        for partition, state in list(self.states.items()):
            if (self.owns(partition) and not state.unacked
                    and state.next_offset > self.committed.get(partition, -1)):
                offsets[TP(self.topic_name, partition)] = state.next_offset
        # Faust's public commit() takes no offsets; _commit commits these (assigned ones only).
        if offsets and await self.app.consumer._commit(offsets):  # type: ignore[attr-defined]
            for tp, offset in offsets.items():
                self.committed[tp.partition] = offset
            forget_offset_gaps(self.app.consumer, offsets)


def forget_offset_gaps(consumer: Any, committed: Iterable[TP]) -> None:
    """Drop Faust's record of the offsets its consumer jumped over in these partitions.

    Faust notes every jump (here a transaction marker: one per compactor flush and partition)
    in an interval tree per partition that only its own commit prunes, and merges the whole
    tree on each new one. This worker commits by itself, so the trees grew for good: about
    4 intervals a second, and a merge of all of them each time (#18). Nothing else reads them."""
    gaps = consumer._gap
    for tp in committed:
        gaps.pop(tp, None)


def estimation_config(settings: Settings) -> EstimationConfig:
    hardware = load_hardware(settings.hardware_file or DATA_DIR / "hardware.csv")
    default_price, prices = load_electricity_prices(
        settings.electricity_prices_file or DATA_DIR / "electricity_prices.yaml"
    )
    method: Method = "1.2.0" if settings.electricity_method == "1.2.0" else "1.4.0"
    return EstimationConfig(
        headline_window_s=settings.headline_window_s,
        hardware=hardware,
        default_price_usd_kwh=default_price,
        prices_usd_kwh=prices,
        method=method,
        suspect_regions=settings.suspect_regions,
        site_capacity_w=site_capacity_w(settings),
        # pools-v2.json names no parent pool today, so this is empty unless a list adds one.
        pool_groups=pool_groups(json.loads((DATA_DIR / "pools-v2.json").read_text("utf-8"))),
    )


def site_capacity_w(settings: Settings) -> dict[str, float]:
    """Energised mining capacity per region of the site registry (each site's latest row)."""
    from streams.commands.sites import load_sites
    from streams.core.sites import latest, mining_capacity_w

    warn = logging.getLogger("hashatlas.sites").warning
    return mining_capacity_w(latest(load_sites(settings, warn=warn)))


def worker_broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The same SASL/TLS settings the other Kafka clients use (``client_options``), as Faust
    wants them."""
    options = client_options(settings)
    if "sasl_mechanism" in options:
        return faust.SASLCredentials(username=options["sasl_plain_username"],
                                     password=options["sasl_plain_password"],
                                     mechanism=options["sasl_mechanism"],
                                     ssl_context=options.get("ssl_context"))
    if "ssl_context" in options:
        return faust.SSLCredentials(options["ssl_context"])
    return None


def read_committed_worker_consumers() -> None:
    """Make Faust's worker consumer read only committed messages.

    Faust asks for ``read_committed`` only when it runs transactions itself
    (processing_guarantee exactly_once), which this pipeline does not need: its state is
    effectively-once by checkpoints. But ``share-batches`` is written in transactions by the
    compactor, and the batches of a transaction it aborted (killed, or cut off from the broker,
    mid-flush) must stay invisible, or they are credited and then credited again when the
    compactor re-sends them. Idempotent."""
    from faust.transport.drivers import aiokafka as driver

    create = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "read_committed", False):
        return

    def create_read_committed(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._isolation_level = "read_committed"  # read when the consumer starts
        return consumer

    create_read_committed.read_committed = True  # type: ignore[attr-defined]
    driver.AIOKafkaConsumerThread._create_worker_consumer = create_read_committed  # type: ignore[method-assign]


class HashatlasApp(faust.App):
    """Waits for in-flight events during rebalances (so none is applied by two owners), but
    not at shutdown: unacknowledged events wait for a checkpoint, and a stopping worker's are
    simply redelivered to the next owner, which skips what its checkpoint already covers."""

    async def on_stop(self) -> None:
        self.conf.stream_wait_empty = False
        await super().on_stop()


def create_app(settings: Settings) -> faust.App:
    """The Faust app with its agents, timers and the snapshot leader."""
    read_committed_worker_consumers()
    app = HashatlasApp(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=worker_broker_credentials(settings),
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.partitions.compacted_shares,
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=16_777_216,
        broker_commit_interval=1.0,
        topic_allow_declare=True,
        # A killed worker's partitions move after 10 s, not Faust's default 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        consumer_metadata_max_age_ms=int(settings.metadata_max_age_s * 1000),
        producer_metadata_max_age_ms=int(settings.metadata_max_age_s * 1000),
    )
    keys = RedisKeys(settings.redis_prefix)
    redis = aioredis.Redis.from_url(settings.redis_url)
    pools = load_pool_directory(DATA_DIR / "pools-v2.json")


    shares = CheckpointedInput(
        app, settings, settings.topics.compacted_shares, settings.partitions.compacted_shares,
        lambda raw: ShareBatchPartition.restore(raw, settings), ShareBatchPartition.apply,
    )
    chain_input = CheckpointedInput(
        app, settings, settings.topics.blocks, settings.partitions.blocks,
        lambda raw: ChainPartition.restore(raw, pools), ChainPartition.apply,
    )
    market_input = CheckpointedInput(
        app, settings, settings.topics.market, settings.partitions.market,
        MarketPartition.restore, MarketPartition.apply,
    )
    inputs: list[CheckpointedInput[Any]] = [shares, chain_input, market_input]

    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else kwargs["revoked"]
        for checkpointed in inputs:
            checkpointed.revoke(revoked)

    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned: set[TP] = args[0] if args else kwargs["assigned"]
        for checkpointed in inputs:
            checkpointed.assign(assigned)

    async def on_recovered(sender: Any, *args: Any, **kwargs: Any) -> None:
        for checkpointed in inputs:
            checkpointed.recovered()

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    app.on_rebalance_complete.connect(on_recovered)  # type: ignore[arg-type]

    @app.agent(shares.topic)
    async def share_batches(stream: Any) -> None:
        shares.stream = stream
        async for events in stream.noack_take(TAKE_MAX, within=TAKE_WITHIN_S):
            await shares.process(events)

    @app.agent(chain_input.topic)
    async def blocks(stream: Any) -> None:
        chain_input.stream = stream
        async for events in stream.noack_take(1000, within=TAKE_WITHIN_S):
            await chain_input.process(events)

    @app.agent(market_input.topic)
    async def market(stream: Any) -> None:
        market_input.stream = stream
        async for events in stream.noack_take(1000, within=TAKE_WITHIN_S):
            await market_input.process(events)

    def write_chain(pipe: Any, state: ChainPartition) -> None:
        """Replace the recent blocks and the chain summary (after new blocks or a restore)."""
        recent = state.chain.blocks(RECENT_BLOCKS_KEPT)
        pipe.delete(keys.blocks)
        if recent:
            pipe.zadd(keys.blocks, {orjson.dumps({
                "height": b.height, "hash": b.hash, "time": b.time, "pool": b.pool,
                "pool_slug": b.pool_slug, "difficulty": b.difficulty, "work": str(b.work),
                "subsidy_sat": b.subsidy_sat, "fees_sat": b.fees_sat,
                "attribution_detail": b.attribution_detail,
                "attribution_confidence": ATTRIBUTION_CONFIDENCE[b.attribution_detail],
                "hashprice_sats_th_day": (hashprice_sats_th_day(
                    b.subsidy_sat + b.fees_sat, b.difficulty) if b.fees_sat is not None else None),
            }): b.height for b in recent})
            EVENT_TIME_LAG.labels(settings.topics.blocks).set(time.time() - recent[-1].time)
        pipe.set(keys.partial("blocks"), orjson.dumps(state.summary(COVERAGE_BLOCKS)))

    recovery_progress = {"remaining": -1, "at": time.monotonic()}

    @app.timer(interval=5.0)
    async def crash_if_recovery_stalls() -> None:
        """Faust's changelog recovery can hang after quick successive rebalances (no record
        arrives for an assigned changelog partition). A worker stuck so holds its partitions
        and nothing moves: better to stop, hand them over, and be restarted. A long recovery
        that still reads is left alone."""
        remaining = app.tables.recovery.active_remaining_total()  # type: ignore[attr-defined]
        now = time.monotonic()
        if remaining != recovery_progress["remaining"]:
            recovery_progress.update(remaining=remaining, at=now)
        waiting = min(max(checkpointed.recovery_stalled_s() for checkpointed in inputs),
                      now - recovery_progress["at"])
        if waiting > settings.recovery_stall_s:
            log.error("changelog recovery has not moved for %.0f s (%d changes left): "
                      "stopping this worker so that others take its partitions",
                      waiting, remaining)
            await app.crash(RuntimeError("changelog recovery stalled"))

    @app.timer(interval=settings.checkpoint_interval_s)
    async def checkpoint_quiet_partitions() -> None:
        for checkpointed in inputs:
            if checkpointed.stream is not None:
                await checkpointed.checkpoint_due()
                await checkpointed.seek_pending_rereads()

    @app.timer(interval=settings.snapshot_interval_s)
    async def write_partials() -> None:
        """Publish what this worker's partitions hold, for the leader to merge."""
        try:
            await write_partials_once()
        except (RedisError, OSError) as exc:  # Redis away: state is safe, retry next tick
            log.warning("cannot write partials to Redis (%s); retrying", exc)

    async def write_partials_once() -> None:
        for checkpointed in inputs:
            checkpointed.restore_owned()
            CONSUMER_LAG.labels(checkpointed.topic_name).set(checkpointed.lag())
        # After Redis restarted empty, what the states hold is written again at once.
        chain_missing = not await redis.exists(keys.partial("blocks"))
        market_missing = not await redis.exists(keys.partial("market"))
        pipe = redis.pipeline(transaction=True)
        for partition, chain in list(chain_input.states.items()):
            if (chain.changed or chain_missing) and chain_input.owns(partition):
                write_chain(pipe, chain)
                chain.changed = False
        for partition, price in list(market_input.states.items()):
            if (price.changed or market_missing) and market_input.owns(partition):
                pipe.set(keys.partial("market"), orjson.dumps(
                    {"btc_usd": price.btc_usd, "ts": price.ts, "source": price.source}))
                price.changed = False
        clock_raw = await redis.get(keys.clock)
        clock = float(clock_raw) if clock_raw else 0.0
        for partition, state in list(shares.states.items()):
            if not shares.owns(partition) or not state.max_event_ts:
                continue
            # Every partition evaluates at the leader's clock, so the merged windows end at
            # the same instant; before the first snapshot, at its own newest event.
            t_eval = (clock or state.max_event_ts) - settings.settle_s
            partial = state.partial(t_eval, settings.windows_s)
            partial.update(partition=partition, next_offset=state.next_offset,
                           last_event_wall=shares.last_event_wall, updated_at=time.time())
            pipe.set(keys.partial(partition), orjson.dumps(partial))
            EVENT_TIME_LAG.labels(settings.topics.compacted_shares).set(
                time.time() - state.max_event_ts)
        await pipe.execute()

    outbox = Outbox(lambda topic, body: app.producer.send(topic, None, body, None, None, None),
                    capacity=settings.leader_outbox_capacity,
                    latest_only=[settings.topics.estimates])
    publisher = SnapshotPublisher(settings, estimation_config(settings), redis, outbox.send)

    @app.timer(interval=settings.snapshot_interval_s, on_leader=True)
    async def publish_snapshot() -> None:
        try:
            await publisher.publish()
        except Exception:
            log.exception("snapshot publication failed; retrying at the next tick")

    return app


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    """Run one Faust worker process (any number may run in the same group)."""
    import sys

    app = create_app(settings)
    sys.argv = ["hashatlas", "worker", "-l", loglevel, "--without-web"]
    app.main()
