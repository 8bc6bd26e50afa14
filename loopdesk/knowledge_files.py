"""Knowledge articles as files: a folder of Markdown files with YAML front matter, or one JSONL file.

    ---
    id: refunds
    title: Refunds
    tags: [refunds, money]
    status: published        # optional, default published
    ---
    Once your return reaches our warehouse ...

Reading checks every file before anything is returned: all problems (not UTF-8, malformed or
unknown front matter, a missing id or title, an oversized body, a bad tag, an id used twice)
come back together in one KnowledgeFileError naming each file and line, so an import either
has every article or writes nothing. Export then import gives back the same articles.

The format is shared: ``loopdesk kb`` imports and exports it, the demo shop renders its folder
in it (``python -m sim.knowledge``) and reads it back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import ValidationError

from loopdesk.articles import MAX_ARTICLE_CHARS, ArticleDraft

FileFormat = Literal["md", "jsonl"]
FRONT_MATTER_KEYS = ("id", "title", "tags", "status")
JSONL_KEYS = ("id", "title", "body", "tags", "status")
DELIMITER = "---"
MAX_FILE_BYTES = 4 * MAX_ARTICLE_CHARS + 8192  # a Markdown file larger than this cannot hold a valid article


class KnowledgeFileError(ValueError):
    """Knowledge files that cannot be imported; ``problems`` has one ``file:line: what`` entry each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the knowledge files:\n" + "\n".join(problems))


# reading -----------------------------------------------------------------------------
def read_articles(path: Path) -> list[ArticleDraft]:
    """The articles in a folder of ``.md`` files, one ``.md`` file or one ``.jsonl`` file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.md") if not p.name.startswith("."))
        if not files:
            raise KnowledgeFileError([f"{path}: the folder has no .md files"])
    elif path.is_file() and path.suffix in (".md", ".jsonl"):
        files = [path]
    elif path.exists():
        raise KnowledgeFileError([f"{path}: not a folder of .md files, a .md file or a .jsonl file"])
    else:
        raise KnowledgeFileError([f"{path}: no such file or folder"])
    problems: list[str] = []
    found: list[tuple[str, ArticleDraft]] = []
    for file in files:
        text = _text(file, problems)
        if text is None:
            continue
        entries = _parse_jsonl(text, str(file)) if file.suffix == ".jsonl" else [_parse_markdown(text, str(file))]
        for where, item in entries:
            if isinstance(item, ArticleDraft):
                found.append((where, item))
            else:
                problems.append(item)
    first_seen: dict[str, str] = {}
    for where, item in found:
        if item.id in first_seen:
            problems.append(f"{where}: id {item.id!r} is already used by {first_seen[item.id]}")
        first_seen.setdefault(item.id, where)
    if not problems and not found:
        problems.append(f"{path}: no articles")
    if problems:
        raise KnowledgeFileError(problems)
    return [item for _, item in found]


def parse_markdown(text: str, source: str = "<text>") -> ArticleDraft:
    """One article from Markdown with front matter; a KnowledgeFileError says what is wrong."""
    _, item = _parse_markdown(text, source)
    if not isinstance(item, ArticleDraft):
        raise KnowledgeFileError([item])
    return item


def _text(file: Path, problems: list[str]) -> str | None:
    data = file.read_bytes()
    if file.suffix == ".md" and len(data) > MAX_FILE_BYTES:
        problems.append(f"{file}: the file has {len(data):,} bytes; an article body is at most "
                        f"{MAX_ARTICLE_CHARS:,} characters")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        problems.append(f"{file}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        "save the file as UTF-8")
        return None


def _parse_markdown(text: str, source: str) -> tuple[str, ArticleDraft | str]:
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].strip() != DELIMITER:
        return source, (f"{source}:1: the file must start with a '---' line opening the front matter "
                        f"({', '.join(FRONT_MATTER_KEYS)})")
    closing = next((i for i in range(1, len(lines)) if lines[i].strip() == DELIMITER), None)
    if closing is None:
        return source, f"{source}:1: the front matter opened here is never closed by a '---' line"
    try:
        front = yaml.load("\n".join(lines[1:closing]), Loader=yaml.BaseLoader)  # every value stays a string
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 2
        return source, f"{source}:{line}: malformed front matter: {getattr(exc, 'problem', None) or exc}"
    if front is None:
        front = {}
    if not isinstance(front, dict):
        return source, f"{source}:2: the front matter must be 'key: value' lines"
    unknown = [key for key in front if key not in FRONT_MATTER_KEYS]
    if unknown:
        line = _key_line(lines[1:closing], unknown[0])
        return source, (f"{source}:{line}: unknown front-matter key {unknown[0]!r}; the keys are "
                        f"{', '.join(FRONT_MATTER_KEYS)} (the body goes below the closing '---')")
    body_line = closing + 2
    try:
        return source, ArticleDraft(**front, body="\n".join(lines[closing + 1:]))
    except ValidationError as exc:
        found = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            line = body_line if key == "body" else _key_line(lines[1:closing], key)
            found.append(f"{source}:{line}: {_describe(err, 'the front matter')}")
        return source, "\n".join(found)


def _parse_jsonl(text: str, source: str) -> list[tuple[str, ArticleDraft | str]]:
    entries: list[tuple[str, ArticleDraft | str]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            entries.append((where, f"{where}: not valid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(data, dict):
            entries.append((where, f"{where}: each line must be one JSON object with {', '.join(JSONL_KEYS)}"))
            continue
        unknown = [key for key in data if key not in JSONL_KEYS]
        if unknown:
            entries.append((where, f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(JSONL_KEYS)}"))
            continue
        try:
            entries.append((where, ArticleDraft(**data)))
        except ValidationError as exc:
            entries.append((where, "\n".join(f"{where}: {_describe(err, 'the line')}" for err in exc.errors())))
    return entries


def _key_line(front_lines: list[str], key: str) -> int:
    """The file line (the opening '---' is line 1) where ``key:`` is written, else the first line."""
    for offset, line in enumerate(front_lines):
        if line.split(":", 1)[0].strip() == key:
            return offset + 2
    return 1


def _describe(err: dict[str, Any], container: str) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "missing":
        return f"{container} has no {key!r}; every article needs an id and a title"
    return f"{key}: {err['msg'].removeprefix('Value error, ')}"


# writing -----------------------------------------------------------------------------
def render_markdown(article: ArticleDraft) -> str:
    """The article as a Markdown file with YAML front matter (what a folder export writes)."""
    front = {"id": article.id, "title": article.title, "tags": list(article.tags), "status": article.status}
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, default_flow_style=None, width=10**6)
    return f"{DELIMITER}\n{header}{DELIMITER}\n{article.body}\n"


def render_jsonl(articles: Iterable[ArticleDraft]) -> str:
    """The articles as JSON lines (id, title, body, tags, status)."""
    return "".join(json.dumps(a.content().model_dump(), ensure_ascii=False) + "\n" for a in articles)


def export_articles(articles: Iterable[ArticleDraft], path: Path, fmt: FileFormat = "md") -> list[Path]:
    """Write the articles to a new folder (``md``: one ``<id>.md`` each) or a new ``.jsonl`` file.

    Refuses to overwrite anything (FileExistsError); the files appear all at once (written aside,
    then renamed).
    """
    path = Path(path)
    if path.exists() and (fmt == "jsonl" or path.is_file() or any(path.iterdir())):
        raise FileExistsError(f"{path} already exists{'' if fmt == 'jsonl' else ' and is not empty'}: "
                              "export to a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    articles = list(articles)
    if fmt == "jsonl":
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False,
                                         prefix=f".{path.name}.", suffix=".tmp") as tmp:
            tmp.write(render_jsonl(articles))
        os.replace(tmp.name, path)
        return [path]
    if fmt != "md":
        raise ValueError(f"unknown export format {fmt!r}: use 'md' or 'jsonl'")
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        for article in articles:
            (staging / f"{article.id}.md").write_text(render_markdown(article), encoding="utf-8")
        if path.exists():
            path.rmdir()
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(path / f"{a.id}.md" for a in articles)
