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
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import lru_cache

import httpx

from supervisor.errors import StockadeError
from supervisor.resources.addresses import IPAddress
from supervisor.resources.url import NormalizedUrl

__all__ = ["Exchange", "default_ssl_context", "exchange"]


@dataclass(frozen=True)
class Exchange:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    encoding: str


@lru_cache(maxsize=1)
def default_ssl_context() -> ssl.SSLContext:
    """certifi's CA bundle, hostname checking on; built once (it costs milliseconds)."""
    return httpx.create_ssl_context(trust_env=False)


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
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():  # decoded: the cap also bounds gzip bombs
                    size += len(chunk)
                    if size > max_bytes:
                        raise StockadeError(
                            "egress.too_large", f"response from {url.host} exceeds {max_bytes} bytes", max_bytes=max_bytes
                        )
                    chunks.append(chunk)
            except httpx.TimeoutException as exc:
                raise StockadeError("tool.timeout", f"{url.host}: {type(exc).__name__}") from None
            except httpx.HTTPError as exc:
                raise StockadeError("tool.failed", f"{url.host}: {type(exc).__name__}: {exc}") from None
            finally:
                await response.aclose()
            return Exchange(
                status=response.status_code, headers=list(response.headers.multi_items()), body=b"".join(chunks),
                encoding=response.charset_encoding or "utf-8",
            )
    detail = f"{type(last).__name__}: {last}" if last else "no address"
    raise StockadeError("tool.failed", f"cannot connect to {url.host}:{url.port} ({detail})")
