"""Test ports come from below the ephemeral range, where no outgoing connection can take them
between the pick and the bind."""

from __future__ import annotations

import socket

from tests.net import bindable, ephemeral_floor, free_port


def test_a_block_of_free_ports_lies_below_the_ephemeral_range_and_is_bindable() -> None:
    for _ in range(50):
        first = free_port(3)
        assert first + 2 < ephemeral_floor()
        assert all(bindable(first + offset) for offset in range(3))


def test_a_port_someone_listens_on_is_not_bindable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        assert not bindable(listener.getsockname()[1])
