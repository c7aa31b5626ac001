"""Ports for local processes (pipeline/local/stack.py)."""

from __future__ import annotations

import socket

from pipeline.local.stack import free_port, port_is_free


def test_a_port_held_by_a_listener_is_not_free_and_a_fresh_one_is():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not port_is_free(listener.getsockname()[1])
    assert port_is_free(free_port())
