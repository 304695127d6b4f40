"""The block feed against a real Bitcoin node (btcd, regtest), recorded Core/Esplora answers, Kafka.

btcd is built by deploy/local/install_btcd.sh (a no-op once installed). The recorded servers
answer with Bitcoin Core's and Esplora's JSON shapes: for the real mainnet blocks of
tests/data/real_blocks.jsonl, and for a chain of headers built here around those blocks' real
coinbases, which the tests then reorganise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import struct
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from streams.commands.feeds import add_block_commands
from streams.contracts import BlockEvent, decode_input
from streams.core.blocks import parse_coinbase
from streams.feeds import KafkaEventSink
from streams.feeds.blocks import (
    BitcoinRpcSource,
    BlockSource,
    EsploraSource,
    FeedAuthError,
    RpcCredentials,
    follow_blocks,
    http_client,
)
from streams.settings import PROJECT_ROOT, Settings, get_settings
from streams.topics import create_topics
from tests.conftest import TEST_DATA, free_port
from tests.integration.recorded_http import Request, Response, recorded_server

INSTALL_BTCD = PROJECT_ROOT / "deploy" / "local" / "install_btcd.sh"
RPC_USER, RPC_PASSWORD = "feed", "regtest-only-password"
# A regtest P2PKH address and the script it stands for (hash160 = bytes 0x00..0x13).
MINING_ADDRESS = "mfWyW5fc9NUj75YAnFgoRLrjxgLDn2MMth"
MINING_SCRIPT = bytes.fromhex("76a914" + bytes(range(20)).hex() + "88ac")
REGTEST_BITS = "207fffff"
REGTEST_SUBSIDY_SAT = 50 * 100_000_000  # regtest halves every 150 blocks; these stay below
EVENT_FIELDS = ("type", "height", "hash", "prev_hash", "time", "bits", "coinbase_hex",
                "coinbase_value_sat")

Emit = Callable[[dict[str, Any]], Awaitable[None]]


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)


# ---- a real node: btcd on regtest --------------------------------------------------------------


@pytest.fixture(scope="session")
def btcd_binary() -> str:
    started = time.monotonic()
    result = subprocess.run(["bash", str(INSTALL_BTCD)], capture_output=True, text=True,
                            timeout=1200, check=False)
    if result.returncode != 0:
        pytest.fail(f"{INSTALL_BTCD} failed:\n{result.stderr[-2000:]}")
    if time.monotonic() - started > 5:
        print(f"btcd built in {time.monotonic() - started:.0f} s")
    return result.stdout.strip().splitlines()[-1]


@dataclass
class Btcd:
    url: str

    async def rpc(self, method: str, *params: object) -> Any:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                self.url, auth=(RPC_USER, RPC_PASSWORD),
                json={"jsonrpc": "1.0", "id": 1, "method": method, "params": list(params)},
            )
        body = response.json()
        assert body["error"] is None, body["error"]
        return body["result"]


@pytest.fixture()
def btcd(btcd_binary: str, tmp_path: Path) -> Iterator[Btcd]:
    """A fresh regtest node with RPC on a free port (no TLS, no peers), stopped afterwards."""
    port = free_port()
    config = tmp_path / "btcd.conf"
    config.write_text("")
    log_path = tmp_path / "btcd.out"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [btcd_binary, "--regtest", f"--datadir={tmp_path / 'data'}",
             f"--logdir={tmp_path / 'logs'}", f"--configfile={config}", "--nolisten", "--notls",
             f"--rpclisten=127.0.0.1:{port}", f"--rpcuser={RPC_USER}",
             f"--rpcpass={RPC_PASSWORD}", f"--miningaddr={MINING_ADDRESS}"],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(tmp_path)},  # btcd makes ~/.btcd: keep it in tmp
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"btcd exited ({process.returncode}):\n{log_path.read_text()[-2000:]}")
            try:
                answer = httpx.post(url, auth=(RPC_USER, RPC_PASSWORD), timeout=1, json={
                    "jsonrpc": "1.0", "id": 1, "method": "getblockcount", "params": []})
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"btcd RPC did not answer within 30 s:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield Btcd(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _TopicReader:
    """Reads (key, event) pairs from a topic's start as they arrive."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                                         auto_offset_reset="earliest", enable_auto_commit=False)
        self.received: list[tuple[bytes, dict[str, Any]]] = []

    async def read_until(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} of {count} messages in {timeout_s} s")
            batch = await self.consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                self.received.extend((m.key or b"", orjson.loads(m.value or b"")) for m in messages)

    async def read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=100)
            for messages in batch.values():
                self.received.extend((m.key or b"", orjson.loads(m.value or b"")) for m in messages)


async def _node_chain(node: Btcd, heights: range) -> dict[int, dict[str, Any]]:
    """The node's own word on its best chain: header fields by height."""
    chain = {}
    for height in heights:
        header = await node.rpc("getblockheader", await node.rpc("getblockhash", height), True)
        chain[height] = header
    return chain


async def test_feed_follows_btcd_through_backfill_new_blocks_and_a_reorg(
    btcd: Btcd, isolated_settings: Settings
) -> None:
    settings = isolated_settings
    topic = settings.topics.blocks
    await btcd.rpc("generate", 10)
    reader = _TopicReader(settings, topic)
    await reader.consumer.start()
    stop = asyncio.Event()
    async with KafkaEventSink(settings) as sink, http_client() as client:

        async def emit(event: dict[str, Any]) -> None:
            await sink.send(topic, str(event["height"]), event)

        source = BitcoinRpcSource(client, btcd.url, RpcCredentials(RPC_USER, RPC_PASSWORD))
        feed = asyncio.create_task(
            follow_blocks(source, emit, backfill=5, poll_interval_s=0.2, stop=stop)
        )
        try:
            await reader.read_until(5)
            backfilled = await _node_chain(btcd, range(6, 11))
            assert [e["hash"] for _, e in reader.received] == [backfilled[h]["hash"]
                                                               for h in range(6, 11)]

            await btcd.rpc("generate", 3)
            await reader.read_until(8)
            replaced = await _node_chain(btcd, range(12, 14))
            await btcd.rpc("invalidateblock", replaced[12]["hash"])
            assert await btcd.rpc("getblockcount") == 11
            await asyncio.sleep(1.1)  # later timestamps, so the new branch's blocks differ
            await btcd.rpc("generate", 4)
            await reader.read_until(12)
            await reader.read_for(1.0)  # a few more polls: nothing more to say
        finally:
            stop.set()
            await asyncio.wait_for(feed, 10)
            await reader.consumer.stop()

    received = reader.received
    assert len(received) == 12
    assert [e["height"] for _, e in received] == [6, 7, 8, 9, 10, 11, 12, 13, 12, 13, 14, 15]
    assert [key for key, _ in received] == [str(e["height"]).encode() for _, e in received]
    chain = await _node_chain(btcd, range(6, 16))
    latest = {e["height"]: e for _, e in received}  # a later message for a height replaces
    assert {h: e["hash"] for h, e in latest.items()} == {h: chain[h]["hash"] for h in chain}
    assert received[6][1]["hash"] == replaced[12]["hash"] != latest[12]["hash"]
    assert latest[12]["prev_hash"] == chain[11]["hash"]
    for height, event in latest.items():
        assert isinstance(decode_input(event), BlockEvent)
        assert event["time"] == chain[height]["time"]
        assert event["bits"] == REGTEST_BITS
        if height > 6:
            assert event["prev_hash"] == chain[height - 1]["hash"]
        coinbase = parse_coinbase(event["coinbase_hex"])
        assert [out.script_pubkey for out in coinbase.outputs] == [MINING_SCRIPT]
        assert event["coinbase_value_sat"] == REGTEST_SUBSIDY_SAT


async def test_btcd_refusing_the_password_ends_the_feed(btcd: Btcd) -> None:
    async with http_client() as client:
        source = BitcoinRpcSource(client, btcd.url, RpcCredentials(RPC_USER, "wrong"))
        with pytest.raises(FeedAuthError, match="HTTP 401"):
            await asyncio.wait_for(follow_blocks(source, _ignore, poll_interval_s=0.1), 10)


async def _ignore(event: dict[str, Any]) -> None:
    raise AssertionError(f"nothing may be emitted, got {event}")


# ---- recorded Bitcoin Core and Esplora answers -------------------------------------------------


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


@dataclass(frozen=True)
class RecordedBlock:
    height: int
    hash: str
    prev_hash: str
    time: int
    bits: str
    coinbase_hex: str

    @property
    def coinbase_id(self) -> str:
        # Esplora only needs a stable id to link /block/:hash/txid/0 to /tx/:txid/hex.
        return _sha256d(bytes.fromhex(self.coinbase_hex))[::-1].hex()


def _real_blocks() -> list[dict[str, Any]]:
    lines = (TEST_DATA / "real_blocks.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _recorded(record: dict[str, Any]) -> RecordedBlock:
    return RecordedBlock(record["height"], record["hash"], record["prev_hash"], record["time"],
                         record["bits"], record["coinbase_hex"])


def _branch(
    parent: RecordedBlock, count: int, coinbases: list[str], salt: int
) -> list[RecordedBlock]:
    """Blocks on top of ``parent``: real-format headers whose hash is their double SHA-256."""
    blocks = []
    for index in range(count):
        coinbase = coinbases[(index + salt) % len(coinbases)]
        block_time = parent.time + 600
        header = struct.pack("<I32s32sIII", 0x20000000, bytes.fromhex(parent.hash)[::-1],
                             _sha256d(bytes.fromhex(coinbase)), block_time, 0x207FFFFF, salt)
        parent = RecordedBlock(parent.height + 1, _sha256d(header)[::-1].hex(), parent.hash,
                               block_time, REGTEST_BITS, coinbase)
        blocks.append(parent)
    return blocks


class RecordedNode:
    """Answers as Bitcoin Core's JSON-RPC or an Esplora REST API would, for the blocks it holds."""

    def __init__(self, blocks: list[RecordedBlock], cookie: Path | None = None) -> None:
        self.blocks = {block.hash: block for block in blocks}
        self.tip = blocks[-1].hash
        self.cookie = cookie
        self.outage = 0  # answer this many next requests with 503

    def add(self, blocks: list[RecordedBlock]) -> None:
        self.blocks.update((block.hash, block) for block in blocks)
        self.tip = blocks[-1].hash

    def _core_header(self, block: RecordedBlock) -> dict[str, Any]:
        return {"hash": block.hash, "confirmations": 1, "height": block.height,
                "version": 536870912, "versionHex": "20000000", "time": block.time,
                "mediantime": block.time - 3000, "bits": block.bits,
                "previousblockhash": block.prev_hash}

    def core_rpc(self, request: Request) -> Response:
        assert self.cookie is not None
        secret = base64.b64encode(self.cookie.read_text().strip().encode()).decode()
        if request.headers.get("authorization") != f"Basic {secret}":
            return Response(401, b"", "text/html")
        if self.outage:
            self.outage -= 1
            return Response(503, b"Work queue depth exceeded", "text/plain")
        call = json.loads(request.body)
        method, params = call["method"], call["params"]
        if method == "getbestblockhash":
            return self._rpc_answer(call, self.tip)
        block = self.blocks.get(params[0]) if params else None
        if method not in ("getblockheader", "getblock"):
            return self._rpc_error(call, 404, -32601, "Method not found")
        if block is None:
            return self._rpc_error(call, 500, -5, "Block not found")
        result = self._core_header(block)
        if method == "getblock":
            assert params[1] == 2
            result["tx"] = [{"txid": block.coinbase_id, "hex": block.coinbase_hex,
                             "vin": [{"coinbase": "00"}], "vout": []}]
        return self._rpc_answer(call, result)

    @staticmethod
    def _rpc_answer(call: dict[str, Any], result: object) -> Response:
        return Response(200, json.dumps({"result": result, "error": None, "id": call["id"]})
                        .encode())

    @staticmethod
    def _rpc_error(call: dict[str, Any], status: int, code: int, message: str) -> Response:
        body = {"result": None, "error": {"code": code, "message": message}, "id": call["id"]}
        return Response(status, json.dumps(body).encode())

    def esplora(self, request: Request) -> Response:
        if self.outage:
            self.outage -= 1
            return Response(503, b"Service Unavailable", "text/plain")
        parts = request.path.removeprefix("/api/").split("/")
        by_coinbase = {block.coinbase_id: block for block in self.blocks.values()}
        if parts == ["blocks", "tip", "hash"]:
            return Response(200, self.tip.encode(), "text/plain")
        if parts[0] == "block" and parts[1] in self.blocks:
            block = self.blocks[parts[1]]
            if len(parts) == 2:
                return Response(200, json.dumps({
                    "id": block.hash, "height": block.height, "version": 536870912,
                    "timestamp": block.time, "tx_count": 1, "size": 285, "weight": 1140,
                    "merkle_root": block.coinbase_id, "previousblockhash": block.prev_hash,
                    "mediantime": block.time - 3000, "nonce": 0, "bits": int(block.bits, 16),
                    "difficulty": 1}).encode())
            if parts[2:] == ["txid", "0"]:
                return Response(200, block.coinbase_id.encode(), "text/plain")
        if parts[0] == "tx" and parts[1] in by_coinbase and parts[2:] == ["hex"]:
            return Response(200, by_coinbase[parts[1]].coinbase_hex.encode(), "text/plain")
        return Response(404, b"Block not found", "text/plain")


def _source(api: str, client: httpx.AsyncClient, url: str, cookie: Path) -> BlockSource:
    if api == "rpc":
        return BitcoinRpcSource(client, url, RpcCredentials(cookie_file=cookie))
    return EsploraSource(client, url + "/api/")


def _collector(into: list[dict[str, Any]]) -> Emit:
    async def emit(event: dict[str, Any]) -> None:
        assert isinstance(decode_input(event), BlockEvent)
        into.append(event)

    return emit


@pytest.mark.parametrize("api", ["rpc", "esplora"])
async def test_a_real_block_arrives_exactly_as_recorded(api: str, tmp_path: Path) -> None:
    records = _real_blocks()
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:" + "5a" * 32)
    node = RecordedNode([_recorded(record) for record in records], cookie)
    handler = node.core_rpc if api == "rpc" else node.esplora
    events: list[dict[str, Any]] = []
    stop = asyncio.Event()
    async with recorded_server(handler) as server, http_client() as client:
        feed = asyncio.create_task(follow_blocks(
            _source(api, client, server.url, cookie), _collector(events), backfill=1,
            poll_interval_s=0.05, stop=stop))
        await _until(lambda: len(events) == 1)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(feed, 5)
    assert events == [{name: records[-1][name] for name in EVENT_FIELDS}]  # height 722010


@pytest.mark.parametrize("api", ["rpc", "esplora"])
async def test_reorgs_and_outages_over_recorded_answers(
    api: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coinbases = [record["coinbase_hex"] for record in _real_blocks()]
    base = _recorded(_real_blocks()[-1])  # the branches grow on top of real block 722010
    main = _branch(base, 10, coinbases, salt=0)  # 722011..722020
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:" + "11" * 32)
    node = RecordedNode([base, *main], cookie)
    handler = node.core_rpc if api == "rpc" else node.esplora
    events: list[dict[str, Any]] = []
    stop = asyncio.Event()
    async with recorded_server(handler) as server, http_client() as client:
        feed = asyncio.create_task(follow_blocks(
            _source(api, client, server.url, cookie), _collector(events), backfill=4,
            poll_interval_s=0.05, max_retry_delay_s=0.2, stop=stop))
        try:
            await _until(lambda: len(events) == 4)
            assert events == [_event(block) for block in main[6:]]

            extension = _branch(main[-1], 2, coinbases, salt=1)
            node.add(extension)
            await _until(lambda: len(events) == 6)

            # The node restarts (a new cookie) and is busy for a while; then it has reorganised.
            cookie.write_text("__cookie__:" + "22" * 32)
            node.outage = 3
            fork = _branch(main[7], 5, coinbases, salt=2)  # replaces 722019..722022, adds 722023
            node.add(fork)
            await _until(lambda: len(events) == 11)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.wait_for(feed, 5)

    assert events == [_event(block) for block in (*main[6:], *extension, *fork)]
    assert [e["height"] for e in events] == [
        722017, 722018, 722019, 722020, 722021, 722022, 722019, 722020, 722021, 722022, 722023]
    assert events[6]["prev_hash"] == main[7].hash  # the fork point, 722018, stays
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 3 and all("503" in message for message in retries)
    assert any("reorg" in r.getMessage() for r in caplog.records)


def _event(block: RecordedBlock) -> dict[str, Any]:
    return {"type": "block", "height": block.height, "hash": block.hash,
            "prev_hash": block.prev_hash, "time": block.time, "bits": block.bits,
            "coinbase_hex": block.coinbase_hex,
            "coinbase_value_sat": parse_coinbase(block.coinbase_hex).total_out_sat}


async def test_a_stale_cookie_ends_the_feed_with_a_clear_error(tmp_path: Path) -> None:
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:" + "33" * 32)
    node = RecordedNode([_recorded(_real_blocks()[0])], cookie)
    theirs = tmp_path / "old.cookie"
    theirs.write_text("__cookie__:" + "44" * 32)
    async with recorded_server(node.core_rpc) as server, http_client() as client:
        source = BitcoinRpcSource(client, server.url, RpcCredentials(cookie_file=theirs))
        with pytest.raises(FeedAuthError, match="--rpc-cookie"):
            await asyncio.wait_for(follow_blocks(source, _ignore, poll_interval_s=0.05), 5)


# ---- `hashatlas blocks replay` into Kafka ------------------------------------------------------


def test_replay_command_produces_good_lines_by_height_and_reports_bad_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    kafka_bootstrap: str,
) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}-blocks"
    monkeypatch.setenv("HASHATLAS_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("HASHATLAS_TOPICS__BLOCKS", topic)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        asyncio.run(create_topics(settings, {topic: 1}))
        good = (TEST_DATA / "real_blocks.jsonl").read_text().splitlines()
        bad = ['{"type": "block", "height": 5, "hash": "xyz", "time": 1, "bits": "1d00ffff"}',
               '{"type": "price", "ts": 1, "btc_usd": 5}', "{truncated"]
        path = tmp_path / "blocks.jsonl"
        path.write_text("\n".join([good[0], bad[0], good[1], good[2], "", bad[1], good[3],
                                   bad[2], good[4]]) + "\n")
        parser = argparse.ArgumentParser()
        blocks = parser.add_subparsers().add_parser("blocks")
        add_block_commands(blocks.add_subparsers())
        args = parser.parse_args(["blocks", "replay", str(path), "--speed", "1e9"])
        assert args.func(args) == 2
        errors = capsys.readouterr().err.splitlines()
        assert errors[:2] == [f"{path}:2: field 'hash': must be 64 hex digits",
                              f"{path}:6: field 'type': expected a block event, got 'price'"]
        assert errors[2].startswith(f"{path}:8: field '$': not valid JSON")
        assert errors[3:] == [f"{path}: produced 5 block event(s), 3 bad line(s)"]
        received = asyncio.run(_read_keyed(settings, topic, 5))
        assert [(key, value) for key, value in received] == [
            (str(record["height"]).encode(), record) for record in map(json.loads, good)]
    finally:
        get_settings.cache_clear()


async def _read_keyed(settings: Settings, topic: str, count: int) -> list[tuple[bytes, Any]]:
    reader = _TopicReader(settings, topic)
    await reader.consumer.start()
    try:
        await reader.read_until(count, timeout_s=20)
        await reader.read_for(0.5)  # anything more would be a duplicate
    finally:
        await reader.consumer.stop()
    return reader.received
