"""Choosing a free local TCP port for a server we are about to start."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    try:
        return int(_PORT_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port that binds now and that the kernel will not hand to an outgoing connection.

    Asking the kernel for port 0 returns one from the ephemeral range, which a client
    connection of any concurrent process may take before our server binds it (a gateway once
    failed to start that way in CI). Ports below the ephemeral range are only ever taken by an
    explicit bind, so a random one of those that binds now is still free a moment later unless
    another program chose the very same number.
    """
    low = _ephemeral_low()
    for _ in range(500):
        port = random.randint(max(1025, low - 12000), low - 1)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")
