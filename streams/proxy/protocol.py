"""Stratum V1 as a relay sees it: framing, message parsing and the per-miner relay, without I/O.

The proxy sits between one miner and its pool. Everything it decides lives here, so it can be
tested with plain messages: `LineSplitter` cuts a byte stream into bounded lines,
`parse_message` turns a line into a `Request` or `Response` (or raises `ProtocolError`, after
which the proxy drops that peer), and `StratumRelay` is the state of one miner session: it says
what to forward where, which submits the pool accepted and at which difficulty.

Why a relay rewrites request ids: the proxy sends requests of its own on the same upstream
connection (the handshake it replays after a reconnect) and must match every submit to its
verdict even when a miner reuses ids. Each request going upstream therefore gets a fresh integer
id; the answer is sent back to the miner under the miner's own id.

Difficulty credited to a share: the difficulty in force when the pool sent the share's job (the
last `mining.set_difficulty` before that `mining.notify`), as ckpool judges it. A pool that
changes difficulty sends the change followed by a new job, so the two rules agree for fresh work;
for a job the proxy never saw (a pool bug or a share from before a reconnect) the current
difficulty is used. Stratum's default difficulty before any `set_difficulty` is 1.

Upstream reconnects: the relay remembers the handshake the miner made (`mining.configure`,
`mining.subscribe`, `mining.extranonce.subscribe`, every `mining.authorize`,
`mining.suggest_difficulty`) and replays it on a new pool connection, asking the pool to resume
the old session (second `mining.subscribe` parameter). If the pool hands out a different
extranonce1 (or extranonce2 size), the miner is told with `mining.set_extranonce` when it asked
for that notification, and otherwise gets `client.reconnect` and is disconnected, because its
work would no longer match the pool's coinbase. A changed version-rolling mask is announced with
`mining.set_version_mask` (BIP 310).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

DEFAULT_MAX_LINE_BYTES: Final = 16 * 1024
MAX_JOBS_TRACKED: Final = 256
MAX_PENDING_REQUESTS: Final = 256
MAX_WORKERS_PER_SESSION: Final = 16
MAX_ID_CHARS: Final = 64
MAX_METHOD_CHARS: Final = 64
MAX_WORKER_CHARS: Final = 256
MAX_EXTRANONCE_BYTES: Final = 32
STRATUM_DEFAULT_DIFFICULTY: Final = 1.0

ERROR_OTHER: Final = 20
"""Stratum's "other/unknown" error code, used for every refusal the proxy makes itself."""
POOL_UNAVAILABLE: Final = "no pool connection at the moment"

HANDSHAKE_RANK: Final[dict[str, int]] = {
    "mining.configure": 0,
    "mining.subscribe": 1,
    "mining.extranonce.subscribe": 2,
    "mining.authorize": 3,
    "mining.suggest_difficulty": 4,
}
"""Requests replayed after a reconnect, in the order a pool expects them."""

_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
_HEX8 = re.compile(r"^[0-9a-fA-F]{8}$")
#: A version-rolling mask as pools write it: 8 hex digits, some with a ``0x`` prefix (npm
#: ``stratum-pool-sha256``) or without leading zeros.
_VERSION_MASK = re.compile(r"^(?:0[xX])?([0-9a-fA-F]{1,8})$")

JsonId = int | str | None


class ProtocolError(ValueError):
    """Input that is not acceptable Stratum; for a whole line it means: drop that peer."""


class LineTooLong(ProtocolError):
    """A line (or an unfinished line) longer than the limit."""


class LineSplitter:
    """Cuts a byte stream into newline-terminated lines, never holding more than the limit.

    Why bounded: a peer that never sends a newline would otherwise make the proxy buffer without
    end; here the unfinished part is checked after every chunk.
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes <= 0:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Complete lines in ``data`` (stripped, empty ones dropped); raise `LineTooLong`."""
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            if end - start > self.max_line_bytes:
                raise LineTooLong(f"line longer than {self.max_line_bytes} bytes")
            line = bytes(self._buffer[start:end]).strip()
            if line:
                lines.append(line)
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self.max_line_bytes:
            raise LineTooLong(f"line longer than {self.max_line_bytes} bytes")
        return lines


@dataclass(frozen=True)
class Request:
    """A call (``id`` set) or a notification (``id`` None); ``raw`` is the line as received
    (without its newline), relayed as is when the proxy has nothing to change in it."""

    id: JsonId
    method: str
    params: list[Any]
    raw: bytes


@dataclass(frozen=True)
class Response:
    """An answer to a request with the same ``id``."""

    id: JsonId
    result: Any
    error: Any
    raw: bytes


Message = Request | Response


def parse_message(line: bytes) -> Message:
    """Classify one JSON-RPC line; raise `ProtocolError` for anything that is not Stratum."""
    try:
        payload = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ProtocolError("not UTF-8 JSON") from None
    if not isinstance(payload, dict):
        raise ProtocolError("not a JSON object")
    message_id = payload.get("id")
    if message_id is not None:
        if isinstance(message_id, bool) or not isinstance(message_id, int | str):
            raise ProtocolError("id must be an integer, a string or null")
        if isinstance(message_id, str) and len(message_id) > MAX_ID_CHARS:
            raise ProtocolError("id too long")
    method = payload.get("method")
    if method is not None:
        if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_CHARS:
            raise ProtocolError("method must be a short string")
        if not method.isprintable():
            raise ProtocolError("method must not contain control characters")
        params = payload.get("params")
        if params is None:
            params = []
        if not isinstance(params, list):
            raise ProtocolError("params must be a list")
        return Request(message_id, method, params, line)
    if "result" not in payload and "error" not in payload:
        raise ProtocolError("neither a request (method) nor a response (result/error)")
    return Response(message_id, payload.get("result"), payload.get("error"), line)


def encode_request(message_id: JsonId, method: str, params: list[Any]) -> bytes:
    return orjson.dumps({"id": message_id, "method": method, "params": params}) + b"\n"


def encode_response(message_id: JsonId, result: Any, error: Any) -> bytes:
    return orjson.dumps({"id": message_id, "result": result, "error": error}) + b"\n"


def stratum_error(code: int, message: str) -> list[Any]:
    return [code, message, None]


# ---- method parameters -------------------------------------------------------------------------


def _is_hex(value: object, max_bytes: int) -> bool:
    return isinstance(value, str) and len(value) <= 2 * max_bytes and bool(_HEX.match(value))


def _is_hex8(value: object) -> bool:
    return isinstance(value, str) and bool(_HEX8.match(value))


@dataclass(frozen=True)
class Submit:
    """``mining.submit`` parameters; ``version_bits`` only with BIP 310 version rolling."""

    worker: str
    job_id: str
    extranonce2: str
    ntime: str
    nonce: str
    version_bits: str | None


def parse_submit(params: list[Any]) -> Submit:
    if not 5 <= len(params) <= 6:
        raise ProtocolError("mining.submit takes 5 or 6 parameters")
    worker, job_id, extranonce2, ntime, nonce = params[:5]
    if not isinstance(worker, str) or not 0 < len(worker) <= MAX_WORKER_CHARS:
        raise ProtocolError("worker name must be a non-empty string")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_ID_CHARS:
        raise ProtocolError("job id must be a short non-empty string")
    if not _is_hex(extranonce2, MAX_EXTRANONCE_BYTES):
        raise ProtocolError("extranonce2 must be hex")
    if not _is_hex8(ntime) or not _is_hex8(nonce):
        raise ProtocolError("ntime and nonce must be 8 hex digits")
    version_bits = params[5] if len(params) == 6 else None
    if version_bits is not None and not _is_hex8(version_bits):
        raise ProtocolError("version bits must be 8 hex digits")
    return Submit(worker, job_id, extranonce2, ntime, nonce, version_bits)


def parse_difficulty(params: list[Any]) -> float:
    if not params or isinstance(params[0], bool) or not isinstance(params[0], int | float):
        raise ProtocolError("mining.set_difficulty needs a number")
    difficulty = float(params[0])
    if not math.isfinite(difficulty) or difficulty <= 0.0:
        raise ProtocolError("difficulty must be finite and positive")
    return difficulty


def parse_notify_job_id(params: list[Any]) -> str:
    """The job id of a ``mining.notify``; the other eight fields are the miner's business."""
    if len(params) < 9 or not isinstance(params[0], str) or not params[0]:
        raise ProtocolError("mining.notify needs 9 parameters starting with the job id")
    if len(params[0]) > MAX_ID_CHARS:
        raise ProtocolError("job id too long")
    return params[0]


@dataclass(frozen=True)
class Extranonce:
    """What the pool puts into the coinbase for this session and how much the miner may roll."""

    extranonce1: str
    extranonce2_size: int


def _extranonce(extranonce1: object, size: object) -> Extranonce:
    if not isinstance(extranonce1, str) or (extranonce1 and not _is_hex(extranonce1, 64)):
        raise ProtocolError("extranonce1 must be hex")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_EXTRANONCE_BYTES:
        raise ProtocolError("extranonce2 size must be an integer from 1 to 32")
    return Extranonce(extranonce1.lower(), size)


def parse_set_extranonce(params: list[Any]) -> Extranonce:
    if len(params) < 2:
        raise ProtocolError("mining.set_extranonce needs extranonce1 and extranonce2 size")
    return _extranonce(params[0], params[1])


@dataclass(frozen=True)
class Subscription:
    extranonce: Extranonce
    session_id: str | None
    """The ``mining.notify`` subscription id, which pools accept to resume a session."""


def parse_subscribe_result(result: Any) -> Subscription:
    if not isinstance(result, list) or len(result) < 3:
        raise ProtocolError("subscribe result must be [subscriptions, extranonce1, size]")
    subscriptions, extranonce1, size = result[:3]
    session_id: str | None = None
    pairs = subscriptions if isinstance(subscriptions, list) else []
    if len(pairs) == 2 and all(isinstance(item, str) for item in pairs):
        pairs = [pairs]
    for pair in pairs:
        if (isinstance(pair, list) and len(pair) == 2 and pair[0] == "mining.notify"
                and isinstance(pair[1], str) and 0 < len(pair[1]) <= MAX_ID_CHARS):
            session_id = pair[1]
    return Subscription(_extranonce(extranonce1, size), session_id)


def parse_configure_result(result: Any) -> str | None:
    """The version-rolling mask the pool granted (8 hex digits), or None when it did not."""
    if not isinstance(result, dict) or result.get("version-rolling") is not True:
        return None
    return _version_mask(result.get("version-rolling.mask"))


def parse_version_mask(params: list[Any]) -> str:
    mask = _version_mask(params[0]) if params else None
    if mask is None:
        raise ProtocolError("mining.set_version_mask needs 8 hex digits")
    return mask


def _version_mask(value: object) -> str | None:
    """A mask as the proxy re-announces it (8 lower-case hex digits), or None if malformed."""
    match = _VERSION_MASK.match(value) if isinstance(value, str) else None
    return match.group(1).lower().zfill(8) if match else None


# ---- the relay ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreditedShare:
    """A share the pool accepted, at the difficulty of its job."""

    worker: str
    difficulty: float


@dataclass
class RelayOutput:
    """What one input makes the proxy do, in order."""

    to_upstream: list[bytes] = field(default_factory=list)
    to_miner: list[bytes] = field(default_factory=list)
    credited: list[CreditedShare] = field(default_factory=list)
    rejected: int = 0
    """Shares the pool refused."""
    lost: int = 0
    """Shares whose verdict never came (pool connection down); not credited."""
    close_miner: str | None = None
    reconnect_upstream: str | None = None


@dataclass
class _Step:
    """A handshake request to replay on every new pool connection."""

    method: str
    params: list[Any]
    miner_id: JsonId
    awaiting: bool
    """The miner still waits for the answer (it has not been given one yet)."""
    notification: bool


@dataclass(frozen=True)
class _Pending:
    method: str
    miner_id: JsonId
    answer_miner: bool
    step: _Step | None = None
    """The handshake step this request replays, if it is one."""
    difficulty: float = 0.0
    worker: str = ""


class StratumRelay:
    """One miner session between the miner and its pool, as a state machine without I/O."""

    def __init__(
        self,
        max_jobs: int = MAX_JOBS_TRACKED,
        max_pending: int = MAX_PENDING_REQUESTS,
        max_workers: int = MAX_WORKERS_PER_SESSION,
    ) -> None:
        self.max_jobs = max_jobs
        self.max_pending = max_pending
        self.max_workers = max_workers
        self.upstream_up = False
        self.upstream_connections = 0
        self.authorized = False
        self.difficulty = STRATUM_DEFAULT_DIFFICULTY
        self.extranonce_subscribed = False
        self.upstream_extranonce: Extranonce | None = None
        self.miner_extranonce: Extranonce | None = None
        self.miner_version_mask: str | None = None
        self.session_id: str | None = None
        self._jobs: OrderedDict[str, float] = OrderedDict()
        self._pending: dict[int, _Pending] = {}
        self._steps: dict[str, _Step] = {}
        self._next_id = 1

    @property
    def wants_upstream(self) -> bool:
        """True once the miner has started a handshake: only then is a pool connection opened."""
        return bool(self._steps)

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    def job_difficulty(self, job_id: str) -> float | None:
        return self._jobs.get(job_id)

    # -- from the miner --

    def from_miner(self, message: Message) -> RelayOutput:
        out = RelayOutput()
        if isinstance(message, Response):
            # The miner answering a request of the pool (client.get_version and the like).
            if self.upstream_up:
                out.to_upstream.append(message.raw + b"\n")
            return out
        if message.method in HANDSHAKE_RANK:
            self._handshake_from_miner(message, out)
        elif message.method == "mining.submit":
            self._submit(message, out)
        elif not self.upstream_up:
            self._refuse(out, message.id, POOL_UNAVAILABLE)
        elif message.id is None:
            out.to_upstream.append(message.raw + b"\n")
        else:
            self._forward(out, message.method, message.params, message.id, answer_miner=True)
        return out

    def _handshake_from_miner(self, message: Request, out: RelayOutput) -> None:
        key = message.method
        if message.method == "mining.authorize":
            worker = message.params[0] if message.params else None
            if not isinstance(worker, str) or not 0 < len(worker) <= MAX_WORKER_CHARS:
                self._refuse(out, message.id, "mining.authorize needs a worker name")
                return
            key = f"mining.authorize\x00{worker}"
            workers = sum(1 for step in self._steps.values() if step.method == message.method)
            if key not in self._steps and workers >= self.max_workers:
                self._refuse(out, message.id, "too many workers on one connection")
                return
        if message.method == "mining.extranonce.subscribe":
            self.extranonce_subscribed = True
        previous = self._steps.pop(key, None)
        if previous is not None and previous.awaiting:
            self._refuse(out, previous.miner_id, "superseded by a later request")
        step = _Step(
            method=message.method,
            params=list(message.params),
            miner_id=message.id,
            awaiting=message.id is not None,
            notification=message.id is None,
        )
        self._steps[key] = step
        if self.upstream_up:
            self._send_step(step, out, replay=False)

    def _send_step(self, step: _Step, out: RelayOutput, replay: bool) -> None:
        params = step.params
        if replay and step.method == "mining.subscribe" and self.session_id is not None:
            user_agent = params[0] if params and isinstance(params[0], str) else "hashatlas-proxy"
            params = [user_agent, self.session_id]
        if step.notification:
            out.to_upstream.append(encode_request(None, step.method, params))
            return
        upstream_id = self._take_id()
        self._pending[upstream_id] = _Pending(
            method=step.method, miner_id=step.miner_id, answer_miner=step.awaiting, step=step
        )
        step.awaiting = False
        out.to_upstream.append(encode_request(upstream_id, step.method, params))

    def _submit(self, message: Request, out: RelayOutput) -> None:
        try:
            submit = parse_submit(message.params)
        except ProtocolError as exc:
            self._refuse(out, message.id, f"malformed mining.submit: {exc}")
            return
        if not self.upstream_up:
            out.lost += 1
            self._refuse(out, message.id, POOL_UNAVAILABLE)
            return
        if len(self._pending) >= self.max_pending:
            self._refuse(out, message.id, "too many requests waiting for the pool")
            return
        difficulty = self._jobs.get(submit.job_id, self.difficulty)
        upstream_id = self._take_id()
        self._pending[upstream_id] = _Pending(
            method=message.method,
            miner_id=message.id,
            answer_miner=message.id is not None,
            difficulty=difficulty,
            worker=submit.worker,
        )
        out.to_upstream.append(encode_request(upstream_id, message.method, message.params))

    def _forward(
        self, out: RelayOutput, method: str, params: list[Any], miner_id: JsonId,
        answer_miner: bool,
    ) -> None:
        if len(self._pending) >= self.max_pending:
            self._refuse(out, miner_id, "too many requests waiting for the pool")
            return
        upstream_id = self._take_id()
        self._pending[upstream_id] = _Pending(method, miner_id, answer_miner)
        out.to_upstream.append(encode_request(upstream_id, method, params))

    def _refuse(self, out: RelayOutput, miner_id: JsonId, reason: str) -> None:
        if miner_id is not None:
            out.to_miner.append(encode_response(miner_id, None, stratum_error(ERROR_OTHER, reason)))

    def _take_id(self) -> int:
        upstream_id = self._next_id
        self._next_id += 1
        return upstream_id

    # -- from the pool --

    def from_upstream(self, message: Message) -> RelayOutput:
        out = RelayOutput()
        if isinstance(message, Response):
            self._answer(message, out)
            return out
        method = message.method
        try:
            if method == "mining.set_difficulty":
                self.difficulty = parse_difficulty(message.params)
            elif method == "mining.notify":
                self._remember_job(parse_notify_job_id(message.params))
            elif method == "mining.set_extranonce":
                extranonce = parse_set_extranonce(message.params)
                self.upstream_extranonce = self.miner_extranonce = extranonce
            elif method == "mining.set_version_mask":
                self.miner_version_mask = parse_version_mask(message.params)
            elif method == "client.reconnect":
                out.reconnect_upstream = "the pool asked for a reconnect"
                return out
        except ProtocolError:
            pass  # relayed untracked: the miner judges what the pool sends
        out.to_miner.append(message.raw + b"\n")
        return out

    def _remember_job(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._jobs[job_id] = self.difficulty
        while len(self._jobs) > self.max_jobs:
            self._jobs.popitem(last=False)

    def _answer(self, response: Response, out: RelayOutput) -> None:
        if not isinstance(response.id, int) or isinstance(response.id, bool):
            return
        pending = self._pending.pop(response.id, None)
        if pending is None:
            return
        ok = response.result is True and response.error is None
        if pending.method == "mining.submit":
            if ok:
                out.credited.append(CreditedShare(pending.worker, pending.difficulty))
            else:
                out.rejected += 1
        elif pending.method == "mining.subscribe":
            self._subscribed(response, pending, out)
        elif pending.method == "mining.authorize" and ok:
            self.authorized = True
        elif pending.method == "mining.configure":
            self._configured(response, pending, out)
        if pending.answer_miner:
            out.to_miner.append(encode_response(pending.miner_id, response.result, response.error))

    def _subscribed(self, response: Response, pending: _Pending, out: RelayOutput) -> None:
        try:
            subscription = parse_subscribe_result(response.result)
        except ProtocolError:
            if not pending.answer_miner:
                out.reconnect_upstream = "the pool refused to resume the subscription"
            return
        self.upstream_extranonce = subscription.extranonce
        self.session_id = subscription.session_id or subscription.extranonce.extranonce1
        if pending.answer_miner or self.miner_extranonce is None:
            self.miner_extranonce = subscription.extranonce
            return
        if self.miner_extranonce == subscription.extranonce:
            return
        if self.extranonce_subscribed:
            extranonce = subscription.extranonce
            out.to_miner.append(encode_request(
                None, "mining.set_extranonce",
                [extranonce.extranonce1, extranonce.extranonce2_size],
            ))
            self.miner_extranonce = extranonce
        else:
            out.to_miner.append(encode_request(None, "client.reconnect", []))
            out.close_miner = "new extranonce and the miner did not subscribe to extranonce changes"

    def _configured(self, response: Response, pending: _Pending, out: RelayOutput) -> None:
        mask = parse_configure_result(response.result)
        if pending.answer_miner:
            self.miner_version_mask = mask
            return
        if mask != self.miner_version_mask and (mask or self.miner_version_mask):
            announced = mask or "00000000"
            out.to_miner.append(encode_request(None, "mining.set_version_mask", [announced]))
            self.miner_version_mask = announced

    # -- pool connection state --

    def upstream_connected(self) -> RelayOutput:
        """A new pool connection: replay the handshake (answering the miner where it waits)."""
        out = RelayOutput()
        self.upstream_up = True
        self.upstream_connections += 1
        self._reset_pool_session()
        for step in sorted(self._steps.values(), key=lambda step: HANDSHAKE_RANK[step.method]):
            self._send_step(step, out, replay=True)
        return out

    def upstream_lost(self) -> RelayOutput:
        """The pool connection is gone: waiting handshake answers wait for the next connection,
        waiting submits are answered with an error (their verdict is unknown: not credited)."""
        out = RelayOutput()
        self.upstream_up = False
        for pending in self._pending.values():
            if not pending.answer_miner:
                continue
            step = pending.step
            # Only a step still remembered (not replaced by a newer request) waits again.
            if step is not None and any(kept is step for kept in self._steps.values()):
                step.awaiting = True
                step.miner_id = pending.miner_id
                continue
            if pending.method == "mining.submit":
                out.lost += 1
            self._refuse(out, pending.miner_id, "pool connection lost")
        self._reset_pool_session()
        return out

    def _reset_pool_session(self) -> None:
        self._pending.clear()
        self._jobs.clear()
        self.difficulty = STRATUM_DEFAULT_DIFFICULTY
