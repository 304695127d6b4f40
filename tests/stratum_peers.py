"""Honest Stratum V1 peers for the proxy's tests: a pool that checks every share's proof of work,
and a miner that does the work with real SHA-256d.

Neither shares code with `streams.proxy`: they are written from the Stratum conventions, so a
test passes only if the proxy relays what real peers say to each other.

Jobs come from a real block (height 722010): its version, previous hash, time (the first job;
later ones count on by a second each) and bits, and its real coinbase transaction (witness
stripped) cut after the BIP 34 height push, where the extranonce1 + extranonce2 bytes go. The
merkle branch is empty, so the header's merkle root is the txid of the coinbase the miner built:
real SHA-256d work over an 80-byte header.

Conventions (as cgminer and ckpool use them): `mining.notify` carries the previous hash with
each 4-byte word byte-swapped, version, bits and time as big-endian hex; `mining.submit` carries
time and nonce as big-endian hex; the header stores all four little-endian. A share meets
difficulty d when SHA-256d(header), read as a little-endian number, is ≤ diff1_target / d.

Run the miner as its own process (so its hashing does not compete with the proxy for the GIL):
    python -m tests.stratum_peers miner --port 3333 --worker alice --hashes 2000000
It prints one JSON report line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

DIFF1_TARGET = 0xFFFF << 208
BLOCK_TIME_SLACK_S = 7200
POOL_VERSION_MASK = 0x1FFFE000


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def share_target(difficulty: float) -> int:
    """Largest header hash (as a little-endian number) that meets `difficulty`."""
    return int(Fraction(DIFF1_TARGET) / Fraction(difficulty))


def swap_words(data: bytes) -> bytes:
    """Byte-swap every 4-byte word: Stratum's encoding of the previous block hash (its own
    inverse)."""
    return b"".join(data[i:i + 4][::-1] for i in range(0, len(data), 4))


def header_bytes(version: int, prev_hash: bytes, merkle_root: bytes, ntime: int, bits: int,
                 nonce: int) -> bytes:
    """The 80-byte header; hashes in internal (little-endian) byte order."""
    return (struct.pack("<I", version) + prev_hash + merkle_root
            + struct.pack("<III", ntime, bits, nonce))


def merkle_root(coinbase: bytes, branch: list[str]) -> bytes:
    root = sha256d(coinbase)
    for sibling in branch:
        root = sha256d(root + bytes.fromhex(sibling))
    return root


@dataclass(frozen=True)
class BlockFields:
    version: int
    prev_hash: bytes
    merkle_root: bytes
    time: int
    bits: int
    nonce: int

    @classmethod
    def from_header_hex(cls, header_hex: str) -> BlockFields:
        raw = bytes.fromhex(header_hex)
        if len(raw) != 80:
            raise ValueError("a block header has 80 bytes")
        version, = struct.unpack_from("<I", raw, 0)
        ntime, bits, nonce = struct.unpack_from("<III", raw, 68)
        return cls(version, raw[4:36], raw[36:68], ntime, bits, nonce)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(data[pos + 1:pos + 1 + width], "little"), pos + 1 + width


def _varint(value: int) -> bytes:
    if value < 0xFD:
        return bytes([value])
    if value <= 0xFFFF:
        return b"\xfd" + value.to_bytes(2, "little")
    return b"\xfe" + value.to_bytes(4, "little")


def split_coinbase(coinbase_hex: str, extranonce_bytes: int) -> tuple[str, str]:
    """(coinb1, coinb2) from a real coinbase: witness stripped, room for the extranonce after
    the BIP 34 height push, the scriptSig length grown to match."""
    tx = bytes.fromhex(coinbase_hex)
    segwit = tx[4] == 0 and tx[5] == 1
    pos = 6 if segwit else 4
    inputs, pos = _read_varint(tx, pos)
    if inputs != 1 or tx[pos:pos + 32] != bytes(32):
        raise ValueError("not a coinbase transaction")
    prevout_end = pos + 36
    script_len, script_start = _read_varint(tx, prevout_end)
    script = tx[script_start:script_start + script_len]
    height_push = 1 + script[0]
    after_script = script_start + script_len
    outputs_start = after_script + 4
    outputs, pos = _read_varint(tx, outputs_start)
    for _ in range(outputs):
        pos += 8
        length, pos = _read_varint(tx, pos)
        pos += length
    outputs_end = pos
    locktime = tx[-4:]
    coinb1 = (tx[:4] + tx[6 if segwit else 4:prevout_end]
              + _varint(script_len + extranonce_bytes) + script[:height_push])
    coinb2 = script[height_push:] + tx[after_script:outputs_end] + locktime
    return coinb1.hex(), coinb2.hex()


# ---- the pool ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolJob:
    job_id: str
    version: int
    ntime: int
    difficulty: float


@dataclass
class _PoolClient:
    index: int
    writer: asyncio.StreamWriter
    extranonce1: str
    subscribed: bool = False
    workers: set[str] = field(default_factory=set)
    version_mask: int = 0
    difficulty: float = 1.0
    jobs: dict[str, PoolJob] = field(default_factory=dict)
    live_jobs: set[str] = field(default_factory=set)
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    valid: int = 0


class StratumTestPool:
    """A real TCP Stratum V1 pool that accepts only shares with valid proof of work.

    Every share is rebuilt (coinbase, merkle root, header) and double-SHA256'd; wrong nonces,
    unknown or stale jobs, duplicates, foreign workers and version bits outside the mask are
    rejected. With `vardiff_every` = k, every k-th valid share of a connection toggles its
    difficulty between d and 2d: `mining.set_difficulty` and a new clean job are sent before
    the share's verdict, so a miner that waits for verdicts sees them at a fixed point.
    Shares are judged at the difficulty in force when their job was sent.
    """

    def __init__(self, block: dict[str, Any], difficulty: float, extranonce2_size: int = 4,
                 vardiff_every: int = 0, first_extranonce1: int = 0x5A000001) -> None:
        self.fields = BlockFields.from_header_hex(block["header_hex"])
        self.coinb1, self.coinb2 = split_coinbase(block["coinbase_hex"], 4 + extranonce2_size)
        self.base_difficulty = difficulty
        self.extranonce2_size = extranonce2_size
        self.vardiff_every = vardiff_every
        self.valid_difficulties: list[float] = []
        self.rejections: Counter[str] = Counter()
        self.valid_by_connection: Counter[int] = Counter()
        self.connections_opened = 0
        self._next_extranonce1 = first_extranonce1
        self._next_job = 1
        self._clients: dict[int, _PoolClient] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5.0)

    def drop_connections(self) -> int:
        """Cut every client connection (a pool restart, as the proxy sees it)."""
        clients = list(self._clients.values())
        for client in clients:
            client.writer.transport.abort()
        self._clients.clear()
        return len(clients)

    @property
    def open_connections(self) -> int:
        return len(self._clients)

    @property
    def valid_count(self) -> int:
        return len(self.valid_difficulties)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        self.connections_opened += 1
        client = _PoolClient(self.connections_opened, writer, f"{self._next_extranonce1:08x}")
        self._next_extranonce1 += 1
        self._clients[client.index] = client
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                message = json.loads(line)
                for reply in self._handle(client, message):
                    writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            self._clients.pop(client.index, None)
            writer.transport.abort()

    def _handle(self, client: _PoolClient, message: dict[str, Any]) -> list[dict[str, Any]]:
        method, params, msg_id = message.get("method"), message.get("params") or [], \
            message.get("id")

        def answer(result: Any, error: Any = None) -> dict[str, Any]:
            return {"id": msg_id, "result": result, "error": error}

        if method == "mining.configure":
            extensions, options = params[0], params[1] if len(params) > 1 else {}
            if "version-rolling" not in extensions:
                return [answer({})]
            wanted = int(options.get("version-rolling.mask", "ffffffff"), 16)
            client.version_mask = POOL_VERSION_MASK & wanted
            return [answer({"version-rolling": True,
                            "version-rolling.mask": f"{client.version_mask:08x}"})]
        if method == "mining.subscribe":
            client.subscribed = True
            subscriptions = [["mining.set_difficulty", client.extranonce1],
                             ["mining.notify", client.extranonce1]]
            return [answer([subscriptions, client.extranonce1, self.extranonce2_size])]
        if method == "mining.extranonce.subscribe":
            return [answer(True)]
        if method == "mining.authorize":
            client.workers.add(params[0])
            replies = [answer(True)]
            if client.subscribed and not client.jobs:
                client.difficulty = self.base_difficulty
                replies += self._new_job(client)
            return replies
        if method == "mining.submit":
            verdict = self._judge(client, params)
            if verdict is not None:
                self.rejections[verdict[1]] += 1
                return [answer(None, [verdict[0], verdict[1], None])]
            replies = []
            if self.vardiff_every and client.valid % self.vardiff_every == 0:
                at_base = client.difficulty == self.base_difficulty
                client.difficulty = self.base_difficulty * (2.0 if at_base else 1.0)
                replies += self._new_job(client)
            return [*replies, answer(True)]
        return [answer(None, [20, "unknown method", None])] if msg_id is not None else []

    def _new_job(self, client: _PoolClient) -> list[dict[str, Any]]:
        # Each job's time is one second on from the last (the first is the block's own), so no
        # two jobs hash the same headers.
        job = PoolJob(f"{self._next_job:x}", self.fields.version,
                      self.fields.time + self._next_job - 1, client.difficulty)
        self._next_job += 1
        client.jobs[job.job_id] = job
        client.live_jobs = {job.job_id}
        notify = [job.job_id, swap_words(self.fields.prev_hash).hex(), self.coinb1, self.coinb2,
                  [], f"{job.version:08x}", f"{self.fields.bits:08x}",
                  f"{job.ntime:08x}", True]
        return [{"id": None, "method": "mining.set_difficulty", "params": [client.difficulty]},
                {"id": None, "method": "mining.notify", "params": notify}]

    def _judge(self, client: _PoolClient, params: list[Any]) -> tuple[int, str] | None:
        """None for a valid share (counted), else (Stratum error code, reason)."""
        if len(params) not in (5, 6):
            return 20, "malformed submit"
        worker, job_id, extranonce2, ntime_hex, nonce_hex = params[:5]
        if worker not in client.workers:
            return 24, "unauthorized worker"
        job = client.jobs.get(job_id)
        if job is None or job_id not in client.live_jobs:
            return 21, "job not found"
        if len(extranonce2) != 2 * self.extranonce2_size:
            return 20, "wrong extranonce2 size"
        ntime, nonce = int(ntime_hex, 16), int(nonce_hex, 16)
        if not job.ntime <= ntime <= job.ntime + BLOCK_TIME_SLACK_S:
            return 20, "ntime out of range"
        version = job.version
        if len(params) == 6:
            bits = int(params[5], 16)
            if bits & ~client.version_mask:
                return 20, "version bits outside the mask"
            version = (version & ~client.version_mask) | bits
        key = (job_id, extranonce2, ntime, nonce, version)
        if key in client.seen:
            return 22, "duplicate share"
        coinbase = bytes.fromhex(self.coinb1 + client.extranonce1 + extranonce2 + self.coinb2)
        header = header_bytes(version, self.fields.prev_hash, merkle_root(coinbase, []), ntime,
                              self.fields.bits, nonce)
        if int.from_bytes(sha256d(header), "little") > share_target(job.difficulty):
            return 23, "low difficulty share"
        client.seen.add(key)
        client.valid += 1
        self.valid_difficulties.append(job.difficulty)
        self.valid_by_connection[client.index] += 1
        return None


# ---- the miner ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MinerJob:
    job_id: str
    prev_hash: bytes
    coinb1: bytes
    coinb2: bytes
    branch: list[str]
    version: int
    bits: int
    ntime: int
    difficulty: float
    extranonce1: bytes
    extranonce2_size: int


class ConnectionGone(Exception):
    """The proxy or pool closed the connection."""


class StratumTestMiner:
    """A real Stratum V1 miner: handshake, SHA-256d nonce search with extranonce2 (and, when
    the pool grants it, version) rolling, one share at a time (it waits for each verdict).

    With `bad_shares`, every real share is followed by three the pool must refuse: the same
    share again, the same with a wrong nonce, and one for a job that does not exist.
    """

    def __init__(self, host: str, port: int, worker: str, source_ip: str | None = None,
                 extranonce_subscribe: bool = True, version_rolling: bool = True,
                 bad_shares: bool = False, nonces_per_extranonce2: int = 1 << 32,
                 chunk: int = 4096) -> None:
        self.host, self.port, self.worker = host, port, worker
        self.source_ip = source_ip
        self.extranonce_subscribe = extranonce_subscribe
        self.version_rolling = version_rolling
        self.bad_shares = bad_shares
        self.nonces_per_extranonce2 = nonces_per_extranonce2
        self.chunk = chunk
        self.report: dict[str, Any] = {
            "hashes": 0, "seconds": 0.0, "shares_found": 0, "submitted": 0, "accepted": 0,
            "accepted_difficulty_sum": 0.0, "rejected": 0, "rejected_reasons": {},
            "accepted_at": [], "set_extranonce": 0, "reconnects": 0, "disconnected": False,
            "extranonce1_seen": [], "lost": 0,
        }
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 1
        self._job: MinerJob | None = None
        self._job_ready = asyncio.Event()
        self._difficulty = 1.0
        self._extranonce1 = b""
        self._extranonce2_size = 4
        self._version_mask = 0
        self._reconnect_requested = False

    async def run(self, max_hashes: int | None, max_seconds: float | None) -> dict[str, Any]:
        await self._connect()
        started = time.monotonic()
        try:
            await self._mine(max_hashes, max_seconds, started)
        except ConnectionGone:
            self.report["disconnected"] = True
        finally:
            self.report["seconds"] = time.monotonic() - started
            self._close()
        self.report["hashrate"] = self.report["hashes"] / max(self.report["seconds"], 1e-9)
        return self.report

    async def _connect(self) -> None:
        local = (self.source_ip, 0) if self.source_ip else None
        reader, self._writer = await asyncio.open_connection(self.host, self.port,
                                                             local_addr=local)
        # Each connection has its own table of calls waiting for answers, so the end of an old
        # connection cannot fail the calls of the next one.
        self._waiting = {}
        self._reader_task = asyncio.create_task(self._read(reader, self._waiting))
        self._job, self._reconnect_requested = None, False
        self._job_ready.clear()
        self._difficulty = 1.0
        if self.version_rolling:
            reply = await self._call("mining.configure", [
                ["version-rolling"],
                {"version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 2}])
            result = reply.get("result") or {}
            if result.get("version-rolling") is True:
                self._version_mask = int(result["version-rolling.mask"], 16)
        reply = await self._call("mining.subscribe", ["hashatlas-test-miner/1.0"])
        _, extranonce1, size = reply["result"]
        self._extranonce1, self._extranonce2_size = bytes.fromhex(extranonce1), size
        self.report["extranonce1_seen"].append(extranonce1)
        if self.extranonce_subscribe:
            await self._call("mining.extranonce.subscribe", [])
        reply = await self._call("mining.authorize", [self.worker, "x"])
        if reply.get("result") is not True:
            raise RuntimeError(f"authorization refused: {reply}")

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def _call(self, method: str, params: list[Any]) -> dict[str, Any]:
        if self._writer is None or self._writer.transport.is_closing():
            raise ConnectionGone(method)
        message_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        self._writer.write(json.dumps({"id": message_id, "method": method,
                                       "params": params}).encode() + b"\n")
        return await future

    async def _read(self, reader: asyncio.StreamReader,
                    waiting: dict[int, asyncio.Future[dict[str, Any]]]) -> None:
        try:
            while line := await reader.readline():
                self._on_message(json.loads(line), waiting)
        except (ConnectionError, ValueError):
            pass
        finally:
            for future in waiting.values():
                if not future.done():
                    future.set_exception(ConnectionGone("connection closed"))
            waiting.clear()
            self._job_ready.set()

    def _on_message(self, message: dict[str, Any],
                    waiting: dict[int, asyncio.Future[dict[str, Any]]]) -> None:
        method = message.get("method")
        params = message.get("params") or []
        if method is None:
            future = waiting.pop(message.get("id"), None)  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(message)
        elif method == "mining.set_difficulty":
            self._difficulty = float(params[0])
        elif method == "mining.set_extranonce":
            self._extranonce1, self._extranonce2_size = bytes.fromhex(params[0]), params[1]
            self.report["set_extranonce"] += 1
            self.report["extranonce1_seen"].append(params[0])
        elif method == "mining.set_version_mask":
            self._version_mask = int(params[0], 16)
        elif method == "client.reconnect":
            self._reconnect_requested = True
        elif method == "mining.notify":
            self._job = MinerJob(
                job_id=params[0], prev_hash=swap_words(bytes.fromhex(params[1])),
                coinb1=bytes.fromhex(params[2]), coinb2=bytes.fromhex(params[3]),
                branch=list(params[4]), version=int(params[5], 16), bits=int(params[6], 16),
                ntime=int(params[7], 16), difficulty=self._difficulty,
                extranonce1=self._extranonce1, extranonce2_size=self._extranonce2_size)
            self._job_ready.set()

    async def _wait_for_job(self) -> MinerJob:
        while self._job is None:
            if self._reader_task is None or self._reader_task.done():
                raise ConnectionGone("no job")
            self._job_ready.clear()
            await self._job_ready.wait()
        return self._job

    async def _mine(self, max_hashes: int | None, max_seconds: float | None,
                    started: float) -> None:
        sha256 = hashlib.sha256
        pack_nonce = struct.Struct("<I").pack
        job = await self._wait_for_job()
        extranonce2, nonce, rolled = 0, 0, 0
        while True:
            if self._reconnect_requested or (self._reader_task and self._reader_task.done()):
                if not self._reconnect_requested:
                    raise ConnectionGone("closed by peer")
                self._close()
                self.report["reconnects"] += 1
                await self._connect()
                job = await self._wait_for_job()
                extranonce2, nonce, rolled = 0, 0, 0
            elif self._job is not job:
                job = await self._wait_for_job()
                extranonce2, nonce, rolled = 0, 0, 0
            hashes = self.report["hashes"]
            if max_hashes is not None and hashes >= max_hashes:
                return
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                return
            mask = self._version_mask
            version_bits = (job.version & mask) ^ (rolled * (mask & -mask))
            version = (job.version & ~mask) | version_bits
            extranonce2_hex = extranonce2.to_bytes(job.extranonce2_size, "big").hex()
            coinbase = job.coinb1 + job.extranonce1 + bytes.fromhex(extranonce2_hex) + job.coinb2
            prefix = header_bytes(version, job.prev_hash, merkle_root(coinbase, job.branch),
                                  job.ntime, job.bits, 0)[:76]
            midstate, tail = sha256(prefix[:64]), prefix[64:]
            target = share_target(job.difficulty)
            end = min(nonce + self.chunk, self.nonces_per_extranonce2)
            if max_hashes is not None:
                end = min(end, nonce + max_hashes - hashes)
            found = []
            for candidate in range(nonce, end):
                inner = midstate.copy()
                inner.update(tail + pack_nonce(candidate))
                if int.from_bytes(sha256(inner.digest()).digest(), "little") <= target:
                    found.append(candidate)
            self.report["hashes"] = hashes + end - nonce
            nonce = end
            for share_nonce in found:
                self.report["shares_found"] += 1
                params = [self.worker, job.job_id, extranonce2_hex, f"{job.ntime:08x}",
                          f"{share_nonce:08x}"]
                if mask:
                    params.append(f"{version_bits:08x}")
                await self._submit(params, job.difficulty)
                if self.bad_shares:
                    await self._submit(params, job.difficulty)
                    await self._submit([*params[:4], f"{share_nonce ^ 1:08x}", *params[5:]],
                                       job.difficulty)
                    await self._submit([params[0], "ffffffff", *params[2:]], job.difficulty)
            if nonce >= self.nonces_per_extranonce2:
                nonce = 0
                if mask and not rolled:
                    rolled = 1
                else:
                    rolled = 0
                    extranonce2 += 1
            await asyncio.sleep(0)

    async def _submit(self, params: list[Any], difficulty: float) -> None:
        self.report["submitted"] += 1
        try:
            reply = await self._call("mining.submit", params)
        except ConnectionGone:
            if not self._reconnect_requested:
                raise
            self.report["lost"] += 1
            return
        if reply.get("result") is True and reply.get("error") is None:
            self.report["accepted"] += 1
            self.report["accepted_difficulty_sum"] += difficulty
            self.report["accepted_at"].append(time.time())
        else:
            self.report["rejected"] += 1
            error = reply.get("error")
            reason = str(error[1]) if isinstance(error, list) and len(error) > 1 else str(error)
            reasons = self.report["rejected_reasons"]
            reasons[reason] = reasons.get(reason, 0) + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stratum_peers")
    sub = parser.add_subparsers(dest="peer", required=True)
    miner = sub.add_parser("miner", help="mine through a Stratum endpoint and print a report")
    miner.add_argument("--host", default="127.0.0.1")
    miner.add_argument("--port", type=int, required=True)
    miner.add_argument("--worker", default="test.worker")
    miner.add_argument("--source-ip", default=None, help="local address to connect from")
    miner.add_argument("--hashes", type=int, default=None, help="stop after this many hashes")
    miner.add_argument("--seconds", type=float, default=None, help="stop after this long")
    miner.add_argument("--no-extranonce-subscribe", action="store_true")
    miner.add_argument("--no-version-rolling", action="store_true")
    miner.add_argument("--bad-shares", action="store_true")
    miner.add_argument("--nonces-per-extranonce2", type=int, default=1 << 32)
    args = parser.parse_args(argv)
    if args.hashes is None and args.seconds is None:
        parser.error("give --hashes or --seconds")
    peer = StratumTestMiner(
        args.host, args.port, args.worker, source_ip=args.source_ip,
        extranonce_subscribe=not args.no_extranonce_subscribe,
        version_rolling=not args.no_version_rolling, bad_shares=args.bad_shares,
        nonces_per_extranonce2=args.nonces_per_extranonce2,
    )
    report = asyncio.run(peer.run(args.hashes, args.seconds))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
