"""The leader's outbox: its timer never waits on Kafka; what cannot be sent is kept or dropped
by rule, and counted."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from streams.pipeline.outbox import Outbox


class StalledBroker:
    """A sender that takes nothing until released, then records what it is given, in order;
    the first ``failures`` sends after the release raise, as a broker that is not back yet."""

    def __init__(self, failures: int = 0) -> None:
        self.released = asyncio.Event()
        self.failures = failures
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, body: bytes) -> None:
        await self.released.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker not available")
        self.sent.append((topic, body))


def _count(topic: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("hashatlas_leader_outputs_total",
                                     {"topic": topic, "outcome": outcome}) or 0.0


async def test_offers_return_at_once_while_the_broker_takes_nothing() -> None:
    broker = StalledBroker()
    outbox = Outbox(broker.send, capacity=100, latest_only=["t-est"])
    before = (_count("t-est", "superseded"), _count("t-hist", "dropped"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(10_000):
        await outbox.send("t-est", b"e%d" % i)
        if i % 10 == 0:
            await outbox.send("t-hist", b"h%d" % i)
    assert loop.time() - started < 1.0
    assert broker.sent == []
    assert len(outbox) <= 100 + 1 + 1  # the queue, the newest estimate, one in the sender
    assert _count("t-est", "superseded") - before[0] >= 10_000 - 2
    assert _count("t-hist", "dropped") - before[1] == 1_000 - 100  # e0 is the one in flight
    broker.released.set()
    await asyncio.wait_for(outbox.drain(), 5)
    history = [body for topic, body in broker.sent if topic == "t-hist"]
    # The oldest history steps were dropped; the newest 100 arrive in order, then the newest
    # estimate.
    assert history == [b"h%d" % i for i in range(9_000, 10_000, 10)]
    assert broker.sent[-1] == ("t-est", b"e9999")


async def test_a_failing_send_is_retried_until_it_goes_through() -> None:
    broker = StalledBroker(failures=3)
    outbox = Outbox(broker.send, capacity=10, first_backoff_s=0.01, max_backoff_s=0.02)
    for i in range(5):
        await outbox.send("t-alerts", b"a%d" % i)
    broker.released.set()
    await asyncio.wait_for(outbox.drain(), 5)
    assert broker.sent == [("t-alerts", b"a%d" % i) for i in range(5)]
    assert len(outbox) == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Outbox(StalledBroker().send, capacity=0)
