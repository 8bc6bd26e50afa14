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
from typing import Any

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

    ``answers`` are templates over ``facts``; ``wrong_facts`` gives plausible wrong values for
    some facts; ``key_facts`` are regexes every correct answer matches and a wrong one misses.
    ``phrasings`` and ``held_out`` are written in the JSON as templates over ``slots`` (each
    ``{slot}`` takes every one of its values) and hold the expanded sentences once loaded.
    ``held_out`` phrasings are for evaluation only and never enter the training corpus; their
    templates are sentence frames the training phrasings never use, over the same slot words.
    """

    name: str = Field(pattern=r"^[a-z_]+$")
    topic: str
    facts: dict[str, str] = Field(min_length=1)
    wrong_facts: dict[str, list[str]] = Field(min_length=1)
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
        for fact, values in self.wrong_facts.items():
            if fact not in self.facts:
                raise ValueError(f"wrong_facts names unknown fact {fact!r}")
            if not values or self.facts[fact] in values:
                raise ValueError(f"wrong_facts[{fact!r}] must be non-empty and differ from the fact")
        for templates, patterns in ((self.answers, self.key_facts),
                                    (self.follow_up.answers, self.follow_up.key_facts)):
            for template in templates:
                unknown = _fields(template) - set(self.facts)
                if unknown:
                    raise ValueError(f"answer {template!r} uses unknown facts {sorted(unknown)}")
                right = self.fill(template)
                missing = [p for p in patterns if not re.search(p, right)]
                if missing:
                    raise ValueError(f"answer {right!r} misses its key facts {missing}")
                wrong = self.fill(template, random.Random(0))
                if all(re.search(p, wrong) for p in patterns):
                    raise ValueError(f"answer {template!r} stays correct with wrong facts: "
                                     "use a key fact that has wrong_facts")
        return self

    def fill(self, template: str, wrong: random.Random | None = None) -> str:
        """Fill a template with the facts, or (given an rng) with a wrong value for every wrong-able fact."""
        values = dict(self.facts)
        if wrong is not None:
            values.update({k: wrong.choice(v) for k, v in self.wrong_facts.items()})
        return template.format_map(values)

    @property
    def canonical_reply(self) -> str:
        """The reference answer to the customer's opening question."""
        return self.fill(self.answers[0])

    @property
    def canonical_follow_up_reply(self) -> str:
        """The reference answer to the follow-up question."""
        return self.fill(self.follow_up.answers[0])

    def missing_facts(self, reply: str, follow_up: bool = False) -> list[str]:
        """Key-fact patterns the reply fails to state."""
        patterns = self.follow_up.key_facts if follow_up else self.key_facts
        return [p for p in patterns if not re.search(p, reply, re.IGNORECASE)]

    def wrong_facts_in(self, reply: str, follow_up: bool = False) -> list[str]:
        """Wrong values, for the facts this turn's answers use, that the reply states."""
        templates = self.follow_up.answers if follow_up else self.answers
        used = set().union(*(_fields(t) for t in templates))
        right = {self.facts[f] for f in used}
        values = {v for f in used for v in self.wrong_facts.get(f, []) if v not in right}
        return sorted(v for v in values if re.search(rf"(?<![\w$]){re.escape(v)}(?!\w)", reply))


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
    """The shop's identity, the bot's system prompt and polite framing for good replies."""

    name: str
    website: str
    description: str
    system_prompt: str
    good_openers: list[str] = Field(min_length=1)
    good_closers: list[str] = Field(min_length=1)


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
