"""The README stays short and its relative links resolve (the documentation site under docs/ is
checked by `mkdocs build --strict` in .ci/run, which validates the links between its pages)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """The anchor MkDocs' toc extension (and GitHub) give a heading: lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text, fence = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            text.append(_slug(line.lstrip("#")))
    return set(text)


def broken_links(markdown: Path) -> list[str]:
    """Relative links of ``markdown`` whose file (or ``#anchor`` in a Markdown file) is missing."""
    out = []
    for target in LINK.findall(markdown.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (markdown.parent / path).resolve() if path else markdown
        if not file.exists():
            out.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            out.append(f"{target}: no heading '#{anchor}' in {file.name}")
    return out


def test_readme_is_short_and_its_links_resolve() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_text(encoding="utf-8").splitlines()) < 200
    assert broken_links(readme) == []


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "page.md").write_text("# Real heading\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](page.md) [ok](page.md#real-heading) [web](https://example.org) [gone](nothere.md) [bad](page.md#nope)\n")
    assert [b.split(":")[0] for b in broken_links(doc)] == ["nothere.md", "page.md#nope"]


def test_every_docs_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert [p for p in pages if f" {p}" not in nav] == []


def test_every_docs_page_links_resolve() -> None:
    # mkdocs validates links between its pages, not links that leave docs/ (a stale
    # ../README.md#anchor in first-suite.md went unnoticed), so every page is checked here too.
    assert [f"{p.name}: {b}" for p in sorted((ROOT / "docs").glob("*.md")) for b in broken_links(p)] == []
