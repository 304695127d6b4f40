"""Installing what the local stack runs: Debian's Redis (and Prometheus, chromium for the map's
tests), and Kafka's broker jars from Maven Central (``deploy/local/kafka-pom.xml``), fetched once
into a cache folder shared by every clone."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from streams.allocator import jemalloc_installed
from streams.settings import PROJECT_ROOT, Settings
from streams.stack.process import StackError, log

DEPLOY_DIR = PROJECT_ROOT / "deploy" / "local"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hashatlas"


def apt_install(packages: list[str]) -> None:
    """Install Debian packages that are missing (root on the machines this project runs on)."""
    if shutil.which("apt-get") is None:
        raise StackError(f"apt-get not found: install {' '.join(packages)} yourself")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing Debian packages: {' '.join(packages)}")
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
    if not jemalloc_installed():  # wanted, not required: without it processes keep glibc's
        try:
            apt_install(["libjemalloc2"])
        except StackError as exc:
            log(f"jemalloc not installed, pipeline processes use glibc's malloc: {exc}")


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
    log(f"fetching Kafka {settings.kafka_version} from Maven Central into {libs}")
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


def stack_install(settings: Settings, with_prometheus: bool = False,
                  with_browser: bool = False) -> None:
    """Install what the stack runs (Debian's Redis, Prometheus if asked, Kafka's jars; the
    headless browser the map's tests drive, if asked) without starting anything: the tests
    start their own private instances from it."""
    ensure_debian_tools(with_prometheus, with_browser)
    ensure_kafka(settings)
    log("installed: redis-server" + (", prometheus, amtool" if with_prometheus else "")
         + (", chromium, chromedriver" if with_browser else "")
         + f", kafka {settings.kafka_version}")
