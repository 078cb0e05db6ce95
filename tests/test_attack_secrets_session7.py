"""Attacks on secrets and configuration (session 7): settings, key files in the data dir, start-up errors.

Findings (each test fails without its fix):

- a Redis password given in the URL's query (``redis://h:6379/0?password=...``, which redis-py takes),
  or after an unescaped ``#``, was printed in the "Redis is not reachable at ..." start-up line
  (supervisor/stores/redis/client.py ``redact_url``);
- a huge duration or sandbox limit was accepted at start-up and then broke every run or call:
  ``STOCKADE_QUEUE_VISIBILITY_S=1e26`` made the Redis queue answer every claim with an error (no run
  ever started); ``STOCKADE_SANDBOX_MEMORY_MB`` / ``_MAX_FILE_MB`` / ``_CPU_S`` / ``_MAX_PROCS`` past a
  C long, or ``_MAX_OPEN_FILES`` past fs.nr_open, failed every sandbox in its ``setrlimit``;
  ``STOCKADE_SANDBOX_UID_COUNT=10**9`` built a list of a billion uids at start-up; a uid range past
  (uid_t)-1 or over the overflow uid failed start-up as root with a line naming no variable;
- ``STOCKADE_OPENAI_BASE_URL=localhost:8000/v1`` (no scheme), ``ftp://...``: accepted, then every
  llm.chat failed as "lost the connection";
- a list setting nested deeper than the JSON parser goes: "internal: RecursionError";
- a generated key file that holds nothing (touched, truncated): ``secrets.key`` sealed every MCP
  credential under a key anyone can derive (SHA-256 of a constant); ``audit.key`` failed start-up
  with a line naming no variable; a generated key file open to other users (a backup restored 0644)
  was used as is; a signing key file that is encrypted, not Ed25519, garbage or a directory: a line
  naming no variable ("internal: TypeError" for an encrypted one);
- the embedded database (every tenant's runs, conversations, audit, KB) was created 0644;
- ``stockade serve`` with a STOCKADE_HOST it cannot resolve or bind, or a STOCKADE_PORT in use: uvicorn's
  "ERROR: [Errno -2] Name or service not known" (exit 3), after the database and the workers had started.

Attacks that held keep a test: unicode digits, NaN, inf and empty values in every numeric setting;
DSN passwords never in the one-line start-up error (asyncpg names no DSN); generated keys private under
umask 0; racing first starts make one key; configured secrets never in the settings' repr.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app import cli
from supervisor.audit.keys import generated_secret, load_audit_key, load_signing_key
from supervisor.secretbox import load_secrets_key
from supervisor.settings import Settings, SettingsError, load_settings
from tests import test_cli as _cli_tests

pytestmark = pytest.mark.timeout(60)

_NUMERIC = [name for name, f in Settings.model_fields.items()
            if f.annotation in (int, float)]


env = _cli_tests.env  # the CLI tests' clean STOCKADE_ environment on a throwaway data dir


def _one_line(capsys, *argv: str) -> str:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert rc != 0 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- settings: every numeric setting under hostile values


@pytest.mark.parametrize("value", [
    "nan", "inf", "-inf", "1e400",  # not numbers a limit can be
    "١٢", "１２",  # unicode digits: int("١٢") == 12 in Python; refused here, never read as 12
    "0x10", "twelve", "true", "-99999999999999999999",
])
@pytest.mark.parametrize("name", _NUMERIC)
def test_hostile_numbers_are_one_line_naming_the_variable(env, monkeypatch, name, value):
    monkeypatch.setenv(f"STOCKADE_{name.upper()}", value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    msg = str(exc.value)
    assert msg.startswith(f"invalid setting STOCKADE_{name.upper()}: ") and "\n" not in msg


@pytest.mark.parametrize("name", _NUMERIC)
def test_empty_numeric_variable_means_the_default(env, monkeypatch, name):
    monkeypatch.setenv(f"STOCKADE_{name.upper()}", "")  # compose's ${X:-}
    assert getattr(load_settings(), name) == Settings.model_fields[name].default


@pytest.mark.parametrize("name,value", [
    ("STOCKADE_QUEUE_VISIBILITY_S", "1e26"),  # Redis XAUTOCLAIM min-idle ms out of range: no run ever claimed
    ("STOCKADE_RUN_TIMEOUT_MAX_S", "1e26"),
    ("STOCKADE_RUN_TIMEOUT_DEFAULT_S", "1e26"),
    ("STOCKADE_RESERVATION_TTL_S", "1e26"),
    ("STOCKADE_APPROVAL_TTL_S", "1e26"),
    ("STOCKADE_SWEEP_INTERVAL_S", "1e26"),
    ("STOCKADE_LLM_TIMEOUT_S", "1e26"),
    ("STOCKADE_EGRESS_TIMEOUT_S", "1e26"),
    ("STOCKADE_SANDBOX_MEMORY_MB", str(10**14)),  # RLIMIT_AS past a C long: every run's setrlimit raised
    ("STOCKADE_SANDBOX_MAX_FILE_MB", str(10**14)),
    ("STOCKADE_SANDBOX_CPU_S", str(2**63)),
    ("STOCKADE_SANDBOX_MAX_PROCS", str(2**63)),
    ("STOCKADE_SANDBOX_MAX_OPEN_FILES", str(2**21)),  # past fs.nr_open: setrlimit EPERM in every run
    ("STOCKADE_SANDBOX_TMPFS_MB", str(10**14)),  # bwrap --size past 2**64 bytes
    ("STOCKADE_SANDBOX_WORKDIR_MB", str(10**14)),
    ("STOCKADE_SANDBOX_UID_COUNT", str(10**9)),  # a list of a billion uids built at start-up
    ("STOCKADE_SANDBOX_UID_BASE", str(2**32)),  # past (uid_t)-1
    ("STOCKADE_SANDBOX_UID_BASE", "60000"),  # 60000..61023 is fine, but with the count below it is not
])
def test_huge_values_that_break_every_run_are_refused_at_start(env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    if value == "60000":
        monkeypatch.setenv("STOCKADE_SANDBOX_UID_COUNT", "10000")  # holds 65534, the kernel's overflow uid
    with pytest.raises(SettingsError) as exc:
        load_settings()
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("invalid setting STOCKADE_SANDBOX_UID_" if "UID" in name
                                              else f"invalid setting {name}: ")


def test_the_largest_accepted_limits_fit_the_kernel(env):
    """The ceilings themselves: what the sandbox turns them into is a valid rlimit (a C long; nofile <= nr_open)."""
    from supervisor.runs.sandboxing import limits_for

    fields = Settings.model_fields
    top = {n: next(m.le for m in fields[n].metadata if getattr(m, "le", None) is not None)
           for n in ("sandbox_memory_mb", "sandbox_max_file_mb", "sandbox_cpu_s", "sandbox_max_procs",
                     "sandbox_max_open_files", "sandbox_workdir_mb", "sandbox_tmpfs_mb")}
    limits, _ = limits_for(load_settings(**top), None)
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    for v in (limits.memory_mb * 2**20, limits.max_file_mb * 2**20, int(limits.cpu_s) + 1, limits.max_procs + 1,
              limits.tmpfs_mb * 2**20):
        assert v < 2**63 - 1
    assert limits.max_open_files <= nr_open
    load_settings(sandbox_uid_base=2**32 - 2 - 1024, sandbox_uid_count=1024)  # the top of the range is fine


# --- start-up: a password in a URL never reaches the one-line error


@pytest.mark.parametrize("name,url", [
    ("STOCKADE_DATABASE_URL", "postgresql://postgres:S3CRETpw@127.0.0.1:1/db"),  # refused connection
    ("STOCKADE_DATABASE_URL", "postgresql://postgres:S3CRETpw@127.0.0.1:99999/db"),  # bad port (settings)
    ("STOCKADE_DATABASE_URL", "postgresql://postgres:S3CRETpw@[::1/db"),  # unparsable host
    ("STOCKADE_DATABASE_URL", "postgresql://postgres:S3CRETpw@127.0.0.1:5432/db?sslmode=S3CRETpw"),
    ("STOCKADE_DATABASE_URL", "mysql://root:S3CRETpw@127.0.0.1/db"),  # wrong scheme
    ("STOCKADE_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/db?password=S3CRETpw"),  # asyncpg takes it too
    ("STOCKADE_REDIS_URL", "redis://:S3CRETpw@127.0.0.1:1/0"),  # refused connection
    ("STOCKADE_REDIS_URL", "redis://u:S3CRETpw@127.0.0.1:port/0"),  # bad port (settings)
    ("STOCKADE_REDIS_URL", "http://u:S3CRETpw@127.0.0.1:6379/0"),  # wrong scheme
    ("STOCKADE_REDIS_URL", "redis://127.0.0.1:1/0?password=S3CRETpw"),  # redis-py takes it from the query too
    ("STOCKADE_REDIS_URL", "redis://127.0.0.1:1/0?username=u&password=S3CRETpw"),
    ("STOCKADE_REDIS_URL", "unix:///nonexistent/redis.sock?password=S3CRETpw"),
    ("STOCKADE_REDIS_URL", "redis://u:S3CR#ETpw@127.0.0.1:1/0"),  # an unescaped '#': the rest parses as fragment
    ("STOCKADE_REDIS_URL", "redis://u:S3CRETpw@[::1]:1/0"),
])
def test_start_up_errors_never_print_a_url_password(env, capsys, monkeypatch, name, url):
    monkeypatch.setenv(name, url)
    line = _one_line(capsys, "migrate")
    assert line.startswith("stockade: ") and "S3CRETpw" not in line and "ETpw" not in line


# --- key files in the data dir


def test_generated_keys_are_private_even_under_umask_0(env):
    old = os.umask(0)
    try:
        s = load_settings()
        load_audit_key(s), load_secrets_key(s), load_signing_key(s)
    finally:
        os.umask(old)
    keys = env / "keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in keys.iterdir()} == {
        "audit.key": 0o600, "secrets.key": 0o600, "receipt_ed25519.pem": 0o600}


def test_racing_first_starts_make_one_audit_key_and_one_signing_key(env):
    s = load_settings()
    got: list[tuple[bytes, bytes]] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        got.append((load_audit_key(s), load_signing_key(s).public_key().public_bytes_raw()))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and len(set(got)) == 1  # no process MACs or signs with a key the others lost


@pytest.mark.parametrize("name,setting,content", [
    ("secrets.key", "STOCKADE_SECRETS_KEY", b""),  # sealed under sha256(constant): anyone could open it
    ("secrets.key", "STOCKADE_SECRETS_KEY", b"  \n"),
    ("audit.key", "STOCKADE_AUDIT_KEY", b""),
    ("audit.key", "STOCKADE_AUDIT_KEY", b"short\n"),
])
def test_a_generated_key_file_that_holds_no_key_is_refused(env, name, setting, content):
    path = env / "keys" / name
    path.parent.mkdir(parents=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(SettingsError) as exc:
        generated_secret(load_settings(), name)
    assert str(exc.value).startswith(f"invalid setting {setting}: ") and str(path) in str(exc.value)


def test_an_empty_audit_key_file_stops_the_cli_naming_the_variable(env, capsys):
    path = env / "keys" / "audit.key"
    path.parent.mkdir(parents=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # `touch`ed
    line = _one_line(capsys, "migrate")
    assert line.startswith("stockade: settings.invalid: invalid setting STOCKADE_AUDIT_KEY: ") and str(path) in line


@pytest.mark.parametrize("name,setting", [
    ("audit.key", "STOCKADE_AUDIT_KEY"), ("secrets.key", "STOCKADE_SECRETS_KEY"),
    ("receipt_ed25519.pem", "STOCKADE_SIGNING_KEY_FILE"),
])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o606])
def test_a_generated_key_file_open_to_other_users_is_refused(env, name, setting, mode):
    s = load_settings()
    load_audit_key(s), load_secrets_key(s), load_signing_key(s)  # generated, 0600
    path = env / "keys" / name
    os.chmod(path, mode)  # e.g. a backup restored without its modes
    with pytest.raises(SettingsError) as exc:
        {"audit.key": load_audit_key, "secrets.key": load_secrets_key,
         "receipt_ed25519.pem": load_signing_key}[name](s)
    msg = str(exc.value)
    assert msg.startswith(f"invalid setting {setting}: ") and "chmod 600" in msg and "\n" not in msg


def test_a_configured_key_never_reads_the_data_dir(env):
    s = load_settings(audit_key="x" * 32, secrets_key="y" * 32)
    assert load_audit_key(s) == b"x" * 32
    load_secrets_key(s)
    assert not (env / "keys" / "audit.key").exists() and not (env / "keys" / "secrets.key").exists()


def test_a_key_file_that_cannot_be_read_is_one_line(env, capsys):
    (env / "keys" / "audit.key").mkdir(parents=True)  # a directory where the key should be
    line = _one_line(capsys, "migrate")
    assert line.startswith("stockade: settings.invalid: invalid setting STOCKADE_AUDIT_KEY: ")


def test_settings_never_show_a_secret_in_their_repr():
    s = Settings(openai_api_key="sk-S3CRETvalue-0123456789", anthropic_api_key="sk-ant-S3CRETvalue-0123",
                 audit_key="S3CRETaudit-0123456789", secrets_key="S3CRETsecrets-0123456789")
    assert "S3CRET" not in repr(s) and "S3CRET" not in str(s)
    assert "S3CRET" not in s.model_dump_json()


def test_no_key_file_is_left_half_written_for_a_racing_reader(env):
    """Readers racing the writer never see a short file (which would now be refused as 'holds no key')."""
    s = load_settings()
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        try:
            load_secrets_key(s)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("name", ["STOCKADE_CORS_ORIGINS", "STOCKADE_EGRESS_ALLOW_PRIVATE"])
@pytest.mark.parametrize("value,needle", [
    ("[" * 100_000 + "]" * 100_000, "JSON list"),  # deeper than the JSON parser goes: was a RecursionError
    ('["a",]', "JSON list"),  # trailing comma
    ("[1, 2]", ""), ("[null]", ""), ('{"a": 1}', ""), ('"a"', ""),
])
def test_hostile_list_settings_are_one_line_naming_the_variable(env, monkeypatch, capsys, name, value, needle):
    monkeypatch.setenv(name, value)
    line = _one_line(capsys, "migrate")
    assert line.startswith(f"stockade: settings.invalid: invalid setting {name}") and needle in line
    assert not env.exists()


def _pem(kind: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else Ed25519PrivateKey.generate()
    enc = (serialization.BestAvailableEncryption(b"pw") if kind == "encrypted" else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


@pytest.mark.parametrize("kind", ["directory", "garbage", "encrypted", "ec", "public", "missing-dir"])
def test_a_bad_signing_key_file_is_one_line_naming_the_variable(env, tmp_path, monkeypatch, capsys, kind):
    path = tmp_path / "signing.pem"
    if kind == "directory":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    elif kind == "public":
        from supervisor.audit.keys import public_key_pem

        path.write_text(public_key_pem(load_signing_key(load_settings())))
    elif kind == "missing-dir":
        path = tmp_path / "file" / "signing.pem"
        (tmp_path / "file").write_text("x")  # a file where the key's directory should be
    else:
        path.write_bytes(_pem(kind))
    monkeypatch.setenv("STOCKADE_SIGNING_KEY_FILE", str(path))
    line = _one_line(capsys, "migrate")
    assert line.startswith("stockade: settings.invalid: invalid setting STOCKADE_SIGNING_KEY_FILE: ") and str(path) in line


@pytest.mark.parametrize("where", ["elsewhere", "default-path", "dangling-link"])
def test_a_configured_signing_key_file_that_is_missing_is_never_generated(env, tmp_path, monkeypatch, capsys, where):
    """Found by an outside-in walkthrough: STOCKADE_SIGNING_KEY_FILE naming a file that does not exist (a typo,
    a secret not mounted) had a new Ed25519 key generated there: receipts signed with a key nobody planned,
    another on each replica. Only the default path (the setting unset) is generated; a configured one stops
    start-up on one line naming the variable, and nothing is written."""
    path = {"elsewhere": tmp_path / "secrets" / "receipt.pem",
            "default-path": env / "keys" / "receipt_ed25519.pem",  # configured, even if it is the default
            "dangling-link": tmp_path / "link.pem"}[where]
    if where == "dangling-link":
        path.symlink_to(tmp_path / "nowhere.pem")
    monkeypatch.setenv("STOCKADE_SIGNING_KEY_FILE", str(path))
    line = _one_line(capsys, "migrate")
    named = tmp_path / "nowhere.pem" if where == "dangling-link" else path  # settings resolve the link
    assert line.startswith(f"stockade: settings.invalid: invalid setting STOCKADE_SIGNING_KEY_FILE: {named} does "
                           "not exist"), line
    assert not (tmp_path / "secrets").exists() and not path.exists() and not (tmp_path / "nowhere.pem").exists()
    assert not (env / "keys" / "receipt_ed25519.pem").exists()
    monkeypatch.delenv("STOCKADE_SIGNING_KEY_FILE")  # unset: the default is generated, as before
    assert cli.main(["migrate"]) == 0
    assert (env / "keys" / "receipt_ed25519.pem").is_file()


@pytest.mark.parametrize("name", ["STOCKADE_OPENAI_BASE_URL", "STOCKADE_ANTHROPIC_BASE_URL"])
@pytest.mark.parametrize("value", [
    "localhost:8000/v1",  # no scheme (a common slip): every llm.chat failed as "lost the connection"
    "ftp://llm.example/v1", "not a url", "https://", "http://llm.example:99999/v1", "http://llm example/v1",
])
def test_a_base_url_no_client_can_use_is_refused_at_start(env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert str(exc.value).startswith(f"invalid setting {name}: ") and "\n" not in str(exc.value)


@pytest.mark.parametrize("value", ["http://127.0.0.1:8000/v1", "https://api.openai.com/v1/", "http://[::1]:11434/v1",
                                   "http://vllm:8000"])
def test_base_urls_that_work_are_kept(env, value):
    s = load_settings(openai_base_url=value, anthropic_base_url=value)
    assert s.openai_base_url == value and s.anthropic_base_url == value


@pytest.mark.parametrize("name,url", [
    ("STOCKADE_DATABASE_URL", "postgresql://postgres:S3CRETpw@127.0.0.1:1/db"),
    ("STOCKADE_REDIS_URL", "redis://127.0.0.1:1/0?password=S3CRETpw"),
])
def test_serve_with_its_store_down_is_one_line_without_the_password(env, tmp_path, name, url):
    """The real entry point (logging configured at debug, uvloop): one line on stderr, exit 1, no password."""
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "0"], cwd=Path(__file__).resolve().parents[1],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")},
             "STOCKADE_DATA_DIR": str(env), "STOCKADE_BUNDLES_DIR": str(tmp_path / "no-bundles"),
             "STOCKADE_LOG_LEVEL": "debug", name: url},
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "S3CRETpw" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("stockade: store.unavailable: ")


def test_the_embedded_database_is_readable_by_its_owner_only(env, capsys):
    """Every tenant's runs, conversations, audit and KB live in it: no other local account may read it
    (it was 0644, in a data dir other uids may traverse - the sandbox uids must, to reach bundles)."""
    old = os.umask(0o022)
    try:
        assert cli.main(["tenant", "create", "acme"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    files = [p for p in env.iterdir() if p.name.startswith("stockade.db")]
    assert files and all(p.stat().st_mode & 0o077 == 0 for p in files), {p.name: oct(p.stat().st_mode) for p in files}


def _serve(env: Path, tmp_path: Path, *flags: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", *flags], cwd=Path(__file__).resolve().parents[1],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")},
             "STOCKADE_DATA_DIR": str(env), "STOCKADE_BUNDLES_DIR": str(tmp_path / "no-bundles"),
             "STOCKADE_SANDBOX_WARM_POOL": "0", **extra},
        capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("host", ["a b", "999.1.1.1", "nonexistent.invalid", "192.0.2.1"])
def test_serve_on_an_address_it_cannot_listen_on_is_one_line_naming_the_variable(env, tmp_path, host):
    """It was uvicorn's "ERROR: [Errno -2] Name or service not known" (exit 3), after the workers had started."""
    proc = _serve(env, tmp_path, STOCKADE_HOST=host, STOCKADE_PORT="0")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("stockade: settings.invalid: invalid setting STOCKADE_HOST: ") and host in lines[0]
    assert not env.exists()  # refused before anything was opened


def test_serve_on_a_port_in_use_is_one_line_naming_the_variable(env, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve(env, tmp_path, STOCKADE_HOST="127.0.0.1", STOCKADE_PORT=str(port))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("stockade: settings.invalid: invalid setting STOCKADE_PORT: ") and str(port) in lines[0]
        # from a flag: the flag is named (it named STOCKADE_PORT, a variable the user had not set)
        proc = _serve(env, tmp_path, "--host", "127.0.0.1", "--port", str(port))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("stockade: settings.invalid: invalid --port: cannot listen on 127.0.0.1:"), lines


@pytest.mark.parametrize("name,setting", [
    ("audit.key", "STOCKADE_AUDIT_KEY"), ("secrets.key", "STOCKADE_SECRETS_KEY"),
    ("receipt_ed25519.pem", "STOCKADE_SIGNING_KEY_FILE"),
])
def test_a_generated_key_file_of_another_user_is_refused(env, name, setting):
    """Mode 0600 but owned by another account: that account reads it, and can put a key of its own in
    its place (session 8; the mode alone was checked)."""
    s = load_settings()
    load_audit_key(s), load_secrets_key(s), load_signing_key(s)
    path = env / "keys" / name
    load = {"audit.key": load_audit_key, "secrets.key": load_secrets_key, "receipt_ed25519.pem": load_signing_key}[name]
    os.chown(path, 0, 0)  # root's: accepted (as ssh does)
    load(s)
    os.chown(path, 4242, 4242)
    with pytest.raises(SettingsError) as exc:
        load(s)
    msg = str(exc.value)
    assert msg.startswith(f"invalid setting {setting}: ") and "uid 4242" in msg and "chown" in msg and "\n" not in msg


def test_an_existing_embedded_database_open_to_others_is_made_private(env, capsys):
    """A database created before 0600 was the rule, or restored as 0644, kept its mode for ever."""
    assert cli.main(["tenant", "create", "acme"]) == 0
    files = [p for p in env.iterdir() if p.name.startswith("stockade.db")]
    for p in files:
        os.chmod(p, 0o644)
    capsys.readouterr()
    assert cli.main(["tenant", "list"]) == 0
    files = [p for p in env.iterdir() if p.name.startswith("stockade.db")]
    assert files and all(p.stat().st_mode & 0o777 == 0o600 for p in files), {p.name: oct(p.stat().st_mode) for p in files}
