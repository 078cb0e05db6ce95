"""Settings: parsed once, paths absolute, bad values named in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.settings import Settings, SettingsError, load_settings


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings(data_dir=Path(".stockade"), bundles_dir=Path("bundles"))
    assert s.data_dir == tmp_path / ".stockade" and s.data_dir.is_absolute()
    assert s.bundles_dir == tmp_path / "bundles"
    assert s.sqlite_path == tmp_path / ".stockade" / "stockade.db"


@pytest.mark.parametrize("name,value,needle", [
    ("STOCKADE_PORT", "eighty", "STOCKADE_PORT"),
    ("STOCKADE_PORT", "70000", "STOCKADE_PORT"),
    ("STOCKADE_DATABASE_URL", "mysql://x", "STOCKADE_DATABASE_URL"),
    ("STOCKADE_REDIS_URL", "http://x", "STOCKADE_REDIS_URL"),
    ("STOCKADE_SANDBOX_MEMORY_MB", "-5", "STOCKADE_SANDBOX_MEMORY_MB"),
    ("STOCKADE_LOG_LEVEL", "loud", "STOCKADE_LOG_LEVEL"),
    ("STOCKADE_CORS_ORIGINS", "https://a.example", "STOCKADE_CORS_ORIGINS"),  # not JSON: pydantic-settings' own error
    ("STOCKADE_EGRESS_ALLOW_PRIVATE", '["10.0.0.0/33"]', "STOCKADE_EGRESS_ALLOW_PRIVATE"),
    ("STOCKADE_SWEEP_INTERVAL_S", "inf", "STOCKADE_SWEEP_INTERVAL_S"),
    ("STOCKADE_QUEUE_VISIBILITY_S", "0.1", "STOCKADE_QUEUE_VISIBILITY_S"),  # would redeliver live runs' jobs
    ("STOCKADE_DATABASE_URL", "postgresql://u@h:99999/db", "STOCKADE_DATABASE_URL"),
    ("STOCKADE_KB_QUOTA_MB", "0", "STOCKADE_KB_QUOTA_MB"),
    ("STOCKADE_KB_QUOTA_MB", "1.5", "STOCKADE_KB_QUOTA_MB"),
    ("STOCKADE_KB_QUOTA_DOCS", "-1", "STOCKADE_KB_QUOTA_DOCS"),
    ("STOCKADE_KB_QUOTA_DOCS", "lots", "STOCKADE_KB_QUOTA_DOCS"),
    ("STOCKADE_CODE_RUN_MAX_PER_TENANT", "0", "STOCKADE_CODE_RUN_MAX_PER_TENANT"),  # 0 would be "code.run off"
    ("STOCKADE_CODE_RUN_MAX_PER_TENANT", "2.5", "STOCKADE_CODE_RUN_MAX_PER_TENANT"),
    ("STOCKADE_CODE_RUN_MAX_PER_TENANT", "eight", "STOCKADE_CODE_RUN_MAX_PER_TENANT"),
])
def test_bad_settings_one_line(monkeypatch, name, value, needle):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg


def test_backend_selection(monkeypatch):
    for k in list(os.environ):
        if k.startswith("STOCKADE_"):
            monkeypatch.delenv(k)
    s = load_settings()
    assert not s.uses_postgres and s.redis_url is None
    s = load_settings(database_url="postgresql://u@h/db", redis_url="redis://h:6379/0")
    assert s.uses_postgres and s.redis_url == "redis://h:6379/0"


def test_audit_key_empty_means_unset_and_short_is_refused():
    assert Settings(audit_key="").audit_key is None
    with pytest.raises(SettingsError) as exc:
        load_settings(audit_key="short")
    assert "STOCKADE_AUDIT_KEY" in str(exc.value)


def test_secrets_key_empty_means_unset_and_short_is_refused():
    assert Settings(secrets_key="").secrets_key is None
    with pytest.raises(SettingsError) as exc:
        load_settings(secrets_key="short")
    assert "STOCKADE_SECRETS_KEY" in str(exc.value)


def test_urls_with_several_hosts_or_ipv6_are_accepted():
    for url in ("postgresql://u:p@h1:5432,h2:5433/db", "postgresql://u@[::1]:5432/db",
                "postgresql:///db?host=/var/run/postgresql"):
        assert load_settings(database_url=url).database_url == url
    with pytest.raises(SettingsError, match="STOCKADE_DATABASE_URL"):
        load_settings(database_url="postgresql://u@h1:5432,h2:x/db")


def test_kb_quota_defaults_and_environment(monkeypatch):
    monkeypatch.delenv("STOCKADE_KB_QUOTA_MB", raising=False)
    monkeypatch.delenv("STOCKADE_KB_QUOTA_DOCS", raising=False)
    s = load_settings()
    assert s.kb_quota_mb == 100 and s.kb_quota_docs == 100_000
    monkeypatch.setenv("STOCKADE_KB_QUOTA_MB", "5")
    monkeypatch.setenv("STOCKADE_KB_QUOTA_DOCS", "20")
    s = load_settings()
    assert s.kb_quota_mb == 5 and s.kb_quota_docs == 20


def test_code_run_cap_default_and_environment(monkeypatch):
    monkeypatch.delenv("STOCKADE_CODE_RUN_MAX_PER_TENANT", raising=False)
    assert load_settings().code_run_max_per_tenant == 8
    monkeypatch.setenv("STOCKADE_CODE_RUN_MAX_PER_TENANT", "3")
    assert load_settings().code_run_max_per_tenant == 3


def test_repr_of_the_settings_shows_no_url_password():
    # database and Redis URLs may carry a password; a settings object that ends up in a log line or a traceback
    # (repr) must not show it, as SecretStr fields do not
    s = Settings(database_url="postgresql://app:pg-pass-123@db:5432/stockade", redis_url="redis://:rd-pass-456@redis:6379/0")
    assert "pg-pass-123" not in repr(s) and "rd-pass-456" not in repr(s)
    assert s.database_url.endswith("@db:5432/stockade")  # the value itself is untouched


# --- settings fine alone, wrong together (found by an outside-in walkthrough of the production topology)


@pytest.fixture
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.upper().startswith("STOCKADE_"):
            monkeypatch.delenv(k)
    return monkeypatch


@pytest.mark.parametrize("env,names", [
    # 6 runs and 2 warm slots on a pool of 3 uids: the runs past it failed ("all 3 sandbox uids are in use")
    ({"STOCKADE_SANDBOX_UID_COUNT": "3", "STOCKADE_WORKER_CONCURRENCY": "6"},
     ("STOCKADE_WORKER_CONCURRENCY", "STOCKADE_SANDBOX_WARM_POOL", "STOCKADE_SANDBOX_UID_COUNT")),
    ({"STOCKADE_SANDBOX_UID_COUNT": "4", "STOCKADE_WORKER_CONCURRENCY": "3", "STOCKADE_SANDBOX_WARM_POOL": "2"},
     ("STOCKADE_WORKER_CONCURRENCY", "STOCKADE_SANDBOX_UID_COUNT")),
    ({"STOCKADE_DB_POOL_MIN": "20", "STOCKADE_DB_POOL_MAX": "5"}, ("STOCKADE_DB_POOL_MIN", "STOCKADE_DB_POOL_MAX")),
    ({"STOCKADE_RUN_TIMEOUT_DEFAULT_S": "5000", "STOCKADE_RUN_TIMEOUT_MAX_S": "60"},
     ("STOCKADE_RUN_TIMEOUT_DEFAULT_S", "STOCKADE_RUN_TIMEOUT_MAX_S")),
])
def test_settings_that_contradict_each_other_are_refused(clean_env, env, names):
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    msg = str(exc.value)
    assert msg.startswith("invalid settings: ") and "\n" not in msg
    assert all(n in msg for n in names), msg


def test_the_uid_pool_may_be_exactly_the_runs_and_warm_slots(clean_env):
    s = load_settings(sandbox_uid_count=8, worker_concurrency=6, sandbox_warm_pool=2)  # code.run gets none: allowed
    assert s.sandbox_uid_count == 8
    assert load_settings(db_pool_min=5, db_pool_max=5, run_timeout_default_s=60, run_timeout_max_s=60).db_pool_max == 5


@pytest.mark.parametrize("url,needle", [
    ("redis://127.0.0.1:6379/abc", "'/abc' is not a database number"),  # redis-py used database 0
    ("redis://127.0.0.1:6379/7?db=3", "names database 7 and db= names 3"),  # redis-py used 3
    ("redis://127.0.0.1:6379/-1", "not a database number"),
    ("redis://127.0.0.1:6379/0?db=x", "db='x' is not a database number"),
    ("redis://127.0.0.1:6379?db=1&db=2", "names the database twice"),
    ("unix:///run/redis.sock?db=two", "not a database number"),
])
def test_a_redis_url_naming_no_clear_database_is_refused(clean_env, url, needle):
    with pytest.raises(SettingsError) as exc:
        load_settings(redis_url=url)
    assert str(exc.value).startswith("invalid setting STOCKADE_REDIS_URL: ") and needle in str(exc.value)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "redis://h:6379", "redis://h/", "redis://h/7?db=7",
                                 "rediss://u:p@h:6380/15", "redis://h?db=2", "unix:///run/redis.sock?db=3"])
def test_redis_urls_naming_one_database_are_accepted(clean_env, url):
    assert load_settings(redis_url=url).redis_url == url


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_redis_prefix_set_on_purpose_is_refused(clean_env, value):
    """``STOCKADE_REDIS_PREFIX=`` became the default ``stockade:`` (env_ignore_empty): the deployment shared
    its keys with any other on the Redis database that kept the default."""
    clean_env.setenv("STOCKADE_REDIS_PREFIX", value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert str(exc.value).startswith("invalid setting STOCKADE_REDIS_PREFIX: ")
    with pytest.raises(SettingsError, match="STOCKADE_REDIS_PREFIX"):
        load_settings(redis_prefix=value)
    clean_env.delenv("STOCKADE_REDIS_PREFIX")
    assert load_settings().redis_prefix == "stockade:"  # unset: the default


def test_a_misspelt_setting_is_named_in_a_warning(clean_env, caplog):
    clean_env.setenv("STOCKADE_DATABASE_URI", "postgresql://u@h/db")  # pydantic-settings ignores it
    clean_env.setenv("STOCKADE_TEST_DATABASE_URL", "postgresql://u@h/db")  # the test suite's own: no typo
    clean_env.setenv("STOCKADE_IMAGE", "localhost/stockade:latest")  # the deployment scripts' own
    with caplog.at_level("WARNING", logger="stockade.settings"):
        s = load_settings()
    assert s.database_url is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "stockade.settings"]
    assert warnings == ["STOCKADE_DATABASE_URI is not a setting and is ignored: did you mean STOCKADE_DATABASE_URL?"]
