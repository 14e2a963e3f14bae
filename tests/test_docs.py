"""Citations of the design document stay valid.

Code, tests and docs cite the project's design as "docs/design.md section N".  These
tests fail when a tracked file cites a section that docs/design.md does not have (its
sections are its "## N. Title" headings), or cites the external starting brief, whose
name is the design file's in capitals, instead of the document in the repository.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
from typing import Dict, List

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"

#: files whose text is searched for citations (by suffix, or by name)
SUFFIXES = {".py", ".pyi", ".c", ".cc", ".cpp", ".h", ".hpp", ".cu", ".cuh", ".md", ".rst", ".txt", ".toml",
            ".cfg", ".ini", ".sh", ".yml", ".yaml"}
NAMES = {"Makefile", "run"}

#: the external brief (built, so that this file does not cite it itself)
BRIEF = re.compile(r"\b" + "DESIGN" + r"\.md\b")
#: "design.md section 4", "design.md sections 4 and 5", across a line break and comment markers too
CITATION = re.compile(
    r"design\.md[,:)]?(?:\s|#|//|\*)+(?:section|§)s?\s*(\d+(?:\s*(?:,|and|or)\s*\d+)*)", re.IGNORECASE)
#: inside docs/design.md: "section 4", "sections 4 and 8"
INTERNAL = re.compile(r"\bsections?\s+(\d+(?:\s*(?:,|and|or)\s*\d+)*)")
HEADING = re.compile(r"^## (\d+)\. \S", re.MULTILINE)


def tracked_files() -> List[pathlib.Path]:
    """The repository's tracked text files of the kinds above (all of them, where git cannot list them)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        paths = [ROOT / p for p in listed.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "build", "dist", "node_modules", ".hypothesis", ".pytest_cache"}
        paths = [p for p in ROOT.rglob("*") if not skip.intersection(p.relative_to(ROOT).parts)]
    return sorted(p for p in paths if p.is_file() and (p.suffix in SUFFIXES or p.name in NAMES))


def sections() -> List[int]:
    return [int(n) for n in HEADING.findall(DESIGN.read_text(encoding="utf-8"))]


def numbers(group: str) -> List[int]:
    return [int(n) for n in re.findall(r"\d+", group)]


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def citations() -> Dict[str, List[int]]:
    """``path:line`` -> the design.md sections cited there, over every tracked file."""
    found: Dict[str, List[int]] = {}
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for match in CITATION.finditer(text):
            where = f"{path.relative_to(ROOT)}:{line_of(text, match.start())}"
            found.setdefault(where, []).extend(numbers(match.group(1)))
    return found


def test_design_document_has_numbered_sections():
    assert DESIGN.is_file(), "docs/design.md is missing"
    numbered = sections()
    assert numbered, "docs/design.md has no '## N. Title' headings"
    assert numbered == list(range(1, len(numbered) + 1)), f"sections are not numbered 1, 2, ...: {numbered}"


def test_nothing_cites_the_external_brief():
    offenders = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for match in BRIEF.finditer(text):
            offenders.append(f"{path.relative_to(ROOT)}:{line_of(text, match.start())}")
    assert not offenders, ("these cite the external design brief, which is not in the repository; cite "
                           "'docs/design.md section N' (or the in-repository file that holds it): "
                           + ", ".join(offenders))


def test_cited_sections_exist():
    existing = set(sections())
    found = citations()
    assert found, "no file cites docs/design.md by section: is the citation pattern still right?"
    wrong = {where: cited for where, cited in found.items() if not set(cited) <= existing}
    assert not wrong, f"citations of docs/design.md sections it does not have (it has {sorted(existing)}): {wrong}"


def test_design_document_refers_to_its_own_sections():
    text = DESIGN.read_text(encoding="utf-8")
    existing = set(sections())
    wrong = [f"docs/design.md:{line_of(text, m.start())}: {m.group(0)}" for m in INTERNAL.finditer(text)
             if not set(numbers(m.group(1))) <= existing]
    assert not wrong, f"docs/design.md refers to sections it does not have: {wrong}"


@pytest.mark.parametrize("text, cited", [
    ("(docs/design.md section 4)", [4]),
    ("see docs/design.md sections 5 and 8", [5, 8]),
    ("(docs/design.md\nsection 8)", [8]),
    ("// (docs/design.md\n// section 3)", [3]),
    ("# docs/design.md,\n# section 10", [10]),
])
def test_citation_pattern(text, cited):
    assert [n for m in CITATION.finditer(text) for n in numbers(m.group(1))] == cited
