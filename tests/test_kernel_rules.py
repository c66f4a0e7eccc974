"""docs/kernel-rules.md explains every kernel rule id the code and the tests cite.

An id (an M, B, O, D, C, G, X, A rule, a GC or SA rule; ranges like B1-B5 count for each) in
service/ or tests/ needs a row in the catalogue, and each row's "Proven by" tests must exist.
Section numbers of a document the repository does not hold are not allowed: cite the rule id.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "docs" / "kernel-rules.md"
SCANNED = (ROOT / "service" / "memslotd", ROOT / "tests")
SUFFIXES = {".py", ".js", ".html", ".css", ".md", ".toml", ".yaml", ".c", ".h"}

RULE_ID = re.compile(r"\b(GC|SA|[ABCDGMOX])(\d{1,2})\b(?:[-–](?:\1)?(\d{1,2})\b)?")
SECTION_REF = re.compile(r"(?<!RFC \d{4} )§ ?\d")  # an RFC's own sections are fine
ROW = re.compile(r"^\| *((?:GC|SA|[ABCDGMOX])\d{1,2}) *\|(.*)\| *$", re.M)
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _sources() -> list[Path]:
    return sorted(
        p
        for base in SCANNED
        for p in base.rglob("*")
        if p.suffix in SUFFIXES and p.is_file() and "__pycache__" not in p.parts
    )


def _cited() -> dict[str, list[str]]:
    """Rule id -> where it is cited (path:line)."""
    out: dict[str, list[str]] = {}
    for path in _sources():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in RULE_ID.finditer(line):
                prefix, first, last = m.group(1), int(m.group(2)), int(m.group(3) or m.group(2))
                for n in range(first, max(first, last) + 1):
                    out.setdefault(f"{prefix}{n}", []).append(f"{path.relative_to(ROOT)}:{lineno}")
    return out


def _rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for m in ROW.finditer(CATALOGUE.read_text()):
        assert m.group(1) not in rows, f"{m.group(1)} has two rows"
        rows[m.group(1)] = m.group(2)
    return rows


def _test_names(path: Path) -> set[str]:
    return {
        node.name
        for node in ast.parse(path.read_text()).body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def test_every_cited_rule_id_has_a_row():
    rows = _rows()
    missing = {rule: where for rule, where in _cited().items() if rule not in rows}
    assert not missing, "\n".join(
        f"{rule} (cited at {', '.join(where[:3])}) has no row in {CATALOGUE.name}"
        for rule, where in sorted(missing.items())
    )


def test_every_row_is_proven_by_tests_that_exist():
    broken = []
    for rule, cells in _rows().items():
        refs = TEST_REF.findall(cells)
        if not refs and not cells.rstrip().endswith("—"):
            broken.append(f"{rule}: no test and no '—' in its last column")
        for file, name in refs:
            path = ROOT / file
            if not path.is_file() or name not in _test_names(path):
                broken.append(f"{rule}: {file}::{name} does not exist")
    assert not broken, "\n".join(broken)


def test_the_catalogue_sees_the_ids_it_must_explain():
    """The scanner is not blind: the ids of KVM_SET_USER_MEMORY_REGION2's tests are found."""
    assert {"M2", "M3", "M11", "O1", "B5", "D1", "G1", "GC1"} <= set(_cited())


def test_no_section_numbers_stand_in_for_rules():
    refs = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _sources()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if SECTION_REF.search(line)
    ]
    assert not refs, "cite a rule id of docs/kernel-rules.md instead: " + ", ".join(refs)
