"""STOCKADE_WORKER_ID is checked when the settings are read (supervisor/settings.py).

The id names the worker in the run queue, in ``runs.worker_id``, in its Redis claim (stores/redis/worker_ids.py)
and in log lines. One not valid UTF-8 (a mis-encoded env file: the bytes arrive as lone surrogates) passed the
settings and broke the worker's start with a UnicodeEncodeError traceback from the Redis client, and on the
embedded stack every run it started; a control character or a 10 kB id was accepted as well.
"""

from __future__ import annotations

import os

import pytest

from supervisor.settings import SettingsError, load_settings
from tests import test_settings as _settings_tests

clean_env = _settings_tests.clean_env  # the fixture: no STOCKADE_ variable from outside

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("value", [
    "   ",  # blank: no name in any log line
    "worker-1\nERROR fake log line",
    "worker-1\x1b[31m",
    "worker\t1",
    "worker-1\u202e",  # a bidi override: the log line reads otherwise than it is
    "x" * 10_000,
])
def test_a_bad_worker_id_is_refused_in_one_line(clean_env, value):
    clean_env.setenv("STOCKADE_WORKER_ID", value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    msg = str(exc.value)
    assert msg.startswith("invalid setting STOCKADE_WORKER_ID: ") and "\n" not in msg
    assert len(msg) < 300  # the value is not echoed
    clean_env.delenv("STOCKADE_WORKER_ID")
    with pytest.raises(SettingsError, match="STOCKADE_WORKER_ID"):
        load_settings(worker_id=value)


def test_a_worker_id_not_valid_utf8_is_refused(clean_env):
    os.environb[b"STOCKADE_WORKER_ID"] = b"w\xf6rker-1"  # Latin-1, not UTF-8
    try:
        with pytest.raises(SettingsError) as exc:
            load_settings()
        assert str(exc.value).startswith("invalid setting STOCKADE_WORKER_ID: ")
    finally:
        del os.environb[b"STOCKADE_WORKER_ID"]


@pytest.mark.parametrize("value", ["worker-1", "worker-1~2", "box.example.com:4242", "wörker 1",
                                   "stockade-worker-7d9f8b6c5-x2x9z", "w" * 253])
def test_ordinary_worker_ids_are_accepted(clean_env, value):
    clean_env.setenv("STOCKADE_WORKER_ID", value)
    assert load_settings().worker_id == value


def test_unset_or_empty_is_hostname_pid(clean_env):
    assert load_settings().worker_id is None
    clean_env.setenv("STOCKADE_WORKER_ID", "")  # compose's ${X:-}: unset
    assert load_settings().worker_id is None
