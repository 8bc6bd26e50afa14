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
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loopdesk.articles import ArticleDraft
from loopdesk.knowledge_files import render_markdown
from loopdesk.knowledge import plain_text
from sim.company import Company, CompanyDataError, Intent, load_company

NORTHWIND_DIR = Path(__file__).parent / "northwind"
ARTICLES_FILE = NORTHWIND_DIR / "articles.json"
KNOWLEDGE_DIR = NORTHWIND_DIR / "knowledge"
OUT_OF_SCOPE_FILE = NORTHWIND_DIR / "out_of_scope.json"
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
    literally); ``unstated_facts`` names intent facts it deliberately leaves out, with the reason.
    """

    id: str
    intent: str | None
    title: str
    tags: list[str]
    body: str = Field(min_length=1)
    facts: dict[str, str] = Field(default_factory=dict)
    unstated_facts: dict[str, str] = Field(default_factory=dict)
    questions: list[str] = Field(default_factory=list)

    @property
    def placeholders(self) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(self.body) if name}


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


def render_article(template: ArticleTemplate, company: Company | None = None) -> ArticleDraft:
    """The article with its canonical facts filled in."""
    body = template.body.format_map(fact_values(template, company))
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


def out_of_scope_questions() -> list[str]:
    """Questions no article of the shop answers (general knowledge, other companies, jokes, noise)."""
    data = json.loads(OUT_OF_SCOPE_FILE.read_text(encoding="utf-8"))
    return list(data["questions"])


if __name__ == "__main__":
    for path in write_knowledge_folder():
        print(path)
