"""Choosing ports for servers we start: never from the kernel's ephemeral range."""

import socket

import pytest

from shared.ports import PortTaken, _ephemeral_low, choose_port, free_port


def test_free_port_is_below_the_ephemeral_range_and_binds():
    low = _ephemeral_low()
    for _ in range(50):
        port = free_port()
        assert 1025 <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_free_preferred_port_is_taken_as_it_is():
    port = free_port()
    assert choose_port(port, "GATEWAY_PORT", explicit=True) == (port, None)


def test_a_taken_default_port_is_replaced_by_a_free_one_and_said():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chosen, note = choose_port(port, "PAINPATH_BROKER_PORT", explicit=False)
    assert chosen != port
    assert note == f"port {port} (PAINPATH_BROKER_PORT) is taken: using {chosen} instead"


def test_a_taken_port_that_was_set_is_one_line_naming_the_variable():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortTaken) as error:
            choose_port(port, "COORDINATOR_PORT", explicit=True)
    assert str(error.value) == (
        f"COORDINATOR_PORT={port}: port {port} on 127.0.0.1 is taken by another program;"
        " stop it or set COORDINATOR_PORT to a free port"
    )
