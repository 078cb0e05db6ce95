"""One HTTP exchange, connected to an address that was already checked.

Pinning: the request URL names the checked IP (``https://93.184.216.34:443/x``)
so httpx never resolves anything; the original name travels in the ``Host``
header and, for https, in httpcore's ``sni_hostname`` request extension, which
sets both the TLS SNI and the name the certificate is verified against
(``server_hostname``). That is httpx's documented way to talk to a chosen IP
under a name, with no private transport subclass.

A fresh client per exchange: httpcore pools connections by (scheme, IP, port)
and would reuse a TLS session verified for one name for a request to another
name on the same IP. The SSL context (the expensive part) is shared.

The request goes straight to the transport, not through ``AsyncClient.send``:
the client's redirect machinery parses every ``Location`` even with
``follow_redirects=False`` (to fill ``next_request``) and raises on shapes it
dislikes (``http:127.0.0.1`` -> a bare ``InvalidURL``), losing the response.
Redirects are ``tool.py``'s job, where every hop is normalised and re-checked;
no cookie jar, auth or environment is consulted on the way either.

The body is read raw and decoded by ``_decode`` in bounded steps (never by
httpx's decoders, which inflate a whole read, or a whole stacked layer, at
once); ``egress_max_bytes`` caps both the decoded bytes and, with a little
slack, the bytes on the wire.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from functools import lru_cache

import httpx

from supervisor.errors import StockadeError
from supervisor.resources.addresses import IPAddress
from supervisor.resources.url import NormalizedUrl
from supervisor.tools.http._decode import ACCEPT_ENCODING, BodyDecoder

__all__ = ["WIRE_SLACK", "Exchange", "default_ssl_context", "exchange"]

# The cap counts decoded bytes, and the bytes on the wire too: compressing incompressible data adds well
# under 1 % (deflate's stored blocks: 5 bytes per 64 KiB), so this leaves every honest body alone.
WIRE_SLACK = 64 * 1024


@dataclass(frozen=True)
class Exchange:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    encoding: str
    decoded: bool = True  # False: a Content-Encoding we do not decode; the body is as sent


@lru_cache(maxsize=1)
def default_ssl_context() -> ssl.SSLContext:
    """certifi's CA bundle, hostname checking on; built once (it costs milliseconds)."""
    return httpx.create_ssl_context(trust_env=False)


def _too_large(url: NormalizedUrl, max_bytes: int) -> StockadeError:
    return StockadeError("egress.too_large", f"response from {url.host} exceeds {max_bytes} bytes", max_bytes=max_bytes)


def _keep(chunks: list[bytes], piece: bytes, size: int, max_bytes: int, url: NormalizedUrl) -> int:
    size += len(piece)
    if size > max_bytes:
        raise _too_large(url, max_bytes)
    if piece:
        chunks.append(piece)
    return size


def _pinned_url(url: NormalizedUrl, ip: IPAddress) -> str:
    host = f"[{ip.compressed}]" if ip.version == 6 else str(ip)
    return f"{url.scheme}://{host}:{url.port}{url.target}"


async def exchange(
    url: NormalizedUrl, addresses: list[IPAddress], *, method: str, headers: dict[str, str], body: bytes | None,
    timeout_s: float, max_bytes: int, ssl_context: ssl.SSLContext,
) -> Exchange:
    """Send one request to the first address that accepts a connection; read at most ``max_bytes`` of body."""
    extensions = {"sni_hostname": url.host} if url.scheme == "https" and url.ip is None else {}
    send_headers = {**headers, "Host": url.host_header}
    if not any(n.lower() == "accept-encoding" for n in headers):  # only codings BodyDecoder decodes
        send_headers["Accept-Encoding"] = ACCEPT_ENCODING
    timeout = httpx.Timeout(timeout_s)
    last: Exception | None = None
    for ip in addresses:
        transport = httpx.AsyncHTTPTransport(
            verify=ssl_context, trust_env=False, limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
        )
        async with httpx.AsyncClient(  # builds the request (default headers, timeout); closes the transport
            transport=transport, trust_env=False, follow_redirects=False, timeout=timeout,
        ) as client:
            request = client.build_request(
                method, _pinned_url(url, ip), headers=send_headers, content=body, extensions=extensions
            )
            try:
                response = await transport.handle_async_request(request)
                response.request = request
            except httpx.ConnectError as exc:  # nothing was sent: the next address may be tried
                last = exc
                continue
            except httpx.TimeoutException as exc:
                raise StockadeError("tool.timeout", f"{url.host}: {type(exc).__name__}") from None
            except httpx.HTTPError as exc:
                raise StockadeError("tool.failed", f"{url.host}: {type(exc).__name__}: {exc}") from None
            try:
                decoder = BodyDecoder(response.headers.get_list("content-encoding"))
                chunks: list[bytes] = []
                size = wire = 0
                async for raw in response.aiter_raw():  # decoded here, in bounded steps: the cap also bounds bombs
                    wire += len(raw)  # bytes a decoder ignores (after a gzip member's end) are read all the same
                    if wire > max_bytes + WIRE_SLACK:
                        raise _too_large(url, max_bytes)
                    for piece in decoder.feed(raw):
                        size = _keep(chunks, piece, size, max_bytes, url)
                        await asyncio.sleep(0)  # a long inflate never holds the event loop (or the deadline)
                for piece in decoder.flush():
                    size = _keep(chunks, piece, size, max_bytes, url)
            except httpx.TimeoutException as exc:
                raise StockadeError("tool.timeout", f"{url.host}: {type(exc).__name__}") from None
            except httpx.HTTPError as exc:
                raise StockadeError("tool.failed", f"{url.host}: {type(exc).__name__}: {exc}") from None
            finally:
                await response.aclose()
            return Exchange(
                status=response.status_code, headers=list(response.headers.multi_items()), body=b"".join(chunks),
                encoding=response.charset_encoding or "utf-8", decoded=decoder.decoded,
            )
    detail = f"{type(last).__name__}: {last}" if last else "no address"
    raise StockadeError("tool.failed", f"cannot connect to {url.host}:{url.port} ({detail})")
