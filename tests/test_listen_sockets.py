"""The sockets `stockade serve` listens on (app.server.listen_sockets): every connection accepted on them
carries the stall deadline, and what cannot be listened on is one line naming its setting."""

from __future__ import annotations

import socket

import pytest

from app.server import STALL_S, listen_sockets
from supervisor.settings import SettingsError


def test_every_accepted_connection_carries_the_stall_deadline():
    [ls] = listen_sockets("127.0.0.1", 0, stall_s=2.5)
    try:
        assert ls.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2500
        ls.setblocking(True)
        with socket.create_connection(ls.getsockname()[:2]):
            conn, _ = ls.accept()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2500
    finally:
        ls.close()
    [ls] = listen_sockets("127.0.0.1", 0)
    with ls:
        assert ls.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == int(STALL_S * 1000)


def test_a_name_with_several_addresses_gets_one_port_on_each():
    socks = listen_sockets("localhost", 0)
    try:
        assert len({s.getsockname()[1] for s in socks}) == 1
        assert len({s.family for s in socks}) == len(socks)  # one socket per family: no duplicate binds
        for s in socks:
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for s in socks:
            s.close()


def test_a_port_in_use_names_stockade_port_and_leaves_nothing_open():
    [taken] = listen_sockets("127.0.0.1", 0)
    with taken:
        port = taken.getsockname()[1]
        with pytest.raises(SettingsError, match=f"invalid setting STOCKADE_PORT: cannot listen on 127.0.0.1:{port}"):
            listen_sockets("127.0.0.1", port)


@pytest.mark.parametrize("host", ["no-such-host.invalid", "256.1.1.1", "\udcff"])
def test_a_host_that_cannot_be_listened_on_names_stockade_host(host):
    with pytest.raises(SettingsError, match="invalid setting STOCKADE_HOST"):
        listen_sockets(host, 0)
