"""Builders for bundle folders and (hostile) archives."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

MANIFEST = 'name: {name}\nversion: "{version}"\ndescription: test bundle\ntools: [echo]\n'
MAIN = "async def main(ctx):\n    await ctx.answer({text!r})\n"


def write_bundle(
    folder: Path, name: str = "demo", version: str = "1", text: str = "hi", files: dict[str, str] | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bundle.yaml").write_text(MANIFEST.format(name=name, version=version))
    (folder / "main.py").write_text(MAIN.format(text=text))
    for rel, content in (files or {}).items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    return folder


def bundle_files(name: str = "demo", version: str = "1", text: str = "hi") -> dict[str, bytes]:
    return {
        "bundle.yaml": MANIFEST.format(name=name, version=version).encode(),
        "main.py": MAIN.format(text=text).encode(),
    }


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def tar_file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def tar_special(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    return info, None


def tar_of_files(files: dict[str, bytes], prefix: str = "") -> bytes:
    return tar_gz([tar_file(prefix + k, v) for k, v in files.items()])


def zip_of_files(files: dict[str, bytes], prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in files.items():
            zf.writestr(prefix + k, v)
    return buf.getvalue()
