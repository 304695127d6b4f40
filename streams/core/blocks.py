"""Facts about Bitcoin blocks: target, difficulty, work, subsidy, fees and the pool that mined it.

Everything here is pure: a block event (CONTRACTS.md ``block``) in, numbers and a pool out. The
block-based network hashrate (METHOD.md §2) needs the work and time of each block of the best chain;
the coverage of the share sample needs which pool found each block. ``BestChain`` keeps a bounded
window of recent blocks and applies reorgs as the feed reports them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streams.contracts import InvalidEvent

SAT_PER_BTC = 100_000_000
INITIAL_SUBSIDY_SAT = 50 * SAT_PER_BTC
HALVING_INTERVAL = 210_000
# Bitcoin Core stops at 64 halvings because a shift by >= 64 bits is undefined for int64.
MAX_HALVINGS = 64
# The difficulty-1 target (compact 0x1d00ffff), the reference all difficulties are quoted against.
DIFFICULTY_1_TARGET = 0xFFFF << 208
DEFAULT_CHAIN_CAPACITY = 4032

AttributionMethod = Literal["address", "tag", "feed", "unknown"]
#: How the coinbase evidence agreed: payout address and tag naming the same pool ("both"), only
#: one of them, both naming different pools ("conflict": the address wins, as in mempool's rule),
#: the feed's word only ("feed"), or nothing ("unknown").
AttributionDetail = Literal["both", "address", "tag", "conflict", "feed", "unknown"]
UNKNOWN_POOL_NAME = "Unknown"


# ---- compact target, difficulty, work ----------------------------------------------------------


def _bits_to_int(bits: int | str) -> int:
    if isinstance(bits, bool):
        raise ValueError("bits must be an integer or 8 hex digits, not a boolean")
    if isinstance(bits, int):
        value = bits
    elif isinstance(bits, str):
        text = bits.strip().lower().removeprefix("0x")
        if len(text) != 8 or any(c not in "0123456789abcdef" for c in text):
            raise ValueError(f"bits {bits!r} must be 8 hex digits (compact target)")
        value = int(text, 16)
    else:
        raise ValueError(f"bits must be an integer or 8 hex digits, got {type(bits).__name__}")
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"bits {value:#x} does not fit in 32 bits")
    return value


def target_from_bits(bits: int | str) -> int:
    """Expand compact ``bits`` into the 256-bit target, as Bitcoin Core's ``SetCompact`` does.

    The top byte is a length in bytes, the low 23 bits the mantissa; bit 23 is a sign. A set sign
    with a non-zero mantissa, or a value beyond 256 bits, is no valid target: ValueError.
    A zero mantissa gives target 0 (Core accepts that encoding; difficulty and work reject it).
    """
    compact = _bits_to_int(bits)
    size = compact >> 24
    mantissa = compact & 0x007FFFFF
    if size <= 3:
        mantissa >>= 8 * (3 - size)
        target = mantissa
    else:
        target = mantissa << (8 * (size - 3))
    if mantissa != 0 and compact & 0x00800000:
        raise ValueError(f"bits {compact:08x} encode a negative target (sign bit set)")
    if mantissa != 0 and (
        size > 34 or (mantissa > 0xFF and size > 33) or (mantissa > 0xFFFF and size > 32)
    ):
        raise ValueError(f"bits {compact:08x} encode a target beyond 256 bits (overflow)")
    return target


def _positive_target(bits: int | str) -> int:
    target = target_from_bits(bits)
    if target == 0:
        raise ValueError(f"bits {_bits_to_int(bits):08x} encode a zero target")
    return target


def difficulty_from_bits(bits: int | str) -> float:
    """Difficulty as the network quotes it: the difficulty-1 target over this target."""
    target = _positive_target(bits)
    # int / int is correctly rounded in Python even when both exceed the float range.
    return DIFFICULTY_1_TARGET / target


def work_from_bits(bits: int | str) -> int:
    """Expected hashes to find a block at this target: floor(2**256 / (target + 1)), exact."""
    return (1 << 256) // (_positive_target(bits) + 1)


def block_subsidy_sat(height: int) -> int:
    """New coins a block at ``height`` may create: 50 BTC halved every 210,000 blocks, in sat."""
    if isinstance(height, bool) or not isinstance(height, int) or height < 0:
        raise ValueError(f"height must be a non-negative integer, got {height!r}")
    halvings = height // HALVING_INTERVAL
    if halvings >= MAX_HALVINGS:
        return 0
    return INITIAL_SUBSIDY_SAT >> halvings


def fees_sat(height: int, coinbase_value_sat: int) -> int:
    """Fees the miner collected: coinbase outputs minus the subsidy, clamped at 0.

    A coinbase may legally claim less than subsidy + fees (the rest is destroyed), so a block can
    pay out less than its subsidy; the true fees are then unknowable from the coinbase and 0 is
    reported rather than a negative number. Fees are a lower bound in that case.
    """
    if isinstance(coinbase_value_sat, bool) or not isinstance(coinbase_value_sat, int):
        raise ValueError(f"coinbase_value_sat must be an integer, got {coinbase_value_sat!r}")
    if coinbase_value_sat < 0:
        raise ValueError(f"coinbase_value_sat must not be negative, got {coinbase_value_sat}")
    return max(0, coinbase_value_sat - block_subsidy_sat(height))


# ---- coinbase transaction ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TxOutput:
    value_sat: int
    script_pubkey: bytes


@dataclass(frozen=True, slots=True)
class Coinbase:
    script_sig: bytes
    outputs: list[TxOutput]

    @property
    def total_out_sat(self) -> int:
        return sum(output.value_sat for output in self.outputs)


class _Reader:
    """Cursor over raw transaction bytes that names what it was reading when data runs out."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > len(self.data):
            raise ValueError(
                f"coinbase truncated: needed {count} bytes for {what} at byte {self.pos}, "
                f"only {len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "little")

    def varint(self, what: str) -> int:
        first = self.uint(1, what)
        if first < 0xFD:
            return first
        return self.uint({0xFD: 2, 0xFE: 4, 0xFF: 8}[first], what)


NULL_PREVOUT = bytes(32) + b"\xff\xff\xff\xff"


def parse_coinbase(coinbase_hex: str) -> Coinbase:
    """Decode a raw coinbase transaction (legacy or segwit serialisation) from hex."""
    try:
        raw = bytes.fromhex(coinbase_hex)
    except (ValueError, TypeError):
        raise ValueError("coinbase_hex is not an even number of hex digits") from None
    reader = _Reader(raw)
    reader.take(4, "version")
    segwit = reader.data[reader.pos : reader.pos + 2] == b"\x00\x01"
    if segwit:
        reader.pos += 2
    input_count = reader.varint("input count")
    if input_count != 1:
        raise ValueError(f"coinbase must have exactly 1 input, found {input_count}")
    if reader.take(36, "previous output") != NULL_PREVOUT:
        raise ValueError("not a coinbase: its input spends a real previous output")
    script_sig = reader.take(reader.varint("scriptSig length"), "scriptSig")
    reader.take(4, "sequence")
    output_count = reader.varint("output count")
    if output_count == 0:
        raise ValueError("coinbase has no outputs")
    outputs = []
    for index in range(output_count):
        value = reader.uint(8, f"value of output {index}")
        script = reader.take(reader.varint(f"script length of output {index}"), f"output {index}")
        outputs.append(TxOutput(value_sat=value, script_pubkey=script))
    if segwit:
        for item in range(reader.varint("witness item count")):
            reader.take(reader.varint(f"length of witness item {item}"), f"witness item {item}")
    reader.take(4, "lock time")
    if reader.pos != len(raw):
        raise ValueError(f"coinbase has {len(raw) - reader.pos} unexpected bytes after lock time")
    return Coinbase(script_sig=script_sig, outputs=outputs)


# ---- addresses ---------------------------------------------------------------------------------

BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
BECH32_ALPHABET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
BECH32_CONST = 1
BECH32M_CONST = 0x2BC830A3
P2PKH_VERSION = 0x00
P2SH_VERSION = 0x05
MAINNET_HRP = "bc"


def base58_encode(data: bytes) -> str:
    """Base58 as Bitcoin uses it: each leading zero byte becomes a '1'."""
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, remainder = divmod(number, 58)
        digits.append(BASE58_ALPHABET[remainder])
    leading_zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * leading_zeros + "".join(reversed(digits))


def base58check_encode(version: int, payload: bytes) -> str:
    """Version byte + payload + first 4 bytes of double SHA-256, in base58."""
    body = bytes([version]) + payload
    checksum = hashlib.sha256(hashlib.sha256(body).digest()).digest()[:4]
    return base58_encode(body + checksum)


def _bech32_polymod(values: Iterable[int]) -> int:
    generators = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = ((checksum & 0x1FFFFFF) << 5) ^ value
        for bit, generator in enumerate(generators):
            if (top >> bit) & 1:
                checksum ^= generator
    return checksum


def _to_5bit_groups(data: bytes) -> list[int]:
    number = int.from_bytes(data, "big")
    bit_count = 8 * len(data)
    padding = -bit_count % 5
    number <<= padding
    groups = (bit_count + padding) // 5
    return [(number >> (5 * (groups - 1 - i))) & 31 for i in range(groups)]


def segwit_address(hrp: str, witness_version: int, program: bytes) -> str:
    """Encode a witness program: bech32 for version 0 (BIP-173), bech32m after it (BIP-350)."""
    data = [witness_version, *_to_5bit_groups(program)]
    constant = BECH32_CONST if witness_version == 0 else BECH32M_CONST
    expanded_hrp = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    polymod = _bech32_polymod([*expanded_hrp, *data, 0, 0, 0, 0, 0, 0]) ^ constant
    checksum = [(polymod >> (5 * (5 - i))) & 31 for i in range(6)]
    return hrp + "1" + "".join(BECH32_ALPHABET[d] for d in data + checksum)


def script_to_address(script: bytes) -> str | None:
    """Mainnet address of a standard output script; None where none exists.

    P2PKH and P2SH render in base58check, witness programs in bech32/bech32m. P2PK, bare multisig,
    OP_RETURN and non-standard scripts have no address (block explorers and mempool's pool
    matching show none either).
    """
    if (
        len(script) == 25
        and script[:3] == b"\x76\xa9\x14"
        and script[23:] == b"\x88\xac"
    ):
        return base58check_encode(P2PKH_VERSION, script[3:23])
    if len(script) == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return base58check_encode(P2SH_VERSION, script[2:22])
    if 4 <= len(script) <= 42 and script[1] == len(script) - 2:
        opcode, program = script[0], script[2:]
        if opcode == 0x00 and len(program) in (20, 32):
            return segwit_address(MAINNET_HRP, 0, program)
        if 0x51 <= opcode <= 0x60:
            return segwit_address(MAINNET_HRP, opcode - 0x50, program)
    return None


# ---- pools -------------------------------------------------------------------------------------


def pool_slug(name: str) -> str:
    """Stable id of a pool: lower case, other characters' runs as one '-' ('BTC.com' → 'btc-com').

    Share events name their pool by this slug, so blocks and shares meet on it.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"pool name {name!r} has no letters or digits to make a slug from")
    return slug


def script_sig_text(script_sig: bytes) -> str:
    """The scriptSig as text for tag matching.

    UTF-8 with replacement rather than Latin-1: ASCII tags match the same either way, and
    pools-v2.json also tags pools with UTF-8 text (F2Pool's '七彩神仙鱼' and '🐟'),
    which only a UTF-8 reading can match.
    """
    return script_sig.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class PoolMatch:
    name: str
    slug: str
    method: AttributionMethod


UNKNOWN_POOL = PoolMatch(name=UNKNOWN_POOL_NAME, slug="unknown", method="unknown")


@dataclass(frozen=True, slots=True)
class _Pool:
    name: str
    slug: str
    tags: tuple[re.Pattern[str], ...]


class PoolDirectory:
    """Who mined a block, by mempool's rule: payout address first, then coinbase tag, list order."""

    def __init__(self, pools: Sequence[Mapping[str, Any]]) -> None:
        self._pools: list[_Pool] = []
        self._pool_by_address: dict[str, int] = {}
        self._pool_by_key: dict[str, int] = {}
        for index, entry in enumerate(pools):
            name = entry.get("name") if isinstance(entry, Mapping) else None
            if not isinstance(name, str) or not name:
                raise ValueError(f"pool #{index}: 'name' must be a non-empty string")
            addresses = entry.get("addresses", [])
            tags = entry.get("tags", [])
            if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
                raise ValueError(f"pool {name!r}: 'addresses' must be a list of strings")
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ValueError(f"pool {name!r}: 'tags' must be a list of strings")
            try:
                patterns = tuple(re.compile(tag, re.IGNORECASE) for tag in tags)
            except re.error as exc:
                raise ValueError(f"pool {name!r}: tag is not a valid regex ({exc})") from None
            slug = pool_slug(name)
            self._pools.append(_Pool(name=name, slug=slug, tags=patterns))
            for address in addresses:
                self._pool_by_address.setdefault(address, index)
            for key in (name.lower(), slug):
                self._pool_by_key.setdefault(key, index)

    def __len__(self) -> int:
        return len(self._pools)

    def _match(self, index: int, method: AttributionMethod) -> PoolMatch:
        pool = self._pools[index]
        return PoolMatch(name=pool.name, slug=pool.slug, method=method)

    def attribute(self, addresses: Sequence[str], script_sig: bytes) -> PoolMatch:
        """Pool of a block from its coinbase output addresses and scriptSig."""
        by_address = [
            self._pool_by_address[a] for a in addresses if a in self._pool_by_address
        ]
        if by_address:
            return self._match(min(by_address), "address")
        text = script_sig_text(script_sig)
        for index, pool in enumerate(self._pools):
            if any(pattern.search(text) for pattern in pool.tags):
                return self._match(index, "tag")
        return UNKNOWN_POOL

    def evidence(
        self, addresses: Sequence[str], script_sig: bytes
    ) -> tuple[PoolMatch | None, PoolMatch | None]:
        """The pool the payout addresses name and the pool the tags name, each by list order.

        ``attribute`` uses the first that exists; both are kept so that agreement and conflict
        (a tag copied by another pool, a proxy paying out to its own address) can be judged.
        """
        by_address = [
            self._pool_by_address[a] for a in addresses if a in self._pool_by_address
        ]
        address_match = self._match(min(by_address), "address") if by_address else None
        text = script_sig_text(script_sig)
        tag_match = next(
            (self._match(index, "tag") for index, pool in enumerate(self._pools)
             if any(pattern.search(text) for pattern in pool.tags)),
            None,
        )
        return address_match, tag_match

    def lookup(self, name_or_slug: str) -> PoolMatch | None:
        """The listed pool a feed names by name (any case) or slug; None if not listed."""
        index = self._pool_by_key.get(name_or_slug.lower())
        if index is None:
            try:
                index = self._pool_by_key.get(pool_slug(name_or_slug))
            except ValueError:
                return None
        return None if index is None else self._match(index, "feed")


def load_pool_directory(path: str | Path) -> PoolDirectory:
    """Read a pools-v2.json style file (a JSON list of pools)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of pools")
    return PoolDirectory(data)


# ---- block events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockFacts:
    height: int
    hash: str
    prev_hash: str | None
    time: float
    bits: str
    pool: str
    pool_slug: str
    attribution: AttributionMethod
    difficulty: float
    work: int
    subsidy_sat: int
    fees_sat: int | None
    coinbase_value_sat: int | None
    #: Added after the first checkpoints were written: older states restore as "unknown".
    attribution_detail: AttributionDetail = "unknown"
    #: When address and tag disagree, the pool the tag named (the evidence against the match).
    conflicting_pool_slug: str | None = None


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _hex64_field(event: Mapping[str, Any], field: str) -> str | None:
    value = event.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX64.fullmatch(value.lower()):
        raise InvalidEvent(field, "must be 64 hex digits")
    return value.lower()


@dataclass(frozen=True)
class _Header:
    height: int
    hash: str
    prev_hash: str | None
    time: float
    bits: str
    difficulty: float
    work: int


@dataclass(frozen=True)
class _Attribution:
    match: PoolMatch
    detail: AttributionDetail
    conflicting: str | None
    coinbase_value: int | None


def _header(event: Mapping[str, Any]) -> _Header:
    """The header fields of a ``block`` event, checked; InvalidEvent names the bad field."""
    kind = event.get("type", "block")
    if kind != "block":
        raise InvalidEvent("type", f"expected 'block', got {kind!r}")
    height = event.get("height")
    if isinstance(height, bool) or not isinstance(height, int) or height < 0:
        raise InvalidEvent("height", "must be a non-negative integer")
    block_hash = _hex64_field(event, "hash")
    if block_hash is None:
        raise InvalidEvent("hash", "missing")
    time = event.get("time")
    if isinstance(time, bool) or not isinstance(time, int | float) or not math.isfinite(time):
        raise InvalidEvent("time", "must be a finite number of Unix seconds")
    if time <= 0:
        raise InvalidEvent("time", "must be positive Unix seconds")
    if "bits" not in event:
        raise InvalidEvent("bits", "missing")
    try:
        bits = f"{_bits_to_int(event['bits']):08x}"
        difficulty, work = difficulty_from_bits(bits), work_from_bits(bits)
    except ValueError as exc:
        raise InvalidEvent("bits", str(exc)) from None
    return _Header(height, block_hash, _hex64_field(event, "prev_hash"), float(time), bits,
                   difficulty, work)


def _coinbase_attribution(event: Mapping[str, Any], declared_value: int | None,
                          pools: PoolDirectory | None) -> _Attribution:
    """The pool named by the coinbase's payout addresses and tag, and the coinbase's value."""
    coinbase_hex = event.get("coinbase_hex")
    if coinbase_hex is None:
        return _Attribution(UNKNOWN_POOL, "unknown", None, declared_value)
    if not isinstance(coinbase_hex, str):
        raise InvalidEvent("coinbase_hex", "must be a hex string")
    try:
        coinbase = parse_coinbase(coinbase_hex)
    except ValueError as exc:
        raise InvalidEvent("coinbase_hex", str(exc)) from None
    value = coinbase.total_out_sat
    if declared_value is not None and declared_value != value:
        raise InvalidEvent(
            "coinbase_value_sat",
            f"{declared_value} differs from the coinbase outputs' total {value}",
        )
    if pools is None:
        return _Attribution(UNKNOWN_POOL, "unknown", None, value)
    addresses = [
        address
        for output in coinbase.outputs
        if (address := script_to_address(output.script_pubkey)) is not None
    ]
    by_address, by_tag = pools.evidence(addresses, coinbase.script_sig)
    detail, conflicting = attribution_detail(by_address, by_tag)
    return _Attribution(pools.attribute(addresses, coinbase.script_sig), detail, conflicting, value)


def _feed_attribution(feed_pool: str, pools: PoolDirectory | None,
                      found: _Attribution) -> _Attribution:
    """The pool the feed names, for a block whose coinbase named none."""
    listed = pools.lookup(feed_pool) if pools is not None else None
    if listed is not None:
        return _Attribution(listed, "feed", found.conflicting, found.coinbase_value)
    if feed_pool.strip().lower() == UNKNOWN_POOL.slug:
        return _Attribution(UNKNOWN_POOL, "unknown", found.conflicting, found.coinbase_value)
    try:
        match = PoolMatch(name=feed_pool, slug=pool_slug(feed_pool), method="feed")
    except ValueError as exc:
        raise InvalidEvent("pool", str(exc)) from None
    return _Attribution(match, "feed", found.conflicting, found.coinbase_value)


def describe_block(event: Mapping[str, Any], pools: PoolDirectory | None = None) -> BlockFacts:
    """Turn one ``block`` event into its facts; InvalidEvent names the bad field.

    The pool comes from the coinbase (payout address, then tag) when ``coinbase_hex`` and a pool
    directory are given; a pool the feed names (``pool``: name or slug) is used when the coinbase
    is absent or matches no listed pool. Fees are None when neither coinbase nor value is given.
    """
    header = _header(event)
    declared_value = event.get("coinbase_value_sat")
    if declared_value is not None and (
        isinstance(declared_value, bool)
        or not isinstance(declared_value, int)
        or declared_value < 0
    ):
        raise InvalidEvent("coinbase_value_sat", "must be a non-negative integer")
    feed_pool = event.get("pool")
    if feed_pool is not None and (not isinstance(feed_pool, str) or not feed_pool.strip()):
        raise InvalidEvent("pool", "must be a non-empty string")
    found = _coinbase_attribution(event, declared_value, pools)
    if found.match.method == "unknown" and feed_pool is not None:
        found = _feed_attribution(feed_pool, pools, found)
    value = found.coinbase_value
    return BlockFacts(
        height=header.height, hash=header.hash, prev_hash=header.prev_hash, time=header.time,
        bits=header.bits, pool=found.match.name, pool_slug=found.match.slug,
        attribution=found.match.method, difficulty=header.difficulty, work=header.work,
        subsidy_sat=block_subsidy_sat(header.height),
        fees_sat=None if value is None else fees_sat(header.height, value),
        coinbase_value_sat=value, attribution_detail=found.detail,
        conflicting_pool_slug=found.conflicting,
    )


def attribution_detail(
    by_address: PoolMatch | None, by_tag: PoolMatch | None
) -> tuple[AttributionDetail, str | None]:
    """Classify the coinbase evidence; the second item names the tag's pool on a conflict."""
    if by_address is not None and by_tag is not None:
        if by_address.slug == by_tag.slug:
            return "both", None
        return "conflict", by_tag.slug
    if by_address is not None:
        return "address", None
    if by_tag is not None:
        return "tag", None
    return "unknown", None


# ---- best chain --------------------------------------------------------------------------------


class BestChain:
    """The most recent blocks of the best chain by height, bounded, with reorgs applied.

    The feed's latest word wins: a block at a height already held replaces the one there, and
    blocks above a newly added block that no longer link to it by ``prev_hash`` belonged to an
    abandoned branch and are dropped, together with everything above them. Links are checked only
    across consecutive heights with a known ``prev_hash``: a gap cannot be judged, so what lies
    beyond it is kept. Blocks below a new block are never dropped: the feed replaces those itself.
    """

    def __init__(self, capacity: int = DEFAULT_CHAIN_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._blocks: dict[int, BlockFacts] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def tip(self) -> BlockFacts | None:
        return self._blocks[max(self._blocks)] if self._blocks else None

    def add(self, facts: BlockFacts) -> bool:
        """Store a block; False when it changes nothing (already held, or older than the window)."""
        held = self._blocks.get(facts.height)
        if held is not None and held.hash == facts.hash:
            return False
        if held is None and len(self._blocks) >= self.capacity and facts.height < min(self._blocks):
            return False
        self._blocks[facts.height] = facts
        self._drop_unlinked_above(facts.height)
        while len(self._blocks) > self.capacity:
            del self._blocks[min(self._blocks)]
        return True

    def _drop_unlinked_above(self, height: int) -> None:
        parent = self._blocks[height]
        child = self._blocks.get(height + 1)
        while child is not None and child.prev_hash is not None:
            if child.prev_hash != parent.hash:
                for stale in [h for h in self._blocks if h > parent.height]:
                    del self._blocks[stale]
                return
            parent, child = child, self._blocks.get(child.height + 1)

    def blocks(self, n: int | None = None) -> list[BlockFacts]:
        """The last ``n`` blocks held (all when None), by ascending height."""
        ordered = [self._blocks[h] for h in sorted(self._blocks)]
        if n is None:
            return ordered
        if n < 0:
            raise ValueError("n must not be negative")
        return ordered[max(0, len(ordered) - n) :] if n else []

    def heights(self, n: int | None = None) -> npt.NDArray[np.int64]:
        return np.array([b.height for b in self.blocks(n)], dtype=np.int64)

    def times(self, n: int | None = None) -> npt.NDArray[np.float64]:
        return np.array([b.time for b in self.blocks(n)], dtype=np.float64)

    def works(self, n: int | None = None) -> npt.NDArray[np.float64]:
        """Work per block as float64 (exact integers exceed int64; float keeps 16 digits)."""
        return np.array([float(b.work) for b in self.blocks(n)], dtype=np.float64)

    def pools(self, n: int | None = None) -> npt.NDArray[np.str_]:
        """Pool slugs, the keys share events use."""
        return np.array([b.pool_slug for b in self.blocks(n)], dtype=np.str_)
