"""The repeat limiter: a broker outage's one-line-per-retry logging cut to a line per interval."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from streams.cli import main
from streams.logs import RepeatLimiter, limit_repeated_kafka_logs, limit_repeated_logs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, *args: object, name: str = "aiokafka.conn",
            level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_first_passes_then_one_per_interval_with_the_count() -> None:
    clock = Clock()
    limiter = RepeatLimiter(interval_s=30.0, clock=clock)
    template = "Unable connect to node with id %s: %s"
    first = _record(template, 1, "refused")
    assert limiter.filter(first)
    assert first.getMessage() == "Unable connect to node with id 1: refused"
    for node in (1, 2, 3):  # other arguments, same template: the same kind
        clock.now += 9.0
        assert not limiter.filter(_record(template, node, "refused"))
    clock.now += 3.0  # 30 s after the first
    reminder = _record(template, 2, "refused")
    assert limiter.filter(reminder)
    assert reminder.getMessage() == (
        "Unable connect to node with id 2: refused (3 more like this suppressed in the last 30 s)")
    clock.now += 1.0
    assert not limiter.filter(_record(template, 1, "refused"))
    clock.now += 30.0
    quiet = _record(template, 1, "refused")
    assert limiter.filter(quiet)
    assert quiet.getMessage().endswith("(1 more like this suppressed in the last 31 s)")
    clock.now += 60.0
    after_quiet = _record(template, 1, "refused")
    assert limiter.filter(after_quiet)
    assert after_quiet.getMessage() == "Unable connect to node with id 1: refused"


def test_kinds_are_limited_apart_and_info_is_left_alone() -> None:
    limiter = RepeatLimiter(interval_s=30.0, clock=Clock())
    assert limiter.filter(_record("a %s", 1))
    assert limiter.filter(_record("b %s", 1))  # another template
    assert limiter.filter(_record("a %s", 1, name="aiokafka.consumer.fetcher"))  # other logger
    assert not limiter.filter(_record("a %s", 2))
    assert all(limiter.filter(_record("joined %s", 1, level=logging.INFO)) for _ in range(5))


def test_a_message_with_percent_signs_stays_intact() -> None:
    clock = Clock()
    limiter = RepeatLimiter(interval_s=1.0, clock=clock)
    assert limiter.filter(_record("100%% of %s failed", "nodes"))
    assert not limiter.filter(_record("100%% of %s failed", "nodes"))
    clock.now += 2.0
    reminder = _record("100%% of %s failed", "nodes")
    assert limiter.filter(reminder)
    assert reminder.getMessage().startswith("100% of nodes failed (1 more")


@pytest.fixture()
def prefix() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    for logger_name in [name, f"{name}.child"]:
        logging.getLogger(logger_name).filters.clear()


def test_installed_on_the_logger_and_its_children_once(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A logger's filters do not see its children's records: each logger gets the limiter."""
    child = logging.getLogger(f"{prefix}.child")
    limiter = limit_repeated_logs(prefix)
    assert limit_repeated_logs(prefix) is limiter
    assert child.filters == [limiter] and logging.getLogger(prefix).filters == [limiter]
    caplog.set_level(logging.WARNING)
    for _ in range(50):
        child.error("broker %s unreachable", "k1")
    assert [r.getMessage() for r in caplog.records] == ["broker k1 unreachable"]


@pytest.fixture()
def kafka_loggers_restored() -> Iterator[None]:
    """The limiter keeps state: left installed it could hide records other tests look for."""
    yield
    for name in list(logging.Logger.manager.loggerDict):
        if name == "aiokafka" or name.startswith("aiokafka."):
            logger = logging.getLogger(name)
            logger.filters = [f for f in logger.filters if not isinstance(f, RepeatLimiter)]


@pytest.mark.usefixtures("kafka_loggers_restored")
def test_every_cli_command_limits_aiokafkas_loggers(capsys: pytest.CaptureFixture[str]) -> None:
    main(["stack", "status"])  # any command: worker, compactor, api, proxy, feeds alike
    capsys.readouterr()
    limiter = logging.getLogger("aiokafka").filters[-1]
    assert isinstance(limiter, RepeatLimiter)
    for name in ("aiokafka.conn", "aiokafka.consumer.group_coordinator",
                 "aiokafka.producer.sender", "aiokafka.admin.client"):
        assert limiter in logging.getLogger(name).filters, name
    assert limit_repeated_kafka_logs() is limiter
