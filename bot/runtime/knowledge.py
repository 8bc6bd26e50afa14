"""This process's live knowledge index: what each reply retrieves, rebuilt when an article changes.

``LiveKnowledge`` keeps one ``loopdesk.knowledge.KnowledgeIndex`` of the published articles in
memory and follows the store (``bot.runtime.following``): at every ``kb:changes`` announcement,
and every ``resync_s`` seconds anyway, it compares ``kb:revision`` with the index's revision and
rebuilds the index when they differ. A new index replaces the old one in one assignment: a reader
holds the old index or the new one, never half of one. Following starts at the first use, so an
app that never retrieves starts no threads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from bot.runtime.following import Following
from feedback_store import FeedbackStore
from loopdesk.config import Settings
from loopdesk.knowledge import Hit, KnowledgeIndex, Passage, customer_query

log = logging.getLogger(__name__)

RESYNC_S = 1.0  # a missed announcement costs at most this long (one GET of kb:revision per period)


@dataclass(frozen=True)
class Retrieval:
    """What one query found: the best ``candidates`` (any positive score, best first), the ``hits``
    among them that reach ``min_score`` and their paragraphs (``passages``), at index ``revision``."""

    query: str
    candidates: list[Hit]
    hits: list[Hit]
    passages: list[Passage]
    min_score: float
    revision: int

    @property
    def top_score(self) -> float:
        return self.candidates[0].score if self.candidates else 0.0

    @property
    def fits(self) -> bool:
        """Whether the best article reaches ``min_score``: if not, the bot does not generate."""
        return self.top_score >= self.min_score


class LiveKnowledge:
    """The published articles of the knowledge base, indexed in memory and kept current."""

    def __init__(self, store: FeedbackStore, settings: Settings, resync_s: float = RESYNC_S):
        self.store = store
        self.top_k = settings.kb_top_k
        self.min_score = settings.kb_min_score
        self.resync_s = resync_s
        self._index = KnowledgeIndex([], revision=-1, min_score=self.min_score)
        self._following: Following | None = None
        self._start_lock = threading.Lock()
        self._sync_lock = threading.Lock()

    def start(self) -> None:
        """Build the index and follow changes (once; later calls return at once)."""
        with self._start_lock:
            if self._following is not None:
                return
            following = Following("knowledge", self.store.knowledge.listen, self.sync, self.resync_s)
            try:
                following.start()
            except Exception:
                following.stop()
                raise
            self._following = following

    def stop(self) -> None:
        with self._start_lock:
            if self._following is not None:
                self._following.stop()
                self._following = None

    @property
    def index(self) -> KnowledgeIndex:
        """The current index (following starts here on first use)."""
        self.start()
        return self._index

    def sync(self) -> bool:
        """Rebuild the index if the knowledge base's revision moved; True when it did."""
        with self._sync_lock:
            if self.store.knowledge.revision() == self._index.revision:
                return False
            started = time.perf_counter()
            snapshot = self.store.knowledge.published()
            self._index = KnowledgeIndex(snapshot.articles, snapshot.revision, self.min_score)
        log.info("knowledge index: %d published articles at revision %d, built in %.0f ms",
                 len(snapshot.articles), snapshot.revision, 1000 * (time.perf_counter() - started))
        return True

    def retrieve(self, query: str, k: int | None = None) -> Retrieval:
        """The ``k`` (default ``kb_top_k``) best articles for ``query``, and which of them fit."""
        index = self.index  # one index for the whole retrieval, whatever a rebuild does meanwhile
        candidates = index.search(query, k=self.top_k if k is None else k, min_score=0.0)
        hits = [h for h in candidates if h.score >= self.min_score]
        return Retrieval(query, candidates, hits, index.passages(hits), self.min_score, index.revision)

    def for_customer(self, messages: Sequence[str]) -> Retrieval:
        """What a reply to the customer's ``messages`` (oldest first) retrieves (``customer_query``)."""
        return self.retrieve(customer_query(messages))
