"""/docs is served by the node: Swagger UI's files from the installed package, no CDN (app/docs.py)."""

from __future__ import annotations

import re

import pytest

from app.docs import DOCS_CSP

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("stack_kind", ["embedded"])]  # the ASGI layer only


async def test_the_docs_page_loads_nothing_from_elsewhere_and_has_a_strict_csp(node):
    c = node.client()
    page = await c.get("/docs")
    assert page.status_code == 200 and page.headers["content-security-policy"] == DOCS_CSP
    assert "<script>" not in page.text and "cdn" not in page.text.lower()  # no inline script, no CDN
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(r.startswith("/docs/assets/") for r in refs), refs
    for ref in refs:
        r = await c.get(ref)
        assert r.status_code == 200 and r.content, ref
        assert r.headers["content-security-policy"] == DOCS_CSP
    assert "SwaggerUIBundle" in (await c.get("/docs/assets/swagger-ui-bundle.js")).text
    assert (await c.get("/openapi.json")).json()["openapi"].startswith("3.")


@pytest.mark.parametrize("path", [
    "/docs/assets/index.html", "/docs/assets/redoc.standalone.js", "/docs/assets/..%2f__init__.py",
    "/docs/assets/%2e%2e/core.py", "/docs/assets/..%2F..%2Fconsts.py", "/redoc", "/docs/oauth2-redirect",
])
async def test_only_the_pages_files_are_served(node, path):
    r = await node.client().get(path)
    assert r.status_code == 404 and r.json()["code"] == "not_found", (path, r.status_code, r.text[:200])
