"""One canonical form per URL, so the policy matches what will actually be fetched.

``normalize_url(raw)`` is deliberately stricter than browsers: whatever two
parsers might read differently is refused (``input.invalid``) instead of
guessed at — userinfo (``user@host``), backslashes, control characters and
whitespace (WHATWG silently strips tabs/newlines), percent-encoded hosts,
schemes other than http/https, and numeric-looking hosts that are not valid IPv4.

The canonical ``text`` (what policy globs match):

- scheme lower case; host lower case, IDNA (UTS-46) encoded, no trailing dot;
  an IP literal in any spelling becomes its canonical address
  (``http://0x7f.1`` -> ``http://127.0.0.1/``, IPv6 in brackets, compressed);
- **default ports are omitted** (``https://h:443/x`` -> ``https://h/x``), as in
  the URL standard and the CONTRACT's policy example
  ``https://api.example.com/v1/**``; any other port is kept, so a glob without
  a port never matches another service on the same host. ``port`` always holds
  the effective number;
- path: ``%XX`` of unreserved characters decoded (``%2e`` -> ``.``, ``%7E`` ->
  ``~``), other escapes upper-cased, characters outside the RFC 3986 path set
  percent-encoded (UTF-8), dot-segments removed (RFC 3986 5.2.4, never above
  the root), ``//`` collapsed, empty path -> ``/``. A segment that *decodes* to
  a traversal (``..%2Fadmin``) is refused, since some servers decode ``%2F``;
- query kept in order with the same escaping rules; empty query dropped;
  fragment dropped (it is never sent).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote

import idna

from supervisor.errors import StockadeError
from supervisor.resources.addresses import IPAddress, parse_host_ip

__all__ = ["DEFAULT_PORTS", "MAX_URL_LENGTH", "NormalizedUrl", "normalize_url"]

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 8192

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PATH_SAFE = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_QUERY_SAFE = _PATH_SAFE | frozenset("?")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LAST = re.compile(r"([0-9]+|0[xX][0-9a-fA-F]*)")


@dataclass(frozen=True)
class NormalizedUrl:
    scheme: str  # "http" | "https"
    host: str  # IDNA lower case / canonical IP (IPv6 without brackets)
    port: int  # effective port (explicit or default)
    path: str  # canonical, starts with "/"
    query: str  # without "?", "" if none
    text: str  # canonical URL string the policy matches

    @property
    def ip(self) -> IPAddress | None:
        """The address if the host is an IP literal, else None (a DNS name)."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def target(self) -> str:
        """Request target: path plus query."""
        return self.path + ("?" + self.query if self.query else "")

    @property
    def host_header(self) -> str:
        """The ``Host`` header: bracketed IPv6, port only when not the default."""
        h = f"[{self.host}]" if ":" in self.host else self.host
        return h if self.port == DEFAULT_PORTS[self.scheme] else f"{h}:{self.port}"

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def _bad(msg: str) -> StockadeError:
    return StockadeError("input.invalid", f"URL rejected: {msg}")


def _escape(part: str, safe: frozenset[str], what: str) -> str:
    """Decode unreserved escapes, upper-case the others, percent-encode what is not in ``safe``."""
    out: list[str] = []
    i, n = 0, len(part)
    while i < n:
        ch = part[i]
        if ch == "%":
            m = _PCT.match(part, i)
            if not m:
                raise _bad(f"malformed percent-escape in the {what}")
            decoded = chr(int(m.group(1), 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + m.group(1).upper())
            i += 3
            continue
        if ch in safe:
            out.append(ch)
        else:
            try:
                out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
            except UnicodeEncodeError:
                raise _bad(f"the {what} holds an unencodable character") from None
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on an absolute path, with ``//`` collapsed; ``..`` at the root stays at the root."""
    stack: list[str] = []
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "..":
            if stack:
                stack.pop()
            if last:
                stack.append("")  # "/a/.." -> "/" (trailing slash kept)
        elif seg == ".":
            if last:
                stack.append("")
        elif seg == "":
            if last:
                stack.append("")  # trailing slash
        else:
            stack.append(seg)
    return "/" + "/".join(stack)  # empty segments were skipped above: "//" collapsed


def _check_decoded_segments(path: str) -> None:
    for seg in path.split("/"):
        if "%" not in seg:
            continue
        decoded = unquote(seg, errors="replace")
        if any(sep in decoded for sep in ("/", "\\")):
            parts = re.split(r"[/\\]", decoded)
            if any(p in (".", "..") for p in parts):
                raise _bad("an encoded slash hides a '..' segment")


def _ipv6_text(ip: ipaddress.IPv6Address) -> str:
    """Compressed hex (``::ffff:7f00:1``) on every Python. From 3.13 ``ipaddress`` writes an IPv4-mapped address
    with a dotted quad (``::ffff:127.0.0.1``); the canonical text - what policies match, what the audit
    records - must not depend on the interpreter a node runs on."""
    v4 = ip.ipv4_mapped
    if v4 is None:
        return ip.compressed
    n = int(v4)
    return f"::ffff:{n >> 16:x}:{n & 0xFFFF:x}"


def _normalize_host(raw_host: str) -> str:
    if not raw_host:
        raise _bad("the host is empty")
    if raw_host.startswith("["):
        if not raw_host.endswith("]"):
            raise _bad("unterminated IPv6 literal")
        inner = raw_host[1:-1]
        ip = parse_host_ip(inner.replace("%25", "%"))
        if not isinstance(ip, ipaddress.IPv6Address):
            raise _bad("brackets must hold an IPv6 address")
        return _ipv6_text(ip)  # a zone id (``%25eth0``) is dropped: it means nothing to egress
    if "%" in raw_host:
        raise _bad("percent-encoded host names are not accepted")
    host = raw_host
    if not host.isascii():
        try:
            host = idna.uts46_remap(host, std3_rules=False, transitional=False)
        except idna.IDNAError as exc:
            raise _bad(f"host is not a valid international name ({exc})") from None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise _bad("the host is empty")
    labels = host.split(".")
    if _NUMERIC_LAST.fullmatch(labels[-1]):
        ip = parse_host_ip(host)
        if ip is None:
            raise _bad("numeric host is not a valid IPv4 address")
        return str(ip)
    out: list[str] = []
    for label in labels:
        if not label:
            raise _bad("empty label in host")
        if not label.isascii() or label.startswith("xn--"):
            try:
                label = idna.alabel(idna.ulabel(label) if label.startswith("xn--") else label).decode("ascii")
            except (idna.IDNAError, UnicodeError) as exc:
                raise _bad(f"host label {label!r} is not valid IDNA ({exc})") from None
        if not _LABEL.fullmatch(label):
            raise _bad(f"host label {label!r} has characters a DNS name cannot have")
        out.append(label)
    host = ".".join(out)
    if len(host) > 253:
        raise _bad("host name longer than 253 characters")
    return host


def normalize_url(raw: str) -> NormalizedUrl:
    """Parse and canonicalise an http(s) URL; ``StockadeError('input.invalid')`` if it is unsafe or malformed."""
    if not isinstance(raw, str):
        raise _bad("not a string")
    if len(raw) > MAX_URL_LENGTH:
        raise _bad(f"longer than {MAX_URL_LENGTH} characters")
    bad = _FORBIDDEN_CHARS.search(raw)
    if bad:
        what = "backslash" if bad.group() == "\\" else "whitespace or control character"
        raise _bad(f"contains a {what} (position {bad.start()})")
    m = _SCHEME.match(raw)
    if not m:
        raise _bad("no scheme (expected http:// or https://)")
    scheme = m.group(1).lower()
    if scheme not in DEFAULT_PORTS:
        raise _bad(f"scheme {scheme!r} is not allowed (http or https only)")
    rest = raw[m.end():]
    if not rest.startswith("//"):
        raise _bad("expected '//' after the scheme")
    rest = rest[2:]
    rest = rest.split("#", 1)[0]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        raise _bad("credentials in the URL (user@host) are not allowed; send an Authorization header")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise _bad("unterminated IPv6 literal")
        raw_host, port_part = authority[: close + 1], authority[close + 1 :]
        if port_part and not port_part.startswith(":"):
            raise _bad("garbage after the IPv6 literal")
        port_str = port_part[1:] if port_part else ""
    else:
        if authority.count(":") > 1:
            raise _bad("IPv6 addresses must be in brackets")
        raw_host, _, port_str = authority.partition(":")
    if port_str:
        if not port_str.isdigit() or len(port_str) > 5 or not 0 < int(port_str) < 65536:
            raise _bad(f"invalid port {port_str!r}")
        port = int(port_str)
    else:
        port = DEFAULT_PORTS[scheme]
    host = _normalize_host(raw_host)

    path_raw, _, query_raw = tail.partition("?")
    path = _escape(path_raw or "/", _PATH_SAFE, "path")
    _check_decoded_segments(path)
    path = _remove_dot_segments(path if path.startswith("/") else "/" + path)
    query = _escape(query_raw, _QUERY_SAFE, "query")

    host_text = f"[{host}]" if ":" in host else host
    port_text = "" if port == DEFAULT_PORTS[scheme] else f":{port}"
    text = f"{scheme}://{host_text}{port_text}{path}" + (f"?{query}" if query else "")
    return NormalizedUrl(scheme=scheme, host=host, port=port, path=path, query=query, text=text)
