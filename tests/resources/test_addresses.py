"""IP spellings and the forbidden-address table."""

from __future__ import annotations

import ipaddress
import random
import socket

import pytest

from supervisor.errors import StockadeError
from supervisor.resources.addresses import embedded_ipv4, is_forbidden, parse_host_ip, parse_networks

IP = ipaddress.ip_address


@pytest.mark.parametrize("spelling,expected", [
    ("127.0.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("127.0.1", "127.0.0.1"),
    ("0X7F.0.0.01", "127.0.0.1"), ("017700000001", "127.0.0.1"), ("0", "0.0.0.0"), ("0x", "0.0.0.0"),
    ("10.0.0.1.", "10.0.0.1"), ("169.254.43518", "169.254.169.254"), ("[::1]", "::1"),
    ("::ffff:127.0.0.1", "::ffff:7f00:1"), ("[fe80::1%eth0]", "fe80::1"), ("fe80::1%25eth0", "fe80::1"),
    ("64:ff9b::7f00:1", "64:ff9b::7f00:1"),
])
def test_parse_host_ip_spellings(spelling, expected):
    assert parse_host_ip(spelling) == IP(expected)


@pytest.mark.parametrize("name", ["example.com", "256.0.0.1", "1.2.3.4.5", "08.0.0.1", "0x1g", "", "1..2",
                                  "4294967296", "1.16777216", "[example]", "::g", "127.0.0.1 ", "١٢٧.0.0.1"])
def test_non_ips(name):
    assert parse_host_ip(name) is None


def test_agrees_with_inet_aton_on_random_spellings():
    rng = random.Random(7)
    for _ in range(2000):
        value = rng.getrandbits(32)
        nparts = rng.randint(1, 4)
        octets = list(value.to_bytes(4, "big"))
        parts = octets[: nparts - 1] + [int.from_bytes(bytes(octets[nparts - 1:]), "big")]
        spelled = []
        for p in parts:
            style = rng.choice(("dec", "oct", "hex", "HEX"))
            spelled.append(str(p) if style == "dec" else (oct(p).replace("0o", "0") if p else "0")
                           if style == "oct" else (hex(p) if style == "hex" else "0X" + format(p, "X")))
        text = ".".join(spelled)
        assert parse_host_ip(text) == ipaddress.IPv4Address(socket.inet_aton(text)), text


@pytest.mark.parametrize("addr,reason", [
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.31.0.1", "private"), ("192.168.0.1", "private"), ("fd12::1", "private"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"), ("100.64.0.1", "cgnat"), ("100.127.255.255", "cgnat"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("255.255.255.255", "broadcast"), ("240.0.0.1", "reserved"), ("192.0.2.1", "reserved"),
    ("2001:db8::1", "reserved"), ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:10.0.0.1", "private"), ("::127.0.0.1", "loopback"), ("64:ff9b::a9fe:a9fe", "metadata"),
    ("64:ff9b::7f00:1", "loopback"), ("2002:7f00:1::", "loopback"), ("2002:a00:1::", "private"),
    ("64:ff9b:1::1", "reserved"), ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo client 127.0.0.1
    ("3fff::1", "reserved"), ("5f00::1", "reserved"),  # RFC 9637 documentation, RFC 9602 SRv6: not in 3.11's table
    ("::ffff:0:7f00:1", "loopback"), ("::7f00:1", "loopback"), ("2002:a9fe:a9fe::", "metadata"),
    ("64:ff9b::a00:1", "private"), ("::ffff:0.0.0.0", "unspecified"), ("::ffff:6440:1", "cgnat"),
])
def test_forbidden_with_reason(addr, reason):
    assert is_forbidden(IP(addr)) == reason


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111",
                                  "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_are_allowed(addr):
    assert is_forbidden(IP(addr)) is None


def test_operator_allow_list_opens_only_its_networks():
    allow = parse_networks(["127.0.0.0/8", "10.1.0.0/16", "fd00:1::/32"])
    assert is_forbidden(IP("127.0.0.5"), allow) is None
    assert is_forbidden(IP("::ffff:127.0.0.5"), allow) is None  # the mapped form reaches the same host
    assert is_forbidden(IP("10.1.200.3"), allow) is None
    assert is_forbidden(IP("fd00:1::9"), allow) is None
    assert is_forbidden(IP("10.2.0.1"), allow) == "private"
    assert is_forbidden(IP("169.254.169.254"), allow) == "metadata"
    assert is_forbidden(IP("::1"), allow) == "loopback"


def test_embedded_ipv4_and_bad_allow_list():
    assert embedded_ipv4(IP("::ffff:1.2.3.4")) == IP("1.2.3.4")
    assert embedded_ipv4(IP("2002:102:304::1")) == IP("1.2.3.4")
    assert embedded_ipv4(IP("1.2.3.4")) is None
    assert embedded_ipv4(IP("2606:4700::1")) is None
    with pytest.raises(StockadeError) as ei:
        parse_networks(["not-a-cidr"])
    assert ei.value.code == "input.invalid"
