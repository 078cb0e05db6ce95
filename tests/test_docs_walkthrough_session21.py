"""The documentation stays honest (session 21 walkthrough: a new user following the READMEs to the letter).

- every setting of ``supervisor/settings.py`` is in the Settings table of ``supervisor/README.md``, with its
  default; every ``STOCKADE_*`` name any README mentions is a setting or a script/test variable that exists;
- every command of the README's CLI block exists with the flags shown, and every command of the CLI is there;
- every ``curl`` example that sends JSON says so (without ``Content-Type: application/json`` the API answers
  422 "Input should be a valid dictionary": the broker and chat READMEs' examples failed so);
- a usage error names the help of the subcommand it is about.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest

from app import cli
from supervisor.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SUPERVISOR_README = ROOT / "supervisor" / "README.md"
# the docs a user reads (app/ and ui/ READMEs included: their settings must exist too)
DOCS = [ROOT / "README.md", SUPERVISOR_README, ROOT / "sandbox" / "README.md", ROOT / "app" / "README.md",
        ROOT / "ui" / "README.md", *sorted((ROOT / "deployment").rglob("*.md")),
        *sorted((ROOT / "bundles").rglob("README*"))]
# the curl examples checked for a JSON content type: the docs this walkthrough keeps
CURL_DOCS = [ROOT / "README.md", SUPERVISOR_README, ROOT / "sandbox" / "README.md",
             *sorted((ROOT / "deployment").rglob("*.md")), *sorted((ROOT / "bundles").rglob("README*"))]
# the README's example of a misspelt setting (named in a start-up warning)
MISSPELT_EXAMPLE = "STOCKADE_DATABASE_URI"


def _section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"no section {title!r}"
    return m.group(1)


def _settings_rows() -> dict[str, str]:
    """``STOCKADE_X`` -> the default cell's text for it, from supervisor/README.md's Settings table."""
    rows: dict[str, str] = {}
    for line in _section(SUPERVISOR_README.read_text(), "Settings").splitlines():
        if not line.startswith("| `STOCKADE_"):
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        names = re.findall(r"`(STOCKADE_[A-Z0-9_]+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(" / ")]
        for i, name in enumerate(names):
            rows[name] = defaults[i] if len(defaults) == len(names) else cells[1]
    return rows


def _documents(default: object, cell: str) -> bool:
    if default is None or default == ():
        return True  # unset: the cell says what happens instead ("none", "generated into ...")
    m = re.match(r"`([^`]*)`", cell)
    text = m.group(1) if m else cell
    if isinstance(default, bool):
        return text == str(default).lower()
    if isinstance(default, Path):
        return Path(text) == default
    if isinstance(default, list):
        return json.loads(text) == default
    if isinstance(default, (int, float)):
        return float(text) == float(default)
    return text == default


def test_every_setting_is_in_the_settings_table_with_its_default():
    rows = _settings_rows()
    missing, wrong = [], []
    for field, info in Settings.model_fields.items():
        name = "STOCKADE_" + field.upper()
        if name not in rows:
            missing.append(name)
        elif not _documents(info.default, rows[name]):
            wrong.append(f"{name}: documented {rows[name]!r}, default {info.default!r}")
    assert not missing, f"settings missing from supervisor/README.md, Settings: {missing}"
    assert not wrong, wrong
    extra = set(rows) - {"STOCKADE_" + f.upper() for f in Settings.model_fields}
    assert not extra, f"documented as settings but no field of Settings: {extra}"


def _script_variables() -> set[str]:
    """The variables the Settings section names as the scripts' and tests' (not the server's)."""
    text = _section(SUPERVISOR_README.read_text(), "Settings")
    para = text[text.index("Other `STOCKADE_` variables"):]
    return set(re.findall(r"`(STOCKADE_[A-Z0-9_*]+)`", para))


def test_every_stockade_name_in_the_docs_exists():
    settings = {"STOCKADE_" + f.upper() for f in Settings.model_fields}
    scripts = _script_variables()
    used = "\n".join(p.read_text(errors="replace") for p in [
        ROOT / "compose.yaml", *(ROOT / "deployment").rglob("*"), *(ROOT / "tests").rglob("*.py"),
    ] if p.is_file() and p.suffix not in (".md", ".pyc"))
    for var in scripts:  # each script variable the docs name is read somewhere
        assert var.endswith("*") or var in used, f"{var} is named as a script variable but nothing reads it"
    unknown = set()
    for doc in DOCS:
        for name in re.findall(r"STOCKADE_[A-Z0-9_]+", doc.read_text()):
            if name in settings or name in scripts or name == MISSPELT_EXAMPLE:
                continue
            if name.endswith("_") and (any(s.startswith(name) for s in settings)
                                       or any(s.startswith(name) for s in scripts)):
                continue  # a family: `STOCKADE_RATE_*` settings, `STOCKADE_TEST_*`
            unknown.add(f"{doc.relative_to(ROOT)}: {name}")
    assert not unknown, f"STOCKADE_ names the docs mention that are neither a setting nor a script variable: {unknown}"


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found = _subcommands(sub, (*path, name))
                out.update(found or {(*path, name): sub})
    return out


def _readme_cli() -> list[tuple[tuple[str, ...], list[str]]]:
    """(command path, flags shown) for every ``stockade ...`` command of the README's CLI block."""
    block = re.search(r"^## CLI\n+```\n(.*?)```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert block
    # `--public-key PEM...` read as several files after one flag, which the CLI refuses: repeat the flag
    assert not re.search(r"--[a-z-]+ [A-Z_]+\.\.\.", block.group(1)), "a flag shown taking several values"
    commands = []
    for seg in re.split(r"(?=\bstockade )", block.group(1)):
        if not seg.startswith("stockade "):
            continue
        seg = seg.split("#")[0]
        words = seg.split()[1:]
        alternatives, i = [words[0]], 1
        while i + 1 < len(words) and words[i] == "|":  # `serve | api [--host H] ...`
            alternatives.append(words[i + 1])
            i += 2
        sub = []
        while i < len(words) and re.fullmatch(r"[a-z]+(-[a-z]+)*", words[i]):
            sub.append(words[i])
            i += 1
        flags = re.findall(r"--[a-z][a-z-]*", " ".join(words[i:]))
        commands += [((alt, *sub), flags) for alt in alternatives]
    return commands


def test_the_readme_cli_block_matches_the_cli(capsys):
    parser = cli._parser()
    real = _subcommands(parser)
    shown = _readme_cli()
    for path, flags in shown:
        assert path in real, f"README shows `stockade {' '.join(path)}`, which is no command"
        assert cli.main([*path, "--help"]) == 0
        out = capsys.readouterr().out
        for flag in flags:
            assert flag in out, f"README shows `stockade {' '.join(path)} {flag}`, which it does not take"
    undocumented = set(real) - {p for p, _ in shown}
    assert not undocumented, f"commands missing from README.md, CLI: {undocumented}"


def _curl_commands(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)  # continuation lines
    return [line.strip() for line in joined.splitlines() if re.search(r"\bcurl\b", line)]


def test_curl_examples_that_send_json_say_so():
    bad = []
    for doc in CURL_DOCS:
        for cmd in _curl_commands(doc.read_text()):
            if re.search(r"(?:-d|--data(?:-raw|-binary)?)\s+'\{", cmd) and "Content-Type: application/json" not in cmd:
                bad.append(f"{doc.relative_to(ROOT)}: {cmd}")
    assert not bad, "curl examples posting JSON without `-H 'Content-Type: application/json'` (the API answers 422):\n" + "\n".join(bad)


def test_json_bodies_of_the_curl_examples_are_json():
    for doc in CURL_DOCS:
        for cmd in _curl_commands(doc.read_text()):
            m = re.search(r"(?:-d|--data(?:-raw)?)\s+'(\{[^']*\})'", cmd)
            if m:
                json.loads(m.group(1))  # copy-pastable: no placeholder that breaks the JSON


def test_a_usage_error_names_the_subcommands_help(capsys):
    """`stockade receipt verify r.json --public-key a.pem b.pem` (several keys after one flag, as the README's
    `--public-key PEM...` read) said "(see: stockade --help)", whose help lists only the subcommands."""
    rc = cli.main(["receipt", "verify", "r.json", "--public-key", "a.pem", "b.pem"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == "stockade: input.invalid: unrecognized arguments: b.pem (see: stockade receipt verify --help)"
    rc = cli.main(["tenant", "list", "extra"])
    assert rc == 2 and "(see: stockade tenant list --help)" in capsys.readouterr().err
    rc = cli.main(["bogus"])  # no subcommand chosen: the top's help
    assert rc == 2 and "(see: stockade --help)" in capsys.readouterr().err


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("STOCKADE_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


def test_an_empty_value_means_unset(clean_env):
    """deployment/README.md and the Settings section: `STOCKADE_AUDIT_KEY=` is the generated key, not an empty
    one (the deployment README said it "would be used as an empty key"); the Redis prefix alone refuses it."""
    clean_env.setenv("STOCKADE_AUDIT_KEY", "")
    clean_env.setenv("STOCKADE_PORT", "")
    s = load_settings()
    assert s.audit_key is None and s.port == 8000
    assert "an empty value means\n  unset" in (ROOT / "deployment" / "README.md").read_text()
    clean_env.setenv("STOCKADE_REDIS_PREFIX", "")
    with pytest.raises(Exception, match="STOCKADE_REDIS_PREFIX"):
        load_settings()
