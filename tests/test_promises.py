"""CONTRIBUTING.md "Promises and proofs" stays true: each promise it quotes is in the README word for word, and
each test it names exists (file and function).

Example:
    .venv/bin/pytest tests/test_promises.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def words(text: str) -> str:
    return " ".join(text.split())


def proof_rows() -> list[tuple[str, str]]:
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    section = contributing.split("### Promises and proofs", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"^\| (.+?) \| `(tests/[^`]+::[^`]+)` \|", section, re.MULTILINE)


def test_every_promise_in_the_table_is_in_the_readme_word_for_word_and_its_test_exists() -> None:
    readme = words((ROOT / "README.md").read_text())
    rows = proof_rows()
    assert len(rows) >= 15
    for promise, test in rows:
        assert words(promise) in readme, promise
        path, name = test.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), test
        assert test in readme or name in readme, f"the README does not name {test}"
