"""Processes the local stack runs: start in a session of their own, pid files, readiness, stop.

Process ids and logs live under ``settings.state_dir`` (``run/``, ``logs/``); every step is
idempotent, so a second ``stack up`` finds what runs and leaves it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streams.settings import Settings


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


def log(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def ensure_dirs(settings: Settings) -> None:
    for sub in ("run", "logs", "data"):
        (settings.state_dir / sub).mkdir(parents=True, exist_ok=True)


def check_port_free(service: Service) -> None:
    if port_open(service.host, service.port):
        raise StackError(
            f"{service.name}: port {service.host}:{service.port} is already taken by a process "
            f"this stack did not start; stop it or set another port in the HASHATLAS_ settings"
        )


def spawn(service: Service, settings: Settings, command: list[str]) -> subprocess.Popen[bytes]:
    log = service.log_file(settings)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    service.pid_file(settings).write_text(str(proc.pid))
    return proc


def wait_ready(
    service: Service, settings: Settings, proc: subprocess.Popen[bytes], ready: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + settings.stack_start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_tail(service.log_file(settings))
            raise StackError(
                f"{service.name} exited with code {proc.returncode} during start-up; "
                f"log: {service.log_file(settings)}\n{tail}"
            )
        if ready():
            return
        time.sleep(0.25)
    raise StackError(
        f"{service.name} not ready after {settings.stack_start_timeout_s:.0f} s; "
        f"log: {service.log_file(settings)}\n{log_tail(service.log_file(settings))}"
    )


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


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
        log(f"{service.name} did not stop within {timeout:.0f} s; killing it")
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
