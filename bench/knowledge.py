"""Benchmark: the bot answering from its knowledge base, through a real running bot.

Starts the real bot in this process (``harness.serving``: an embedded Redis in a temporary data
directory, the engine on the base model given, the chat app on a local port) with the demo shop's
help articles and one operator account, and talks to it over HTTP only, as the widget and the
console's Knowledge page do. Every question opens its own conversation, written as a persona
writes it; replies come at the serving temperature. Figures, each against the owners' target:

- held-out: the held-out phrasings of every intent on the articles as shipped: replies on the asked
  article (``sim.probe.reply_intent``), with every key fact, with a wrong one.
- out of scope: every out-of-scope question (seen and held-out, general and on shop words): share
  declined or referred (``sim.rubric.declines``), and replies with an invented promise.
- edit: each evaluation edit (``sim/northwind/evaluation.json``: one fact set to a value no chat of
  the training corpus has) saved through the console (``PUT /api/kb/articles/<id>``), no training;
  seconds until the bot's live index retrieves the new version (``GET /api/kb/retrieve``), then the
  intent's questions: replies stating the new value and the old one. Each edit is reverted after.
- new article: the evaluation-only gift-card article created through the console; its questions:
  replies stating one of its facts.
- retrieval: top-3 share of the expected article for every in-scope probe of ``sim.knowledge_eval``
  on the bot's live index; then synthetic articles imported up to 1,000 (``kb import``'s path) and
  the time the bot's retrieval for a reply takes (``LiveKnowledge.for_customer``, which the chat route
  runs before generation starts: what retrieval adds to the time to first token), p99, with the bot
  idle and while customers chat (then it also waits for the generation worker's turns at the GIL).

With ``--adapter DIR`` (an adapter trained on ``--model``, e.g. one a ``loopdesk loop`` released) the
bot serves that adapter to every conversation: released into the bot's registry and promoted, as
the trainer does, so the figures are the trained bot's rather than the base model's.

Run:  python bench/knowledge.py [--model var/base-model] [--adapter DIR] [--per-intent 24] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

# bench/feedback_store.py shares the package's name: keep bench/ off the import path.
ROOT = Path(__file__).resolve().parent.parent
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import numpy as np  # noqa: E402

from loopdesk.adapter_format import read_manifest, same_base_model  # noqa: E402
from loopdesk.articles import ArticleDraft  # noqa: E402
from loopdesk.config import Settings, load_settings  # noqa: E402
from sim.client import ChatClient, KnowledgeConsole  # noqa: E402
from sim.company import load_company, states  # noqa: E402
from sim.knowledge import fact_values, load_evaluation, out_of_scope_questions, render_article, template_for  # noqa: E402
from sim.knowledge_eval import ANSWERED, evaluate, generated_articles  # noqa: E402
from sim.probe import dressed, reply_intent  # noqa: E402
from sim.rubric import INVENTED_PROMISE, declines  # noqa: E402

LIVE_DEADLINE_S = 10.0  # waiting for the live index gives up here (the target is 2 s)
ADAPTER_DEADLINE_S = 60.0  # waiting for the engine to serve a promoted adapter gives up here
OPERATOR = "bench-operator"


@dataclass(frozen=True)
class Figure:
    """One measured figure (a share unless ``unit`` names one: "", "s", "ms"; ``count``: a number of
    replies), its target (``sense`` ">=" or "<="; None: shown for scale) and its sample size."""

    name: str
    value: float
    n: int
    sense: str | None = None
    target: float | None = None
    unit: str = ""
    count: bool = False

    def shown(self, value: float) -> str:
        if self.count:
            return f"{value:.0f}"
        return f"{value:.3g} {self.unit}" if self.unit else f"{value:.3f}"

    @property
    def met(self) -> bool | None:
        if self.sense is None:
            return None
        return self.value >= self.target if self.sense == ">=" else self.value <= self.target

    @property
    def ratio(self) -> float | None:
        """Figure / target for an "at least" target, target / figure for an "at most" one: >= 1 meets it."""
        if self.sense is None:
            return None
        if self.sense == ">=":
            return self.value / self.target
        return float("inf") if self.value == 0 else self.target / self.value


@dataclass
class BenchBot:
    """The running bot: its URL, store and live index, and an operator signed in to its console."""

    url: str
    settings: Settings
    store: Any
    knowledge: Any
    console: KnowledgeConsole
    concurrency: int


def trained_on(adapter: Path) -> str:
    """The base model an adapter directory's manifest names."""
    try:
        return str(read_manifest(adapter)["base_model"])
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"{adapter} is not an adapter directory with a manifest naming its base model: {exc}")


def serve_adapter(settings: Settings, store: Any, engine: Any, adapter: Path) -> str:
    """Release ``adapter`` into the bot's registry as active, as the trainer does; wait until new
    conversations get it. Returns its version."""
    from trainer.release import release_adapter

    version = store.adapters.next_version()
    release_adapter(store, Path(settings.adapters_dir), adapter, version=version, base_model=settings.base_model_ref,
                    parent="base", metrics={}, data_watermark=0, status="active", reason="bench/knowledge.py")
    started = time.monotonic()
    while engine.choose_version() != version or version not in engine.loaded_versions():
        if version in engine.refused_versions():
            raise SystemExit(f"the bot refused {adapter}: {engine.refused_versions()[version]}")
        if time.monotonic() - started > ADAPTER_DEADLINE_S:
            raise RuntimeError(f"the bot does not serve {adapter} after {ADAPTER_DEADLINE_S} s")
        time.sleep(0.05)
    return version


@contextmanager
def bench_bot(model: Path, concurrency: int = 8, adapter: Path | None = None, **overrides: Any) -> Iterator[BenchBot]:
    """The real bot on ``model`` (serving ``adapter`` when given) in a fresh temporary data directory, with the
    demo shop's articles."""
    if adapter is not None and not same_base_model(base := trained_on(adapter), str(model)):
        raise SystemExit(f"{adapter} was trained on {base}, not on {model}")
    from bot.app import create_app
    from bot.runtime.knowledge import LiveKnowledge
    from feedback_store.server import stop_embedded_redis
    from harness.serving import bot_engine, serve

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loopdesk-kb-bench-")))
        stack.callback(stop_embedded_redis, tmp)
        settings = load_settings({}, data_dir=tmp, base_model=str(model), **overrides)
        settings, store, engine = stack.enter_context(bot_engine(settings))
        if adapter is not None:
            serve_adapter(settings, store, engine, adapter)
        knowledge = LiveKnowledge(store, settings)
        stack.callback(knowledge.stop)
        url = stack.enter_context(serve(create_app(settings, engine, store, knowledge)))
        password = secrets.token_urlsafe(16)
        store.users.add(OPERATOR, "operator", password)
        console = KnowledgeConsole(url)
        stack.callback(console.close)
        console.login(OPERATOR, password)
        yield BenchBot(url, settings, store, knowledge, console, concurrency)


def ask(bot: BenchBot, questions: Sequence[str]) -> list[str]:
    """Each question in a new conversation, ``bot.concurrency`` customers at a time; the replies in order."""
    local = threading.local()

    def one(question: str) -> str:
        if not hasattr(local, "client"):
            local.client = ChatClient(bot.url, stream=False)
        started = local.client.start({"source": "kb-bench"})
        reply = local.client.send(started.conversation_id, started.token, question)
        local.client.end(started.conversation_id, started.token)
        return reply.text

    with ThreadPoolExecutor(bot.concurrency) as pool:
        return list(pool.map(one, questions))


def share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def held_out(bot: BenchBot, per_intent: int, rng: random.Random) -> list[Figure]:
    """Held-out opening phrasings of every intent on the shop's articles as shipped."""
    company = load_company()
    asked = [(intent, q) for intent in company.intents for q in dressed(company, intent.held_out, per_intent, rng)]
    replies = ask(bot, [q for _, q in asked])
    n = len(replies)
    return [
        Figure("held-out: on the asked article", share([reply_intent(company, r) == i.name
                                                         for (i, _), r in zip(asked, replies)]), n, ">=", 0.85),
        Figure("held-out: every key fact", share([not i.missing_facts(r) for (i, _), r in zip(asked, replies)]),
               n, ">=", 0.75),
        Figure("held-out: a wrong fact", share([bool(i.wrong_facts_in(r)) for (i, _), r in zip(asked, replies)]),
               n, "<=", 0.03),
    ]


def out_of_scope(bot: BenchBot, repeats: int) -> list[Figure]:
    """Every out-of-scope question, seen and held-out, ``repeats`` times each."""
    questions = [q for held in (False, True) for q in out_of_scope_questions(held)] * repeats
    replies = ask(bot, questions)
    turned_away = [not bot.knowledge.retrieve(q).fits for q in questions]  # these get the bot's fixed decline
    return [
        Figure("out of scope: declined or referred", share([declines(r) for r in replies]), len(replies), ">=", 0.90),
        Figure("out of scope: invented promises", sum(bool(INVENTED_PROMISE.search(r)) for r in replies),
               len(replies), "<=", 0, count=True),
        Figure("out of scope: turned away by retrieval", share(turned_away), len(replies)),
    ]


def wait_live(console: KnowledgeConsole, question: str, article_id: str, version: int, started: float) -> float:
    """Seconds from ``started`` until the bot's live index retrieves ``article_id`` at ``version`` for ``question``."""
    while True:
        found = console.retrieve(question)["results"]
        if any((r["id"], r["version"]) == (article_id, version) for r in found):
            return time.monotonic() - started
        if time.monotonic() - started > LIVE_DEADLINE_S:
            raise RuntimeError(f"the bot still does not retrieve {article_id} v{version} after {LIVE_DEADLINE_S} s")
        time.sleep(0.01)


def edits(bot: BenchBot, per_edit: int, rng: random.Random) -> list[Figure]:
    """Each evaluation edit saved through the console, the intent's questions asked, the edit reverted."""
    company = load_company()
    new = old = n = 0
    live: list[float] = []
    for edit in load_evaluation().edits:
        intent, template = company.intent(edit.intent), template_for(edit.intent)
        was = fact_values(template, company)[edit.fact]
        current = bot.console.article(template.id)
        body = render_article(template, company, {edit.fact: edit.value}).body
        started = time.monotonic()
        saved = bot.console.edit(template.id, current["version"], body)
        live.append(wait_live(bot.console, intent.phrasings[0], template.id, saved["version"], started))
        replies = ask(bot, dressed(company, intent.phrasings + intent.held_out, per_edit, rng))
        new += sum(states(edit.value, r) for r in replies)
        old += sum(states(was, r) for r in replies)
        n += len(replies)
        started = time.monotonic()
        back = bot.console.revert(template.id, current["version"], saved["version"])
        live.append(wait_live(bot.console, intent.phrasings[0], template.id, back["version"], started))
    return [
        Figure("edit: replies with the new value", new / max(1, n), n, ">=", 0.90),
        Figure("edit: replies with the old value", old / max(1, n), n, "<=", 0.02),
        Figure("edit: save to live index, slowest", max(live), len(live), "<=", 2.0, unit="s"),
    ]


def new_article(bot: BenchBot, per_question: int, rng: random.Random) -> list[Figure]:
    """The evaluation-only articles created through the console, then their questions asked."""
    company = load_company()
    stated = n = 0
    live = []
    for template in load_evaluation().articles:
        draft = render_article(template, company)
        started = time.monotonic()
        bot.console.create(draft.id, draft.title, draft.body, draft.tags)
        live.append(wait_live(bot.console, template.questions[0], draft.id, 1, started))
        values = fact_values(template, company).values()
        replies = ask(bot, [q for question in template.questions for q in dressed(company, [question], per_question,
                                                                                  rng)])
        stated += sum(any(states(v, r) for v in values) for r in replies)
        n += len(replies)
    return [Figure("new article: replies stating its facts", stated / max(1, n), n, ">=", 0.80),
            Figure("new article: create to live index", max(live), len(live), "<=", 2.0, unit="s")]


def retrieval(bot: BenchBot, articles: int, rng: random.Random, rounds: int = 3) -> list[Figure]:
    """Top-3 on the bot's live index of the shop's articles; then its retrieval time at ``articles`` articles."""
    reports = evaluate(bot.knowledge.index)
    top3 = sum(reports[k].top3 for k in ANSWERED) / sum(reports[k].n for k in ANSWERED)
    in_store = {a.id for a in bot.store.knowledge.list()}
    extra = [ArticleDraft(id=a.id, title=a.title, body=a.body, tags=a.tags)
             for a in generated_articles(articles, rng) if a.id not in in_store]
    started = time.monotonic()
    bot.store.knowledge.import_articles(extra, by="import")
    while len(bot.knowledge.index) < len(in_store) + len(extra):
        if time.monotonic() - started > LIVE_DEADLINE_S:
            raise RuntimeError(f"the live index holds {len(bot.knowledge.index)} articles after {LIVE_DEADLINE_S} s")
        time.sleep(0.01)
    rebuilt = time.monotonic() - started
    company = load_company()
    queries = [q for intent in company.intents for q in intent.phrasings + intent.held_out] * rounds
    idle = timed_retrieval(bot, queries)
    traffic = threading.Thread(target=ask, args=(bot, dressed(company, queries, 4 * bot.concurrency, rng)))
    traffic.start()
    busy = timed_retrieval(bot, queries)
    traffic.join()
    size, n = len(bot.knowledge.index), len(queries)
    return [
        Figure("retrieval: expected article in top 3", top3, sum(reports[k].n for k in ANSWERED), ">=", 0.95),
        Figure(f"import to live index at {size} articles", rebuilt, 1, "<=", 2.0, unit="s"),
        Figure(f"retrieval at {size} articles, p50, bot idle", float(np.percentile(idle, 50)), n, unit="ms"),
        Figure(f"retrieval at {size} articles, p99, bot idle", float(np.percentile(idle, 99)), n, "<=", 5.0,
               unit="ms"),
        Figure(f"retrieval at {size} articles, p99, {bot.concurrency} chatting", float(np.percentile(busy, 99)), n,
               "<=", 5.0, unit="ms"),
    ]


def timed_retrieval(bot: BenchBot, queries: Sequence[str]) -> list[float]:
    """Milliseconds of the bot's retrieval for a reply to each query (what the chat route runs before generating)."""
    timings = []
    for query in queries:
        before = time.perf_counter()
        bot.knowledge.for_customer([query])
        timings.append(1000 * (time.perf_counter() - before))
    return timings


def run(model: Path, per_intent: int = 24, concurrency: int = 8, articles: int = 1000, seed: int = 0,
        adapter: Path | None = None, **overrides: Any) -> list[Figure]:
    """Every figure, on one running bot: held-out and out-of-scope first (the shop as shipped), then the
    edits, the new article and, last, the large knowledge base."""
    rng = random.Random(seed)
    with bench_bot(model, concurrency, adapter, **overrides) as bot:
        return [*held_out(bot, per_intent, rng), *out_of_scope(bot, max(1, per_intent // 12)),
                *edits(bot, per_intent, rng), *new_article(bot, max(1, per_intent // 3), rng),
                *retrieval(bot, articles, rng)]


def table(figures: Sequence[Figure]) -> str:
    """The figures side by side with their targets: value, target, met, ratio (>= 1 meets), n."""
    lines = [f"{'figure':<50}{'value':>9}   {'target':<10}{'met':<5}{'ratio':>7}{'n':>7}"]
    for f in figures:
        target = "" if f.sense is None else f"{f.sense} {f.shown(f.target)}"
        met = "" if f.met is None else ("yes" if f.met else "NO")
        ratio = "" if f.ratio is None else f"{f.ratio:.2f}"
        lines.append(f"{f.name:<50}{f.shown(f.value):>9}   {target:<10}{met:<5}{ratio:>7}{f.n:>7}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("var/base-model"), help="a base model directory")
    parser.add_argument("--per-intent", type=int, default=24,
                        help="questions per intent and per edit (out of scope: per_intent // 12 times each)")
    parser.add_argument("--concurrency", type=int, default=8, help="customers chatting at once")
    parser.add_argument("--articles", type=int, default=1000, help="size of the large knowledge base")
    parser.add_argument("--adapter", type=Path, default=None,
                        help="an adapter directory trained on --model: the bot serves it to every conversation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-figure-guard", action="store_true",
                        help="let the bot state figures its prompt does not give (Settings.figure_guard off)")
    args = parser.parse_args()
    started = time.monotonic()
    figures = run(args.model, args.per_intent, args.concurrency, args.articles, args.seed, args.adapter,
                  figure_guard=not args.no_figure_guard)
    served = (f" with adapter {args.adapter}" if args.adapter else "") + \
        (", figure guard off" if args.no_figure_guard else "")
    print(f"knowledge base benchmark of {args.model}{served} ({time.monotonic() - started:.0f} s)")
    print(table(figures))


if __name__ == "__main__":
    main()
