"""A KV cache that rows join and leave between decode steps without copying every row each step.

transformers' ``DynamicCache`` appends a token by concatenation, so every decode step copies every row's
keys and values, and so did merging newcomers and dropping finished rows: at 32 rows that was more than
half of a tiny model's step. ``RowCache`` keeps each layer's keys and values in buffers with spare rows
and columns, ``[rows, heads, columns, head_dim]``, and shows the model a view of the window in use:

- a forward pass writes its new columns in place (``reserve`` first makes room);
- rows are left-padded, each row's tokens ending at the window's last column; the 2-D attention mask
  lives in a buffer of the same layout (``attention_mask``);
- newcomers (a prefilled ``RowCache`` of their own, or one with nothing cached yet) are copied into
  free rows (``append``), a finished
  row is overwritten by the last live row (``remove``), and leading columns no live row attends to are
  dropped by moving the window's start;
- when the columns run out, the window moves back to column 0, or to buffers twice as wide when it
  fills half of them; the running batch starts with twice the rows it has (at most ``max_batch_size``).

A cell is written (computed, copied or zeroed) before the window shows it, so a masked cell holds zero
or a key the model computed (a prefill's padding), never uninitialised memory whose NaN would reach the
attention through the zero weight the mask gives it; buffers that are only moved to are not zeroed.

A prompt's keys and values depend only on its tokens, so a new prompt that starts like an earlier one
(the system prompt, the turns of the same chat) takes the earlier one's for those tokens
(``CachedPrompt``, ``preload``; ``prefix_store.PrefixStore`` keeps them) and its prefill runs over the rest alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from transformers.cache_utils import Cache, DynamicLayer

MIN_COLUMNS = 64
MIN_SHARED = 4  # fewer leading tokens in common are not worth a copy


@dataclass(frozen=True)
class CachedPrompt:
    """An earlier prompt's token ids and, per layer, its keys and values [heads, tokens, head_dim]."""

    token_ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def shared(self, prompt_ids: list[int]) -> int:
        """How many leading tokens of ``prompt_ids`` (all but its last) can be taken from this prompt."""
        n, limit = 0, min(len(prompt_ids) - 1, len(self.token_ids))
        while n < limit and prompt_ids[n] == self.token_ids[n]:
            n += 1
        return n if n >= MIN_SHARED else 0


class SlackLayer(DynamicLayer):
    """One layer's keys and values in buffers with spare room; ``keys``/``values`` view the window."""

    def __init__(self, cache: "RowCache"):
        super().__init__()
        self.cache = cache
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this pass's columns after the window; return the window including them."""
        c = self.cache
        if self.k is None:
            self.k = self._zeros(key_states)
            self.v = self._zeros(value_states)
            self.device, self.is_initialized = key_states.device, True
        end = c.end + key_states.shape[-2]
        self.k[:c.rows, :, c.end:end] = key_states
        self.v[:c.rows, :, c.end:end] = value_states
        self.keys, self.values = self.k[:c.rows, :, c.start:end], self.v[:c.rows, :, c.start:end]
        return self.keys, self.values

    def _zeros(self, like: torch.Tensor) -> torch.Tensor:
        c = self.cache
        return like.new_zeros((c.row_capacity, like.shape[1], c.column_capacity, like.shape[3]))

    def _empty(self, like: torch.Tensor) -> torch.Tensor:
        c = self.cache
        return like.new_empty((c.row_capacity, like.shape[1], c.column_capacity, like.shape[3]))

    def show(self) -> None:
        """Point ``keys``/``values`` at the cache's current window."""
        if self.k is not None:
            c = self.cache
            self.keys, self.values = self.k[:c.rows, :, c.start:c.end], self.v[:c.rows, :, c.start:c.end]


class RowCache(Cache):
    """The KV cache of one batch: ``rows`` rows over the columns ``[start, end)`` of every layer's buffers."""

    def __init__(self, rows: int, columns: int):
        self.rows, self.start, self.end = rows, 0, 0
        self.row_capacity, self.column_capacity = rows, max(columns, MIN_COLUMNS)
        self.mask = torch.zeros((self.row_capacity, self.column_capacity), dtype=torch.long)
        super().__init__(layer_class_to_replicate=partial(SlackLayer, self))  # a layer per attention layer

    @property
    def width(self) -> int:
        return self.end - self.start

    def window_mask(self) -> torch.Tensor:
        """The attention mask of the cached window, [rows, width]."""
        return self.mask[:self.rows, self.start:self.end]

    def attention_mask(self, new: torch.Tensor) -> torch.Tensor:
        """Reserve ``new.shape[1]`` columns, set their mask to ``new`` and return the mask a forward pass
        over them takes: the window's and theirs, [rows, width + new columns]."""
        self.reserve(new.shape[1])
        end = self.end + new.shape[1]
        self.mask[:self.rows, self.end:end] = new
        return self.mask[:self.rows, self.start:end]

    def advance(self, columns: int) -> None:
        """After a forward pass wrote ``columns`` new columns: they join the window."""
        self.end += columns
        self._show()

    def reserve(self, columns: int) -> None:
        """Make room for ``columns`` more columns after the window: move it back to column 0 while that
        leaves half the buffers free, else into buffers twice as wide."""
        if self.end + columns <= self.column_capacity:
            return
        if 2 * (self.width + columns) <= self.column_capacity:
            self._shift()
        else:
            self._relayout(self.row_capacity, max(2 * (self.width + columns), MIN_COLUMNS), lead=0)

    def preload(self, prompts: list[CachedPrompt | None], lengths: list[int]) -> None:
        """Before the first forward pass: row ``i`` starts with the first ``lengths[i]`` tokens of
        ``prompts[i]``, right-aligned on a window as wide as the longest."""
        width = max(lengths)
        donor = next(p for p in prompts if p is not None)
        while len(self.layers) < len(donor.keys):
            self.layers.append(self.layer_class_to_replicate())
        for index, layer in enumerate(self.layers):
            layer.k = donor.keys[index].new_zeros((self.row_capacity, donor.keys[index].shape[0],
                                                   self.column_capacity, donor.keys[index].shape[2]))
            layer.v = donor.values[index].new_zeros((self.row_capacity, donor.values[index].shape[0],
                                                     self.column_capacity, donor.values[index].shape[2]))
            layer.device, layer.is_initialized = layer.k.device, True
            for row, (prompt, n) in enumerate(zip(prompts, lengths)):
                if n:
                    layer.k[row, :, width - n:width] = prompt.keys[index][:, :n]
                    layer.v[row, :, width - n:width] = prompt.values[index][:, :n]
        for row, n in enumerate(lengths):
            self.mask[row, width - n:width] = 1
        self.start, self.end = 0, width
        self._show()

    def cached_prompt(self, row: int, token_ids: list[int]) -> CachedPrompt:
        """A copy of row ``row``'s keys and values (its attended columns: ``token_ids``, what it read so far).

        Raises:
            ValueError: the row attends to another number of columns than ``token_ids`` has tokens.
        """
        columns = self.window_mask()[row].nonzero().squeeze(1) + self.start
        if len(columns) != len(token_ids):
            raise ValueError(f"row {row} holds {len(columns)} tokens, not the {len(token_ids)} given")
        layers = self._filled()
        return CachedPrompt(list(token_ids), [layer.k[row, :, columns] for layer in layers],
                            [layer.v[row, :, columns] for layer in layers])

    def bytes_per_token(self) -> int:
        """What one token's keys and values take over all layers."""
        return sum(buffer.element_size() * buffer.shape[1] * buffer.shape[3]
                   for layer in self._filled() for buffer in (layer.k, layer.v))

    def reserve_rows(self, rows: int) -> None:
        """Make room for ``rows`` rows in all (a batch that will grow to that many moves its buffers once)."""
        if rows > self.row_capacity:
            self._relayout(rows, self.column_capacity, lead=self.start)

    def append(self, other: "RowCache") -> None:
        """Copy ``other``'s rows in after this cache's rows, right-aligned on the window's end."""
        n, m, width = self.rows, other.rows, max(self.width, other.width)
        rows_needed = n + m
        if rows_needed > self.row_capacity or width - self.width > self.start:
            capacity = max(rows_needed, 2 * self.row_capacity) if rows_needed > self.row_capacity else self.row_capacity
            self._relayout(capacity, max(self.column_capacity, 2 * width), lead=width - self.width)
        if width > self.width:  # widen to the left: zero what the window newly shows of the old rows
            start = self.end - width
            self.mask[:n, start:self.start] = 0
            for layer in self._filled():
                layer.k[:n, :, start:self.start] = 0
                layer.v[:n, :, start:self.start] = 0
            self.start = start
        split = self.end - other.width  # newcomers' tokens from here; zeros before
        self.mask[n:rows_needed, self.start:split] = 0
        self.mask[n:rows_needed, split:self.end] = other.window_mask()
        ours = self._filled()
        for layer in ours:
            layer.k[n:rows_needed, :, self.start:split] = 0
            layer.v[n:rows_needed, :, self.start:split] = 0
        if other.width:  # else the newcomers have no tokens cached yet (``Batch.join``)
            for mine, theirs in zip(ours, other._filled(), strict=True):
                mine.k[n:rows_needed, :, split:self.end] = theirs.keys
                mine.v[n:rows_needed, :, split:self.end] = theirs.values
        self.rows = rows_needed
        self._show()

    def remove(self, done: list[int]) -> list[int]:
        """Drop the rows at ``done``: each is overwritten by a live row from the end. Returns the old index
        of the row now at each index, then drops leading columns no row left attends to."""
        keep = self.rows - len(done)
        gone = set(done)
        holes = [i for i in done if i < keep]
        movers = [i for i in range(keep, self.rows) if i not in gone]
        order = list(range(keep))
        if holes:
            to, src = torch.tensor(holes), torch.tensor(movers)
            self.mask[to, self.start:self.end] = self.mask[src, self.start:self.end]
            for layer in self._filled():
                layer.k[to, :, self.start:self.end] = layer.k[src, :, self.start:self.end]
                layer.v[to, :, self.start:self.end] = layer.v[src, :, self.start:self.end]
            for hole, mover in zip(holes, movers):
                order[hole] = mover
        self.rows = keep
        used = self.window_mask().any(dim=0).nonzero()
        self.start += int(used[0]) if len(used) else self.width
        self._show()
        return order

    def _relayout(self, row_capacity: int, column_capacity: int, lead: int) -> None:
        """New buffers (left unfilled: a cell is written before the window shows it); the window is copied
        to start at column ``lead``."""
        width, rows = self.width, self.rows
        mask = torch.zeros((row_capacity, column_capacity), dtype=self.mask.dtype)
        mask[:rows, lead:lead + width] = self.window_mask()
        self.mask = mask
        self.row_capacity, self.column_capacity = row_capacity, column_capacity
        for layer in self._filled():
            k, v = layer._empty(layer.k), layer._empty(layer.v)
            k[:rows, :, lead:lead + width] = layer.k[:rows, :, self.start:self.end]
            v[:rows, :, lead:lead + width] = layer.v[:rows, :, self.start:self.end]
            layer.k, layer.v = k, v
        self.start, self.end = lead, lead + width

    def _shift(self) -> None:
        """Move the window to column 0 in place (the live rows' cells only; a cell past the window is
        written before any row attends to it)."""
        rows, width = self.rows, self.width
        self.mask[:rows, :width] = self.window_mask().clone()
        for layer in self._filled():
            layer.k[:rows, :, :width] = layer.k[:rows, :, self.start:self.end].clone()
            layer.v[:rows, :, :width] = layer.v[:rows, :, self.start:self.end].clone()
        self.start, self.end = 0, width
        self._show()

    def _filled(self) -> list[SlackLayer]:
        return [layer for layer in self.layers if layer.k is not None]

    def _show(self) -> None:
        for layer in self.layers:
            layer.show()
