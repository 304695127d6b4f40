"""The two services of the local stack: a real single-node Kafka (KRaft) and a real Redis.

Data lives under ``settings.state_dir / "data"``; ``stack up`` also creates the pipeline's topics.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import subprocess
import uuid

from streams.settings import Settings
from streams.stack.install import DEPLOY_DIR, ensure_debian_tools, ensure_kafka
from streams.stack.process import (
    Service,
    StackError,
    check_port_free,
    ensure_dirs,
    log,
    port_open,
    running_pid,
    spawn,
    stop_service,
    wait_ready,
)
from streams.topics import create_topics, list_topics


def kafka_service(settings: Settings) -> Service:
    host, port = settings.kafka_host_port
    return Service("kafka", host, port)


def redis_service(settings: Settings) -> Service:
    host, port = settings.redis_host_port
    return Service("redis", host, port)


def start_redis(settings: Settings) -> None:
    service = redis_service(settings)
    if running_pid(service, settings) and port_open(service.host, service.port):
        log(f"redis already running on {service.host}:{service.port}")
        return
    check_port_free(service)
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server not found (apt-get install redis-server)")
    data = settings.state_dir / "data" / "redis"
    data.mkdir(parents=True, exist_ok=True)
    proc = spawn(service, settings, [
        binary, "--port", str(service.port), "--bind", service.host, "--dir", str(data),
        "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
    ])
    wait_ready(service, settings, proc, lambda: _redis_ping(service))
    log(f"redis ready on {service.host}:{service.port}")


def _redis_ping(service: Service) -> bool:
    try:
        with socket.create_connection((service.host, service.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def kafka_cluster_id() -> str:
    """A random cluster id as Kafka writes them (URL-safe base64 of 16 bytes), never starting
    with '-': the storage tool would read it as an option (1 start in 64 failed so)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def start_kafka(settings: Settings) -> None:
    service = kafka_service(settings)
    if running_pid(service, settings) and port_open(service.host, service.port):
        log(f"kafka already running on {service.host}:{service.port}")
        return
    check_port_free(service)
    controller = Service("kafka-controller", service.host, settings.kafka_controller_port)
    check_port_free(controller)
    libs = ensure_kafka(settings)
    java = shutil.which("java")
    if java is None:
        raise StackError("java not found: Kafka needs Java 17 or later")
    data = settings.state_dir / "data" / "kafka"
    config = settings.state_dir / "run" / "server.properties"
    template = (DEPLOY_DIR / "server.properties.template").read_text()
    values = {"host": service.host, "port": str(service.port),
              "controller_port": str(settings.kafka_controller_port), "data_dir": str(data)}
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", value)
    config.write_text(template)
    classpath = f"{libs}/*"
    log_opts = [f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.properties'}",
                f"-Dkafka.logs.file={service.log_file(settings)}"]
    if not (data / "meta.properties").exists():
        data.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [java, *log_opts, "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", kafka_cluster_id(), "-c", str(config)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-2000:]
            raise StackError(f"kafka storage format failed:\n{output}")
    proc = spawn(service, settings, [
        java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true", *log_opts,
        "-cp", classpath, "kafka.Kafka", str(config),
    ])
    wait_ready(service, settings, proc, lambda: kafka_answers(settings))
    log(f"kafka ready on {service.host}:{service.port}")


def kafka_answers(settings: Settings) -> bool:
    host, port = settings.kafka_host_port
    if not port_open(host, port):
        return False
    try:
        return asyncio.run(list_topics(settings)) is not None
    except Exception:
        return False


def stack_up(settings: Settings, with_prometheus: bool = False) -> None:
    ensure_dirs(settings)
    ensure_debian_tools(with_prometheus)
    start_redis(settings)
    start_kafka(settings)
    created = asyncio.run(create_topics(settings))
    log(f"topics created: {', '.join(created)}" if created else "topics already present")


def stack_down(settings: Settings) -> None:
    for service in (kafka_service(settings), redis_service(settings)):
        log(f"{service.name} stopped" if stop_service(service, settings)
             else f"{service.name} was not running")


def stack_status(settings: Settings) -> dict[str, dict[str, object]]:
    status: dict[str, dict[str, object]] = {}
    for service in (kafka_service(settings), redis_service(settings)):
        status[service.name] = {
            "pid": running_pid(service, settings),
            "address": f"{service.host}:{service.port}",
            "answering": port_open(service.host, service.port),
            "log": str(service.log_file(settings)),
        }
    return status
