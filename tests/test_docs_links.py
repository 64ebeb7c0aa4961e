"""Every relative link in the manual resolves: the file exists, and its #anchor is a heading.

The README is a front door that links into docs/, and the pages link to each
other: a page renamed or a heading reworded must not leave a reader at a dead
link.  Anchors follow GitHub's rules: the heading's text in lower case, each
space a '-', punctuation dropped except '-' and '_', and '-1', '-2' ... after
a heading that repeats an earlier one.  Links to the web are not followed.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "clients" / "node" / "README.md"]
)
"""The manual: the front door, every page under docs/, and the Node worker's README."""

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
"""A scheme (https:, mailto:): a link out of the repository, not checked here."""


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading (before any -1, -2 for repeats)."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link shows its text
    text = text.replace("**", "").replace("*", "")
    kept = "".join(ch for ch in text.lower() if ch.isalnum() or ch in "-_ ")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page's headings make."""
    found: set[str] = set()
    seen: Counter[str] = Counter()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            found.add(f"{base}-{seen[base]}" if seen[base] else base)
            seen[base] += 1
    return found


def without_code(text: str) -> list[str]:
    """The page's lines with code blocks and code spans blanked out, numbering kept.

    A code span may run over a line break (not over a blank line), so spans are
    taken out paragraph by paragraph, not line by line."""
    lines = [""] * len(text.splitlines())
    for number, line in prose_lines(text):
        lines[number - 1] = line
    paragraphs = "\n".join(lines).split("\n\n")
    blanked = [
        INLINE_CODE.sub(lambda m: "\n" * m.group(0).count("\n"), paragraph)
        for paragraph in paragraphs
    ]
    return "\n\n".join(blanked).split("\n")


def links(path: Path) -> list[tuple[int, str]]:
    """The relative links of a page, with their line numbers (code is not prose)."""
    found = []
    for number, line in enumerate(without_code(path.read_text(encoding="utf-8")), 1):
        targets = [m.group(1) for m in LINK.finditer(line)]
        reference = REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
        found.extend((number, t) for t in targets if not EXTERNAL.match(t))
    return found


def broken_links(path: Path) -> list[str]:
    """What is wrong with each relative link of ``path``: one line per broken link."""
    problems = []
    for number, target in links(path):
        where = f"{path.relative_to(ROOT) if ROOT in path.parents else path}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{where}: no such file {file_part}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: no heading #{anchor} in {linked.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert page.exists(), f"{page} is gone: update PAGES"
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_front_door_links_into_docs() -> None:
    """The README reaches every page under docs/ (a page nobody links to is lost)."""
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for _, target in links(ROOT / "README.md")
        if target.partition("#")[0]
    }
    unreachable = [p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not unreachable, f"README.md links to none of: {unreachable}"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Exit codes", "exit-codes"),
        ("Watching the queue: `fetchq status`", "watching-the-queue-fetchq-status"),
        ("Durability: `fetchq server --journal PATH`", "durability-fetchq-server---journal-path"),
        ("10. A worker's loop", "10-a-workers-loop"),
        ("What `--allow-pickle` gives up", "what---allow-pickle-gives-up"),
        ("The sketch: DDSketch, not HDR", "the-sketch-ddsketch-not-hdr"),
        ("handed_out and **done**", "handed_out-and-done"),
    ],
)
def test_anchors_follow_githubs_rules(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    """The checker itself: a missing file, a missing heading, a repeated heading's -1,
    links inside code that are not links at all, and a link after a code span that
    runs over a line break."""
    (tmp_path / "other.md").write_text("# Other\n\n## Part\n\n## Part\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md#part-1) and [here](#page) and [web](https://example.com/#x)\n"
        "[gone](missing.md) and [no heading](other.md#nowhere)\n"
        "`[not a link](nowhere.md)` and a `span that\nruns on` [then](other.md#gone)\n\n"
        "```sh\n[not a link either](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "missing.md: no such file missing.md",
        "other.md#nowhere: no heading #nowhere in other.md",
        "other.md#gone: no heading #gone in other.md",
    ], problems
