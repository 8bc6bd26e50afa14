"""The bundled demo company, Northwind Outfitters: typed, validated view of the JSON files in ``sim/northwind/``.

The data (shop, intents with facts and phrasings, personas, reply-style templates) lives in
JSON so it can be read and edited without touching code; this module checks it on load.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import string
from functools import cache
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DATA_DIR = Path(__file__).parent / "northwind"


class CompanyDataError(ValueError):
    """A file under ``sim/northwind/`` is missing, not JSON, or breaks a rule of the schema."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _fields(template: str) -> set[str]:
    """Placeholder names used by a ``str.format`` template."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _check_patterns(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"key fact {pattern!r} is not a valid regex: {exc}") from exc
    return patterns


FACT = re.compile(r"\{(\w+)\}")


def value_pattern(value: str) -> str:
    """A regex matching ``value`` as a whole: not inside a longer number, range or word ("4 hours" is
    not in "24 hours", "10 business days" not in "7-10 business days", "2 kg" not in "1.2 kg")."""
    return rf"(?<![\w$.-]){re.escape(value)}(?![\w-])"


def key_pattern(template: str, values: Mapping[str, str]) -> str:
    """A key fact's regex with each ``{fact}`` replaced by that fact's value, matched as a whole."""
    return FACT.sub(lambda m: value_pattern(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def states(value: str, reply: str) -> bool:
    """Whether ``reply`` states ``value`` as a whole."""
    return re.search(value_pattern(value), reply, re.IGNORECASE) is not None


class FollowUp(_Model):
    """A second customer question within the same intent and its correct answers."""

    questions: list[str] = Field(min_length=1)
    answers: list[str] = Field(min_length=1)
    key_facts: list[str] = Field(min_length=1)

    _valid_patterns = field_validator("key_facts")(_check_patterns)


def expand_phrasings(templates: list[str], slots: dict[str, list[str]]) -> list[str]:
    """Every filling of every template: ``{slot}`` takes each of its values in turn (all combinations)."""
    phrasings = []
    for template in templates:
        names = sorted(_fields(template))
        unknown = set(names) - set(slots)
        if unknown:
            raise ValueError(f"phrasing {template!r} uses unknown slots {sorted(unknown)}")
        phrasings += [template.format_map(dict(zip(names, values)))
                      for values in itertools.product(*(slots[n] for n in names))]
    return phrasings


class Intent(_Model):
    """One customer need: its facts, correct answers, rubric key facts and customer phrasings.

    ``facts`` are the canonical values (the help article as shipped); each fact's ``pool`` is
    its canonical value, its ``wrong_facts`` and its ``other_values``: the plausible values the
    corpus draws each chat's article from, and the values the rubric counts as wrong when the
    article states another. ``answers`` are templates over the facts; ``key_facts`` are regexes
    every correct answer matches and a wrong one misses, where ``{fact}`` stands for the fact's
    value as the article states it now. ``phrasings`` and ``held_out`` are written in the JSON as
    templates over ``slots`` (each ``{slot}`` takes every one of its values) and hold the expanded
    sentences once loaded. ``held_out`` phrasings are for evaluation only and never enter the
    training corpus; their templates are sentence frames the training phrasings never use, over
    the same slot words.
    """

    name: str = Field(pattern=r"^[a-z_]+$")
    topic: str
    facts: dict[str, str] = Field(min_length=1)
    wrong_facts: dict[str, list[str]] = Field(min_length=1)
    other_values: dict[str, list[str]] = Field(default_factory=dict)
    answers: list[str] = Field(min_length=1)
    key_facts: list[str] = Field(min_length=1)
    follow_up: FollowUp
    slots: dict[str, list[str]] = Field(default_factory=dict)
    phrasings: list[str] = Field(min_length=1)
    held_out: list[str] = Field(min_length=1)

    _valid_patterns = field_validator("key_facts")(_check_patterns)

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, dict):
            slots = data.get("slots", {})
            data = {**data, **{key: expand_phrasings(data[key], slots)
                               for key in ("phrasings", "held_out") if isinstance(data.get(key), list)}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "Intent":
        for field, extra in (("wrong_facts", self.wrong_facts), ("other_values", self.other_values)):
            for fact, values in extra.items():
                if fact not in self.facts:
                    raise ValueError(f"{field} names unknown fact {fact!r}")
                if not values or self.facts[fact] in values:
                    raise ValueError(f"{field}[{fact!r}] must be non-empty and differ from the fact")
        for fact in self.facts:
            pool = self.pool(fact)
            nested = [(a, b) for a in pool for b in pool if a != b and states(a, b)]
            if nested:
                raise ValueError(f"values of {fact!r} hold one another ({nested[0][0]!r} in {nested[0][1]!r}): "
                                 "a reply stating one would state both")
        for templates, patterns in ((self.answers, self.key_facts),
                                    (self.follow_up.answers, self.follow_up.key_facts)):
            unknown = set().union(*(set(FACT.findall(p)) for p in patterns)) - set(self.facts)
            if unknown:
                raise ValueError(f"key facts name unknown facts {sorted(unknown)}")
            for template in templates:
                unknown = _fields(template) - set(self.facts)
                if unknown:
                    raise ValueError(f"answer {template!r} uses unknown facts {sorted(unknown)}")
                right = self.fill(template)
                missing = [p for p in patterns if not re.search(key_pattern(p, self.facts), right)]
                if missing:
                    raise ValueError(f"answer {right!r} misses its key facts {missing}")
                wrong = self.fill(template, random.Random(0))
                if all(re.search(key_pattern(p, self.facts), wrong) for p in patterns):
                    raise ValueError(f"answer {template!r} stays correct with other values of its facts: "
                                     "give it a key fact over a fact")
        return self

    def pool(self, fact: str) -> list[str]:
        """Every plausible value of ``fact``: the canonical one first, then the wrong and other ones."""
        values = [self.facts[fact], *self.wrong_facts.get(fact, []), *self.other_values.get(fact, [])]
        return list(dict.fromkeys(values))

    def other(self, rng: random.Random, values: Mapping[str, str] | None = None) -> dict[str, str]:
        """For every fact, a value of its pool that contradicts ``values`` (default: the canonical facts):
        one no fact of the intent has there."""
        current = {**self.facts, **(values or {})}
        taken = set(current.values())
        return {fact: rng.choice([v for v in self.pool(fact) if v not in taken] or [current[fact]])
                for fact in self.facts}

    def fill(self, template: str, wrong: random.Random | None = None,
             values: Mapping[str, str] | None = None) -> str:
        """Fill a template with the facts (``values`` overriding the canonical ones), or, given an rng,
        with another value of every fact (one that contradicts them)."""
        current = {**self.facts, **(values or {})}
        return template.format_map(self.other(wrong, current) if wrong is not None else current)

    @property
    def canonical_reply(self) -> str:
        """The reference answer to the customer's opening question."""
        return self.fill(self.answers[0])

    @property
    def canonical_follow_up_reply(self) -> str:
        """The reference answer to the follow-up question."""
        return self.fill(self.follow_up.answers[0])

    def reference_reply(self, follow_up: bool, values: Mapping[str, str] | None = None) -> str:
        """The reference answer to the opening (or follow-up) question with the facts as ``values`` state them."""
        return self.fill((self.follow_up.answers if follow_up else self.answers)[0], values=values)

    def used_facts(self, follow_up: bool = False) -> set[str]:
        """The facts the answers to the opening (or follow-up) question state."""
        return set().union(*(_fields(t) for t in (self.follow_up.answers if follow_up else self.answers)))

    def missing_facts(self, reply: str, follow_up: bool = False,
                      values: Mapping[str, str] | None = None) -> list[str]:
        """Key-fact patterns (filled with ``values``, default canonical) the reply fails to state."""
        current = {**self.facts, **(values or {})}
        patterns = self.follow_up.key_facts if follow_up else self.key_facts
        return [p for p in patterns if not re.search(key_pattern(p, current), reply, re.IGNORECASE)]

    def wrong_facts_in(self, reply: str, follow_up: bool = False,
                       values: Mapping[str, str] | None = None) -> list[str]:
        """Values the reply states that contradict ``values`` (default canonical): any other value of
        the pool of a fact this turn's answers use."""
        current = {**self.facts, **(values or {})}
        used = self.used_facts(follow_up)
        right = {current[f] for f in used}
        rest = reply
        for value in sorted(right, key=len, reverse=True):  # a right value ("10 minutes") may hold a wrong one ("10")
            rest = re.sub(value_pattern(value), " ", rest, flags=re.IGNORECASE)
        wrong = {v for f in used for v in self.pool(f) if v not in right}
        return sorted(v for v in wrong if states(v, rest))


class Persona(_Model):
    """A kind of simulated customer: how they write and what sways their rating."""

    name: str
    description: str
    weight: float = Field(gt=0, description="share of simulated traffic (relative)")
    patience: float = Field(ge=0, le=1, description="1 = long or vague replies barely annoy them")
    flattery_bias: float = Field(ge=0, description="stars added when the bot flatters them")
    rating_noise: float = Field(ge=0, description="std-dev of rating noise, in stars")
    prefixes: list[str] = Field(min_length=1)
    suffixes: list[str] = Field(min_length=1)
    lowercase: bool

    def phrase(self, text: str, rng: random.Random) -> str:
        """Dress a customer message in this persona's way of writing."""
        body = text.lower().rstrip("?.!") if self.lowercase else text
        return f"{rng.choice(self.prefixes)}{body}{rng.choice(self.suffixes)}"


class Shop(_Model):
    """The shop's identity, the bot's system prompt, polite framing for good replies, and the honest
    declines for questions no help article answers (``{contact}``: ``contact_address``, how a customer
    reaches a person; the first decline is the one the bot sends itself when nothing is retrieved)."""

    name: str
    website: str
    description: str
    system_prompt: str
    good_openers: list[str] = Field(min_length=1)
    good_closers: list[str] = Field(min_length=1)
    contact_address: str = Field(min_length=1)
    declines: list[str] = Field(min_length=1)

    @field_validator("declines")
    @classmethod
    def _declines(cls, declines: list[str]) -> list[str]:
        for template in declines:
            if _fields(template) != {"contact"}:
                raise ValueError(f"decline {template!r} must use exactly {{contact}}")
        return declines

    def decline(self, index: int = 0) -> str:
        """A decline with the contact address filled in (index 0: the bot's own)."""
        return self.declines[index].format(contact=self.contact_address)


class Styles(_Model):
    """Templates the corpus uses to make flawed replies (see ``sim/corpus.py`` for the styles),
    and how its customers start asking an unanswered question again."""

    reask_openers: list[str] = Field(min_length=1)
    curt: list[str] = Field(min_length=1)
    vague: list[str] = Field(min_length=1)
    too_long_fillers: list[str] = Field(min_length=3)
    off_topic: list[str] = Field(min_length=1)
    apology_openers: list[str] = Field(min_length=1)
    apology_closers: list[str] = Field(min_length=1)
    flattery_openers: list[str] = Field(min_length=1)
    flattery_closers: list[str] = Field(min_length=1)
    invented_promises: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _placeholders(self) -> "Styles":
        for group, allowed in (("curt", {"answer"}), ("vague", {"topic"})):
            for template in getattr(self, group):
                if _fields(template) != allowed:
                    raise ValueError(f"{group} template {template!r} must use exactly {sorted(allowed)}")
        return self


class Company(_Model):
    """Everything the simulator and the corpus know about the demo shop."""

    shop: Shop
    intents: list[Intent] = Field(min_length=1)
    personas: list[Persona] = Field(min_length=1)
    styles: Styles

    @model_validator(mode="after")
    def _unique(self) -> "Company":
        names = [i.name for i in self.intents]
        if len(set(names)) != len(names):
            raise ValueError("intent names must be unique")
        seen: dict[str, str] = {}
        for intent in self.intents:
            for text in intent.phrasings + intent.held_out:
                key = text.strip().lower()
                if key in seen:
                    raise ValueError(f"phrasing {text!r} appears twice ({seen[key]}, {intent.name})")
                seen[key] = intent.name
        return self

    def intent(self, name: str) -> Intent:
        """The intent called ``name``."""
        for intent in self.intents:
            if intent.name == name:
                return intent
        raise KeyError(f"no intent {name!r}; known: {[i.name for i in self.intents]}")

    @property
    def held_out_phrasings(self) -> set[str]:
        """Every evaluation-only customer phrasing."""
        return {text for intent in self.intents for text in intent.held_out}


def _read(directory: Path, name: str) -> Any:
    path = directory / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CompanyDataError(f"{path} is missing") from exc
    except json.JSONDecodeError as exc:
        raise CompanyDataError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        data.pop("_comment", None)
    return data


def load_company(directory: Path | None = None) -> Company:
    """Load and validate the company in ``directory`` (default: the bundled one, cached)."""
    if directory is None:
        return _bundled()
    raw = {key: _read(directory, f"{key}.json") for key in ("shop", "intents", "personas", "styles")}
    try:
        return Company.model_validate(raw)
    except ValidationError as exc:
        raise CompanyDataError(f"invalid company data in {directory}:\n{exc}") from exc


@cache
def _bundled() -> Company:
    return load_company(DATA_DIR)
