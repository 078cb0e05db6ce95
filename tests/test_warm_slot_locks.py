"""Warm-slot directories are locked by the process that uses them; a sweep removes only those whose holder
died (the kernel drops a flock with its process, however it dies)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from supervisor.runs.sandboxing import make_run_dirs, sweep_dead_slots

pytestmark = pytest.mark.timeout(30)


def _make_and_die(data_dir: str, name: str) -> None:
    dirs = make_run_dirs(SimpleNamespace(data_dir=Path(data_dir)), name, None, None, held=True)
    (dirs.work / "tenant-file").write_text("left behind")
    os._exit(0)  # no cleanup: as SIGKILL leaves it


def test_only_a_dead_holders_directory_is_swept(tmp_path: Path) -> None:
    settings = SimpleNamespace(data_dir=tmp_path)
    mine = make_run_dirs(settings, "_warm_live", None, None, held=True)
    # spawn, not fork: a fork of this multi-threaded process may deadlock (3.12+ warns; 3.14 no longer forks by
    # default); the child holds no descriptor of ours either way
    proc = multiprocessing.get_context("spawn").Process(target=_make_and_die, args=(str(tmp_path), "_warm_dead"))
    proc.start()
    proc.join(10)
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["_warm_dead", "_warm_dead.lock", "_warm_live", "_warm_live.lock"]
    assert sweep_dead_slots(tmp_path) == 1
    assert sorted(p.name for p in runs.iterdir()) == ["_warm_live", "_warm_live.lock"]  # ours is held: kept
    assert sweep_dead_slots(tmp_path) == 0
    mine.remove()
    mine.remove()  # twice is harmless (the descriptor is closed once)
    assert list(runs.iterdir()) == []


def test_a_cold_runs_directory_has_no_lock(tmp_path: Path) -> None:
    dirs = make_run_dirs(SimpleNamespace(data_dir=tmp_path), "run_x", None, None)
    assert dirs.held is None and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run_x"]
    assert sweep_dead_slots(tmp_path) == 0 and dirs.root.exists()
    dirs.remove()
