"""Hostile uploads found by fuzzing POST /v1/bundles: each was a 500, an upload thread busy for hours, or
gigabytes of memory. Now each is a 4xx problem+json with a stable code that changes nothing: no version
listed, nothing left in the data folder, and the tenant's good upload afterwards still works.

(Details and the archive-level checks: tests/bundles/test_archive_fuzz_findings.py.)
"""

from __future__ import annotations

import asyncio
import gzip
import io
import struct
import tarfile
import zipfile

import pytest

from tests.e2e.test_bundles_api import MAIN, good

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("stack_kind", ["embedded"])]  # HTTP only

MANIFEST = b"name: fuzzed\nversion: '1'\ntools: []\n"


def _zip(method: int, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def central_directory_before_the_file() -> bytes:
    """The end record points 1000 bytes past the central directory: zipfile seeks to -1000 (ValueError)."""
    raw = bytearray(_zip(zipfile.ZIP_DEFLATED, {"bundle.yaml": MANIFEST, "main.py": MAIN}))
    eocd = raw.rfind(b"PK\x05\x06")
    struct.pack_into("<I", raw, eocd + 16, struct.unpack_from("<I", raw, eocd + 16)[0] + 1000)
    return bytes(raw)


def corrupt_lzma_member() -> bytes:
    raw = _zip(zipfile.ZIP_LZMA, {"bundle.yaml": MANIFEST, "main.py": MAIN * 20})
    at = raw.find(b"main.py") + len(b"main.py") + 20  # inside the compressed data
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:]


def pax_digits() -> bytes:
    """A 300-byte upload whose pax header took CPython's tarfile about an hour (CVE-2024-6232)."""
    h = tarfile.TarInfo("././@PaxHeader")
    h.type = tarfile.XHDTYPE
    h.size = 200_000
    return gzip.compress(h.tobuf(tarfile.USTAR_FORMAT) + b"1" * 200_000 + b"\0" * (-200_000 % 512))


HOSTILE = {
    "central-directory-before-file": (central_directory_before_the_file(), "application/zip", "archive.invalid"),
    "corrupt-lzma-member": (corrupt_lzma_member(), "application/zip", "archive.invalid"),
    "pax-digits": (pax_digits(), "application/gzip", "archive.invalid"),
    "many-gzip-members": (gzip.compress(b"\0") * 300_000, "application/gzip", "archive.invalid"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_fuzzed_upload_is_a_clean_refusal(node, case):
    data, ctype, code = HOSTILE[case]
    _, key = await node.tenant()
    c = node.client(key)
    before = (await c.get("/v1/bundles")).json()["data"]
    r = await asyncio.wait_for(c.post("/v1/bundles", content=data, headers={"Content-Type": ctype}), 20)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code
    assert (await c.get("/v1/bundles")).json()["data"] == before
    bundles = node.data_dir / "bundles"
    assert not any((bundles / ".staging").iterdir()), "a refused upload left files behind"
    assert not [p for p in bundles.iterdir() if p.name.startswith("ten_")]
    ok = await c.post("/v1/bundles", content=good("after-fuzz"), headers={"Content-Type": "application/gzip"})
    assert ok.status_code == 201, ok.text
