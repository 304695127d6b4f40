"""The local stack: a real single-node Kafka (KRaft) and a real Redis, installed and run by us.

Kafka comes from Maven Central artifacts (``deploy/local/kafka-pom.xml``) fetched once into a cache
folder; Redis and Prometheus from Debian's packages. Every step is idempotent: what is installed is
not installed again, what runs is not started again. Process ids, data and logs live under
``settings.state_dir`` (``run/``, ``data/``, ``logs/``).
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streams.kafka import client_options
from streams.settings import PROJECT_ROOT, Settings

DEPLOY_DIR = PROJECT_ROOT / "deploy" / "local"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hashatlas"


class StackError(RuntimeError):
    """A stack step that failed, with what failed and where to look."""


@dataclass(frozen=True)
class Service:
    name: str
    host: str
    port: int

    def pid_file(self, settings: Settings) -> Path:
        return settings.state_dir / "run" / f"{self.name}.pid"

    def log_file(self, settings: Settings) -> Path:
        return settings.state_dir / "logs" / f"{self.name}.log"


def kafka_service(settings: Settings) -> Service:
    host, port = settings.kafka_host_port
    return Service("kafka", host, port)


def redis_service(settings: Settings) -> Service:
    host, port = settings.redis_host_port
    return Service("redis", host, port)


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def running_pid(service: Service, settings: Settings) -> int | None:
    """The pid of our own running process for this service, or None."""
    return _read_pid(service.pid_file(settings))


def _log(message: str) -> None:
    print(f"[stack] {message}", flush=True)


# ---- installation --------------------------------------------------------------------------------


def apt_install(packages: list[str]) -> None:
    """Install Debian packages that are missing (root on the machines this project runs on)."""
    if shutil.which("apt-get") is None:
        raise StackError(f"apt-get not found: install {' '.join(packages)} yourself")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _log(f"installing Debian packages: {' '.join(packages)}")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")


def ensure_debian_tools(need_prometheus: bool, need_browser: bool = False) -> None:
    missing = [] if shutil.which("redis-server") else ["redis-server"]
    if need_browser and not shutil.which("chromium"):
        missing.append("chromium")
    if need_browser and not shutil.which("chromedriver"):
        missing.append("chromium-driver")
    if need_prometheus and not shutil.which("prometheus"):
        missing.append("prometheus")
    if need_prometheus and not shutil.which("amtool"):
        missing.append("prometheus-alertmanager")
    if missing:
        apt_install(missing)


def kafka_libs(settings: Settings) -> Path:
    return CACHE_DIR / f"kafka-{settings.kafka_version}" / "libs"


def ensure_kafka(settings: Settings) -> Path:
    """Fetch the Kafka broker jars with Maven once; later calls reuse the cache.

    A file lock serialises the fetch: a demo and a test session started together share the cache.
    """
    libs = kafka_libs(settings)
    marker = libs.parent / ".complete"
    if marker.exists():
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            _fetch_kafka(settings, libs)
            marker.write_text(settings.kafka_version)
    return libs


def _fetch_kafka(settings: Settings, libs: Path) -> None:
    if shutil.which("java") is None:
        raise StackError("java not found: Kafka needs Java 17 or later (openjdk-17-jre)")
    if shutil.which("mvn") is None:
        apt_install(["maven"])
    _log(f"fetching Kafka {settings.kafka_version} from Maven Central into {libs}")
    if libs.exists():
        shutil.rmtree(libs)
    command = [
        "mvn", "-q", "-B", "-f", str(DEPLOY_DIR / "kafka-pom.xml"),
        "dependency:copy-dependencies", f"-DoutputDirectory={libs}",
        f"-Dkafka.version={settings.kafka_version}", f"-Dlog4j.version={settings.log4j_version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"Maven could not fetch Kafka:\n{(result.stdout + result.stderr)[-3000:]}")


# ---- starting and stopping -----------------------------------------------------------------------


def ensure_dirs(settings: Settings) -> None:
    for sub in ("run", "logs", "data"):
        (settings.state_dir / sub).mkdir(parents=True, exist_ok=True)


def _check_port_free(service: Service) -> None:
    if port_open(service.host, service.port):
        raise StackError(
            f"{service.name}: port {service.host}:{service.port} is already taken by a process "
            f"this stack did not start; stop it or set another port in the HASHATLAS_ settings"
        )


def _spawn(service: Service, settings: Settings, command: list[str]) -> subprocess.Popen[bytes]:
    log = service.log_file(settings)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    service.pid_file(settings).write_text(str(proc.pid))
    return proc


def _wait_ready(
    service: Service, settings: Settings, proc: subprocess.Popen[bytes], ready: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + settings.stack_start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _tail(service.log_file(settings))
            raise StackError(
                f"{service.name} exited with code {proc.returncode} during start-up; "
                f"log: {service.log_file(settings)}\n{tail}"
            )
        if ready():
            return
        time.sleep(0.25)
    raise StackError(
        f"{service.name} not ready after {settings.stack_start_timeout_s:.0f} s; "
        f"log: {service.log_file(settings)}\n{_tail(service.log_file(settings))}"
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


def start_redis(settings: Settings) -> None:
    service = redis_service(settings)
    if running_pid(service, settings) and port_open(service.host, service.port):
        _log(f"redis already running on {service.host}:{service.port}")
        return
    _check_port_free(service)
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server not found (apt-get install redis-server)")
    data = settings.state_dir / "data" / "redis"
    data.mkdir(parents=True, exist_ok=True)
    proc = _spawn(service, settings, [
        binary, "--port", str(service.port), "--bind", service.host, "--dir", str(data),
        "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
    ])
    _wait_ready(service, settings, proc, lambda: _redis_ping(service))
    _log(f"redis ready on {service.host}:{service.port}")


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
        _log(f"kafka already running on {service.host}:{service.port}")
        return
    _check_port_free(service)
    controller = Service("kafka-controller", service.host, settings.kafka_controller_port)
    _check_port_free(controller)
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
    proc = _spawn(service, settings, [
        java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true", *log_opts,
        "-cp", classpath, "kafka.Kafka", str(config),
    ])
    _wait_ready(service, settings, proc, lambda: _kafka_answers(settings))
    _log(f"kafka ready on {service.host}:{service.port}")


def _kafka_answers(settings: Settings) -> bool:
    host, port = settings.kafka_host_port
    if not port_open(host, port):
        return False
    try:
        return asyncio.run(list_topics(settings)) is not None
    except Exception:
        return False


async def list_topics(settings: Settings) -> set[str]:
    """Topic names on the broker, with the settings' SASL/TLS options (3 s timeout)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=3000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def topic_plan(settings: Settings) -> dict[str, int]:
    """Topic name → partitions for every topic the pipeline reads or writes."""
    topics, parts = settings.topics, settings.partitions
    return {
        topics.shares: parts.shares,
        topics.compacted_shares: parts.compacted_shares,
        topics.blocks: parts.blocks,
        topics.market: parts.market,
        topics.estimates: parts.estimates,
        topics.alerts: parts.alerts,
        topics.dead_letter: parts.dead_letter,
        topics.history: parts.history,
    }


def topic_config(settings: Settings, name: str) -> dict[str, str] | None:
    """Per-topic settings: history steps and alerts, which Redis is rebuilt from, are kept as
    long as history; the input topics stamp records when the broker appends them, so the bound
    on event times ahead of the clock (taken against the record's timestamp) does not depend
    on a producer's clock."""
    topics = settings.topics
    if name in (topics.history, topics.alerts):
        return {"retention.ms": str(int(settings.history_retention_s * 1000))}
    if name in (topics.shares, topics.blocks, topics.market):
        return {"message.timestamp.type": "LogAppendTime"}
    return None


async def create_topics(settings: Settings, plan: dict[str, int] | None = None) -> list[str]:
    """Create missing topics with their partition counts; existing ones are left alone."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    plan = plan or topic_plan(settings)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, partitions, 1, topic_configs=topic_config(settings, name))
                   for name, partitions in plan.items() if name not in existing]
        if missing:
            await admin.create_topics(missing)
        return [topic.name for topic in missing]
    finally:
        await admin.close()


def stop_service(service: Service, settings: Settings, timeout: float = 30.0) -> bool:
    """Stop our process for the service (SIGTERM, then SIGKILL); True if something was stopped."""
    pid = running_pid(service, settings)
    pid_file = service.pid_file(settings)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _read_pid(pid_file) is not None and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        _log(f"{service.name} did not stop within {timeout:.0f} s; killing it")
        _signal(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours is dead for our purposes.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return status != "Z"


def _signal(pid: int, signum: int) -> None:
    """Signal the process group we started (the service and any children it forked)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def stack_install(settings: Settings, with_prometheus: bool = False,
                  with_browser: bool = False) -> None:
    """Install what the stack runs (Debian's Redis, Prometheus if asked, Kafka's jars; the
    headless browser the map's tests drive, if asked) without starting anything: the tests
    start their own private instances from it."""
    ensure_debian_tools(with_prometheus, with_browser)
    ensure_kafka(settings)
    _log("installed: redis-server" + (", prometheus, amtool" if with_prometheus else "")
         + (", chromium, chromedriver" if with_browser else "")
         + f", kafka {settings.kafka_version}")


def stack_up(settings: Settings, with_prometheus: bool = False) -> None:
    ensure_dirs(settings)
    ensure_debian_tools(with_prometheus)
    start_redis(settings)
    start_kafka(settings)
    created = asyncio.run(create_topics(settings))
    _log(f"topics created: {', '.join(created)}" if created else "topics already present")


def stack_down(settings: Settings) -> None:
    for service in (kafka_service(settings), redis_service(settings)):
        _log(f"{service.name} stopped" if stop_service(service, settings)
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
