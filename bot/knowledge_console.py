"""The console's Knowledge page: the help articles the bot answers from, and what it retrieves.

``/knowledge`` is the page; ``/api/kb/...`` is its JSON API: list and search articles, read one
(its Markdown rendered on the server), create, edit with a preview, retire, every version and a
revert to an earlier one, and the retrieval box (which articles this process's live index finds
for a customer's question, with their scores and whether they reach ``kb_min_score``). Operators
and admins may do everything; experts may read (the expert console links a bot turn's articles
here). Writes need the session's CSRF token. An edit names the version it was based on: when
someone saved a newer one meanwhile, the answer is a 409 saying so and nothing is written.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from flask import Blueprint, Response, jsonify, render_template, request
from pydantic import Field

from bot.article_html import article_html
from bot.sessions import UNSAFE_METHODS, console_operation, current_user, guard
from bot.errors import ApiError
from bot.schemas import Body
from bot.services import services
from bot.validation import parse_body, query_text
from feedback_store.errors import ConflictError
from feedback_store.records import Article
from loopdesk.articles import MAX_ARTICLE_CHARS

bp = Blueprint("knowledge_console", __name__)

RETRIEVAL_CANDIDATES = 5
MAX_QUESTION_CHARS = 2000
MAX_FILTER_CHARS = 200
WRITERS = ("operator", "admin")


@bp.before_request
def _guard() -> Any:
    """Writes need an operator (or admin); reads an expert, operator or admin."""
    user = current_user()
    reader_role = "operator" if user is not None and user.role == "operator" else "expert"
    return guard("operator" if request.method in UNSAFE_METHODS else reader_role)()


class ArticleIn(Body):
    """A new article (published at version 1)."""

    id: str = Field(description="slug: lowercase letters, digits and '-', e.g. 'refunds'")
    title: str
    body: str = Field(description="Markdown")
    tags: list[str] = Field(default_factory=list, description="lowercase words, e.g. ['refunds', 'money']")


class ArticleEdit(Body):
    """An edit of the version ``base_version``; fields left out are kept."""

    base_version: int = Field(ge=1, description="the version the edit was made on")
    title: str | None = None
    body: str | None = None
    tags: list[str] | None = None
    status: Literal["published", "retired"] | None = None


class RetireIn(Body):
    base_version: int = Field(ge=1, description="the version the operator saw")


class RevertIn(Body):
    to_version: int = Field(ge=1, description="the version whose content becomes current again")
    base_version: int = Field(ge=1, description="the version the operator saw")


class PreviewIn(Body):
    body: str = Field(description="Markdown to render")


def _summary(article: Article) -> dict[str, Any]:
    return article.model_dump(exclude={"body"})


def _full(article: Article) -> dict[str, Any]:
    return {**article.model_dump(), "html": str(article_html(article.body))}


def _saved(article_id: str, base_version: int, write: Callable[[], Article]) -> Response:
    """Run ``write``; a version conflict becomes a 409 that says who saved which version meanwhile."""
    try:
        return jsonify(_full(write()))
    except ConflictError:
        current = services().store.knowledge.get(article_id)
        if current.version == base_version:
            raise
        if current.version < base_version:
            message = f"article {article_id!r} is at version {current.version}; there is no version {base_version}"
        elif current.updated_by == current_user().name:
            message = (f"you saved version {current.version} in another window while you edited version "
                       f"{base_version}: reload the article, then make this change again")
        else:
            message = (f"someone else ({current.updated_by}) saved version {current.version} while you edited "
                       f"version {base_version}: reload the article to see their change, then make yours again")
        raise ApiError(409, "version_conflict", message) from None


@bp.get("/knowledge")
def console() -> str:
    """The Knowledge page (filled by console.knowledge.js)."""
    user = current_user()
    return render_template("knowledge_console.html", user=user, can_write=user.role in WRITERS,
                           min_score=services().settings.kb_min_score)


@bp.get("/api/kb/articles")
def articles() -> Response:
    """Every article's current version (no body), optionally of one status and matching ``q``."""
    status = request.args.get("status") or None
    listed = services().store.knowledge.list(status=status, text=query_text("q", MAX_FILTER_CHARS))
    return jsonify(articles=[_summary(a) for a in listed], revision=services().store.knowledge.revision())


@bp.post("/api/kb/articles")
def create() -> tuple[Response, int]:
    """Add a new published article; an existing id is a 409."""
    body = parse_body(ArticleIn)
    article = services().store.knowledge.create(body.id, body.title, body.body, body.tags, by=current_user().name)
    return jsonify(_full(article)), 201


@bp.get("/api/kb/articles/<article_id>")
def article(article_id: str) -> Response:
    """An article's current version with its body and the body rendered to HTML."""
    return jsonify(_full(services().store.knowledge.get(article_id)))


@bp.put("/api/kb/articles/<article_id>")
def edit(article_id: str) -> Response:
    """Save an edit of ``base_version`` as the next version (409 if someone saved one meanwhile)."""
    body = parse_body(ArticleEdit)
    return _saved(article_id, body.base_version, lambda: services().store.knowledge.update(
        article_id, body.base_version, current_user().name, title=body.title, body=body.body, tags=body.tags,
        status=body.status))


@bp.post("/api/kb/articles/<article_id>/retire")
def retire(article_id: str) -> Response:
    """Take the article out of retrieval and the help centre (a new version with status retired)."""
    body = parse_body(RetireIn)
    return _saved(article_id, body.base_version, lambda: services().store.knowledge.retire(
        article_id, body.base_version, current_user().name))


@bp.post("/api/kb/articles/<article_id>/revert")
def revert(article_id: str) -> Response:
    """Make an earlier version's content current again, as a new version."""
    body = parse_body(RevertIn)
    return _saved(article_id, body.base_version, lambda: services().store.knowledge.revert(
        article_id, body.to_version, body.base_version, current_user().name))


@bp.get("/api/kb/articles/<article_id>/versions")
def history(article_id: str) -> Response:
    """Every version of the article, newest first (no bodies)."""
    return jsonify(versions=[_summary(a) for a in reversed(services().store.knowledge.history(article_id))])


@bp.get("/api/kb/articles/<article_id>/versions/<index:version>")
def version(article_id: str, version: int) -> Response:
    """One version of the article with its body, rendered too (what a bot turn saw)."""
    return jsonify(_full(services().store.knowledge.get_version(article_id, version)))


@bp.post("/api/kb/preview")
def preview() -> Response:
    """The HTML a Markdown body renders to, as the help centre shows it."""
    body = parse_body(PreviewIn).body
    if len(body) > MAX_ARTICLE_CHARS:
        raise ApiError(422, "invalid_request", f"the body has {len(body):,} characters; the most is "
                                               f"{MAX_ARTICLE_CHARS:,}")
    return jsonify(html=str(article_html(body)))


@bp.get("/api/kb/retrieve")
def retrieve() -> Response:
    """What this process's live index retrieves for a customer's question, and what a reply would do."""
    question = query_text("q", MAX_QUESTION_CHARS)
    if not question:
        raise ApiError(422, "invalid_request", f"q: type a customer's question (1 to {MAX_QUESTION_CHARS} characters)")
    knowledge = services().knowledge
    found = knowledge.retrieve(question, k=max(RETRIEVAL_CANDIDATES, knowledge.top_k))
    in_context = {h.id for h in found.hits[:knowledge.top_k]}
    return jsonify(query=question, min_score=found.min_score, top_k=knowledge.top_k, revision=found.revision,
                   fits=found.fits, results=[{"id": h.id, "version": h.version, "title": h.title,
                                              "score": round(h.score, 4), "passes": h.score >= found.min_score,
                                              "in_context": h.id in in_context} for h in found.candidates])


def openapi_section():
    """The knowledge console's part of /openapi.json."""
    from bot.openapi import Section, query_parameter

    kb, writers = "/api/kb", "Operators and admins; experts get 403."

    def read(summary: str, *params: dict[str, Any]) -> dict[str, Any]:
        described = console_operation(summary)
        return {**described, "parameters": list(params)} if params else described

    def write(summary: str, body: type[Body], status: str = "200", conflict: str = "") -> dict[str, Any]:
        described = console_operation(summary, status, body=body, write=True, description=f"{writers} {conflict}".strip())
        if conflict:
            described["responses"]["409"] = {"$ref": "#/components/responses/Error"}
        return described

    stale = "409 when someone saved a newer version than base_version meanwhile."
    return Section({
        f"{kb}/articles": {
            "get": read("Articles (current versions, no body), by status and text in id, title or tags",
                        query_parameter("status", type="string", enum=["published", "retired"]),
                        query_parameter("q", type="string", maxLength=MAX_FILTER_CHARS)),
            "post": write("Create a published article (version 1)", ArticleIn, "201", "409 when the id exists.")},
        f"{kb}/articles/{{article_id}}": {
            "get": read("An article's current version with its body and its HTML rendering"),
            "put": write("Save an edit of base_version as the next version", ArticleEdit, conflict=stale)},
        f"{kb}/articles/{{article_id}}/retire": {"post": write(
            "Retire an article (out of retrieval and the help centre)", RetireIn, conflict=stale)},
        f"{kb}/articles/{{article_id}}/revert": {"post": write(
            "Make an earlier version's content current again, as a new version", RevertIn, conflict=stale)},
        f"{kb}/articles/{{article_id}}/versions": {"get": read("Every version of an article, newest first")},
        f"{kb}/articles/{{article_id}}/versions/{{version}}": {"get": read(
            "One version of an article with its body and its HTML rendering")},
        f"{kb}/preview": {"post": write("Render Markdown as the help centre shows it", PreviewIn)},
        f"{kb}/retrieve": {"get": read("What this process's live index retrieves for a customer's question",
                                       query_parameter("q", type="string", minLength=1, maxLength=MAX_QUESTION_CHARS))},
    }, [ArticleIn, ArticleEdit, RetireIn, RevertIn, PreviewIn])
