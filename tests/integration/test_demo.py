"""`hashatlas demo` as a newcomer runs it: live estimates, twice in a row, each run clean.

The demo runs on a stack of its own here (free ports, a temporary state folder), as a user's
would on the defaults.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import stack
from streams.settings import Settings, settings_env
from streams.topics import list_topics
from tests.conftest import free_port

FRESH_WITHIN_S = 90.0
LIVE_LAG_S = 10.0
#: The shock starts 2 min after the backfill; the demo is expected to raise it within minutes.
ALERT_WITHIN_S = 600.0


@pytest.fixture()
def demo_stack(tmp_path: Path) -> Iterator[Settings]:
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_controller_port=free_port(),
        redis_url=f"redis://127.0.0.1:{free_port()}/0", api_port=free_port(),
        metrics_port_base=free_port(2), state_dir=tmp_path / "stack",
    )
    yield settings
    stack.stack_down(settings)


class Demo:
    """One ``hashatlas demo`` process and what it printed."""

    def __init__(self, settings: Settings, log: Path, *args: str) -> None:
        self.settings, self.log_path = settings, log
        self.started = time.monotonic()
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "demo", "--backfill", "600", "--step", "2",
             *args], env=settings_env(settings), stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def namespace(self) -> str:
        match = re.search(r"run namespace\s+(\S+) \((.*)\)", self.output())
        assert match, self.output()[-2000:]
        return match.group(1)

    def current(self) -> dict[str, object] | None:
        url = f"http://127.0.0.1:{self.settings.api_port}/v1/estimates/current"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return dict(json.loads(response.read()))
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def lag_s(self) -> float | None:
        snapshot = self.current()
        return None if snapshot is None else time.time() - float(str(snapshot["as_of"]))

    def wait_fresh(self, within_s: float) -> float:
        """Seconds from start until the API serves an estimate within LIVE_LAG_S of now."""
        deadline = self.started + within_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()[-3000:]
            lag = self.lag_s()
            if lag is not None and lag < LIVE_LAG_S:
                return time.monotonic() - self.started
            time.sleep(1.0)
        pytest.fail(f"no fresh estimate within {within_s:.0f} s (lag {self.lag_s()});\n"
                    + self.output()[-3000:])

    def wait_alert(self, within_s: float) -> dict[str, object]:
        """The first firing ``regional_shift`` alert (down) for the shocked region."""
        match = re.search(r"hashatlas simulate: (\S+) blacked out", self._simulator_log())
        assert match, self._simulator_log()[-2000:]
        region = match.group(1)
        deadline = self.started + within_s
        url = f"http://127.0.0.1:{self.settings.api_port}/v1/alerts"
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    alerts = json.loads(response.read())["alerts"]
            except (OSError, ValueError):
                alerts = []
            for alert in alerts:
                if (alert["region"], alert["direction"], alert["state"]) == (
                        region, "down", "firing"):
                    return dict(alert)
            time.sleep(5.0)
        pytest.fail(f"no alert for the shocked region within {within_s:.0f} s")

    def _simulator_log(self) -> str:
        path = self.settings.state_dir / "logs" / "demo-simulator.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=60)
        self._log.close()
        return code


def test_demo_is_live_and_a_second_run_starts_clean(demo_stack: Settings, tmp_path: Path) -> None:
    first = Demo(demo_stack, tmp_path / "demo1.log")
    try:
        first.wait_fresh(FRESH_WITHIN_S + 60)  # the first run also starts Kafka and Redis
        lags = []
        for _ in range(10):
            lag = first.lag_s()
            assert lag is not None
            lags.append(lag)
            time.sleep(2.0)
        assert max(lags) < LIVE_LAG_S, lags
        old = first.namespace()
    finally:
        assert first.stop() == 0

    second = Demo(demo_stack, tmp_path / "demo2.log", "--shock")
    try:
        took = second.wait_fresh(FRESH_WITHIN_S)
        assert second.namespace() != old
        assert "cleaned up 1 earlier demo run(s)" in second.output()
        names = asyncio.run(list_topics(demo_stack))
        assert not [name for name in names if name.startswith(old)]
        assert any(name.startswith(second.namespace()) for name in names)
        alert = second.wait_alert(ALERT_WITHIN_S)
        print(f"second demo fresh after {took:.1f} s; {alert['region']} {alert['direction']} "
              f"alert {time.monotonic() - second.started:.0f} s after start")
    finally:
        assert second.stop() == 0
