"""Knowledge-article records shared by every room: the content of one version, and that content at
a version number (what retrieval indexes and the model's context cites).

``feedback_store.records.Article`` adds who stored a version and when; the file format
(``loopdesk/knowledge_files.py``) reads and writes ``ArticleDraft``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from loopdesk.excerpts import quoted

ArticleStatus = Literal["published", "retired"]
MAX_ARTICLE_CHARS = 20000
MAX_ARTICLE_TAGS = 16
ARTICLE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
TAG_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
"""A tag, on an article or on an expert's annotation: a lowercase word of at most 32 characters."""


def checked_tags(tags: list[str], example: str) -> list[str]:
    """The tags sorted without repeats, or a ValueError naming the bad ones (``example`` shows a good one)."""
    bad = [t for t in tags if not TAG_PATTERN.fullmatch(t)]
    if bad:
        shown = ", ".join(quoted(t, 40) for t in bad[:5])
        raise ValueError(f"tags must be lowercase words like {example!r}, got {shown}")
    return sorted(set(tags))


class ArticleDraft(BaseModel):
    """A knowledge article's content as an operator writes it (a file, a form): what a version holds.

    The body is Markdown; its line endings are normalised and surrounding blank space dropped,
    so a file read back after an export compares equal.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str = Field(pattern=ARTICLE_ID_PATTERN, description="slug: lowercase letters, digits and '-'")
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=MAX_ARTICLE_CHARS)
    tags: list[str] = Field(default_factory=list, max_length=MAX_ARTICLE_TAGS)
    status: ArticleStatus = "published"

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, article_id: Any) -> Any:
        if isinstance(article_id, str) and not re.fullmatch(ARTICLE_ID_PATTERN, article_id):
            raise ValueError("an article id is lowercase letters, digits and '-' (at most 64, "
                             f"starting with a letter or digit) like 'refunds', got {quoted(article_id)}")
        return article_id

    @field_validator("title", mode="before")
    @classmethod
    def _title(cls, title: Any) -> Any:
        if isinstance(title, str):
            title = title.strip()
            if "\n" in title or "\r" in title:
                raise ValueError("a title is one line")
        return title

    @field_validator("body", mode="before")
    @classmethod
    def _body(cls, body: Any) -> Any:
        if isinstance(body, str):
            body = body.replace("\r\n", "\n").replace("\r", "\n").strip()
            if not body:
                raise ValueError("the body is empty")
            if len(body) > MAX_ARTICLE_CHARS:
                raise ValueError(f"the body has {len(body):,} characters; the most is {MAX_ARTICLE_CHARS:,}")
        return body

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        return checked_tags(tags, "refunds")

    def content(self) -> "ArticleDraft":
        """Just the content (what an edit changes), without version bookkeeping."""
        return ArticleDraft(**self.model_dump(include=set(ArticleDraft.model_fields)))


class VersionedArticle(ArticleDraft):
    """An article's content at a version number: what ``loopdesk.knowledge.KnowledgeIndex`` indexes."""

    version: int = Field(ge=1)
