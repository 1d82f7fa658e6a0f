"""Choosing ports for servers we start: never from the kernel's ephemeral range."""

import socket

from shared.ports import _ephemeral_low, free_port


def test_free_port_is_below_the_ephemeral_range_and_binds():
    low = _ephemeral_low()
    for _ in range(50):
        port = free_port()
        assert 1025 <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
