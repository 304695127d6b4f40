"""The feeds' pure parts: node/REST JSON → block events, the reorg walk, tickers → prices."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from streams.contracts import BlockEvent, InvalidEvent, decode_input
from streams.core.blocks import parse_coinbase
from streams.feeds import retry_delay
from streams.feeds.blocks import (
    EmittedChain,
    FeedAuthError,
    FeedDataError,
    HeaderLink,
    RpcError,
    bits_hex,
    block_event_from_esplora,
    block_event_from_rpc,
    branch_to_emit,
    follow_blocks,
    header_from_esplora,
    header_from_rpc,
    parse_replay_line,
    replay_blocks,
    replay_pause_s,
    sync_to_tip,
)
from streams.feeds.prices import (
    PriceError,
    extract_price,
    follow_prices,
    parse_json_path,
    parse_ticker,
    price_event,
)

TEST_DATA = Path(__file__).resolve().parents[1] / "data"
EVENT_FIELDS = ("type", "height", "hash", "prev_hash", "time", "bits", "coinbase_hex",
                "coinbase_value_sat")


def _real_blocks() -> list[dict[str, Any]]:
    path = TEST_DATA / "real_blocks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _decode_header(header_hex: str) -> dict[str, Any]:
    """The fields of an 80-byte header, decoded here independently of the feed's code."""
    raw = bytes.fromhex(header_hex)
    assert len(raw) == 80
    version, prev, merkle, time, bits, nonce = struct.unpack("<I32s32sIII", raw)
    return {
        "hash": hashlib.sha256(hashlib.sha256(raw).digest()).digest()[::-1].hex(),
        "version": version,
        "previousblockhash": prev[::-1].hex(),
        "merkleroot": merkle[::-1].hex(),
        "time": time,
        "bits": f"{bits:08x}",
        "nonce": nonce,
    }


def _core_getblock(record: dict[str, Any]) -> dict[str, Any]:
    """What Bitcoin Core's ``getblock <hash> 2`` answers for a real block (fields we need)."""
    header = _decode_header(record["header_hex"])
    coinbase = {"txid": "ab" * 32, "hex": record["coinbase_hex"], "vin": [], "vout": []}
    return {**header, "height": record["height"], "confirmations": 5, "nTx": record["tx_count"],
            "tx": [coinbase, {"txid": "cd" * 32, "hex": "00"}]}


def _expected_event(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record[name] for name in EVENT_FIELDS}


REAL_BLOCKS = _real_blocks()


# ---- mapping -----------------------------------------------------------------------------------


@pytest.mark.parametrize("record", REAL_BLOCKS, ids=lambda r: str(r["height"]))
def test_core_getblock_of_a_real_block_maps_to_its_event(record: dict[str, Any]) -> None:
    block = _core_getblock(record)
    assert block["hash"] == record["hash"], "the header in the data file must hash to its hash"
    event = block_event_from_rpc(block)
    assert event == _expected_event(record)
    assert isinstance(decode_input(event), BlockEvent)


@pytest.mark.parametrize("record", REAL_BLOCKS, ids=lambda r: str(r["height"]))
def test_btcd_getblock_puts_transactions_in_rawtx(record: dict[str, Any]) -> None:
    block = _core_getblock(record)
    block["rawtx"] = block.pop("tx")
    block["bits"] = format(int(block["bits"], 16), "x")  # btcd drops leading zeros
    assert block_event_from_rpc(block) == _expected_event(record)


@pytest.mark.parametrize("record", REAL_BLOCKS, ids=lambda r: str(r["height"]))
def test_esplora_block_of_a_real_block_maps_to_its_event(record: dict[str, Any]) -> None:
    header = _decode_header(record["header_hex"])
    block = {"id": header["hash"], "height": record["height"], "version": header["version"],
             "timestamp": header["time"], "bits": int(header["bits"], 16),
             "previousblockhash": header["previousblockhash"], "tx_count": record["tx_count"]}
    assert block_event_from_esplora(block, record["coinbase_hex"]) == _expected_event(record)
    assert header_from_esplora(block) == HeaderLink(record["height"], record["hash"],
                                                    record["prev_hash"])


def test_genesis_has_no_prev_hash() -> None:
    record = REAL_BLOCKS[0]
    block = _core_getblock(record)
    del block["previousblockhash"]
    block["height"] = 0
    event = block_event_from_rpc(block)
    assert "prev_hash" not in event
    assert header_from_rpc(block).prev_hash is None


def test_bits_in_every_shape_become_eight_hex_digits() -> None:
    assert bits_hex("1972DBF2") == "1972dbf2"
    assert bits_hex("3ffff") == "0003ffff"  # btcd's strconv.FormatInt(bits, 16)
    assert bits_hex(0x1D00FFFF) == "1d00ffff"  # Esplora's integer
    for bad in ("", "123456789", "xyz", -1, 2**32, True, None, 1.5):
        with pytest.raises(FeedDataError):
            bits_hex(bad)


def test_a_transaction_that_is_no_coinbase_is_refused() -> None:
    record = REAL_BLOCKS[1]
    block = _core_getblock(record)
    spent = bytes.fromhex(record["coinbase_hex"])
    # Point the only input at a real previous output: an ordinary transaction, not a coinbase.
    block["tx"][0]["hex"] = (spent[:5] + b"\x11" * 32 + spent[37:]).hex()
    with pytest.raises(FeedDataError, match="coinbase"):
        block_event_from_rpc(block)


def test_getblock_without_transaction_objects_names_the_verbosity() -> None:
    block = _core_getblock(REAL_BLOCKS[2])
    block["tx"] = ["ab" * 32]  # verbosity 1: txids only
    with pytest.raises(FeedDataError, match="verbosity 2"):
        block_event_from_rpc(block)


@pytest.mark.parametrize(("field", "value"), [("hash", "00" * 31), ("height", -1),
                                              ("height", True), ("time", 0), ("time", "1")])
def test_malformed_node_answers_raise_feed_data_error(field: str, value: object) -> None:
    block = _core_getblock(REAL_BLOCKS[3])
    block[field] = value
    with pytest.raises(FeedDataError):
        block_event_from_rpc(block)


def test_an_oversized_coinbase_is_left_out_but_its_value_kept() -> None:
    script = b"\x6a" + b"\x00" * 100_010  # one huge OP_RETURN output
    tx = (b"\x01\x00\x00\x00" + b"\x01" + b"\x00" * 32 + b"\xff\xff\xff\xff" + b"\x02\x51\x00"
          + b"\xff\xff\xff\xff" + b"\x01" + (625_000_000).to_bytes(8, "little")
          + b"\xfe" + len(script).to_bytes(4, "little") + script + b"\x00\x00\x00\x00")
    assert parse_coinbase(tx.hex()).total_out_sat == 625_000_000
    block = _core_getblock(REAL_BLOCKS[4])
    block["tx"][0]["hex"] = tx.hex()
    event = block_event_from_rpc(block)
    assert "coinbase_hex" not in event
    assert event["coinbase_value_sat"] == 625_000_000


# ---- what was emitted, and the reorg walk ------------------------------------------------------


def _h(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def _chain(prefix: str, start: int, stop: int, parent: str | None) -> list[HeaderLink]:
    links = []
    for height in range(start, stop + 1):
        link = HeaderLink(height, _h(f"{prefix}{height}"), parent)
        links.append(link)
        parent = link.hash
    return links


class _Headers:
    """Headers by hash; counts how many the walk asked for."""

    def __init__(self, *chains: list[HeaderLink]) -> None:
        self.by_hash = {link.hash: link for chain in chains for link in chain}
        self.asked: list[str] = []

    async def __call__(self, block_hash: str) -> HeaderLink:
        self.asked.append(block_hash)
        return self.by_hash[block_hash]


def _emitted(links: list[HeaderLink], capacity: int = 100) -> EmittedChain:
    emitted = EmittedChain(capacity)
    for link in links:
        emitted.record(link)
    return emitted


def test_recording_a_block_forgets_the_branch_it_replaces() -> None:
    main = _chain("a", 10, 15, _h("a9"))
    emitted = _emitted(main)
    fork = HeaderLink(13, _h("b13"), main[2].hash)
    emitted.record(fork)
    assert [emitted.hash_at(h) for h in (12, 13, 14, 15)] == [main[2].hash, fork.hash, None, None]
    assert main[4].hash not in emitted and fork.hash in emitted
    assert (emitted.lowest, emitted.highest, len(emitted)) == (10, 13, 4)


def test_capacity_forgets_the_oldest() -> None:
    emitted = _emitted(_chain("a", 1, 10, None), capacity=4)
    assert (emitted.lowest, emitted.highest) == (7, 10)
    assert emitted.floor_for(tip_height=12, backfill=2) == 9  # 4 remembered: 9..12
    assert emitted.floor_for(tip_height=11, backfill=2) == 8
    assert EmittedChain(4).floor_for(tip_height=12, backfill=3) == 10
    assert EmittedChain(4).floor_for(tip_height=1, backfill=144) == 0


async def test_an_extension_needs_no_header_fetch() -> None:
    main = _chain("a", 1, 12, None)
    headers = _Headers(main)
    emitted = _emitted(main[:10])
    branch = await branch_to_emit(main[10], emitted, emitted.floor_for(11, 5), headers)
    assert branch == [main[10]]
    assert headers.asked == []
    branch = await branch_to_emit(main[11], emitted, emitted.floor_for(12, 5), headers)
    assert branch == main[10:12]
    assert headers.asked == [main[10].hash]


async def test_a_reorg_walks_back_to_the_fork_point() -> None:
    main = _chain("a", 1, 10, None)
    side = _chain("b", 8, 12, main[6].hash)  # forks after height 7
    headers = _Headers(main, side)
    emitted = _emitted(main)
    branch = await branch_to_emit(side[-1], emitted, emitted.floor_for(12, 5), headers)
    assert branch == side
    assert headers.asked == [side[3].hash, side[2].hash, side[1].hash, side[0].hash]


async def test_backfill_stops_at_its_depth_and_at_genesis() -> None:
    main = _chain("a", 0, 20, None)
    headers = _Headers(main)
    emitted = EmittedChain(100)
    assert await branch_to_emit(main[-1], emitted, emitted.floor_for(20, 4), headers) == main[17:]
    assert await branch_to_emit(main[3], emitted, emitted.floor_for(3, 144), headers) == main[:4]


async def test_a_reorg_deeper_than_memory_restarts_at_the_lowest_remembered() -> None:
    main = _chain("a", 1, 10, None)
    side = _chain("b", 3, 11, main[1].hash)
    headers = _Headers(main, side)
    emitted = _emitted(main, capacity=5)  # remembers 6..10
    branch = await branch_to_emit(side[-1], emitted, emitted.floor_for(11, 3), headers)
    assert [link.height for link in branch] == [7, 8, 9, 10, 11]
    assert branch == side[4:]


async def test_a_parent_that_is_not_the_one_named_is_an_error() -> None:
    main = _chain("a", 1, 5, None)
    headers = _Headers(main)
    headers.by_hash[main[3].hash] = HeaderLink(7, main[3].hash, main[2].hash)  # wrong height
    with pytest.raises(FeedDataError, match="names parent"):
        await branch_to_emit(main[4], EmittedChain(10), 0, headers)


class _MemorySource:
    """A node whose best chain a test sets; fails on demand."""

    def __init__(self, *chains: list[HeaderLink]) -> None:
        self.headers = _Headers(*chains)
        self.tip = chains[0][-1].hash
        self.failures: list[Exception] = []

    async def tip_hash(self) -> str:
        if self.failures:
            raise self.failures.pop(0)
        return self.tip

    async def header(self, block_hash: str) -> HeaderLink:
        return await self.headers(block_hash)

    async def block_event(self, block_hash: str) -> dict[str, Any]:
        link = self.headers.by_hash[block_hash]
        event = {"type": "block", "height": link.height, "hash": link.hash, "time": 1_700_000_000,
                 "bits": "207fffff"}
        if link.prev_hash:
            event["prev_hash"] = link.prev_hash
        return event


async def test_an_emission_cut_short_resumes_where_it_stopped() -> None:
    main = _chain("a", 1, 10, None)
    side = _chain("b", 6, 12, main[4].hash)
    source = _MemorySource(main, side)
    sent: list[tuple[int, str]] = []
    emitted = EmittedChain(100)
    assert await sync_to_tip(source, emitted, 3, _collect(sent)) == 3
    assert sent == [(h.height, h.hash) for h in main[7:]]

    source.tip = side[-1].hash
    broken = _collect(sent, fail_after=2)
    with pytest.raises(ConnectionError):
        await sync_to_tip(source, emitted, 3, broken)
    assert sent[3:] == [(h.height, h.hash) for h in side[2:4]]  # 8', 9' sent, then Kafka broke
    assert await sync_to_tip(source, emitted, 3, _collect(sent)) == 3
    assert sent[5:] == [(h.height, h.hash) for h in side[4:]]
    assert await sync_to_tip(source, emitted, 3, _collect(sent)) == 0


def _collect(sent: list[tuple[int, str]], fail_after: int | None = None) -> Any:
    count = 0

    async def emit(event: dict[str, Any]) -> None:
        nonlocal count
        if fail_after is not None and count >= fail_after:
            raise ConnectionError("kafka down")
        count += 1
        assert isinstance(decode_input(event), BlockEvent)
        sent.append((event["height"], event["hash"]))

    return emit


async def test_follow_retries_transient_errors_and_stops_on_auth() -> None:
    main = _chain("a", 1, 4, None)
    source = _MemorySource(main)
    source.failures = [RpcError("getbestblockhash", -28, "Loading block index"),
                       FeedDataError("junk")]
    sent: list[tuple[int, str]] = []
    stop = asyncio.Event()
    task = asyncio.create_task(follow_blocks(source, _collect(sent), backfill=2,
                                             poll_interval_s=0.01, stop=stop))
    for _ in range(200):
        if sent:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert sent == [(3, main[2].hash), (4, main[3].hash)]

    source.failures = [FeedAuthError("refused")]
    with pytest.raises(FeedAuthError):
        await asyncio.wait_for(follow_blocks(source, _collect([]), poll_interval_s=0.01), 2)


def test_retry_delay_doubles_up_to_its_cap() -> None:
    assert [retry_delay(k, 5.0, 60.0) for k in range(6)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert retry_delay(10_000, 1.0, 300.0) == 300.0
    with pytest.raises(ValueError):
        retry_delay(-1, 1.0, 2.0)


# ---- replay ------------------------------------------------------------------------------------


def test_replay_lines_keep_the_recorded_event_and_name_bad_fields() -> None:
    line = (TEST_DATA / "real_blocks.jsonl").read_text().splitlines()[0]
    assert parse_replay_line(line) == json.loads(line)  # extra fields (header_hex) kept
    cases = {"{oops": "$", "[1]": "$", '{"type": "price", "ts": 1, "btc_usd": 2}': "type",
             line.replace('"bits": "1972dbf2"', '"bits": "1972dbf"'): "bits"}
    for bad, field in cases.items():
        with pytest.raises(InvalidEvent) as info:
            parse_replay_line(bad)
        assert info.value.field == field


def test_replay_pause_follows_block_times_over_speed() -> None:
    assert replay_pause_s(None, 1000.0, 60.0) == 0.0
    assert replay_pause_s(1000.0, 1600.0, 60.0) == 10.0
    assert replay_pause_s(1600.0, 1000.0, 60.0) == 0.0  # times may run backwards
    assert replay_pause_s(1000.0, 1600.0, None) == 0.0


async def test_replay_sends_good_lines_and_reports_bad_ones_by_number() -> None:
    good = (TEST_DATA / "real_blocks.jsonl").read_text().splitlines()
    lines = [good[0], "", "not json", good[1], '{"type": "block", "height": 1}']
    sent: list[tuple[int, str]] = []
    errors = io.StringIO()
    assert await replay_blocks(lines, _collect(sent), speed=None, errors=errors,
                               name="f.jsonl") == (2, 2)
    assert [height for height, _ in sent] == [250000, 330000]
    reported = errors.getvalue().splitlines()
    assert len(reported) == 2
    assert reported[0].startswith("f.jsonl:3: field '$': not valid JSON")
    assert reported[1] == "f.jsonl:5: field 'hash': Field required"


# ---- prices ------------------------------------------------------------------------------------

COINBASE = b'{"data":{"amount":"97123.45","base":"BTC","currency":"USD"}}'
COINGECKO = b'{"bitcoin":{"usd":96998}}'
KRAKEN = (b'{"error":[],"result":{"XXBTZUSD":{"a":["97010.10000","1","1.000"],'
          b'"c":["97001.50000","0.00120000"],"v":["1523.1","3011.9"]}}}')


def test_prices_at_the_paths_of_known_tickers() -> None:
    assert parse_ticker(COINBASE, parse_json_path("data.amount")) == 97123.45
    assert parse_ticker(COINGECKO, parse_json_path("bitcoin.usd")) == 96998.0
    assert parse_ticker(KRAKEN, parse_json_path("result.XXBTZUSD.c.0")) == 97001.5


@pytest.mark.parametrize(("body", "path", "message"), [
    (b"<html>busy</html>", "data.amount", "not JSON"),
    (COINBASE, "data.price", "'data.price' is missing"),
    (KRAKEN, "result.XXBTZUSD.c.5", "index 5 beyond a list of 2"),
    (KRAKEN, "result.XXBTZUSD.c.last", "must be an index"),
    (COINGECKO, "bitcoin.usd.value", "cannot look inside a int"),
    (b'{"p": "n/a"}', "p", "not a number"),
    (b'{"p": "NaN"}', "p", "not a finite number"),
    (b'{"p": true}', "p", "bool, not a number"),
    (b'{"p": null}', "p", "NoneType, not a number"),
    (b'{"p": 0}', "p", "must be positive"),
    (b'{"p": "-5"}', "p", "must be positive"),
])
def test_unusable_ticker_answers_say_why(body: bytes, path: str, message: str) -> None:
    with pytest.raises(PriceError, match=message):
        parse_ticker(body, parse_json_path(path))


def test_json_paths_need_every_segment() -> None:
    assert parse_json_path("result.XXBTZUSD.c.0") == ("result", "XXBTZUSD", "c", "0")
    for bad in ("", "data.", ".amount", "a..b"):
        with pytest.raises(ValueError):
            parse_json_path(bad)
    assert extract_price([5.0], ("0",)) == 5.0


def test_price_events_pass_the_contract() -> None:
    event = price_event(97001.5, 1_732_400_000.25, "api.kraken.com")
    assert decode_input(event).model_dump() == {"type": "price", "ts": 1_732_400_000.25,
                                                "btc_usd": 97001.5, "source": "api.kraken.com"}


async def test_follow_prices_rejects_bad_intervals() -> None:
    with pytest.raises(ValueError):
        await follow_prices(None, "http://x", ("p",), _collect([]), source="x",  # type: ignore[arg-type]
                            interval_s=0)
