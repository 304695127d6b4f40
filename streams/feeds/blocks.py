"""The block feed: follow a Bitcoin node or an Esplora API and emit ``block`` events (CONTRACTS.md).

Sources: Bitcoin Core's JSON-RPC (btcd speaks the same: ``getbestblockhash``, ``getblockheader``,
``getblock`` with verbosity 2, one call per block, which both nodes answer with the coinbase's raw
hex), or an Esplora / mempool-style REST API. The feed backfills the last N blocks at start, then
polls for a new tip. Consumers hold the best chain by height and let a later message for a height
replace an earlier one, so a reorg is repaired by walking back from the new tip to the newest
block this feed emitted that is still on the best chain (the fork point) and re-emitting the new
branch above it, oldest first.

Pure parts: mapping node/REST JSON to events (:func:`block_event_from_rpc`,
:func:`block_event_from_esplora`), the record of what was emitted (:class:`EmittedChain`) and the
walk back to the fork point (:func:`branch_to_emit`). HTTP lives in the two source classes and
Kafka in :func:`follow_blocks`' ``emit``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import httpx
import orjson
from aiokafka.errors import KafkaError

from streams.contracts import MAX_COINBASE_HEX, BlockEvent, InvalidEvent, decode_input
from streams.core.blocks import parse_coinbase
from streams.feeds import describe_error, pause, retry_delay

log = logging.getLogger("hashatlas.feeds.blocks")

DEFAULT_BACKFILL = 144
DEFAULT_POLL_INTERVAL_S = 5.0
# The running feed remembers this many blocks (or the backfill, if larger): a reorg or an outage
# up to this deep is repaired exactly; one deeper is re-emitted from this depth on.
MIN_MEMORY_BLOCKS = 2016
MAX_RETRY_DELAY_S = 60.0
HTTP_TIMEOUT_S = 30.0
USER_AGENT = "hashatlas-block-feed"

Emit = Callable[[dict[str, Any]], Awaitable[None]]
GetHeader = Callable[[str], Awaitable["HeaderLink"]]


class FeedDataError(ValueError):
    """A node or API answer without the shape the feed needs; worth a retry, never an event."""


class FeedAuthError(RuntimeError):
    """The source refused our credentials: retrying cannot help, the operator must act."""


class RpcError(RuntimeError):
    """A JSON-RPC call the node answered with an error object."""

    def __init__(self, method: str, code: object, message: object) -> None:
        super().__init__(f"{method}: RPC error {code}: {message}")
        self.code = code


# ---- pure: node and REST JSON to block events ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderLink:
    """Where a block sits in its chain: all the reorg walk needs to know about it."""

    height: int
    hash: str
    prev_hash: str | None


def _require(document: Mapping[str, Any], name: str, what: str) -> Any:
    if not isinstance(document, Mapping):
        raise FeedDataError(f"{what}: expected a JSON object, got {type(document).__name__}")
    if name not in document:
        raise FeedDataError(f"{what}: field {name!r} is missing")
    return document[name]


def block_hash_of(value: object, what: str) -> str:
    """A block hash as 64 lower-case hex digits (RPC and REST both return that, in any case)."""
    if isinstance(value, str) and len(value) == 64:
        text = value.lower()
        if all(c in "0123456789abcdef" for c in text):
            return text
    raise FeedDataError(f"{what}: expected a block hash of 64 hex digits, got {value!r:.80}")


def _height_of(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FeedDataError(f"{what}: height must be a non-negative integer, got {value!r:.40}")
    return value


def _time_of(value: object, what: str) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise FeedDataError(f"{what}: time must be positive Unix seconds, got {value!r:.40}")
    return value


def bits_hex(value: object, what: str = "bits") -> str:
    """Compact target as 8 hex digits.

    Core gives ``"1972dbf2"``; btcd leaves out leading zeros; Esplora gives an integer.
    """
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0x")
        if 0 < len(text) <= 8 and all(c in "0123456789abcdef" for c in text):
            return text.rjust(8, "0")
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFFFFFF:
        return f"{value:08x}"
    raise FeedDataError(f"{what}: expected a 32-bit compact target, got {value!r:.40}")


def _prev_hash_of(document: Mapping[str, Any], what: str) -> str | None:
    # Only the genesis block has no parent: Core omits the field, Esplora sends null.
    value = document.get("previousblockhash")
    return None if value is None else block_hash_of(value, f"{what} previousblockhash")


def header_from_rpc(result: Mapping[str, Any]) -> HeaderLink:
    """``getblockheader <hash> true`` (or ``getblock``) from Bitcoin Core or btcd."""
    what = "getblockheader"
    return HeaderLink(
        height=_height_of(_require(result, "height", what), what),
        hash=block_hash_of(_require(result, "hash", what), f"{what} hash"),
        prev_hash=_prev_hash_of(result, what),
    )


def header_from_esplora(block: Mapping[str, Any]) -> HeaderLink:
    """``GET /block/:hash`` from Esplora or mempool."""
    what = "/block"
    return HeaderLink(
        height=_height_of(_require(block, "height", what), what),
        hash=block_hash_of(_require(block, "id", what), f"{what} id"),
        prev_hash=_prev_hash_of(block, what),
    )


def make_block_event(link: HeaderLink, time: int, bits: str, coinbase_hex: str) -> dict[str, Any]:
    """The ``block`` event, with the coinbase value read from the coinbase itself (exact sat).

    A coinbase beyond the contract's size limit (old p2pool blocks paid hundreds of miners) is left
    out; its value is still reported. Raises FeedDataError for a coinbase that does not parse.
    """
    if not isinstance(coinbase_hex, str):
        raise FeedDataError(f"block {link.hash}: coinbase hex must be a string")
    try:
        coinbase = parse_coinbase(coinbase_hex)
    except ValueError as exc:
        raise FeedDataError(f"block {link.hash}: coinbase: {exc}") from None
    event: dict[str, Any] = {
        "type": "block",
        "height": link.height,
        "hash": link.hash,
        "time": time,
        "bits": bits,
        "coinbase_value_sat": coinbase.total_out_sat,
    }
    if link.prev_hash is not None:
        event["prev_hash"] = link.prev_hash
    if len(coinbase_hex) <= MAX_COINBASE_HEX:
        event["coinbase_hex"] = coinbase_hex.lower()
    else:
        log.warning("block %d: coinbase of %d hex digits exceeds the contract's %d; left out",
                    link.height, len(coinbase_hex), MAX_COINBASE_HEX)
    try:
        decode_input(event)
    except InvalidEvent as exc:
        raise FeedDataError(f"block {link.hash}: fails the block contract: {exc}") from None
    return event


def coinbase_hex_from_rpc(block: Mapping[str, Any]) -> str:
    """Raw coinbase of ``getblock <hash> 2``.

    Core lists the transactions in ``tx``; btcd in ``rawtx`` (its ``tx`` holds only txids).
    """
    transactions = block.get("tx")
    if not (isinstance(transactions, list) and transactions and isinstance(transactions[0], dict)):
        transactions = block.get("rawtx")
    if not (isinstance(transactions, list) and transactions and isinstance(transactions[0], dict)):
        raise FeedDataError(
            "getblock: no transaction objects in 'tx' or 'rawtx' (was verbosity 2 honoured?)"
        )
    coinbase_hex = transactions[0].get("hex")
    if not isinstance(coinbase_hex, str):
        raise FeedDataError("getblock: the first transaction has no 'hex'")
    return coinbase_hex


def block_event_from_rpc(block: Mapping[str, Any]) -> dict[str, Any]:
    """``getblock <hash> 2`` (Bitcoin Core or btcd) → ``block`` event."""
    return make_block_event(
        header_from_rpc(block),
        _time_of(_require(block, "time", "getblock"), "getblock"),
        bits_hex(_require(block, "bits", "getblock"), "getblock bits"),
        coinbase_hex_from_rpc(block),
    )


def block_event_from_esplora(block: Mapping[str, Any], coinbase_hex: str) -> dict[str, Any]:
    """``GET /block/:hash`` plus the coinbase's ``GET /tx/:txid/hex`` → ``block`` event."""
    return make_block_event(
        header_from_esplora(block),
        _time_of(_require(block, "timestamp", "/block"), "/block"),
        bits_hex(_require(block, "bits", "/block"), "/block bits"),
        coinbase_hex,
    )


# ---- pure: what was emitted, and the walk back to the fork point -------------------------------


class EmittedChain:
    """The blocks this feed has delivered, by height: its picture of what consumers hold.

    Recording a block forgets every block at or above its height, as consumers do: those belonged
    to a branch the new block replaces. The lowest heights are forgotten beyond ``capacity``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._hash_by_height: dict[int, str] = {}
        self._height_by_hash: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._hash_by_height)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._height_by_hash

    def hash_at(self, height: int) -> str | None:
        return self._hash_by_height.get(height)

    @property
    def lowest(self) -> int | None:
        return min(self._hash_by_height) if self._hash_by_height else None

    @property
    def highest(self) -> int | None:
        return max(self._hash_by_height) if self._hash_by_height else None

    def floor_for(self, tip_height: int, backfill: int) -> int:
        """Lowest height worth emitting for a new tip: the backfill at start, else what we hold."""
        if backfill < 1:
            raise ValueError("backfill must be at least 1")
        lowest = self.lowest
        if lowest is None:
            return max(0, tip_height - backfill + 1)
        return max(lowest, tip_height - self.capacity + 1)

    def record(self, link: HeaderLink) -> None:
        highest = self.highest
        if highest is not None and highest >= link.height:
            for height in range(link.height, highest + 1):
                stale = self._hash_by_height.pop(height, None)
                if stale is not None:
                    del self._height_by_hash[stale]
        self._hash_by_height[link.height] = link.hash
        self._height_by_hash[link.hash] = link.height
        while len(self._hash_by_height) > self.capacity:
            oldest = min(self._hash_by_height)
            del self._height_by_hash[self._hash_by_height.pop(oldest)]


async def branch_to_emit(
    tip: HeaderLink, emitted: EmittedChain, floor_height: int, get_header: GetHeader
) -> list[HeaderLink]:
    """Blocks from just above the fork point up to ``tip``, oldest first.

    Walks back from ``tip`` through parents until a block this feed already emitted (the fork
    point; for a plain extension that is the tip's parent), the genesis block, or ``floor_height``
    (the backfill depth at start, the depth of what is remembered later). Each parent fetched must
    be the one its child names, one height lower, or FeedDataError is raised.
    """
    branch: list[HeaderLink] = []
    current = tip
    while emitted.hash_at(current.height) != current.hash:
        branch.append(current)
        parent_hash = current.prev_hash
        if current.height <= floor_height or parent_hash is None:
            break
        if emitted.hash_at(current.height - 1) == parent_hash:
            break
        parent = await get_header(parent_hash)
        if parent.hash != parent_hash or parent.height != current.height - 1:
            raise FeedDataError(
                f"block {current.hash} at height {current.height} names parent {parent_hash}, "
                f"but the source returned {parent.hash} at height {parent.height}"
            )
        current = parent
    branch.reverse()
    return branch


# ---- sources (HTTP edge) -----------------------------------------------------------------------


class BlockSource(Protocol):
    async def tip_hash(self) -> str: ...

    async def header(self, block_hash: str) -> HeaderLink: ...

    async def block_event(self, block_hash: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RpcCredentials:
    """User and password, or Core's cookie file (re-read each call: it changes on restart)."""

    user: str | None = None
    password: str | None = None
    cookie_file: Path | None = None

    def basic_auth(self) -> tuple[str, str] | None:
        if self.cookie_file is not None:
            text = self.cookie_file.read_text(encoding="utf-8").strip()
            user, separator, password = text.partition(":")
            if not separator:
                raise FeedAuthError(f"{self.cookie_file}: a cookie file holds 'user:password'")
            return user, password
        if self.user is not None:
            return self.user, self.password or ""
        return None


class BitcoinRpcSource:
    """Bitcoin Core or btcd over JSON-RPC 1.0 with HTTP basic auth."""

    def __init__(self, client: httpx.AsyncClient, url: str, credentials: RpcCredentials) -> None:
        self._client = client
        self._url = url
        self._credentials = credentials
        self._next_id = 0

    async def call(self, method: str, *params: object) -> Any:
        self._next_id += 1
        request = {"jsonrpc": "1.0", "id": self._next_id, "method": method, "params": list(params)}
        auth = self._credentials.basic_auth()
        response = await self._client.post(
            self._url,
            content=orjson.dumps(request),
            auth=auth if auth else httpx.USE_CLIENT_DEFAULT,
            headers={"content-type": "application/json"},
        )
        if response.status_code in (401, 403):
            raise FeedAuthError(
                f"{self._url} refused the RPC credentials (HTTP {response.status_code}): "
                "check --rpc-user/--rpc-password or --rpc-cookie"
            )
        # Core answers RPC errors with HTTP 500 or 404 and a JSON body: read the body first.
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise FeedDataError(
                f"{method}: HTTP {response.status_code} with a body that is not JSON"
            ) from None
        if not isinstance(body, dict):
            raise FeedDataError(f"{method}: answer is not a JSON-RPC object")
        error = body.get("error")
        if error is not None:
            if isinstance(error, dict):
                raise RpcError(method, error.get("code"), error.get("message"))
            raise RpcError(method, None, error)
        if response.status_code != 200:
            raise FeedDataError(f"{method}: HTTP {response.status_code} without an error object")
        if "result" not in body:
            raise FeedDataError(f"{method}: answer has no 'result'")
        return body["result"]

    async def tip_hash(self) -> str:
        return block_hash_of(await self.call("getbestblockhash"), "getbestblockhash")

    async def header(self, block_hash: str) -> HeaderLink:
        return header_from_rpc(await self.call("getblockheader", block_hash, True))

    async def block_event(self, block_hash: str) -> dict[str, Any]:
        return block_event_from_rpc(await self.call("getblock", block_hash, 2))


class EsploraSource:
    """An Esplora or mempool REST API, e.g. ``https://mempool.space/api``."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self._client = client
        self._base = base_url.rstrip("/")

    async def _get(self, path: str) -> httpx.Response:
        response = await self._client.get(self._base + path)
        if response.status_code in (401, 403):
            raise FeedAuthError(f"{self._base}{path}: access refused (HTTP {response.status_code})")
        response.raise_for_status()
        return response

    async def _get_json(self, path: str) -> Any:
        try:
            return orjson.loads((await self._get(path)).content)
        except orjson.JSONDecodeError:
            raise FeedDataError(f"{path}: answer is not JSON") from None

    async def _get_text(self, path: str) -> str:
        return (await self._get(path)).text.strip()

    async def tip_hash(self) -> str:
        return block_hash_of(await self._get_text("/blocks/tip/hash"), "/blocks/tip/hash")

    async def header(self, block_hash: str) -> HeaderLink:
        return header_from_esplora(await self._get_json(f"/block/{block_hash}"))

    async def block_event(self, block_hash: str) -> dict[str, Any]:
        block = await self._get_json(f"/block/{block_hash}")
        txid = block_hash_of(await self._get_text(f"/block/{block_hash}/txid/0"), "coinbase txid")
        return block_event_from_esplora(block, await self._get_text(f"/tx/{txid}/hex"))


def http_client(timeout_s: float = HTTP_TIMEOUT_S) -> httpx.AsyncClient:
    """The block feed's HTTP client, with a timeout generous enough for ``getblock 2``.

    Verbosity 2 of a full mainnet block is several MB of JSON; the node may take seconds.
    """
    return httpx.AsyncClient(timeout=timeout_s, headers={"user-agent": USER_AGENT})


# ---- following the tip -------------------------------------------------------------------------

# Failures worth a retry: the source or Kafka is down or answered nonsense for now.
TRANSIENT_ERRORS = (httpx.HTTPError, RpcError, FeedDataError, KafkaError, OSError)


async def sync_to_tip(
    source: BlockSource, emitted: EmittedChain, backfill: int, emit: Emit
) -> int:
    """Emit whatever the source's best chain has that consumers do not; return how many blocks.

    A tip this feed already emitted needs nothing, even one below the highest emitted block (a
    node told to ``invalidateblock``): the contract cannot retract heights, so those stay until a
    new block at their height replaces them.
    """
    tip_hash = await source.tip_hash()
    if tip_hash in emitted:
        return 0
    tip = await source.header(tip_hash)
    if tip.hash != tip_hash:
        raise FeedDataError(f"asked for the header of {tip_hash}, got {tip.hash}")
    branch = await branch_to_emit(
        tip, emitted, emitted.floor_for(tip.height, backfill), source.header
    )
    highest = emitted.highest
    if branch and highest is not None and branch[0].height <= highest:
        log.warning("reorg: the best chain left ours below height %d; re-emitting heights %d..%d",
                    branch[0].height, branch[0].height, tip.height)
    for link in branch:
        event = await source.block_event(link.hash)
        if event["hash"] != link.hash or event["height"] != link.height:
            raise FeedDataError(
                f"asked for block {link.hash} at height {link.height}, "
                f"got {event['hash']} at height {event['height']}"
            )
        await emit(event)
        emitted.record(link)
    return len(branch)


async def follow_blocks(
    source: BlockSource,
    emit: Emit,
    *,
    backfill: int = DEFAULT_BACKFILL,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    max_retry_delay_s: float = MAX_RETRY_DELAY_S,
    stop: asyncio.Event | None = None,
) -> None:
    """Backfill, then follow the tip until ``stop`` is set; transient failures back off and retry.

    Only FeedAuthError (credentials refused) ends the feed early: retrying cannot fix it.
    """
    if backfill < 1:
        raise ValueError("backfill must be at least 1")
    if poll_interval_s <= 0:
        raise ValueError("poll_interval_s must be positive")
    emitted = EmittedChain(max(backfill, MIN_MEMORY_BLOCKS))
    failures = 0
    while stop is None or not stop.is_set():
        try:
            count = await sync_to_tip(source, emitted, backfill, emit)
        except TRANSIENT_ERRORS as exc:
            failures += 1
            delay = retry_delay(failures, poll_interval_s, max(max_retry_delay_s, poll_interval_s))
            log.warning("block feed: %s; retrying in %.1f s", describe_error(exc), delay)
        else:
            if failures:
                log.info("block feed: source and Kafka answer again after %d failures", failures)
            failures = 0
            delay = poll_interval_s
            if count:
                log.info("block feed: emitted %d block(s), up to height %s",
                         count, emitted.highest)
        await pause(delay, stop)


# ---- replaying a recorded file -----------------------------------------------------------------


def parse_replay_line(line: str) -> dict[str, Any]:
    """One line of a recorded file: the event as written, once the block contract accepts it."""
    try:
        payload = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("$", f"not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise InvalidEvent("$", "must be a JSON object")
    event = decode_input(payload)
    if not isinstance(event, BlockEvent):
        raise InvalidEvent("type", f"expected a block event, got {event.type!r}")
    return payload


def replay_pause_s(previous_time: float | None, time: float, speed: float | None) -> float:
    """Wall-clock pause before a recorded block: its time since the previous one over ``speed``.

    Block times may run backwards by up to two hours (consensus allows it); that is no pause.
    """
    if speed is None or previous_time is None:
        return 0.0
    if speed <= 0:
        raise ValueError("speed must be positive")
    return max(0.0, time - previous_time) / speed


async def replay_blocks(
    lines: Iterable[str], emit: Emit, *, speed: float | None, errors: TextIO, name: str
) -> tuple[int, int]:
    """Emit each good line, report each bad one as ``name:LINE: field 'f': reason``.

    Returns (events sent, bad lines).
    """
    sent = bad = 0
    previous_time: float | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = parse_replay_line(line)
        except InvalidEvent as exc:
            bad += 1
            print(f"{name}:{number}: field {exc.field!r}: {exc.reason}", file=errors)
            continue
        delay = replay_pause_s(previous_time, float(event["time"]), speed)
        if delay:
            await asyncio.sleep(delay)
        previous_time = float(event["time"])
        await emit(event)
        sent += 1
    return sent, bad
