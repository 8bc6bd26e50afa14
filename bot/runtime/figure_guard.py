"""Grounded figures: while a reply is sampled, it can state no number that its prompt does not give.

A figure is a run of ASCII digit groups joined by single separators (``. , : / -`` or a space) and the
letters glued to its end: ``8-12``, ``9.95``, ``0800 555 0199``, ``8am`` (``FIGURE``). A reply's allowed
figures are those of its prompt that the shop or the bot wrote (the system prompt, the retrieved help
articles, the bot's earlier turns: ``Prompt.grounds``; not the customer's words, so that a customer
cannot make the bot state a figure by writing it) and of the shop's contact line
(``Settings.contact_address``, which the bot's own notices state). Each decode step, a row's ``FigureGuard`` bans the tokens that would make
the reply state any other figure:

- outside a figure, a token that starts one (``" 30"``) must start an allowed figure;
- inside one, a token may go on towards an allowed figure (``"8-"`` → ``"12"`` for ``8-12``, ``"8"`` →
  ``"am"`` for ``8am``), and a token that ends the figure (any other character, or EOS) only where it is
  complete; a separator after a complete figure is the text's own (``2-year``, ``$50.``, ``3 days``);
- at the reply's last token (its budget), one that leaves a figure unfinished is banned where another
  finishes it; a reply cut there may still end inside one (a prefix of an allowed figure).

The allowed tokens are renormalised. (Handing the banned figure starts' probability to the allowed ones
instead, so that the model states the prompt's figure wherever it meant to state one, was tried: on the
knowledge benchmark it did not raise an edit's new value beyond the noise, and it put passage figures
into the wrong places, one reply in 13 with a wrong fact on the base model against one in 30.) Numbers
written in words are not figures. Replies are sampled from the guarded distribution, so the log-probs
logged with them (the behaviour policy of PPO's logged steps) are that distribution's.

Why: the model states figures from memory as well as from its passage, and training on ratings of
the articles as shipped teaches it their values: an edited article's old refund time came back in
10-17% of a trained bot's replies. A support bot must not state a refund window, price or phone number
its help articles do not give. On by default (``Settings.figure_guard``); the built-in engine applies
it, the vLLM backend does not (it says so when it starts).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Iterable

import torch

SEPARATORS = ".,:/- "
_START = r"(?<![A-Za-z0-9])"  # digits right after a letter or digit are a name's ("v2", "B2B"), not a figure
FIGURE = re.compile(_START + r"[0-9]+(?:[.,:/ -][0-9]+)*[A-Za-z]*")
RUN = re.compile(_START + r"[0-9]+(?:[.,:/ -][0-9]+)*(?:[.,:/ -]|[A-Za-z]+)?")  # a figure and what may follow
OPEN_RUN = re.compile(RUN.pattern + r"\Z")
LETTERS = re.compile(r"[A-Za-z]*")
RECENT_CHARS = 64  # the end of the reply kept to read figures across tokens (longer than any figure)


def figures(*texts: str) -> frozenset[str]:
    """Every figure stated in ``texts``."""
    return frozenset(f for text in texts for f in FIGURE.findall(text))


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def _is_letter(c: str) -> bool:
    return "a" <= c.lower() <= "z"


class FigureVocabulary:
    """A tokenizer's token texts, sorted by what they do to a figure that is open (built once per engine).

    - ``digits``: a digit somewhere; ``spacers``: a separator first, then a separator or nothing (they keep
      a figure open): checked one by one;
    - ``letters``: a letter first: glued to a figure's digits, they go on with it;
    - ``closing``: the rest (EOS apart): they end an open figure, wherever it stands.
    """

    def __init__(self, tokenizer: Any, size: int, eos_id: int):
        known = len(tokenizer)
        self.texts = [tokenizer.decode([i]) if i < known else "" for i in range(size)]
        self.eos_id, self.size = eos_id, size
        kinds: dict[str, list[int]] = defaultdict(list)
        self.whole_letters: dict[str, list[int]] = defaultdict(list)  # all-letter token text -> ids
        self.letters_then: dict[str, list[int]] = defaultdict(list)  # leading letters -> ids with more after
        for i, text in enumerate(self.texts):
            kind = self._kind(i, text)
            kinds[kind].append(i)
            if kind == "letters":
                lead = LETTERS.match(text).group()
                (self.whole_letters[lead] if lead == text else self.letters_then[lead]).append(i)
        as_ids = {k: torch.tensor(v, dtype=torch.long) for k, v in kinds.items()}
        empty = torch.empty(0, dtype=torch.long)
        self.digits, self.spacers = kinds["digits"], kinds["spacers"]
        self.digit_set = frozenset(self.digits)
        self.closing = as_ids.get("closing", empty)
        self.letters = as_ids.get("letters", empty)
        self.letter_mask = torch.zeros(size, dtype=torch.bool)
        self.letter_mask[self.letters] = True

    def _kind(self, i: int, text: str) -> str:
        if i == self.eos_id:
            return "eos"
        if any(_is_digit(c) for c in text):
            return "digits"
        if text[:1] and text[0] in SEPARATORS and (len(text) == 1 or text[1] in SEPARATORS):
            return "spacers"
        return "letters" if text[:1] and _is_letter(text[0]) else "closing"

    def guard(self, allowed: Iterable[str]) -> "FigureGuard":
        return FigureGuard(self, frozenset(allowed))


class FigureGuard:
    """One reply's figure state: the allowed figures, and the figure its text ends in (if open)."""

    def __init__(self, vocabulary: FigureVocabulary, allowed: frozenset[str]):
        self.vocabulary = vocabulary
        self.allowed = allowed
        self.prefixes = frozenset(f[:k] for f in allowed for k in range(1, len(f) + 1))
        self.recent = ""  # the reply's last characters
        self.tail = ""  # the figure the reply ends in, with a separator or letters after it, while it may go on
        self._outside: dict[tuple[bool, bool], torch.Tensor] = {}  # banned outside a figure (see _banned)

    def complete(self, run: str) -> bool:
        """Whether ``run`` (a figure with any separators after it) ends as an allowed figure."""
        return run.rstrip(SEPARATORS) in self.allowed

    def fits(self, text: str, final: bool = False) -> bool:
        """Whether ``text`` may follow the reply so far: every figure it ends is allowed, and a figure it
        leaves open is on the way to one (``final``, the reply's last token: is one)."""
        joined = self.recent + text
        for match in RUN.finditer(joined, max(0, len(self.recent) - len(self.tail) - 1)):
            run = match.group()
            if match.end() < len(self.recent):
                continue  # ended before: checked then
            if match.end() == len(joined):
                if not self.complete(run) and (final or run not in self.prefixes):
                    return False
            elif not self.complete(run):
                return False
        return True

    def banned(self, final: bool = False) -> torch.Tensor:
        """The token ids the next token may not be; ``final``: it is the reply's last (cut by its budget), and
        may leave no figure unfinished where one token can finish it.

        Where every token would be banned (an open figure no single token finishes at the last token, or a
        vocabulary without the figure's next character), the last token may leave it unfinished, and
        otherwise EOS ends the reply there.
        """
        ban = self._banned(final)
        if len(ban) < self.vocabulary.size or torch.unique(ban).numel() < self.vocabulary.size:
            return ban
        if final:
            return self.banned()
        return ban[ban != self.vocabulary.eos_id]

    def _banned(self, final: bool) -> torch.Tensor:
        vocab = self.vocabulary
        if not self.tail:  # the same every time, but after a letter or digit, and at the last token
            key = (self.recent[-1:].isascii() and self.recent[-1:].isalnum(), final)
            if key not in self._outside:
                self._outside[key] = torch.tensor(
                    [i for i in vocab.digits if not self.fits(vocab.texts[i], final)], dtype=torch.long)
            return self._outside[key]
        ban = [i for i in (*vocab.digits, *vocab.spacers) if not self.fits(vocab.texts[i], final)]
        ends = self.complete(self.tail)
        parts = [torch.tensor(ban, dtype=torch.long)]
        if not ends:
            parts += [vocab.closing, torch.tensor([vocab.eos_id], dtype=torch.long)]
        if self.tail[-1] in SEPARATORS:  # a letter now ends the figure
            if not ends:
                parts.append(vocab.letters)
        else:
            parts.append(self._unglued(final))
        return torch.cat(parts)

    def _unglued(self, final: bool) -> torch.Tensor:
        """Letter tokens that may not follow the open figure's digits (or letters): all but those that go on
        towards an allowed figure's letters (``8`` + ``am``; ``final``: only all the way) or complete them and
        end it (``8a`` + ``m,``)."""
        vocab, tail = self.vocabulary, self.tail
        mask = vocab.letter_mask.clone()
        for figure in self.allowed:
            rest = figure[len(tail):] if figure.startswith(tail) else ""
            if not rest or not _is_letter(rest[0]):
                continue
            shortest = len(rest) if final else 1
            for ids in [vocab.whole_letters.get(rest[:k], []) for k in range(shortest, len(rest) + 1)] + \
                    [vocab.letters_then.get(rest, [])]:
                mask[torch.tensor(ids, dtype=torch.long)] = False
        return mask.nonzero().squeeze(-1)

    def advance(self, token: int) -> None:
        """Take the token sampled next into the state."""
        if token == self.vocabulary.eos_id:
            self.recent = self.tail = ""
            return
        self.recent = (self.recent + self.vocabulary.texts[token])[-RECENT_CHARS:]
        if self.tail or token in self.vocabulary.digit_set:  # no figure opens without a digit
            open_run = OPEN_RUN.search(self.recent)
            self.tail = open_run.group() if open_run else ""

