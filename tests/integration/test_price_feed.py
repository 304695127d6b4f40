"""The price feed against a local HTTP ticker replaying recorded answers, into Kafka."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from streams.contracts import PriceEvent, decode_input
from streams.feeds import KafkaEventSink
from streams.feeds.prices import follow_prices, http_client, parse_json_path
from streams.settings import Settings
from tests.conftest import free_port
from tests.integration.recorded_http import Request, Response, recorded_server

SOURCE = "ticker.test"
# Coinbase's spot price answer, in its recorded shape.
GOOD = b'{"data":{"amount":"97123.45","base":"BTC","currency":"USD"}}'
BETTER = b'{"data":{"amount":"97200.50","base":"BTC","currency":"USD"}}'
INTERVAL_S = 0.05
MAX_BACKOFF_S = 0.4


async def test_good_answers_become_events_and_bad_ones_back_off(
    isolated_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = isolated_settings
    topic = settings.topics.market
    script = [
        Response(200, GOOD),
        Response(500, b'{"errors":[{"id":"internal_server_error"}]}'),
        Response(200, b"<html>rate limited</html>", "text/html"),
        Response(200, b'{"errors":[{"id":"not_found","message":"Invalid currency"}]}'),
        Response(200, b'{"data":{"amount":"n/a","base":"BTC","currency":"USD"}}'),
        Response(200, b'{"data":{"amount":"-1","base":"BTC","currency":"USD"}}'),
        Response(200, BETTER),
    ]

    def ticker(request: Request) -> Response:
        assert request.path == "/v2/prices/BTC-USD/spot"
        return script.pop(0) if script else Response(503, b"done", "text/plain")

    caplog.set_level(logging.INFO, logger="hashatlas.feeds.prices")
    stop = asyncio.Event()
    started = time.time()
    async with recorded_server(ticker) as server, http_client() as client, \
            KafkaEventSink(settings) as sink:

        async def emit(event: dict[str, Any]) -> None:
            await sink.send(topic, SOURCE, event)

        feed = asyncio.create_task(follow_prices(
            client, server.url + "/v2/prices/BTC-USD/spot", parse_json_path("data.amount"), emit,
            source=SOURCE, interval_s=INTERVAL_S, max_backoff_s=MAX_BACKOFF_S, stop=stop))
        deadline = time.monotonic() + 20
        while len(server.requests) < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(feed, 5)
    finished = time.time()

    assert len(server.requests) == 8
    # After k failures in a row the wait is interval·2^k, at most the cap; after a success, the
    # interval. Request 8 follows one success (request 7), so it waits the interval again.
    expected = [INTERVAL_S, 0.1, 0.2, 0.4, 0.4, 0.4, INTERVAL_S]
    gaps = [b.received_at - a.received_at for a, b in zip(server.requests, server.requests[1:],
                                                          strict=False)]
    for gap, wait in zip(gaps, expected, strict=True):
        assert wait * 0.9 <= gap < wait + 0.5, (gaps, expected)

    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "hashatlas.feeds.prices"]
    reasons = ["HTTP 500", "not JSON", "'data' is missing", "'n/a', not a number",
               "is -1.0, must be positive", "HTTP 503"]  # the script has run out
    assert len(warnings) == len(reasons)
    for message, reason in zip(warnings, reasons, strict=True):
        assert reason in message and "nothing emitted" in message, message

    events = await _read(settings, topic, 2)
    assert [key for key, _ in events] == [SOURCE.encode(), SOURCE.encode()]
    assert [event["btc_usd"] for _, event in events] == [97123.45, 97200.5]
    for _, event in events:
        assert isinstance(decode_input(event), PriceEvent)
        assert event["source"] == SOURCE and started <= event["ts"] <= finished


async def test_an_unreachable_ticker_is_logged_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    emitted: list[dict[str, Any]] = []

    async def emit(event: dict[str, Any]) -> None:
        emitted.append(event)

    stop = asyncio.Event()
    async with http_client() as client:
        feed = asyncio.create_task(follow_prices(
            client, f"http://127.0.0.1:{free_port()}/ticker", ("price",), emit, source=SOURCE,
            interval_s=0.02, max_backoff_s=0.05, stop=stop))
        await asyncio.sleep(0.4)
        stop.set()
        await asyncio.wait_for(feed, 5)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "hashatlas.feeds.prices"]
    assert len(warnings) >= 3
    assert all("ConnectError" in message for message in warnings)
    assert emitted == []


# The command as `hashatlas prices follow` runs it, before and after it is wired into the CLI.
COMMAND = """
import argparse, sys
from streams.commands.feeds import add_parser
parser = argparse.ArgumentParser(prog="hashatlas")
add_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


async def test_the_command_produces_prices_and_stops_cleanly_on_sigterm(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings

    def ticker(request: Request) -> Response:
        return Response(200, GOOD)

    async with recorded_server(ticker) as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", COMMAND, "prices", "follow", "--url", server.url + "/spot",
            "--json-path", "data.amount", "--interval", "0.1",
            env={**os.environ, "HASHATLAS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                 "HASHATLAS_TOPICS__MARKET": settings.topics.market},
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            events = await _read(settings, settings.topics.market, 2, settle_s=0.0)
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0, stderr.decode()
    assert "feed stopped by signal" in stderr.decode()
    assert [key for key, _ in events[:2]] == [b"127.0.0.1", b"127.0.0.1"]  # source: URL host
    assert all(event["btc_usd"] == 97123.45 for _, event in events)


async def _read(
    settings: Settings, topic: str, count: int, settle_s: float = 0.5
) -> list[tuple[bytes, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    received: list[tuple[bytes, Any]] = []
    deadline = time.monotonic() + 10
    settle_until = None  # once ``count`` arrived, read on briefly: one more would be too many
    try:
        while time.monotonic() < (settle_until or deadline):
            batch = await consumer.getmany(timeout_ms=100)
            for messages in batch.values():
                received.extend((m.key or b"", orjson.loads(m.value or b"")) for m in messages)
            if settle_until is None and len(received) >= count:
                settle_until = time.monotonic() + settle_s
    finally:
        await consumer.stop()
    return received
