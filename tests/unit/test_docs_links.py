"""Every relative link in README.md and docs/*.md leads somewhere: the file (or
directory) exists, and an `#anchor` into a Markdown file names one of its
headers, slugged as GitHub does."""

from __future__ import annotations

import re
from pathlib import Path

from harness import ROOT

# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADER = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code blanked out."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "``", line))
    return lines


def slug(header: str) -> str:
    """GitHub's anchor for a header: lower case, punctuation dropped (but `-`
    and `_`), each space a hyphen."""
    text = re.sub(r"`([^`]*)`", r"\1", header)  # code spans keep their text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADER.match(line)
        if match:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def problems(path: Path) -> list[str]:
    """The links of `path` that lead nowhere, as `file: target (why)`."""
    bad = []
    for line in prose_lines(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                bad.append(f"{path.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{path.name}: {target} (no such header)")
    return bad


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_resolves() -> None:
    docs = documents()
    assert len(docs) > 1, "no docs/*.md found: the test would prove little"
    links = sum(len(LINK.findall(line)) for p in docs for line in prose_lines(p.read_text()))
    assert links > 20, links
    bad = [problem for path in docs for problem in problems(path)]
    assert not bad, "\n".join(bad)


def test_every_document_is_in_the_index() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    for path in documents()[1:]:
        if path.name != "README.md":
            assert f"]({path.name})" in index, path.name


def test_the_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Scale-out: workers over Redis\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Two `words`, here\n\n"
        "[ok](other.md) [ok](other.md#scale-out-workers-over-redis) [ok](#two-words-here)\n"
        "[web](https://example.com/missing) `[code](missing.md)`\n"
        "```\n[fenced](missing.md)\n# not a header\n```\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [self](#not-a-header)\n"
        "![img](missing.png)\n"
    )
    assert problems(page) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#nowhere (no such header)",
        "page.md: #not-a-header (no such header)",
        "page.md: missing.png (no such file)",
    ]
