"""Security: Redis behind ACL users and passwords, secrets kept out of logs and problem bodies,
a read-only API with CORS closed by default, and Kafka SASL/TLS options.

Redis runs privately here with the ``default`` user disabled: a pipeline user that may write
and an API user limited to reading the deployment's keys and channel (least privilege: the API
never writes). The pipeline is the real worker process; nothing is mocked.
"""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from pydantic import SecretStr

from api.deps import create_redis
from api.main import create_app
from streams.kafka import client_options
from streams.rediskeys import RedisKeys
from streams.settings import Settings
from streams.stack import port_open
from tests.conftest import free_port
from tests.integration.conftest import produce
from tests.integration.pipeline_helpers import Worker, wait_for_snapshot

PIPELINE_PASSWORD = f"pipe-{uuid.uuid4().hex}"
API_PASSWORD = f"api-{uuid.uuid4().hex}"
WRONG_PASSWORD = f"wrong-{uuid.uuid4().hex}"
SECRETS = (PIPELINE_PASSWORD, API_PASSWORD, WRONG_PASSWORD)


@dataclass(frozen=True)
class AclRedis:
    port: int
    prefix: str

    def url(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"


@pytest.fixture()
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    """A private redis-server: no default user, a pipeline user, a read-only API user."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    port, prefix = free_port(), f"hs{uuid.uuid4().hex[:8]}"
    config = tmp_path / "redis.conf"
    config.write_text("\n".join([
        f"port {port}", "bind 127.0.0.1", f"dir {tmp_path}", 'save ""', "appendonly no",
        "user default off",
        f"user pipeline on >{PIPELINE_PASSWORD} ~* &* +@all",
        f"user api on >{API_PASSWORD} resetkeys ~{prefix}:* resetchannels &{prefix}:* "
        "-@all +@read +@connection +subscribe +unsubscribe",
        f"user nobody on >{API_PASSWORD} resetkeys resetchannels -@all +@connection",
        f"user keyless on >{API_PASSWORD} resetkeys resetchannels -@all +@read +@connection "
        "+subscribe +unsubscribe",
    ]) + "\n")
    proc = subprocess.Popen([binary, str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield AclRedis(port, prefix)
    proc.terminate()
    proc.wait(timeout=10)


async def api_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a password appears in {where}"


# ---- Redis with ACL users -------------------------------------------------------------------


def test_the_acl_is_in_force(acl_redis: AclRedis) -> None:
    """Without this the tests below would prove nothing: the default user is off, the API user
    cannot write, and a wrong password is refused."""
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis.port).ping()
    api = redis.Redis.from_url(acl_redis.url("api", API_PASSWORD))
    with pytest.raises(redis.exceptions.NoPermissionError):
        api.set(f"{acl_redis.prefix}:snapshot", b"x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        api.get("other-deployment:snapshot")
    api.close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(acl_redis.url("api", WRONG_PASSWORD)).ping()


async def test_pipeline_and_api_work_with_credentials(
    acl_redis: AclRedis, isolated_settings: Settings, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = isolated_settings.model_copy(update={
        "redis_url": acl_redis.url("pipeline", PIPELINE_PASSWORD),
        "redis_prefix": acl_redis.prefix,
    })
    batch = {"type": "share_batch", "pool": "foundry-usa", "region": "US-TX",
             "start": 1_795_000_000.0, "end": 1_795_000_009.0, "count": 40,
             "difficulty_sum": 40 * 65536.0, "difficulty_sq_sum": 40 * 65536.0**2}
    await produce(settings, settings.topics.compacted_shares, [batch], key=b"foundry-usa")
    worker = Worker(settings, tmp_path / "w", "w1")
    try:
        stored = await wait_for_snapshot(settings, lambda s: bool(s["regions"]), 90, [worker])
    finally:
        worker.stop()
    assert [r["region"] for r in stored["regions"] if r["observed"]] == ["US"]
    assert_no_secret(worker.log_path.read_text(errors="replace"), "the worker's log")

    # The API reads it as the read-only user.
    reader = settings.model_copy(update={"redis_url": acl_redis.url("api", API_PASSWORD)})
    async for api in api_client(create_app(reader)):
        current = await api.get("/v1/estimates/current")
        assert current.status_code == 200, current.text
        assert current.json()["regions"][0]["region"] == "US"
        assert (await api.get("/v1/regions/US")).status_code == 200
        assert (await api.get("/readyz")).status_code in (200, 503)  # 503 only if stale
    # The event stream's client (its own pool) may SUBSCRIBE to the deployment's channel.
    streams_client = create_redis(reader, for_streams=True)
    pubsub = streams_client.pubsub()
    try:
        await pubsub.subscribe(RedisKeys(acl_redis.prefix).events_channel)
        assert (await pubsub.get_message(timeout=2.0) or {}).get("type") == "subscribe"
    finally:
        await pubsub.aclose()
        await streams_client.aclose()
    assert_no_secret(caplog.text, "the test process's logs")


@pytest.mark.parametrize("user, password", [("api", WRONG_PASSWORD), ("nobody-such", API_PASSWORD)])
async def test_wrong_credentials_are_503_without_the_secret(
    acl_redis: AclRedis, user: str, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings(redis_url=acl_redis.url(user, password), redis_prefix=acl_redis.prefix)
    async for api in api_client(create_app(settings)):
        for path in ("/v1/estimates/current", "/v1/regions/US", "/v1/estimates/history",
                     "/v1/network/blocks", "/v1/alerts", "/readyz", "/v1/stream"):
            response = await api.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert_no_secret(response.text, f"the problem body of {path}")
            assert int(response.headers["retry-after"]) > 0
        assert (await api.get("/healthz")).status_code == 200
        metrics = await api.get("/metrics")
        assert "hashatlas_api_redis_up 0.0" in metrics.text
        assert_no_secret(metrics.text, "/metrics")
    assert_no_secret(caplog.text, "the logs")


@pytest.mark.parametrize("user", ["nobody", "keyless"])
async def test_a_user_without_permissions_is_503_without_the_secret(
    acl_redis: AclRedis, user: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Authenticated but not allowed to read (a misconfigured ACL): no command at all
    (``nobody``) or read commands without the keys and channel (``keyless``). Redis answers
    NOPERM; the API answers 503 problems (once a 500), and /metrics still answers."""
    with pytest.raises(redis.exceptions.NoPermissionError):  # what the API meets
        redis.Redis.from_url(acl_redis.url(user, API_PASSWORD)).hget(
            f"{acl_redis.prefix}:snapshot", "json")
    caplog.set_level(logging.DEBUG)
    settings = Settings(redis_url=acl_redis.url(user, API_PASSWORD),
                        redis_prefix=acl_redis.prefix)
    async for api in api_client(create_app(settings)):
        for path in ("/v1/estimates/current", "/v1/regions/US", "/v1/estimates/history",
                     "/v1/network/blocks", "/v1/alerts", "/readyz", "/v1/stream"):
            response = await api.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert (problem["status"], problem["type"]) == (
                503, "urn:hashatlas:problem:redis-unavailable")
            assert "ACL" in problem["detail"]
            assert int(response.headers["retry-after"]) > 0
            assert_no_secret(response.text, f"the problem body of {path}")
        metrics = await api.get("/metrics")
        assert metrics.status_code == 200
        assert "hashatlas_api_redis_up 0.0" in metrics.text
    assert_no_secret(caplog.text, "the logs")


async def test_the_pipeline_client_refuses_a_wrong_password(acl_redis: AclRedis) -> None:
    """The client the worker builds (``Redis.from_url(settings.redis_url)``) authenticates
    from the URL; a wrong password fails loudly instead of writing nowhere."""
    good = aioredis.Redis.from_url(acl_redis.url("pipeline", PIPELINE_PASSWORD))
    bad = aioredis.Redis.from_url(acl_redis.url("pipeline", WRONG_PASSWORD))
    try:
        async with good.pipeline(transaction=True) as pipe:  # MULTI/EXEC as the publisher
            pipe.hset(f"{acl_redis.prefix}:snapshot", mapping={"json": b"{}", "etag": "e"})
            pipe.publish(f"{acl_redis.prefix}:events", b"{}")
            await pipe.execute()
        assert await good.hget(f"{acl_redis.prefix}:snapshot", "etag") == b"e"
        with pytest.raises(redis.AuthenticationError) as refused:
            await bad.set(f"{acl_redis.prefix}:x", b"1")
        assert_no_secret(str(refused.value), "the exception")
    finally:
        await good.aclose()
        await bad.aclose()


def test_settings_repr_hides_the_redis_password() -> None:
    settings = Settings(redis_url=f"redis://pipeline:{PIPELINE_PASSWORD}@10.0.0.5:6379/0",
                        kafka_sasl_password=SecretStr(API_PASSWORD))
    assert API_PASSWORD not in repr(settings)  # the SecretStr part holds
    assert PIPELINE_PASSWORD not in repr(settings)


# ---- the HTTP surface -------------------------------------------------------------------------


@pytest.fixture()
async def api(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for client in api_client(create_app(Settings(redis_url=redis_url))):
        yield client


def concrete(path: str) -> str:
    return path.replace("{region}", "US")


async def test_the_api_has_no_write_endpoint(api: httpx.AsyncClient) -> None:
    spec: dict[str, Any] = (await api.get("/openapi.json")).json()
    methods = {method for operations in spec["paths"].values() for method in operations}
    assert methods == {"get"}, methods
    for path in spec["paths"]:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            response = await api.request(method, concrete(path))
            assert response.status_code == 405, (method, path, response.status_code)
            assert response.headers["content-type"] == "application/problem+json"
    # Routes the schema does not show (docs, /openapi.json) included.
    routes = create_app(Settings()).routes
    methods_served = {m for route in routes for m in getattr(route, "methods", None) or ()}
    assert methods_served <= {"GET", "HEAD"}, methods_served


async def test_cors_is_closed_by_default_even_to_a_preflight(api: httpx.AsyncClient) -> None:
    origin = "https://evil.example"
    for path in ("/v1/estimates/current", "/v1/regions/US", "/healthz"):
        simple = await api.get(path, headers={"Origin": origin})
        assert "access-control-allow-origin" not in simple.headers
        preflight = await api.options(path, headers={
            "Origin": origin, "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in preflight.headers
        assert preflight.status_code == 405


async def test_configured_cors_allows_only_get_from_listed_origins(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, cors_origins=["https://dashboard.example"])
    async for client in api_client(create_app(settings)):
        allowed = await client.options("/v1/estimates/current", headers={
            "Origin": "https://dashboard.example", "Access-Control-Request-Method": "GET"})
        assert allowed.headers["access-control-allow-origin"] == "https://dashboard.example"
        for method in ("POST", "DELETE", "PUT"):
            refused = await client.options("/v1/estimates/current", headers={
                "Origin": "https://dashboard.example", "Access-Control-Request-Method": method})
            assert refused.status_code == 400, method
        stranger = await client.options("/v1/estimates/current", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in stranger.headers


# ---- Kafka SASL / TLS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed CA certificate made with openssl (what an operator would point at)."""
    folder = tmp_path_factory.mktemp("ca")
    openssl = shutil.which("openssl")
    assert openssl, "openssl is not installed"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=hashatlas-test-ca", "-keyout", str(folder / "ca.key"),
                    "-out", str(folder / "ca.pem")], check=True, capture_output=True)
    return folder / "ca.pem"


def test_plaintext_kafka_options_are_just_the_bootstrap() -> None:
    assert client_options(Settings(kafka_bootstrap="k1:9092,k2:9092")) == {
        "bootstrap_servers": "k1:9092,k2:9092"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_options(mechanism: str) -> None:
    settings = Settings(kafka_bootstrap="k:9094", kafka_security_protocol="SASL_PLAINTEXT",
                        kafka_sasl_mechanism=mechanism, kafka_sasl_username="feed",
                        kafka_sasl_password=SecretStr(PIPELINE_PASSWORD))
    assert client_options(settings) == {
        "bootstrap_servers": "k:9094", "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism, "sasl_plain_username": "feed",
        "sasl_plain_password": PIPELINE_PASSWORD,
    }


def test_sasl_ssl_options_trust_the_configured_ca(ca_file: Path) -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="feed",
                        kafka_sasl_password=SecretStr(PIPELINE_PASSWORD),
                        kafka_ssl_cafile=str(ca_file))
    options = client_options(settings)
    context = options.pop("ssl_context")
    assert options == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "SASL_SSL",
                       "sasl_mechanism": "PLAIN", "sasl_plain_username": "feed",
                       "sasl_plain_password": PIPELINE_PASSWORD}
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "hashatlas-test-ca"),),)]


def test_ssl_without_sasl_sends_no_credentials(ca_file: Path) -> None:
    options = client_options(Settings(kafka_security_protocol="SSL",
                                      kafka_ssl_cafile=str(ca_file)))
    assert set(options) == {"bootstrap_servers", "security_protocol", "ssl_context"}


def test_an_unknown_security_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="kafka_security_protocol"):
        Settings(kafka_security_protocol="SASL_PLAIN")


# ---- a real SASL/PLAIN broker -------------------------------------------------------------------

SASL_USER = "hashatlas"
SASL_PASSWORD = f"kafka-{uuid.uuid4().hex}"
BROKER_SECRET = f"broker-{uuid.uuid4().hex}"

# A single KRaft node whose client listener requires SASL/PLAIN (the controller listener stays
# internal); users are declared in the JAAS line: the broker itself and the pipeline's user.
SASL_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required \
username="broker" password="{broker_secret}" \
user_broker="{broker_secret}" user_{user}="{password}";
log.dirs={data_dir}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


@pytest.fixture()
async def sasl_kafka(tmp_path: Path, redis_url: str) -> AsyncIterator[Settings]:
    """A private Kafka broker that accepts only SASL/PLAIN clients."""
    import asyncio
    import os

    from streams import stack, topics

    port, controller_port = free_port(), free_port()
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{port}", kafka_controller_port=controller_port,
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=SASL_USER, kafka_sasl_password=SecretStr(SASL_PASSWORD),
        redis_url=redis_url, state_dir=tmp_path, app_id=f"hashatlas-sasl-{run}",
        compact_interval_s=0.2,
    )
    libs = stack.ensure_kafka(settings)
    java = shutil.which("java")
    assert java, "java is not installed"
    config = tmp_path / "server.properties"
    config.write_text(SASL_SERVER_PROPERTIES.format(
        port=port, controller_port=controller_port, data_dir=tmp_path / "data",
        broker_secret=BROKER_SECRET, user=SASL_USER, password=SASL_PASSWORD))
    log_opts = [f"-Dlog4j2.configurationFile={stack.DEPLOY_DIR / 'log4j2.properties'}",
                f"-Dkafka.logs.file={tmp_path / 'kafka.log'}"]
    cluster_id = stack.kafka_cluster_id()
    subprocess.run([java, *log_opts, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
                    "-t", cluster_id, "-c", str(config)], check=True, capture_output=True)
    proc = subprocess.Popen([java, "-Xms128m", "-Xmx512m", *log_opts, "-cp", f"{libs}/*",
                             "kafka.Kafka", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "kafka.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "SASL broker not ready in 90 s"
            try:
                await topics.list_topics(settings)
                break
            except Exception:
                await asyncio.sleep(0.5)
        yield settings
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


async def test_compactor_runs_on_a_sasl_broker_and_wrong_credentials_are_refused(
    sasl_kafka: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    from streams import stack, topics
    from streams.pipeline.compactor import ShareCompactor

    # INFO, as the processes log. (At DEBUG, aiokafka.conn logs the SASL/PLAIN request bytes,
    # password included: never run a Kafka client with DEBUG logging in production.)
    caplog.set_level(logging.INFO)
    settings = sasl_kafka
    # The stack's own admin clients (`hashatlas stack topics`, the readiness check) use the
    # SASL settings too.
    plan = {settings.topics.shares: 2, settings.topics.compacted_shares: 2,
            settings.topics.dead_letter: 1}
    assert sorted(await topics.create_topics(settings, plan)) == sorted(plan)
    assert set(plan) <= await topics.list_topics(settings)
    assert await topics.create_topics(settings, plan) == []
    assert await asyncio.to_thread(stack.kafka_answers, settings)

    shares = [{"type": "share", "ts": 1_795_000_000.0 + i * 0.1, "pool": "foundry-usa",
               "region": "US-TX", "difficulty": 65536.0} for i in range(500)]
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        for share in shares:
            await producer.send(settings.topics.shares, orjson.dumps(share), key=b"foundry-usa")
        await producer.flush()
    finally:
        await producer.stop()
    await ShareCompactor(settings, instance="sasl").run(max_idle_s=2.0)  # transactional, SASL

    consumer = AIOKafkaConsumer(settings.topics.compacted_shares, **client_options(settings),
                                auto_offset_reset="earliest", isolation_level="read_committed",
                                group_id=f"{settings.app_id}-check")
    await consumer.start()
    counted = 0
    try:
        deadline = time.monotonic() + 30
        while counted < len(shares) and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                counted += sum(orjson.loads(m.value)["count"] for m in messages)
    finally:
        await consumer.stop()
    assert counted == len(shares)

    wrong = settings.model_copy(update={"kafka_sasl_password": SecretStr(WRONG_PASSWORD)})
    refused = AIOKafkaProducer(**client_options(wrong), request_timeout_ms=5000)
    with pytest.raises(KafkaConnectionError) as failure:  # "Unable to bootstrap from ..."
        await asyncio.wait_for(refused.start(), 20)
    await refused.stop()
    assert "SaslAuthenticationFailed" in caplog.text  # the reason is only in the client's log
    for text, where in ((repr(failure.value), "the error"), (caplog.text, "the logs")):
        assert SASL_PASSWORD not in text and WRONG_PASSWORD not in text, where


async def test_a_worker_runs_on_a_sasl_broker(sasl_kafka: Settings, tmp_path: Path) -> None:
    """The Faust worker joins a cluster that accepts only SASL clients, with the same settings
    as every other client, and publishes the estimate of what it reads there."""
    from aiokafka import AIOKafkaProducer

    from streams import topics
    from tests.integration.pipeline_helpers import (
        assert_matches_core,
        core_regional_sample,
        offsets_reached,
        share_batches,
    )

    settings = sasl_kafka.model_copy(update={"redis_prefix": f"sasl-{uuid.uuid4().hex[:8]}"})
    await topics.create_topics(settings)
    events = share_batches(300, 1_795_000_000.0, 300.0, seed=5)
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        sent = [await producer.send(settings.topics.compacted_shares, orjson.dumps(event),
                                    key=event["pool"].encode()) for event in events]
        ends: dict[int, int] = {}
        for metadata in [await future for future in sent]:
            ends[metadata.partition] = max(ends.get(metadata.partition, 0), metadata.offset + 1)
    finally:
        await producer.stop()
    worker = Worker(settings, tmp_path / "worker", "worker")
    try:
        as_of = max(e["end"] for e in events) - settings.settle_s
        snapshot = await wait_for_snapshot(settings, offsets_reached(ends, as_of), 120, [worker])
    finally:
        worker.stop()
    assert_matches_core(snapshot, core_regional_sample(events, settings, as_of))
    assert SASL_PASSWORD not in worker.log_path.read_text(errors="replace")
