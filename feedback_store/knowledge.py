"""The knowledge base: help-centre articles with every version kept, edits checked against the
version they were based on, all-or-nothing imports, and one announcement per change.

Every write is one Lua script: it checks the version of each article it touches, stores the
new versions, bumps ``kb:revision`` and publishes one message on ``kb:changes``, or fails and
writes nothing. An article's current version is the length of its version list.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import redis
from pydantic import ValidationError

from feedback_store.errors import ConflictError, NotFoundError, ValidationFailed
from feedback_store.ids import MAX_INDEX
from feedback_store.keys import Keys
from feedback_store.lua import Script
from feedback_store.records import Article
from loopdesk.excerpts import quoted
from loopdesk.articles import ArticleDraft

Action = Literal["create", "update", "retire", "revert", "import"]
IMPORT_RETRIES = 3

_WRITE = """
-- KEYS: revision, ids, then (current, versions) per article
-- ARGV: changes channel, announcement json without its revision, then (id, expected version, json) per article
local n = (#KEYS - 2) / 2
for i = 0, n - 1 do
  local id, expected = ARGV[2 + 3 * i], tonumber(ARGV[3 + 3 * i])
  local have = redis.call('LLEN', KEYS[4 + 2 * i])
  if have ~= expected then
    if expected == 0 then
      return fail('CONFLICT', 'article ' .. id .. ' already exists (version ' .. have .. '): edit it instead')
    end
    if have == 0 then return fail('NOTFOUND', 'no knowledge article ' .. id) end
    return fail('CONFLICT', 'article ' .. id .. ' is now at version ' .. have .. ' but this change was based on version '
      .. expected .. ': reload the article and make the change again')
  end
end
for i = 0, n - 1 do
  local json = ARGV[4 + 3 * i]
  redis.call('SET', KEYS[3 + 2 * i], json)
  redis.call('RPUSH', KEYS[4 + 2 * i], json)
  redis.call('SADD', KEYS[2], ARGV[2 + 3 * i])
end
local revision = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], '{"revision": ' .. revision .. ', ' .. string.sub(ARGV[2 + 3 * n], 2))
return revision
"""


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line a person can act on: ``field: problem; field: problem``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "article"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def draft(**fields: Any) -> ArticleDraft:
    """Validate article content, or raise ValidationFailed saying what is wrong."""
    try:
        return ArticleDraft(**fields)
    except ValidationError as exc:
        name = fields.get("id")
        where = f"article {quoted(name)}" if isinstance(name, str) and name else "article"
        raise ValidationFailed(f"invalid {where}: {validation_message(exc)}") from None


@dataclass(frozen=True)
class KnowledgeSnapshot:
    """Articles and the knowledge-base revision they were read at, read in one consistent step."""

    revision: int
    articles: list[Article]


@dataclass(frozen=True)
class ImportResult:
    """What an import did: new ids, ids that got a new version, ids left as they were."""

    revision: int
    created: list[str]
    updated: list[str]
    unchanged: list[str]


class Knowledge:
    """Knowledge-base operations: ``store.knowledge.create(...)``, ``.update(...)``, ``.published()``."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self._r = client
        self._keys = keys
        self._write_script = Script(client, _WRITE)

    # reads ---------------------------------------------------------------------------
    def get(self, article_id: str) -> Article:
        """The article's current version."""
        raw = self._r.get(self._keys.kb_article(article_id))
        if raw is None:
            raise NotFoundError(f"no knowledge article {article_id!r}")
        return Article.model_validate_json(raw)

    def get_version(self, article_id: str, version: int) -> Article:
        """One earlier (or the current) version of the article."""
        key = self._keys.kb_versions(article_id)
        raw = self._r.lindex(key, version - 1) if 1 <= version <= MAX_INDEX else None
        if raw is None:
            count = self._r.llen(key)
            if not count:
                raise NotFoundError(f"no knowledge article {article_id!r}")
            shown = version if version <= MAX_INDEX else f"above {MAX_INDEX}"
            raise NotFoundError(f"article {article_id!r} has versions 1 to {count}; there is no version {shown}")
        return Article.model_validate_json(raw)

    def history(self, article_id: str) -> list[Article]:
        """Every version of the article, oldest first."""
        raws = self._r.lrange(self._keys.kb_versions(article_id), 0, -1)
        if not raws:
            raise NotFoundError(f"no knowledge article {article_id!r}")
        return [Article.model_validate_json(raw) for raw in raws]

    def revision(self) -> int:
        """The knowledge base's revision: +1 on every change or import."""
        return int(self._r.get(self._keys.kb_revision()) or 0)

    def snapshot(self) -> KnowledgeSnapshot:
        """Every article (published and retired) with the revision, read consistently."""
        k = self._keys

        def read(pipe: redis.client.Pipeline) -> KnowledgeSnapshot:
            ids = sorted(pipe.smembers(k.kb_ids()))
            raws = pipe.mget([k.kb_article(i) for i in ids]) if ids else []
            revision = int(pipe.get(k.kb_revision()) or 0)
            pipe.multi()
            pipe.get(k.kb_revision())  # EXEC fails, and the read is retried, if a write came in between
            return KnowledgeSnapshot(revision, [Article.model_validate_json(raw) for raw in raws if raw])

        return self._r.transaction(read, k.kb_revision(), value_from_callable=True)

    def published(self) -> KnowledgeSnapshot:
        """The published articles and the revision they belong to: what a retrieval index holds."""
        snap = self.snapshot()
        return KnowledgeSnapshot(snap.revision, [a for a in snap.articles if a.status == "published"])

    def list(self, status: str | None = None, text: str = "") -> list[Article]:
        """Current articles by id, optionally of one status and matching ``text`` in id, title or tags."""
        if status not in (None, "published", "retired"):
            raise ValidationFailed(f"status must be 'published' or 'retired', got {quoted(status)}")
        needle = text.strip().lower()
        return [a for a in self.snapshot().articles
                if (status is None or a.status == status)
                and (not needle or needle in a.id or needle in a.title.lower()
                     or any(needle in tag for tag in a.tags))]

    # writes --------------------------------------------------------------------------
    def create(self, article_id: str, title: str, body: str, tags: Iterable[str] = (),
               by: str = "cli") -> Article:
        """Add a new published article (version 1); an existing id is a ConflictError."""
        content = draft(id=article_id, title=title, body=body, tags=list(tags))
        article = self._version(content, 1, by)
        self._write([(article, 0)], {"article_id": article.id, "version": 1, "action": "create"})
        return article

    def update(self, article_id: str, base_version: int, by: str, title: str | None = None,
               body: str | None = None, tags: Iterable[str] | None = None,
               status: str | None = None) -> Article:
        """Save an edit made on ``base_version`` as a new version (fields left None are kept).

        An edit based on an older version than the current one is a ConflictError naming both;
        an edit that changes nothing writes nothing and returns the current version.
        """
        current = self._current(article_id, base_version)
        changes = {"title": title, "body": body, "tags": None if tags is None else list(tags), "status": status}
        fields = {**current.content().model_dump(), **{k: v for k, v in changes.items() if v is not None}}
        return self._change(current, draft(**fields), by, "update")

    def retire(self, article_id: str, base_version: int, by: str) -> Article:
        """Take the article out of retrieval (a new version with status ``retired``)."""
        current = self._current(article_id, base_version)
        if current.status == "retired":
            raise ConflictError(f"article {article_id!r} is already retired (version {current.version})")
        return self._change(current, current.content().model_copy(update={"status": "retired"}), by, "retire")

    def revert(self, article_id: str, to_version: int, base_version: int, by: str) -> Article:
        """Make the content of ``to_version`` current again, as a new version."""
        current = self._current(article_id, base_version)
        old = self.get_version(article_id, to_version)
        return self._change(current, old.content(), by, "revert")

    def import_articles(self, drafts: Sequence[ArticleDraft], by: str = "import") -> ImportResult:
        """Make the knowledge base hold these articles: all of them, or (on any error) none.

        New ids are created, changed articles get a new version, unchanged ones are left
        alone (so importing the same files twice changes nothing). The write is one script
        with one announcement; if an article changes while the import runs, it starts over.
        """
        seen: set[str] = set()
        for item in drafts:
            if item.id in seen:
                raise ValidationFailed(f"article id {item.id!r} appears twice in the import")
            seen.add(item.id)
        for attempt in itertools.count(1):
            try:
                return self._import_once(drafts, by)
            except ConflictError:
                if attempt == IMPORT_RETRIES:
                    raise

    # announcements -------------------------------------------------------------------
    def listen(self, stop: Callable[[], bool], timeout_s: float = 1.0) -> Iterator[dict[str, Any]]:
        """Yield ``{"revision", "article_id", "version", "action", ...}`` per change until ``stop()``."""
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self._keys.kb_changes_channel())
        try:
            while not stop():
                message = pubsub.get_message(timeout=timeout_s)
                if message and message.get("type") == "message":
                    yield json.loads(message["data"])
        finally:
            pubsub.close()

    # helpers -------------------------------------------------------------------------
    def _current(self, article_id: str, base_version: int) -> Article:
        current = self.get(article_id)
        if current.version != base_version:
            raise ConflictError(
                f"article {article_id!r} is now at version {current.version} but this change was based on "
                f"version {base_version}: reload the article and make the change again")
        return current

    def _import_once(self, drafts: Sequence[ArticleDraft], by: str) -> ImportResult:
        currents = self._r.mget([self._keys.kb_article(d.id) for d in drafts]) if drafts else []
        created, updated, unchanged, writes = [], [], [], []
        for item, raw in zip(drafts, currents):
            current = Article.model_validate_json(raw) if raw else None
            if current is None:
                created.append(item.id)
                writes.append((self._version(item, 1, by), 0))
            elif current.content() != item.content():
                updated.append(item.id)
                writes.append((self._version(item, current.version + 1, by), current.version))
            else:
                unchanged.append(item.id)
        if not writes:
            return ImportResult(self.revision(), created, updated, unchanged)
        message = {"article_id": None, "version": None, "action": "import", "created": created, "updated": updated}
        return ImportResult(self._write(writes, message), created, updated, unchanged)

    @staticmethod
    def _version(content: ArticleDraft, version: int, by: str) -> Article:
        try:
            return Article(**content.content().model_dump(), version=version, updated_at=time.time(), updated_by=by)
        except ValidationError as exc:
            raise ValidationFailed(f"invalid article {quoted(content.id)}: {validation_message(exc)}") from None

    def _change(self, current: Article, content: ArticleDraft, by: str, action: Action) -> Article:
        if content == current.content():
            return current
        article = self._version(content, current.version + 1, by)
        self._write([(article, current.version)],
                    {"article_id": article.id, "version": article.version, "action": action})
        return article

    def _write(self, writes: list[tuple[Article, int]], message: dict[str, Any]) -> int:
        k = self._keys
        keys = [k.kb_revision(), k.kb_ids()]
        args: list[Any] = [k.kb_changes_channel()]
        for article, expected in writes:
            keys += [k.kb_article(article.id), k.kb_versions(article.id)]
            args += [article.id, expected, article.model_dump_json()]
        return int(self._write_script(keys, [*args, json.dumps(message)]))
