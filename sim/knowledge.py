"""The demo shop's knowledge base: article templates over the intents' facts, the Markdown
folder rendered from them, and each fact's current value read back from a live article.

``sim/northwind/articles.json`` holds one template per article (its body has ``{fact}``
placeholders); ``sim/northwind/knowledge/*.md`` is its rendering, the folder the shop imports.
The rubric judges replies against the knowledge base as it is now: ``recover_facts`` finds, per
fact, the template sentence that states it (a regex with the fact as the only free part) in the
live body, and raises ``FactSentenceMissing`` when an operator rewrote that sentence.

Regenerate the folder after editing the templates: ``python -m sim.knowledge``.
"""

from __future__ import annotations

import json
import re
import string
import threading
from functools import cache
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loopdesk.articles import ArticleDraft
from loopdesk.knowledge_files import render_markdown
from loopdesk.knowledge import plain_text
from sim.company import Company, CompanyDataError, Intent, load_company

NORTHWIND_DIR = Path(__file__).parent / "northwind"
ARTICLES_FILE = NORTHWIND_DIR / "articles.json"
KNOWLEDGE_DIR = NORTHWIND_DIR / "knowledge"
OUT_OF_SCOPE_FILE = NORTHWIND_DIR / "out_of_scope.json"
EVALUATION_FILE = NORTHWIND_DIR / "evaluation.json"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# a fact's value: any text that does not run past the end of its sentence
_VALUE = r"(?:(?![.!?](?:\s|$)).)+?"


class FactSentenceMissing(ValueError):
    """A live article no longer has the sentence that states a fact, or states it twice differently."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ArticleTemplate(_Model):
    """One help-centre article: its body is a ``str.format`` template over its facts.

    ``facts`` are the article's own (for one with no intent, or facts its intent only states
    literally), ``other_values`` further plausible values of those (the intent holds its own
    facts' values); ``unstated_facts`` names intent facts it deliberately leaves out, with the reason.
    """

    id: str
    intent: str | None
    title: str
    tags: list[str]
    body: str = Field(min_length=1)
    facts: dict[str, str] = Field(default_factory=dict)
    other_values: dict[str, list[str]] = Field(default_factory=dict)
    unstated_facts: dict[str, str] = Field(default_factory=dict)
    questions: list[str] = Field(default_factory=list)

    @property
    def placeholders(self) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(self.body) if name}

    @model_validator(mode="after")
    def _other_values(self) -> "ArticleTemplate":
        for fact, values in self.other_values.items():
            if fact not in self.facts or self.facts[fact] in values or not values:
                raise ValueError(f"article {self.id!r}: other_values[{fact!r}] must name one of its own facts "
                                 "and hold values other than it")
        return self


class _Templates(_Model):
    articles: list[ArticleTemplate] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "_Templates":
        for field in ("id", "intent"):
            values = [getattr(a, field) for a in self.articles if getattr(a, field) is not None]
            if len(values) != len(set(values)):
                raise ValueError(f"two article templates share an {field}")
        return self


@cache
def load_templates(path: Path = ARTICLES_FILE) -> tuple[ArticleTemplate, ...]:
    """The article templates (validated; cached per path)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("_comment", None)
        return tuple(_Templates.model_validate(data).articles)
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        raise CompanyDataError(f"invalid article templates in {path}: {exc}") from exc


def template_by_id(article_id: str) -> ArticleTemplate:
    """The template of the article ``article_id``."""
    for template in load_templates():
        if template.id == article_id:
            return template
    raise KeyError(f"no article template {article_id!r}")


def template_for(intent: str) -> ArticleTemplate:
    """The template of the article that answers ``intent``."""
    for template in load_templates():
        if template.intent == intent:
            return template
    raise KeyError(f"no article template for intent {intent!r}")


def fact_values(template: ArticleTemplate, company: Company | None = None) -> dict[str, str]:
    """The canonical value of every fact the template names, checked against its intent."""
    company = company or load_company()
    intent_facts = company.intent(template.intent).facts if template.intent else {}
    clash = set(intent_facts) & set(template.facts)
    problems = [f"facts {sorted(clash)} are the intent's already"] if clash else []
    values = {**intent_facts, **template.facts}
    unknown = template.placeholders - set(values)
    if unknown:
        problems.append(f"the body names unknown facts {sorted(unknown)}")
    unstated = set(intent_facts) - template.placeholders
    if unstated != set(template.unstated_facts):
        problems.append(f"the body leaves out facts {sorted(unstated)} but unstated_facts names "
                        f"{sorted(template.unstated_facts)}")
    if problems:
        raise CompanyDataError(f"article template {template.id!r}: " + "; ".join(problems))
    return {name: values[name] for name in sorted(template.placeholders)}


def fact_pools(template: ArticleTemplate, company: Company | None = None) -> dict[str, list[str]]:
    """Every plausible value of each fact the template states, the canonical one first."""
    company = company or load_company()
    intent = company.intent(template.intent) if template.intent else None
    return {name: intent.pool(name) if intent and name in intent.facts
            else list(dict.fromkeys([value, *template.other_values.get(name, [])]))
            for name, value in fact_values(template, company).items()}


def render_article(template: ArticleTemplate, company: Company | None = None,
                   values: Mapping[str, str] | None = None) -> ArticleDraft:
    """The article with its canonical facts filled in (``values`` overriding some of them)."""
    body = template.body.format_map({**fact_values(template, company), **(values or {})})
    return ArticleDraft(id=template.id, title=template.title, body=body, tags=template.tags)


def render_files(company: Company | None = None) -> dict[str, str]:
    """File name -> Markdown text of every article, as the knowledge folder holds them."""
    return {f"{t.id}.md": render_markdown(render_article(t, company)) for t in load_templates()}


def write_knowledge_folder(directory: Path = KNOWLEDGE_DIR, company: Company | None = None) -> list[Path]:
    """Render every article into ``directory`` (stale ``.md`` files there are removed)."""
    files = render_files(company)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.md"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return sorted(directory / name for name in files)


def _sentence_pattern(sentence: str) -> re.Pattern[str]:
    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(sentence):
        parts.append(r"\s+".join(re.escape(word) for word in literal.split(" ")))
        if name:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>{_VALUE})")
            seen.add(name)
    return re.compile(r"(?:^|(?<=\s))" + "".join(parts) + r"(?=\s|$)", re.IGNORECASE)


def recover_facts(template: ArticleTemplate, body: str) -> dict[str, str]:
    """Each fact's value as the live article ``body`` states it, read with the template's sentences."""
    text = plain_text(body)
    found: dict[str, str] = {}
    for sentence in _SENTENCE_END.split(plain_text(template.body)):
        names = {name for _, name, _, _ in string.Formatter().parse(sentence) if name}
        if not names:
            continue
        match = _sentence_pattern(sentence).search(text)
        if match is None:
            shown = re.sub(r"\{(\w+)\}", r"<\1>", sentence)
            raise FactSentenceMissing(
                f"article {template.id!r} no longer has the sentence that states {', '.join(sorted(names))} "
                f"(like: {shown!r}): the fact cannot be read from it")
        for name in names:
            value = match.group(name)
            if found.setdefault(name, value) != value:
                raise FactSentenceMissing(f"article {template.id!r} states {name} as both "
                                          f"{found[name]!r} and {value!r}")
    return found


def current_facts(intent: Intent, body: str) -> dict[str, str]:
    """The intent's facts with the values its live article states now (facts it leaves out keep theirs)."""
    return {**intent.facts, **{name: value for name, value in recover_facts(template_for(intent.name), body).items()
                               if name in intent.facts}}


class LiveFacts:
    """The facts of the shop's articles as a help centre shows them now: each article's values read
    back from its live body once per article version (thread-safe; share one across chats)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, int], dict[str, str]] = {}
        self._lock = threading.Lock()

    def of(self, intent: Intent, article: Mapping[str, Any]) -> dict[str, str]:
        """The intent's facts as ``article`` (the help centre's JSON: id, version, body) states them.

        Raises:
            FactSentenceMissing: the article no longer has a sentence a fact is read from.
        """
        key = (str(article["id"]), int(article["version"]))
        with self._lock:
            known = self._values.get(key)
        if known is None:
            known = current_facts(intent, str(article["body"]))
            with self._lock:
                self._values[key] = known
        return dict(known)


def out_of_scope_questions(held_out: bool = False, kinds: tuple[str, ...] = ("general", "shop_words")) -> list[str]:
    """Questions no article of the shop answers: ``general`` ones (general knowledge, other companies,
    jokes, noise) and ones on ``shop_words`` that ask for something else; ``held_out`` ones are for
    evaluation only and never enter the training corpus."""
    data = json.loads(OUT_OF_SCOPE_FILE.read_text(encoding="utf-8"))["held_out" if held_out else "seen"]
    return [q for kind in kinds for q in data[kind]]


class FactEdit(_Model):
    """One fact of an intent's article changed to a value outside the fact's pool (evaluation only)."""

    intent: str
    fact: str
    value: str


class _Evaluation(_Model):
    edits: list[FactEdit] = Field(min_length=1)
    articles: list[ArticleTemplate] = Field(min_length=1)


@cache
def load_evaluation(path: Path = EVALUATION_FILE) -> _Evaluation:
    """The evaluation-only edits and articles (``sim/northwind/evaluation.json``), checked: an edit names
    a fact its article states and a value outside that fact's pool; an article has no intent."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("_comment", None)
        evaluation = _Evaluation.model_validate(data)
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        raise CompanyDataError(f"invalid evaluation data in {path}: {exc}") from exc
    for edit in evaluation.edits:
        pools = fact_pools(template_for(edit.intent))
        if edit.fact not in pools or edit.value in pools[edit.fact]:
            raise CompanyDataError(f"edit of {edit.intent}.{edit.fact} must name a fact its article states "
                                   "and a value outside its pool")
    shop = {t.id for t in load_templates()}
    for article in evaluation.articles:
        if article.intent is not None or article.id in shop:
            raise CompanyDataError(f"evaluation article {article.id!r} must answer no intent and not be the shop's")
    return evaluation


if __name__ == "__main__":
    for path in write_knowledge_folder():
        print(path)
