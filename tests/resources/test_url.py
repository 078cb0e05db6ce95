"""normalize_url: one canonical text per URL; ambiguous or unsafe URLs refused."""

from __future__ import annotations

import pytest

from supervisor.errors import StockadeError
from supervisor.resources.url import normalize_url


@pytest.mark.parametrize("raw,text", [
    ("https://api.example.com/v1/x?q=1", "https://api.example.com/v1/x?q=1"),
    ("HTTPS://API.Example.COM:443/v1/x?q=1", "https://api.example.com/v1/x?q=1"),
    ("http://api.example.com:80", "http://api.example.com/"),
    ("http://api.example.com:8080/", "http://api.example.com:8080/"),
    ("https://api.example.com:80/", "https://api.example.com:80/"),
    ("https://api.example.com./a", "https://api.example.com/a"),
    ("https://api.example.com:/a", "https://api.example.com/a"),
    ("https://h/v1/../../../etc", "https://h/etc"),
    ("https://h/v1/%2e%2e/admin", "https://h/admin"),
    ("https://h/v1/%2E%2e/%2e/admin", "https://h/admin"),
    ("https://h/v1/.%2e/admin", "https://h/admin"),
    ("https://h//v1///x//", "https://h/v1/x/"),
    ("https://h/v1/./x/.", "https://h/v1/x/"),
    ("https://h/a/b/..", "https://h/a/"),
    ("https://h/%7euser/%41", "https://h/~user/A"),
    ("https://h/a%2fb", "https://h/a%2Fb"),
    ("https://h/ä?q=ü", "https://h/%C3%A4?q=%C3%BC"),
    ("https://h/a?b=%2e%2E&c", "https://h/a?b=..&c"),
    ("https://h/a?", "https://h/a"),
    ("https://h/a#frag", "https://h/a"),
    ("https://h?x=1", "https://h/?x=1"),
    ("https://bücher.example/", "https://xn--bcher-kva.example/"),
    ("https://XN--BCHER-KVA.example/", "https://xn--bcher-kva.example/"),
    ("https://ｅｘａｍｐｌｅ.com/", "https://example.com/"),
    ("https://example。com/", "https://example.com/"),
    ("http://2130706433/", "http://127.0.0.1/"),
    ("http://0x7f.1:8080", "http://127.0.0.1:8080/"),
    ("http://[::FFFF:127.0.0.1]/", "http://[::ffff:7f00:1]/"),  # the same text on 3.13 (which writes a dotted quad)
    ("http://[::ffff:0.0.0.0]/", "http://[::ffff:0:0]/"),
    ("http://[::ffff:0:1]/", "http://[::ffff:0:1]/"),
    ("http://[::ffff:ffff:ffff]/", "http://[::ffff:ffff:ffff]/"),
    ("http://[::127.0.0.1]/", "http://[::7f00:1]/"),
    ("http://[0:0:0:0:0:0:0:1]:80/", "http://[::1]/"),
    ("http://[fe80::1%25eth0]/", "http://[fe80::1]/"),
    ("http://１２７.０.０.１/", "http://127.0.0.1/"),
    ("http://h/a/b/../../..%2fx", None),
])
def test_canonical_text(raw, text):
    if text is None:
        with pytest.raises(StockadeError):
            normalize_url(raw)
        return
    n = normalize_url(raw)
    assert n.text == text
    assert normalize_url(n.text) == n  # idempotent


def test_fields_and_helpers():
    n = normalize_url("https://API.example.com/v1/x?q=1")
    assert (n.scheme, n.host, n.port, n.path, n.query) == ("https", "api.example.com", 443, "/v1/x", "q=1")
    assert n.target == "/v1/x?q=1" and n.host_header == "api.example.com" and n.ip is None
    n = normalize_url("http://[::1]:8080/")
    assert n.host == "::1" and n.host_header == "[::1]:8080" and str(n.ip) == "::1"


@pytest.mark.parametrize("raw", [
    "http://user@example.com/", "http://user:pw@example.com/", "http://example.com@127.0.0.1/",
    "http://example.com:80@evil.com/", "http://@example.com/",
    "ftp://example.com/", "file:///etc/passwd", "gopher://h/", "javascript:alert(1)", "//example.com/", "example.com",
    "http:/example.com", "http:example.com", "http://", "http:///x", "http://:80/",
    "http://exa mple.com/", "http://example.com/a b", "http://exa\tmple.com/", "http://example.com/\n",
    "http://example.com\x00.evil/", "http://example.com/\x7f", "http://example.com\\@evil.com/",
    "http://example.com/a\\..\\b", "http://%65xample.com/", "http://%31%32%37.0.0.1/",
    "http://example.com:0/", "http://example.com:65536/", "http://example.com:8o/", "http://example.com:-1/",
    "http://[::1/", "http://[example.com]/", "http://[1.2.3.4]/", "http://::1/", "http://[::1]x/",
    "http://256.0.0.1/", "http://1.2.3.4.5/", "http://example.123/", "http://a..b/", "http://xn--zz/",
    "http://ex\u200dample.com/", "http://example.com/%zz", "http://example.com/%",
    "http://example.com/..%2f..%2fadmin", "http://example.com/%2e%2e%5cadmin", "http://ex_ample.com-/",
    "http://" + "a" * 64 + ".com/", "http://example.com/" + "a" * 9000, 5, None,
])
def test_rejected(raw):
    with pytest.raises(StockadeError) as ei:
        normalize_url(raw)  # type: ignore[arg-type]
    assert ei.value.code == "input.invalid"
