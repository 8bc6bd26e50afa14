"""Knowledge files and ``loopdesk kb``: Markdown/JSONL parsing, clear errors, all-or-nothing
imports, export then import round trips, against a real Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from loopdesk.articles import MAX_ARTICLE_CHARS
from loopdesk.cli import main
from loopdesk.knowledge_files import (
    KnowledgeFileError,
    export_articles,
    parse_markdown,
    read_articles,
    render_markdown,
)

GOOD = """---
id: refunds
title: 'Refunds: when do I get my money back?'
tags: [refunds, money]
---
Once your return reaches our warehouse, we refund it within 5-7 business days.

We email you when it is done.
"""


def article_file(folder: Path, article_id: str, body: str = "Some help text.", **front: str) -> Path:
    lines = [f"id: {article_id}", f"title: Article {article_id}", *(f"{k}: {v}" for k, v in front.items())]
    path = folder / f"{article_id}.md"
    path.write_text("---\n" + "\n".join(lines) + "\n---\n" + body + "\n", encoding="utf-8")
    return path


def test_markdown_front_matter_is_read_with_defaults():
    article = parse_markdown(GOOD, "refunds.md")
    assert (article.id, article.title, article.tags, article.status) == (
        "refunds", "Refunds: when do I get my money back?", ["money", "refunds"], "published")
    assert article.body.startswith("Once your return") and article.body.endswith("when it is done.")
    assert parse_markdown(render_markdown(article)) == article


@pytest.mark.parametrize("text, expected", [
    ("id: x\n---\nbody", r"refunds\.md:1: the file must start with a '---' line"),
    ("---\nid: refunds\ntitle: Refunds\nbody text", r"refunds\.md:1: .*never closed"),
    ("---\nid: refunds\ntitle: [unclosed\n---\nbody", r"refunds\.md:\d+: malformed front matter"),
    ("---\nid: refunds\ntitle: Refunds\ntittle: typo\n---\nbody", r"refunds\.md:4: unknown front-matter key 'tittle'"),
    ("---\ntitle: Refunds\n---\nbody", r"refunds\.md:1: the front matter has no 'id'"),
    ("---\nid: refunds\n---\nbody", r"the front matter has no 'title'"),
    ("---\nid: Refunds Page\ntitle: Refunds\n---\nbody", r"refunds\.md:2: id: an article id is lowercase"),
    ("---\nid: refunds\ntitle: Refunds\ntags: [Money Back]\n---\nbody", r"refunds\.md:4: tags: tags must be lowercase"),
    ("---\nid: refunds\ntitle: Refunds\nstatus: deleted\n---\nbody", r"refunds\.md:4: status"),
    ("---\nid: refunds\ntitle: Refunds\n---\n\n", r"refunds\.md:5: body: the body is empty"),
    ("---\nid: refunds\ntitle: Refunds\n---\n" + "x" * (MAX_ARTICLE_CHARS + 1), r"refunds\.md:5: body: .*20,000"),
])
def test_each_malformed_file_is_a_clear_error_naming_file_and_line(text, expected):
    with pytest.raises(KnowledgeFileError, match=expected):
        parse_markdown(text, "refunds.md")


def test_a_folder_reports_every_bad_file_and_duplicate_ids(tmp_path):
    article_file(tmp_path, "refunds")
    article_file(tmp_path, "returns")
    (tmp_path / "copy.md").write_text((tmp_path / "refunds.md").read_text())
    (tmp_path / "latin1.md").write_bytes("---\nid: latin\ntitle: Caf\xe9\n---\nbody\n".encode("latin-1"))
    (tmp_path / "huge.md").write_text("---\nid: huge\ntitle: Huge\n---\n" + "x" * (5 * MAX_ARTICLE_CHARS))
    (tmp_path / "notes.txt").write_text("not an article")
    with pytest.raises(KnowledgeFileError) as caught:
        read_articles(tmp_path)
    problems = "\n".join(caught.value.problems)
    assert f"{tmp_path / 'refunds.md'}: id 'refunds' is already used by {tmp_path / 'copy.md'}" in problems
    assert f"{tmp_path / 'latin1.md'}:3: not UTF-8 text" in problems
    assert f"{tmp_path / 'huge.md'}: the file has" in problems
    assert len(caught.value.problems) == 3 and "notes.txt" not in problems


def test_jsonl_lines_are_checked_one_by_one(tmp_path):
    path = tmp_path / "kb.jsonl"
    path.write_text('{"id": "refunds", "title": "Refunds", "body": "Money back.", "tags": ["money"]}\n'
                    "\n"
                    '{"id": "returns", "title": "Returns"\n'
                    '{"id": "warranty", "title": "Warranty", "body": "Two years.", "colour": "red"}\n'
                    '["not", "an", "object"]\n'
                    '{"id": "refunds", "title": "Again", "body": "x"}\n', encoding="utf-8")
    with pytest.raises(KnowledgeFileError) as caught:
        read_articles(path)
    assert [p.split(": ")[0] for p in caught.value.problems] == [f"{path}:{n}" for n in (3, 4, 5, 6)]
    assert "not valid JSON" in caught.value.problems[0] and "unknown key 'colour'" in caught.value.problems[1]
    assert f"already used by {path}:1" in caught.value.problems[3]


def test_an_import_with_one_bad_file_among_ten_writes_nothing(store, tmp_path):
    for i in range(9):
        article_file(tmp_path, f"article-{i}")
    article_file(tmp_path, "bad", extra_key="oops")
    store.knowledge.create("existing", "Existing", "Already here.")
    with pytest.raises(KnowledgeFileError, match="unknown front-matter key 'extra_key'"):
        store.knowledge.import_articles(read_articles(tmp_path))
    assert [a.id for a in store.knowledge.list()] == ["existing"] and store.knowledge.revision() == 1


@pytest.mark.parametrize("fmt, name", [("md", "export"), ("jsonl", "export.jsonl")])
def test_export_then_import_round_trips(store, tmp_path, fmt, name):
    kb = store.knowledge
    kb.create("refunds", "Refunds: money back", "Line one.\n\n- a *list* item\n- ünïcode ✓", tags=["money"])
    kb.create("returns", "Returns", "Within 30 days.")
    kb.create("yes", "Yes", "A title YAML would read as a boolean.", tags=["faq"])
    kb.retire("returns", 1, by="ana")
    exported = export_articles(kb.snapshot().articles, tmp_path / name, fmt)
    assert len(exported) == (3 if fmt == "md" else 1)
    drafts = read_articles(tmp_path / name)
    assert drafts == [a.content() for a in kb.snapshot().articles]
    revision = kb.revision()
    result = kb.import_articles(drafts)
    assert (result.created, result.updated, result.revision) == ([], [], revision)
    with pytest.raises(FileExistsError, match="already exists"):
        export_articles(kb.snapshot().articles, tmp_path / name, fmt)


@pytest.fixture
def cli(store, settings, monkeypatch):
    monkeypatch.setenv("LOOPDESK_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LOOPDESK_KEY_PREFIX", settings.key_prefix)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, ["kb", *args])


def test_kb_commands_import_list_and_export(cli, store, tmp_path):
    folder = tmp_path / "kb"
    folder.mkdir()
    article_file(folder, "refunds", tags="[money]")
    article_file(folder, "returns", status="retired")
    result = cli("import", str(folder), "--by", "olga")
    assert result.exit_code == 0, result.output
    assert "imported 2 articles" in result.output and "2 new, 0 changed, 0 unchanged (revision 1)" in result.output
    assert store.knowledge.get("refunds").updated_by == "olga"
    listed = cli("list", "--status", "published")
    assert listed.exit_code == 0 and "refunds" in listed.output and "returns" not in listed.output
    assert "by olga" in listed.output
    assert "returns" in cli("list", "--search", "RET").output
    exported = cli("export", str(tmp_path / "out.jsonl"))
    assert exported.exit_code == 0 and "exported 2 articles" in exported.output and "jsonl" in exported.output
    again_there = cli("export", str(tmp_path / "out.jsonl"))
    assert again_there.exit_code == 1 and "already exists: export to a new path" in again_there.output
    assert [d.id for d in read_articles(tmp_path / "out.jsonl")] == ["refunds", "returns"]
    again = cli("import", str(tmp_path / "out.jsonl"))
    assert "0 new, 0 changed, 2 unchanged (revision 1)" in again.output
    article_file(folder, "warranty")
    skipped = cli("import", str(folder), "--if-empty")
    assert skipped.exit_code == 0 and "already has articles" in skipped.output
    assert [a.id for a in store.knowledge.list()] == ["refunds", "returns"]


def test_kb_import_of_bad_files_fails_clearly_and_writes_nothing(cli, store, tmp_path):
    article_file(tmp_path, "refunds")
    (tmp_path / "broken.md").write_text("no front matter here\n")
    result = cli("import", str(tmp_path))
    assert result.exit_code == 1
    assert "nothing was imported" in result.output and "broken.md:1: the file must start with" in result.output
    assert store.knowledge.revision() == 0 and store.knowledge.list() == []
    missing = cli("import", str(tmp_path / "nope"))
    assert missing.exit_code == 1 and "no such file or folder" in missing.output
