"""Session 14: the sources load on every Python that pyproject.toml admits (>= 3.11), not only on 3.11.

Python 3.13 cleans docstrings at compile time and encodes them as UTF-8 on the way: a docstring holding a
lone surrogate (``"\\udcc3"`` written with one backslash) is a compile error there, so ``import supervisor``
failed on 3.13 (``UnicodeEncodeError ... surrogates not allowed``) while 3.11 took it. Two docstrings did
(``supervisor/resources/paths.py``, ``supervisor/tools/llm/_collector.py``); they now show the escape.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "supervisor", "sandbox", "bench")


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _lone_surrogates(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def test_no_docstring_holds_a_lone_surrogate():
    bad = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc is not None and _lone_surrogates(doc):
                    bad.append(f"{path.relative_to(ROOT)}: {getattr(node, 'name', '<module>')}")
    assert bad == [], "docstrings with lone surrogates (a compile error on Python 3.13): " + ", ".join(bad)


def test_the_check_sees_one():
    tree = ast.parse('"""caf\\udcc3"""\n')
    assert _lone_surrogates(ast.get_docstring(tree, clean=False))
    assert not _lone_surrogates(ast.get_docstring(ast.parse('"""caf\\\\udcc3"""\n'), clean=False))


def test_sqlite_statements_use_no_numbered_placeholders():
    """``?1`` with a sequence of parameters: deprecated since Python 3.12 (a warning on every approval decision of the
    embedded stack), an error (sqlite3.ProgrammingError) from 3.14. Named parameters (``:name``) with a dict instead."""
    import re

    numbered = re.compile(r"\?\d")
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "supervisor").rglob("*.py"))
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if numbered.search(line)]
    assert bad == [], bad
