"""The Faust internals the worker relies on (``streams.pipeline.faust_compat``) are still there.

Fails first on a faust-streaming or aiokafka version the compat module was not written for: an
upgrade means re-reading what it lists, then naming the version there.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import aiokafka
import faust
from faust.tables.base import Collection
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as driver
from faust.types.tuples import Message

from streams.pipeline import faust_compat
from streams.pipeline.faust_compat import AIOKAFKA_VERSIONS, FAUST_VERSIONS, FaustInput
from streams.pipeline.worker import create_app
from streams.settings import Settings


def test_installed_versions_are_the_ones_the_compat_module_names() -> None:
    assert version("faust-streaming") in FAUST_VERSIONS, (
        f"faust-streaming {version('faust-streaming')} is not one streams.pipeline.faust_compat "
        f"was written for {FAUST_VERSIONS}: re-read what it uses, then add the version")
    assert version("aiokafka") in AIOKAFKA_VERSIONS, (
        f"aiokafka {version('aiokafka')} is not one of {AIOKAFKA_VERSIONS}")


def test_the_private_attributes_used_still_exist() -> None:
    assert isinstance(faust_consumer.Consumer.unacked, property)
    assert "acked" in Message.__slots__
    assert isinstance(Collection.data, property)
    assert "partition" in inspect.signature(Collection.send_changelog).parameters
    assert not getattr(driver.Consumer._commit, "__isabstractmethod__", False)
    assert list(inspect.signature(driver.Consumer._commit).parameters) == ["self", "offsets"]
    assert callable(Recovery.active_remaining_total)
    assert isinstance(TableManager.recovery, property)
    assert callable(driver.AIOKafkaConsumerThread._create_worker_consumer)
    # The isolation level is read from this attribute when the consumer starts.
    assert "self._isolation_level" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "self.conf.stream_wait_empty" in inspect.getsource(faust.App)
    assert hasattr(faust.App, "consumer_generation_id")


def test_read_committed_patch_is_applied_once() -> None:
    faust_compat.read_committed_worker_consumers()
    patched = driver.AIOKafkaConsumerThread._create_worker_consumer
    faust_compat.read_committed_worker_consumers()
    assert driver.AIOKafkaConsumerThread._create_worker_consumer is patched
    assert getattr(patched, "read_committed", False)


def test_the_worker_app_is_built_with_one_agent_and_table_per_input() -> None:
    settings = Settings()
    app = create_app(settings)
    topics = settings.topics
    inputs = [topics.compacted_shares, topics.blocks, topics.market]
    assert sorted(app.agents) == sorted(f"hashatlas.{topic}" for topic in inputs)
    # Changelog topic names derive from the table names: they must not change.
    assert sorted(app.tables) == sorted(f"{topic}-checkpoints" for topic in inputs)


def test_a_faust_input_reads_an_empty_checkpoint_as_none() -> None:
    app = faust.App("hashatlas-compat-test", store="memory://", web_enabled=False)
    port = FaustInput(app, "share-batches", 4)
    assert port.topic_name == "share-batches"
    assert port.read_checkpoint(3) is None
