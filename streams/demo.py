"""``hashatlas demo``: the whole job on one machine, live, for a first look.

Starts the local stack, then the compactor, one worker, the API and the simulator as child
processes (logs under ``<state_dir>/logs``), says where to look, and stops the children on Ctrl-C.
The stack itself stays up (``hashatlas stack down`` stops it).

Every demo runs in a namespace of its own (topics, consumer group and changelogs, Redis prefix,
Faust data folder: ``hashatlas-demo-<time>``), so a second demo never restores the state of the
first nor mixes with it; the namespaces of earlier demos are deleted when a new one starts. The
simulator backfills recent history at once and then follows the wall clock, so what the API
serves is live.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from streams.kafka import client_options
from streams.settings import Settings, Topics, settings_env
from streams.stack import stack_up
from streams.topics import create_topics, list_topics

DEMO_PREFIX = "hashatlas-demo-"
NAMESPACE_LENGTH = len(DEMO_PREFIX) + len("YYYYmmdd-HHMMSS")


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs: the scenario, live from ``backfill_s`` ago, and an optional shock."""

    scenario: Path
    backfill_s: float = 3600.0
    step_s: float = 3.0
    duration_s: float | None = None
    shock_region: str | None = None


def demo_settings(settings: Settings, namespace: str) -> Settings:
    """The user's settings with this demo's own topics, consumer group and Redis prefix."""
    topics = Topics(**{name: f"{namespace}.{value}"
                       for name, value in settings.topics.model_dump().items()})
    return settings.model_copy(update={"topics": topics, "app_id": namespace,
                                       "redis_prefix": namespace})


def new_namespace(now: float) -> str:
    return DEMO_PREFIX + time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))


async def _delete_topics(settings: Settings, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def _delete_redis_keys(settings: Settings, pattern: str) -> int:
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
        return deleted
    finally:
        client.close()


def forget_earlier_demos(settings: Settings) -> str:
    """Delete earlier demos' topics, Redis keys and Faust data; says what it deleted."""
    topics = sorted(name for name in asyncio.run(list_topics(settings))
                    if name.startswith(DEMO_PREFIX))
    if topics:
        asyncio.run(_delete_topics(settings, topics))
    keys = _delete_redis_keys(settings, f"{DEMO_PREFIX}*")
    folders = sorted(settings.state_dir.glob(f"{DEMO_PREFIX}*"))
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    runs = {name[:NAMESPACE_LENGTH] for name in [*topics, *(f.name for f in folders)]}
    if not (topics or keys or folders):
        return "no earlier demo to clean up"
    return (f"cleaned up {len(runs)} earlier demo run(s): {len(topics)} topics, "
            f"{keys} Redis keys, {len(folders)} data folders")


def _spawn(name: str, args: list[str], settings: Settings) -> subprocess.Popen[bytes]:
    logs = settings.state_dir / "logs"
    log = open(logs / f"demo-{name}.log", "wb")  # noqa: SIM115 - owned by the child for its life
    return subprocess.Popen([sys.executable, "-m", "streams.cli", *args], stdout=log,
                            stderr=subprocess.STDOUT, cwd=settings.state_dir,
                            env=settings_env(settings))


def simulator_args(options: DemoOptions) -> list[str]:
    """The ``hashatlas simulate`` command line of a live demo."""
    args = ["simulate", str(options.scenario), "--live", "--backfill", str(options.backfill_s),
            "--step", str(options.step_s)]
    if options.duration_s is not None:
        args += ["--duration", str(options.duration_s)]
    if options.shock_region is not None:
        args += ["--shock", options.shock_region]
    return args


def _banner(settings: Settings, options: DemoOptions, namespace: str, cleaned: str) -> str:
    api = f"http://{settings.api_host}:{settings.api_port}"
    logs = settings.state_dir / "logs"
    shock = ("" if options.shock_region is None else
             f"\n  shock               {options.shock_region} blacked out 2 min after the "
             f"backfill: watch {api}/v1/alerts")
    return f"""
hashatlas demo is running: {options.scenario.name}, live (the last {options.backfill_s / 3600:g} h
backfilled at once, then real time).
  the map (open it)   {api}/
  run namespace       {namespace} ({cleaned})
  current estimates   {api}/v1/estimates/current
  one region          {api}/v1/regions/US
  history (CSV)       {api}/v1/estimates/history?region=US&format=csv
  live stream (SSE)   {api}/v1/stream
  API docs            {api}/docs
  metrics             {api}/metrics, compactor :{settings.metrics_port_base}, \
worker :{settings.metrics_port_base + 1}
  logs                {logs}/demo-*.log{shock}
Ctrl-C stops the demo processes; `hashatlas stack down` stops Kafka and Redis.
"""


def run_demo(settings: Settings, options: DemoOptions) -> int:
    stack_up(settings)
    cleaned = forget_earlier_demos(settings)
    namespace = new_namespace(time.time())
    demo = demo_settings(settings, namespace)
    asyncio.run(create_topics(demo))
    children = {
        "compactor": _spawn("compactor", ["compactor"], demo),
        "worker": _spawn("worker", ["worker"], demo),
        "api": _spawn("api", ["api"], demo),
        "simulator": _spawn("simulator", simulator_args(options), demo),
    }
    print(_banner(demo, options, namespace, cleaned), flush=True)
    return _supervise(children, settings.state_dir / "logs")


def _supervise(children: dict[str, subprocess.Popen[bytes]], logs: Path) -> int:
    """Wait for Ctrl-C (or a child's death), then stop every child."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None and name != "simulator":
                    print(f"{name} exited with code {child.returncode}; "
                          f"see {logs}/demo-{name}.log", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        for child in children.values():
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0
