"""The test session owns its service ports: a port held by another process is an error that names it,
and stopping a service this stack started stops it, pid file or not."""

from __future__ import annotations

import socket

import pytest

from pipeline.errors import ConfigurationError
from pipeline.local.stack import LocalStack, Ports, free_port, port_answers

pytestmark = pytest.mark.integration


def _listener(port: int) -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen()
    return listener


def _stack(tmp_path, **ports: int) -> LocalStack:
    return LocalStack(tmp_path / "stack", Ports(**ports), own_ports=True)


@pytest.mark.parametrize("service", ["kafka", "triton", "redis"])
def test_a_port_held_by_another_process_is_refused_by_name(tmp_path, service):
    port = free_port()
    others = {"kafka": free_port(), "triton_http": free_port(), "triton_grpc": free_port()}
    if service == "kafka":
        others["kafka"] = port
    elif service == "triton":
        others["triton_grpc"] = port
    stack = _stack(tmp_path, **others)
    start = {
        "kafka": stack.start_kafka,
        "triton": stack.start_triton,
        "redis": lambda: stack.start_redis(port),
    }[service]
    with _listener(port), pytest.raises(ConfigurationError, match=rf"127\.0\.0\.1:{port} is already taken"):
        start()


def test_without_own_ports_a_server_already_answering_is_reused_not_started(tmp_path):
    port = free_port()
    stack = LocalStack(tmp_path / "stack", Ports())
    with _listener(port):
        assert stack.start_redis(port) is False


def test_stopping_a_service_this_stack_started_stops_it_even_without_its_pid_file(tmp_path):
    port = free_port()
    stack = _stack(tmp_path)
    assert stack.start_redis(port) is True
    assert port_answers(port)
    (tmp_path / "stack" / f"redis-{port}" / "redis.pid").unlink()

    stack.stop_redis(port)

    assert not port_answers(port)
