"""Network helpers shared by the tests and `bench/` (kept out of conftest.py, whose import
clears the user's HASHATLAS_* variables: a bench must run with the settings it is given)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Ports are picked below the kernel's ephemeral range, which it hands to outgoing connections:
# a port taken from that range (by binding port 0) could be given to a Kafka client's connection
# before the process meant to listen on it had started. That happened once to the demo test's
# worker (metrics on base + 1, "Address already in use", CI of 2026-12-07).
LOWEST_PORT = 10_000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_floor() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(count: int = 1) -> int:
    """The first of ``count`` consecutive TCP ports on 127.0.0.1 that nothing holds right now,
    below the ephemeral range (so no outgoing connection takes one before it is used)."""
    highest = ephemeral_floor() - count
    for _ in range(1_000):
        first = random.randint(LOWEST_PORT, highest)
        if all(bindable(first + offset) for offset in range(count)):
            return first
    raise RuntimeError(f"no {count} free consecutive ports in {LOWEST_PORT}–{highest + count - 1}")
