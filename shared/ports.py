"""Choosing a free local TCP port for a server we are about to start."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from shared.logging import SafeMessage

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


class PortTaken(SafeMessage, RuntimeError):
    """A port named by its variable is taken: the message says which and what to do."""


def binds(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `port` now (as servers do, with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def choose_port(
    preferred: int, variable: str, explicit: bool, host: str = "127.0.0.1"
) -> tuple[int, str | None]:
    """`preferred` if it is free; else, when the port was only a default, a free one and a line
    saying so; when it was set (`explicit`), PortTaken naming the variable."""
    if binds(preferred, host):
        return preferred, None
    if explicit:
        raise PortTaken(
            f"{variable}={preferred}: port {preferred} on {host} is taken by another program;"
            f" stop it or set {variable} to a free port"
        )
    port = free_port(host)
    return port, f"port {preferred} ({variable}) is taken: using {port} instead"
