"""The worker's Faust app (broker, credentials, consumer settings) and its checkpointed inputs:
one generic agent per input topic, and the rebalance signals routed to the inputs' loops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
from faust.types import TP

from streams.kafka import client_options
from streams.pipeline.checkpoint_loop import CheckpointLoop
from streams.pipeline.faust_compat import (
    FaustInput,
    HashatlasApp,
    read_committed_worker_consumers,
)
from streams.settings import Settings

#: How long an agent waits to fill a batch of events.
TAKE_WITHIN_S = 0.2


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


def new_faust_app(settings: Settings) -> faust.App:
    """An app reading committed messages only, without tables of its own yet."""
    read_committed_worker_consumers()
    metadata_max_age_ms = int(settings.metadata_max_age_s * 1000)
    return HashatlasApp(
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
        consumer_metadata_max_age_ms=metadata_max_age_ms,
        producer_metadata_max_age_ms=metadata_max_age_ms,
    )


def checkpointed_agent(app: faust.App, port: FaustInput, loop: CheckpointLoop[Any],
                       take_max: int) -> None:
    """The agent of one input: batches of unacknowledged events into its loop."""
    async def consume(stream: Any) -> None:
        loop.started = True
        async for events in stream.noack_take(take_max, within=TAKE_WITHIN_S):
            await loop.process(events)

    app.agent(port.topic, name=f"hashatlas.{port.topic_name}")(consume)


def connect_rebalances(app: faust.App, loops: list[CheckpointLoop[Any]]) -> None:
    """Route Faust's rebalance signals to each input's loop (its own topic's partitions)."""
    def partitions(loop: CheckpointLoop[Any], tps: set[TP]) -> list[int]:
        return [tp.partition for tp in tps if tp.topic == loop.topic_name]

    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        for loop in loops:
            loop.revoke(partitions(loop, args[0] if args else kwargs["revoked"]))

    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        for loop in loops:
            loop.assign(partitions(loop, args[0] if args else kwargs["assigned"]))

    async def on_recovered(sender: Any, *args: Any, **kwargs: Any) -> None:
        for loop in loops:
            loop.recovered()

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    app.on_rebalance_complete.connect(on_recovered)  # type: ignore[arg-type]


def checkpointed_input(app: faust.App, settings: Settings, topic: str, partitions: int,
                       restore: Callable[[bytes | None], Any],
                       apply: Callable[[Any, bytes | None, float | None], object],
                       take_max: int) -> CheckpointLoop[Any]:
    """One input topic: its Faust side, its checkpoint loop and the agent feeding it."""
    port = FaustInput(app, topic, partitions)
    loop: CheckpointLoop[Any] = CheckpointLoop(
        port, restore, apply, checkpoint_interval_s=settings.checkpoint_interval_s,
        dead_letter_topic=settings.topics.dead_letter)
    checkpointed_agent(app, port, loop, take_max)
    return loop
