"""The proxy's pure parts: framing, parsing, the relay state machine, accounting and privacy."""

from __future__ import annotations

import json
from typing import Any

import iptocc
import pytest

from streams.commands.proxy import parse_host_port
from streams.contracts import ShareBatchEvent, decode_input
from streams.proxy.accounting import (
    MAX_ZERO_BACKFILL_INTERVALS,
    ShareAccountant,
    account_of,
    region_of_ip,
    worker_hash,
)
from streams.proxy.protocol import (
    LineSplitter,
    LineTooLong,
    ProtocolError,
    Request,
    Response,
    StratumRelay,
    parse_configure_result,
    parse_difficulty,
    parse_message,
    parse_submit,
    parse_subscribe_result,
    parse_version_mask,
)

NOTIFY_TAIL = ["00" * 32, "01", "02", [], "20000000", "170a8bb4", "61ff6e64", True]


def line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def decoded(lines: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(item) for item in lines]


def request(message_id: Any, method: str, params: list[Any]) -> Request:
    message = parse_message(line({"id": message_id, "method": method, "params": params}))
    assert isinstance(message, Request)
    return message


def response(message_id: Any, result: Any, error: Any = None) -> Response:
    message = parse_message(line({"id": message_id, "result": result, "error": error}))
    assert isinstance(message, Response)
    return message


def notify(job_id: str) -> Request:
    return request(None, "mining.notify", [job_id, *NOTIFY_TAIL])


def submit(message_id: Any, job_id: str, worker: str = "alice.1") -> Request:
    return request(message_id, "mining.submit",
                   [worker, job_id, "00000001", "61ff6e64", "1a2b3c4d"])


# ---- framing and parsing -----------------------------------------------------------------------


def test_splitter_joins_chunks_and_strips_crlf() -> None:
    splitter = LineSplitter(64)
    assert splitter.feed(b'{"a":') == []
    assert splitter.feed(b'1}\r\n\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert splitter.pending_bytes == 4
    assert splitter.feed(b":3}\n") == [b'{"c":3}']


def test_splitter_refuses_a_long_line_even_without_newline() -> None:
    splitter = LineSplitter(16)
    assert splitter.feed(b"x" * 16) == []
    with pytest.raises(LineTooLong):
        splitter.feed(b"y")
    with pytest.raises(LineTooLong):
        LineSplitter(16).feed(b"z" * 17 + b"\n")


@pytest.mark.parametrize("garbage", [
    b"\x00\xff\xfe", b"hello", b"[1, 2, 3]", b'"text"', b'{"id": 1}', b'{"id": [1], "method": "x"}',
    b'{"id": 1, "method": 5}', b'{"id": 1, "method": "mining.submit", "params": {"a": 1}}',
    b'{"id": true, "result": true}', b'{"id": 1, "method": "a\\u0000b", "params": []}',
    b'{"id": 1, "result": NaN}',
])
def test_garbage_is_a_protocol_error(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_message(garbage)


def test_messages_are_classified() -> None:
    assert isinstance(parse_message(b'{"id": 4, "method": "mining.subscribe"}'), Request)
    note = parse_message(b'{"id": null, "method": "mining.notify", "params": [1]}')
    assert isinstance(note, Request) and note.id is None and note.params == [1]
    answer = parse_message(b'{"id": "a7", "result": true, "error": null}')
    assert isinstance(answer, Response) and answer.id == "a7" and answer.result is True


def test_submit_parameters_are_checked() -> None:
    parsed = parse_submit(["w", "j1", "0000000a", "61ff6e64", "deadbeef", "00002000"])
    assert (parsed.worker, parsed.job_id, parsed.version_bits) == ("w", "j1", "00002000")
    for bad in (["w", "j1", "0a", "61ff6e64"], ["w", "j1", "xyz0", "61ff6e64", "deadbeef"],
                ["w", "j1", "0a", "61ff6e6", "deadbeef"], ["", "j1", "0a", "61ff6e64", "deadbeef"],
                ["w", "j1", "0a", "61ff6e64", "deadbeef", "123"], [1, "j", "0a", "0" * 8, "0" * 8]):
        with pytest.raises(ProtocolError):
            parse_submit(bad)


def test_difficulty_subscription_and_configure_results() -> None:
    assert parse_difficulty([1.52587890625e-05]) == 2.0**-16
    for bad in ([], [0], [-1], [True], ["2"], [float("inf")]):
        with pytest.raises(ProtocolError):
            parse_difficulty(bad)
    subscription = parse_subscribe_result(
        [[["mining.set_difficulty", "s1"], ["mining.notify", "s2"]], "0A0B0C0D", 4])
    assert subscription.extranonce.extranonce1 == "0a0b0c0d"
    assert subscription.extranonce.extranonce2_size == 4
    assert subscription.session_id == "s2"
    assert parse_subscribe_result([["mining.notify", "ab"], "", 8]).session_id == "ab"
    with pytest.raises(ProtocolError):
        parse_subscribe_result([[], "zz", 4])
    with pytest.raises(ProtocolError):
        parse_subscribe_result([[], "00", 0])
    assert parse_configure_result({"version-rolling": True,
                                   "version-rolling.mask": "1FFFE000"}) == "1fffe000"
    assert parse_configure_result({"version-rolling": False}) is None
    assert parse_configure_result("nonsense") is None


@pytest.mark.parametrize(("written", "mask"), [
    ("1fffe000", "1fffe000"), ("0x1FFFE000", "1fffe000"), ("0X1fffe000", "1fffe000"),
    ("0x1fffe00", "01fffe00"), ("ffff", "0000ffff"),
])
def test_version_masks_are_read_as_pools_write_them(written: str, mask: str) -> None:
    """Some pools prefix the mask with 0x (npm stratum-pool-sha256) or drop leading zeros."""
    assert parse_configure_result({"version-rolling": True,
                                   "version-rolling.mask": written}) == mask
    assert parse_version_mask([written]) == mask


@pytest.mark.parametrize("written", ["", "0x", "1fffe0000", "0x1fffe0000", "zz", "0x-1", 7])
def test_malformed_version_masks_are_refused(written: object) -> None:
    assert parse_configure_result({"version-rolling": True,
                                   "version-rolling.mask": written}) is None
    with pytest.raises(ProtocolError):
        parse_version_mask([written])


# ---- the relay ---------------------------------------------------------------------------------


def handshake(relay: StratumRelay, extranonce_subscribe: bool = True) -> None:
    """A miner that subscribes and authorizes while the pool connection is up."""
    out = relay.from_miner(request(1, "mining.subscribe", ["cgminer/4.11"]))
    (sent,) = decoded(out.to_upstream)
    relay.from_upstream(response(sent["id"], [[["mining.notify", "sess1"]], "aa000001", 4]))
    if extranonce_subscribe:
        (sent,) = decoded(relay.from_miner(request(2, "mining.extranonce.subscribe", []))
                          .to_upstream)
        relay.from_upstream(response(sent["id"], True))
    (sent,) = decoded(relay.from_miner(request(3, "mining.authorize", ["alice.1", "x"]))
                      .to_upstream)
    relay.from_upstream(response(sent["id"], True))


def connected_relay(extranonce_subscribe: bool = True) -> StratumRelay:
    relay = StratumRelay()
    relay.upstream_connected()
    handshake(relay, extranonce_subscribe)
    return relay


def test_handshake_waits_for_the_pool_and_answers_under_the_miners_ids() -> None:
    relay = StratumRelay()
    assert not relay.wants_upstream
    out = relay.from_miner(request("s", "mining.subscribe", ["cgminer"]))
    assert out.to_upstream == [] and out.to_miner == []
    out = relay.from_miner(request("a", "mining.authorize", ["alice.1", "pw"]))
    assert relay.wants_upstream and out.to_upstream == []
    out = relay.upstream_connected()
    sent = decoded(out.to_upstream)
    assert [m["method"] for m in sent] == ["mining.subscribe", "mining.authorize"]
    assert sent[0]["params"] == ["cgminer"]  # first subscription: no session to resume
    assert sent[0]["id"] != sent[1]["id"]
    answer = relay.from_upstream(response(sent[0]["id"], [[], "aa000001", 4]))
    assert decoded(answer.to_miner) == [{"id": "s", "result": [[], "aa000001", 4], "error": None}]
    assert not relay.authorized
    answer = relay.from_upstream(response(sent[1]["id"], True))
    assert decoded(answer.to_miner) == [{"id": "a", "result": True, "error": None}]
    assert relay.authorized


def test_submit_verdicts_are_matched_even_when_the_miner_reuses_ids() -> None:
    relay = connected_relay()
    relay.from_upstream(request(None, "mining.set_difficulty", [0.5]))
    relay.from_upstream(notify("j1"))
    first = decoded(relay.from_miner(submit(7, "j1")).to_upstream)[0]
    second = decoded(relay.from_miner(submit(7, "j1", worker="alice.2")).to_upstream)[0]
    assert first["id"] != second["id"] and first["params"][1] == "j1"
    # The pool answers out of order: the second accepted, the first refused.
    out = relay.from_upstream(response(second["id"], True))
    assert [(s.worker, s.difficulty) for s in out.credited] == [("alice.2", 0.5)]
    assert decoded(out.to_miner) == [{"id": 7, "result": True, "error": None}]
    out = relay.from_upstream(response(first["id"], False, [23, "low difficulty", None]))
    assert out.credited == [] and out.rejected == 1
    assert decoded(out.to_miner)[0]["error"][0] == 23
    # A verdict for an id the proxy never sent credits nothing.
    assert relay.from_upstream(response(first["id"], True)).credited == []
    # result true with an error is not an acceptance.
    third = decoded(relay.from_miner(submit(8, "j1")).to_upstream)[0]
    out = relay.from_upstream(response(third["id"], True, [20, "odd", None]))
    assert out.credited == [] and out.rejected == 1


def test_share_is_credited_at_the_difficulty_of_its_job() -> None:
    relay = connected_relay()
    relay.from_upstream(request(None, "mining.set_difficulty", [1024]))
    relay.from_upstream(notify("old"))
    relay.from_upstream(request(None, "mining.set_difficulty", [4096]))
    assert relay.job_difficulty("old") == 1024.0
    old = decoded(relay.from_miner(submit(1, "old")).to_upstream)[0]
    relay.from_upstream(notify("new"))
    new = decoded(relay.from_miner(submit(2, "new")).to_upstream)[0]
    unknown = decoded(relay.from_miner(submit(3, "never-sent")).to_upstream)[0]
    credited = [relay.from_upstream(response(m["id"], True)).credited[0].difficulty
                for m in (old, new, unknown)]
    assert credited == [1024.0, 4096.0, 4096.0]


def test_malformed_submit_is_refused_locally() -> None:
    relay = connected_relay()
    out = relay.from_miner(request(9, "mining.submit", ["alice.1", "j1", "zz"]))
    assert out.to_upstream == []
    assert decoded(out.to_miner)[0]["id"] == 9 and decoded(out.to_miner)[0]["error"][0] == 20


def test_pool_messages_are_relayed_verbatim() -> None:
    relay = connected_relay()
    for message in (notify("j9"), request(None, "mining.set_difficulty", [8]),
                    request(77, "client.get_version", []),
                    request(None, "client.show_message", ["hello"])):
        assert relay.from_upstream(message).to_miner == [message.raw + b"\n"]
    # The miner's answer to the pool's own request goes back unchanged.
    answer = response(77, "cgminer/4.11")
    assert relay.from_miner(answer).to_upstream == [answer.raw + b"\n"]


def test_reconnect_replays_the_handshake_and_moves_the_miner_to_the_new_extranonce() -> None:
    relay = StratumRelay()
    relay.upstream_connected()
    out = relay.from_miner(request(0, "mining.configure", [
        ["version-rolling"], {"version-rolling.mask": "ffffffff"}]))
    (sent,) = decoded(out.to_upstream)
    relay.from_upstream(response(sent["id"], {"version-rolling": True,
                                              "version-rolling.mask": "1fffe000"}))
    handshake(relay)
    relay.from_upstream(notify("j1"))
    waiting = decoded(relay.from_miner(submit(5, "j1")).to_upstream)[0]
    assert relay.pending_requests == 1

    lost = relay.upstream_lost()
    assert lost.lost == 1
    assert decoded(lost.to_miner) == [{"id": 5, "result": None,
                                       "error": [20, "pool connection lost", None]}]
    refused = relay.from_miner(submit(6, "j1"))
    assert refused.to_upstream == [] and refused.lost == 1
    assert relay.from_upstream(response(waiting["id"], True)).credited == []

    replay = decoded(relay.upstream_connected().to_upstream)
    assert [m["method"] for m in replay] == ["mining.configure", "mining.subscribe",
                                             "mining.extranonce.subscribe", "mining.authorize"]
    assert replay[1]["params"] == ["cgminer/4.11", "sess1"]  # asks to resume the session
    assert replay[3]["params"] == ["alice.1", "x"]
    assert relay.difficulty == 1.0 and relay.job_difficulty("j1") is None
    # Answers to the replay are the proxy's own: the miner hears only what changed.
    out = relay.from_upstream(response(replay[0]["id"], {"version-rolling": True,
                                                         "version-rolling.mask": "00ffe000"}))
    assert decoded(out.to_miner) == [{"id": None, "method": "mining.set_version_mask",
                                      "params": ["00ffe000"]}]
    out = relay.from_upstream(response(replay[1]["id"], [[["mining.notify", "s9"]], "bb000002",
                                                         4]))
    assert decoded(out.to_miner) == [{"id": None, "method": "mining.set_extranonce",
                                      "params": ["bb000002", 4]}]
    assert out.close_miner is None
    for sent in replay[2:]:
        assert relay.from_upstream(response(sent["id"], True)).to_miner == []
    assert relay.session_id == "s9"


def test_resumed_session_with_the_same_extranonce_tells_the_miner_nothing() -> None:
    relay = connected_relay()
    relay.upstream_lost()
    replay = decoded(relay.upstream_connected().to_upstream)
    out = relay.from_upstream(response(replay[0]["id"], [[["mining.notify", "sess1"]],
                                                         "aa000001", 4]))
    assert out.to_miner == [] and out.close_miner is None


def test_miner_without_extranonce_subscription_is_sent_to_reconnect() -> None:
    relay = connected_relay(extranonce_subscribe=False)
    relay.upstream_lost()
    replay = decoded(relay.upstream_connected().to_upstream)
    out = relay.from_upstream(response(replay[0]["id"], [[], "cc000003", 4]))
    assert decoded(out.to_miner) == [{"id": None, "method": "client.reconnect", "params": []}]
    assert out.close_miner is not None


def test_pool_reconnect_request_is_handled_by_the_proxy() -> None:
    relay = connected_relay()
    out = relay.from_upstream(request(None, "client.reconnect", ["elsewhere", 3333, 0]))
    assert out.reconnect_upstream and out.to_miner == []


def test_handshake_answer_lost_with_the_pool_is_given_after_reconnect() -> None:
    relay = StratumRelay()
    relay.upstream_connected()
    relay.from_miner(request(1, "mining.subscribe", []))
    assert relay.upstream_lost().to_miner == []  # the miner keeps waiting, no error
    (sent,) = decoded(relay.upstream_connected().to_upstream)
    out = relay.from_upstream(response(sent["id"], [[], "dd000004", 4]))
    assert decoded(out.to_miner) == [{"id": 1, "result": [[], "dd000004", 4], "error": None}]


def test_requests_are_refused_while_the_pool_is_away() -> None:
    relay = StratumRelay()
    out = relay.from_miner(request(4, "mining.get_transactions", []))
    assert out.to_upstream == [] and decoded(out.to_miner)[0]["error"][0] == 20


def test_limits_on_workers_and_waiting_requests() -> None:
    relay = StratumRelay(max_pending=2, max_workers=2)
    relay.upstream_connected()
    for number in range(2):
        assert relay.from_miner(request(number, "mining.authorize", [f"w{number}", ""])).to_upstream
    out = relay.from_miner(request(9, "mining.authorize", ["w9", ""]))
    assert out.to_upstream == [] and decoded(out.to_miner)[0]["id"] == 9
    assert relay.from_miner(submit(10, "j")).to_upstream == []  # two authorizes still pending


# ---- accounting --------------------------------------------------------------------------------


def test_worker_hash_is_hmac_sha256() -> None:
    # RFC 4231, test case 2.
    assert worker_hash(b"Jefe", "what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert worker_hash(b"k1" * 16, "alice") != worker_hash(b"k2" * 16, "alice")


def test_region_from_public_addresses_and_zz_for_the_rest() -> None:
    lookup = iptocc.country_code
    assert region_of_ip("8.8.8.8", lookup) == "US"
    assert region_of_ip("81.2.69.160", lookup) == "GB"
    assert region_of_ip("1.1.1.1", lookup) == "AU"
    assert region_of_ip("::ffff:81.2.69.160", lookup) == "GB"
    assert region_of_ip("2001:4860:4860::8888", lookup) == "US"
    for private in ("127.0.0.1", "10.1.2.3", "192.168.0.7", "100.64.0.1", "::1", "fe80::1%eth0",
                    "not an address", ""):
        assert region_of_ip(private, lookup) == "ZZ"
    assert region_of_ip("8.8.8.8", lambda _: None) == "ZZ"
    assert region_of_ip("8.8.8.8", lambda _: "EU1") == "ZZ"


def test_batches_per_interval_and_region_carry_exact_sums() -> None:
    accountant = ShareAccountant("pool-a", 5.0, started_at=1002.0)
    accountant.credit("US", 2.0, "w1", 1003.0)
    accountant.credit("US", 4.0, "w2", 1004.9)
    accountant.credit("DE", 8.0, "w1", 1004.0)
    accountant.credit("US", 16.0, "w1", 1005.0)  # next interval
    accountant.reject("US", 1004.0, 3)
    assert accountant.flush(1004.99) == []
    batches = accountant.flush(1005.5, active_regions=["US", "KZ"])
    assert [(b["region"], b["start"], b["end"]) for b in batches] == [
        ("DE", 1002.0, 1005.0), ("KZ", 1002.0, 1005.0), ("US", 1002.0, 1005.0)]
    us = batches[2]
    assert (us["count"], us["difficulty_sum"], us["difficulty_sq_sum"]) == (2, 6.0, 20.0)
    assert (us["rejected"], us["workers"]) == (3, 2)
    assert batches[1]["count"] == 0 and batches[1]["difficulty_sum"] == 0.0
    for batch in batches:
        assert isinstance(decode_input(batch), ShareBatchEvent)
        assert "w1" not in json.dumps(batch)
    final = accountant.flush_all(1007.25)
    assert [(b["region"], b["start"], b["end"], b["count"]) for b in final] == [
        ("US", 1005.0, 1007.25, 1)]
    assert accountant.flush_all(1008.0) == []


def test_batches_report_account_concentration_without_names() -> None:
    """Two rigs of one account sum as one: A = (2 + 4)² + 8² with a second account's share;
    a worker without an account of its own is its own account; the contract accepts it."""
    accountant = ShareAccountant("p", 10.0, started_at=1000.0)
    accountant.credit("US", 2.0, "h-rig1", 1001.0, account="h-farm")
    accountant.credit("US", 4.0, "h-rig2", 1002.0, account="h-farm")
    accountant.credit("US", 8.0, "h-solo", 1003.0, account="h-solo-acct")
    accountant.credit("DE", 3.0, "h-w", 1004.0)
    de, us = accountant.flush(1010.0)
    assert (us["workers"], us["accounts"], us["account_difficulty_sq_sum"]) == (3, 2, 100.0)
    assert (de["accounts"], de["account_difficulty_sq_sum"]) == (1, 9.0)
    assert us["difficulty_sq_sum"] <= us["account_difficulty_sq_sum"] <= us["difficulty_sum"] ** 2
    for batch in (de, us):
        event = decode_input(batch)
        assert isinstance(event, ShareBatchEvent)
        assert event.account_difficulty_sq_sum == batch["account_difficulty_sq_sum"]
        assert "farm" not in json.dumps(batch) and "rig" not in json.dumps(batch)
    assert account_of("acct.rig7") == "acct" and account_of("solo") == "solo"


def test_late_stamp_joins_the_open_interval_and_zero_batches_are_bounded() -> None:
    accountant = ShareAccountant("p", 1.0, started_at=100.0)
    accountant.flush(101.0)
    accountant.credit("US", 1.0, "w", 100.5)  # clock stepped back behind the last cut
    (batch,) = accountant.flush(102.0)
    assert (batch["start"], batch["count"]) == (101.0, 1)
    zeros = accountant.flush(1000.0, active_regions=["US"])
    assert len(zeros) == MAX_ZERO_BACKFILL_INTERVALS
    assert zeros[-1]["end"] == 1000.0


def test_accountant_refuses_bad_difficulty() -> None:
    accountant = ShareAccountant("p", 1.0, started_at=1.0)
    with pytest.raises(ValueError):
        accountant.credit("US", 0.0, "w", 1.5)
    with pytest.raises(ValueError):
        ShareAccountant("p", 0.0, started_at=1.0)


def test_upstream_option_parsing() -> None:
    assert parse_host_port("pool.example:3333") == ("pool.example", 3333)
    assert parse_host_port("[2001:db8::1]:443") == ("2001:db8::1", 443)
    for bad in ("pool.example", ":3333", "pool:0", "pool:70000", "pool:x"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


def test_superseded_handshake_request_is_answered_with_an_error_when_the_pool_goes() -> None:
    relay = StratumRelay()
    relay.upstream_connected()
    relay.from_miner(request(1, "mining.subscribe", []))
    relay.from_miner(request(2, "mining.subscribe", ["again"]))
    lost = decoded(relay.upstream_lost().to_miner)
    assert [(m["id"], m["error"][0]) for m in lost] == [(1, 20)]
    (sent,) = decoded(relay.upstream_connected().to_upstream)
    assert sent["params"] == ["again"]
    out = relay.from_upstream(response(sent["id"], [[], "ee000005", 4]))
    assert decoded(out.to_miner)[0]["id"] == 2
