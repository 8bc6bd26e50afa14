"""The public help centre: the knowledge base's published articles, read-only, for customers.

``GET /api/help/articles`` lists them (id, title, tags, version, updated_at); with ``?q=`` it
searches this process's live knowledge index instead (best first, with BM25 scores).
``GET /api/help/articles/<id>`` is one article with its Markdown body. ``/help`` and
``/help/<id>`` are the demo shop's pages of the same articles, rendered on the server (no script).
No sign-in; the simulated customers read the knowledge base here over HTTP, like the widget. The
app rate-limits these routes per client IP like the chat API (a budget of their own) and answers
other origins' calls with the same CORS headers.

Listing and reading go to the store, so they show the knowledge base as it is now; a search goes
through the live index, which follows the store within a second or two.
"""

from __future__ import annotations

import re
import time
from typing import cast

from flask import Blueprint, Response, render_template
from pydantic import BaseModel, Field

from bot.article_html import article_html
from bot.errors import ApiError
from bot.services import services
from bot.validation import query_text
from feedback_store.errors import NotFoundError
from feedback_store.records import Article
from loopdesk.articles import ARTICLE_ID_PATTERN
from loopdesk.excerpts import quoted

bp = Blueprint("help_centre", __name__)

SEARCH_RESULTS = 10
MAX_QUERY_CHARS = 500


class HelpArticleSummary(BaseModel):
    """A published help article as listed (``score``: its BM25 match to the search, when searched)."""

    id: str
    title: str
    tags: list[str]
    version: int
    updated_at: float
    score: float | None = None


class HelpArticleList(BaseModel):
    articles: list[HelpArticleSummary]
    query: str | None = Field(description="the search, when ?q= was given (results best first)")


class HelpArticle(HelpArticleSummary):
    """One published help article with its Markdown body."""

    body: str


def _summary(article: Article, score: float | None = None) -> HelpArticleSummary:
    return HelpArticleSummary(id=article.id, title=article.title, tags=article.tags, version=article.version,
                              updated_at=article.updated_at, score=score)


def _query() -> str | None:
    """The ``q`` argument stripped (None when absent or blank), or a 422 when too long."""
    return query_text("q", MAX_QUERY_CHARS) or None


def _listed(query: str | None) -> list[HelpArticleSummary]:
    """Every published article by title, or the live index's matches for ``query`` (best first)."""
    if query is None:
        articles = services().store.knowledge.list(status="published")
        return [_summary(a) for a in sorted(articles, key=lambda a: a.title.lower())]
    index = services().knowledge.index
    return [_summary(cast(Article, index.articles[hit.id]), round(hit.score, 4))  # the index holds store Articles
            for hit in index.search(query, k=SEARCH_RESULTS, min_score=0.0)]


def published(article_id: str) -> Article:
    """The current version of a published article, or a 404 saying there is none."""
    if not re.fullmatch(ARTICLE_ID_PATTERN, article_id):
        raise ApiError(404, "not_found", f"no help article {quoted(article_id, 80)}: article ids are lowercase "
                                         "letters, digits and '-'")
    try:
        article = services().store.knowledge.get(article_id)
    except NotFoundError:
        article = None
    if article is None or article.status != "published":
        raise ApiError(404, "not_found", f"no published help article {article_id!r}")
    return article


@bp.get("/api/help/articles")
def list_articles() -> Response:
    """The published articles, or with ``?q=`` the best matches of the live index."""
    query = _query()
    body = HelpArticleList(articles=_listed(query), query=query)
    return Response(body.model_dump_json(), mimetype="application/json")


@bp.get("/api/help/articles/<article_id>")
def get_article(article_id: str) -> Response:
    """One published article, its body in Markdown."""
    article = published(article_id)
    body = HelpArticle(**_summary(article).model_dump(), body=article.body)
    return Response(body.model_dump_json(), mimetype="application/json")


@bp.get("/help")
def help_page() -> str:
    """The demo shop's help centre: every published article, or the matches of the search box."""
    query = _query()
    return render_template("help_centre.html", articles=_listed(query), query=query or "")


@bp.get("/help/<article_id>")
def article_page(article_id: str) -> tuple[str, int]:
    """One published article, its Markdown rendered to HTML (raw HTML shown as text)."""
    try:
        article = published(article_id)
    except ApiError as exc:
        return render_template("help_article.html", article=None, error=exc.message), exc.status
    updated = time.strftime("%d %B %Y", time.gmtime(article.updated_at))
    return render_template("help_article.html", article=article, html=article_html(article.body), updated=updated), 200


def openapi_section():
    """The help centre's part of /openapi.json."""
    from bot.openapi import Section, json_response, operation

    search = {"name": "q", "in": "query", "required": False, "schema": {"type": "string", "maxLength": MAX_QUERY_CHARS},
              "description": "search the live knowledge index; results best first, with their scores"}
    return Section({
        "/api/help/articles": {"get": {**operation(
            "The published help articles, or the best matches of a search",
            {"200": json_response(HelpArticleList, "id, title, tags, version and time of each")}, 422, 429),
            "parameters": [search]}},
        "/api/help/articles/{article_id}": {"get": operation(
            "One published help article with its Markdown body",
            {"200": json_response(HelpArticle, "the article's current version")}, 404, 429)},
    }, [HelpArticleList, HelpArticle])
