"""``hashatlas demo``: the whole job on one machine, for a first look.

Starts the local stack, then the compactor, one worker, the API and the simulator as child
processes (logs under ``.stack/logs``), says where to look, and stops the children on Ctrl-C.
The stack itself stays up (``hashatlas stack down`` stops it).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from streams.localstack import stack_up
from streams.settings import PROJECT_ROOT, Settings


def _spawn(name: str, args: list[str], logs: Path) -> subprocess.Popen[bytes]:
    log = open(logs / f"demo-{name}.log", "ab")  # noqa: SIM115 - owned by the child for its life
    return subprocess.Popen([sys.executable, "-m", "streams.cli", *args], stdout=log,
                            stderr=subprocess.STDOUT, cwd=PROJECT_ROOT / ".stack")


def run_demo(settings: Settings, scenario: Path, speed: float, duration_s: float | None) -> int:
    stack_up(settings)
    logs = settings.state_dir / "logs"
    simulate = ["simulate", str(scenario), "--speed", str(speed)]
    if duration_s is not None:
        simulate += ["--duration", str(duration_s)]
    children = {
        "compactor": _spawn("compactor", ["compactor"], logs),
        "worker": _spawn("worker", ["worker"], logs),
        "api": _spawn("api", ["api"], logs),
        "simulator": _spawn("simulator", simulate, logs),
    }
    api = f"http://{settings.api_host}:{settings.api_port}"
    print(f"""
hashatlas demo is running ({scenario.name} at {speed:g}× real time).
  current estimates   {api}/v1/estimates/current
  one region          {api}/v1/regions/US
  history (CSV)       {api}/v1/estimates/history?region=US&format=csv
  live stream (SSE)   {api}/v1/stream
  API docs            {api}/docs
  metrics             {api}/metrics, compactor :{settings.metrics_port_base}, \
worker :{settings.metrics_port_base + 1}
  logs                {logs}/demo-*.log
Ctrl-C stops the demo processes; `hashatlas stack down` stops Kafka and Redis.
""", flush=True)
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
