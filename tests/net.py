"""Network helpers shared by the tests and `bench/` (kept out of conftest.py, whose import
clears the user's HASHATLAS_* variables: a bench must run with the settings it is given)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
