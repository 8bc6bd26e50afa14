"""The docs' relative links lead to files in the repository (and to headings that exist):
README.md, bench/README.md and every Markdown page under docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def doc_pages(root: Path = ROOT) -> list[Path]:
    """The Markdown pages whose links are checked."""
    return [root / "README.md", root / "bench" / "README.md", *sorted((root / "docs").rglob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(page: Path) -> list[str]:
    """Every link target of a page, as written."""
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    slugs: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = 0
        while (slug if n == 0 else f"{slug}-{n}") in slugs:
            n += 1
        slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The page's relative links that lead outside ``root``, to no file, or to no heading."""
    broken = []
    for target in links(page):
        if SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.is_relative_to(root.resolve()):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return broken


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_in_the_docs_leads_to_a_file_in_the_repository(page: Path):
    assert page.is_file(), f"{page.relative_to(ROOT)} is missing"
    assert not broken_links(page), f"{page.relative_to(ROOT)}: {broken_links(page)}"


def test_readme_links_the_architecture_and_findings_pages():
    targets = {t.partition("#")[0] for t in links(ROOT / "README.md")}
    assert {"docs/architecture.md", "docs/findings.md"} <= targets


def test_the_link_check_reports_missing_files_paths_outside_and_unknown_headings(tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "page.md").write_text("# A page\n\n## The gate\n\n## `bot/`: the Flask app\n",
                                           encoding="utf-8")
    (tmp_path / "outside.md").write_text("# Outside\n", encoding="utf-8")
    readme = repo / "README.md"
    readme.write_text(
        "# Readme\n"
        "[ok](docs/page.md) [ok anchor](docs/page.md#the-gate) [own](#readme) [web](https://example.com/x)\n"
        "[code heading](docs/page.md#bot-the-flask-app)\n"
        "`[in code](docs/nothing.md)`\n"
        "```\n[in a fence](docs/nothing.md)\n```\n"
        "[gone](docs/nothing.md) [out](../outside.md) [bad anchor](docs/page.md#no-such-heading)\n"
        "![image](docs/missing.png)\n",
        encoding="utf-8",
    )
    assert broken_links(readme, root=repo) == [
        "docs/nothing.md: no such file",
        "../outside.md: outside the repository",
        "docs/page.md#no-such-heading: no heading #no-such-heading in page.md",
        "docs/missing.png: no such file",
    ]
