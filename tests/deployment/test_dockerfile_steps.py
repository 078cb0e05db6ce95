"""The image's dependency layer, checked on every CI run (the container suite is opt-in).

``deployment/Dockerfile`` installs the dependencies from ``pyproject.toml`` alone, with empty
stand-ins for the sources. When pyproject started naming the web UI files as data-files, that
step failed ("can't copy 'ui/index.html'") and ``docker compose up`` could not build, unseen
for a session because only STOCKADE_CONTAINER_TESTS=1 builds the image. Here the same shell
step runs in a temp dir and the project must build there (a wheel without its dependencies; the
build backend comes from the package index, as in the image).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def _dependency_step() -> str:
    text = (ROOT / "deployment" / "Dockerfile").read_text()
    m = re.search(r"^COPY pyproject\.toml README\.md \./\nRUN (.*?)(?<!\\)\n", text, re.S | re.M)
    assert m, "the Dockerfile's dependency layer (COPY pyproject.toml README.md ./ then RUN) was not found"
    commands = [c.strip() for c in m.group(1).replace("\\\n", " ").split("&&")]
    # keep what prepares the stand-ins; the pip steps are replaced by a local wheel build below
    return " && ".join(c for c in commands if c.startswith(("mkdir", "touch")))


def test_the_dependency_layer_builds_from_pyproject_alone(tmp_path):
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    step = _dependency_step()
    assert step, "no mkdir/touch stand-ins in the dependency layer"
    subprocess.run(["bash", "-c", step], cwd=tmp_path, check=True)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "w"), "."],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
