"""The keys and values of recent prompts and replies, so that a chat's next turn does not read its past again.

A turn's prompt starts with all that the chat's previous turn saw (system prompt, help articles, earlier
turns) and that turn's reply. ``PrefixStore`` keeps, per adapter version, the cached prompts
(``kv_cache.CachedPrompt``) of finished replies (prompt and reply) and of prompts just prefilled, least
recently used out first once their keys and values pass ``max_bytes`` (``Settings.prefix_cache_mb``).
``match`` finds the one that shares the longest start with a new prompt, whatever other chats came in
between: each entry is indexed by chained hashes of its ``BLOCK_TOKENS``-token blocks, so a lookup costs
one hash per block of the new prompt, however many entries there are.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from bot.runtime.kv_cache import CachedPrompt, RowCache

BLOCK_TOKENS = 16


@dataclass(eq=False)
class _Entry:
    version: str
    prompt: CachedPrompt
    blocks: list[int]
    nbytes: int


def block_hashes(token_ids: list[int], blocks: int) -> list[int]:
    """Chained hashes of the first ``blocks`` blocks: the k-th stands for the first k blocks' tokens."""
    hashes, chained = [], 0
    for start in range(0, blocks * BLOCK_TOKENS, BLOCK_TOKENS):
        chained = hash((chained, tuple(token_ids[start:start + BLOCK_TOKENS])))
        hashes.append(chained)
    return hashes


def starts_with(token_ids: list[int], prefix: list[int]) -> bool:
    return len(prefix) <= len(token_ids) and token_ids[:len(prefix)] == prefix


class PrefixStore:
    """Cached prompts per adapter version within a byte budget, found by the longest start they share."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # by id(prompt), least recently used first
        self._index: dict[tuple[str, int], set[int]] = {}  # (version, block hash) → entries holding those blocks

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, version: str, prompt_ids: list[int]) -> CachedPrompt | None:
        """The entry of ``version`` sharing the most whole leading blocks with ``prompt_ids`` (its last token
        aside), the most recently used among equals; None when none shares a block."""
        hashes = block_hashes(prompt_ids, (len(prompt_ids) - 1) // BLOCK_TOKENS)
        for chained in reversed(hashes):
            holders = self._index.get((version, chained))
            if holders:
                key = next(k for k in reversed(self._entries) if k in holders) if len(holders) > 1 \
                    else next(iter(holders))
                self._entries.move_to_end(key)
                return self._entries[key].prompt
        return None

    def keep(self, version: str, cache: RowCache, row: int, token_ids: list[int],
             source: CachedPrompt | None = None) -> CachedPrompt | None:
        """Keep row ``row`` of ``cache`` (its cached tokens are ``token_ids``) under ``version``; return what
        now holds those tokens (None when they alone pass the budget).

        ``source`` is the entry the row started from (``match``): nothing is copied when it holds all of
        ``token_ids`` already, and it is dropped when the new entry holds all of it.
        """
        if source is not None and starts_with(source.token_ids, token_ids):
            if id(source) in self._entries:
                self._entries.move_to_end(id(source))
            return source
        blocks = len(token_ids) // BLOCK_TOKENS
        if not blocks or cache.bytes_per_token() * len(token_ids) > self.max_bytes:
            return None
        prompt = cache.cached_prompt(row, token_ids)
        if source is not None and starts_with(token_ids, source.token_ids):
            self._remove(id(source))
        entry = _Entry(version, prompt, block_hashes(token_ids, blocks),
                       sum(t.element_size() * t.numel() for t in (*prompt.keys, *prompt.values)))
        self._entries[id(prompt)] = entry
        for chained in entry.blocks:
            self._index.setdefault((version, chained), set()).add(id(prompt))
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes:
            self._remove(next(iter(self._entries)))
        return prompt

    def drop(self, version: str) -> None:
        """Forget every entry of ``version`` (its adapter was deleted)."""
        for key in [k for k, e in self._entries.items() if e.version == version]:
            self._remove(key)

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()
        self.nbytes = 0

    def _remove(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.nbytes -= entry.nbytes
        for chained in entry.blocks:
            holders = self._index[(entry.version, chained)]
            holders.discard(key)
            if not holders:
                del self._index[(entry.version, chained)]
