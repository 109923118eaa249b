"""The workers' connections to Redis, on the real Redis: each one notices a peer that vanished silently."""

from __future__ import annotations

import socket

import pytest

from core.config import get_settings
from workers.celery_app import create_app


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="Linux's keepalive options")
def test_broker_connections_probe_a_silent_peer_within_two_minutes_and_result_connections_keep_alive(
    redis_prefix,
):
    app = create_app(get_settings(), set_as_current=False)
    try:
        with app.connection_for_read() as connection:
            broker_socket = _socket_of(connection.default_channel.client)
            assert broker_socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            idle = broker_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            interval = broker_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
            probes = broker_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
            assert idle + interval * probes <= 120
        assert _socket_of(app.backend.client).getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    finally:
        app.close()


def _socket_of(client) -> socket.socket:
    """The socket of a connection the client's pool opened and keeps."""
    connection = client.connection_pool.get_connection()
    try:
        connection.send_command("PING")
        assert connection.read_response() in (b"PONG", "PONG", True)
        return connection._sock
    finally:
        client.connection_pool.release(connection)
