"""Simulated customers: an intent (or an out-of-scope question), a persona and a hidden rubric,
chatting over the widget's API.

A customer reads its intent's help article from the help centre as it is now (one request per
chat; the facts are read back once per article version, ``sim.knowledge.LiveFacts``), opens with
one of the intent's KB phrasings (training or held-out ones), asks again when the reply did not
answer (missing facts, wrong facts, off topic), asks the intent's follow-up question if it planned
to, ends the chat and — unless it leaves without rating — rates it: the rubric's score seen
through its persona (patience; flattery-swayed personas reward grovelling and compliments), plus
Gaussian noise, rounded and clipped to 1-5 stars. A share of customers ask a question no article
answers instead: an honest decline or referral answers it, an invented promise scores 1. When the
intent's article is no longer published, its question has become one of those.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import requests

from sim.client import ChatAPIError, ChatClient, Started
from sim.company import Company, Intent, Persona
from sim.knowledge import FactSentenceMissing, LiveFacts, out_of_scope_questions, template_for
from sim.rubric import (NEUTRAL, OUT_OF_SCOPE, RubricWeights, TurnJudgement, conversation_score, judge_out_of_scope,
                        judge_reply)

REASKS = ["That doesn't answer my question. ", "Sorry, I don't understand. ", "Please just answer: "]


@dataclass(frozen=True)
class CustomerConfig:
    """How simulated customers behave.

    Parameters:
        held_out (bool, default False): open with held-out phrasings (and held-out out-of-scope
            questions; neither is ever in the training corpus) instead of training ones.
        out_of_scope_share (float, default 0.1): share of customers asking a question no help
            article answers (``sim/northwind/out_of_scope.json``) instead of an intent's.
        follow_up_share (float, default 0.5): share of customers who ask the intent's follow-up.
        leave_share (float, default 0.2): share who end the chat without rating it.
        rating_noise (float | None, default None): std-dev in stars of the Gaussian rating
            noise; None uses each persona's own ``rating_noise`` (0.5-0.8 in the demo).
        weights (RubricWeights, default NEUTRAL): the rubric's penalties.
        stream (bool, default True): ask for SSE replies as the widget does (False: JSON).
    """

    held_out: bool = False
    out_of_scope_share: float = 0.1
    follow_up_share: float = 0.5
    leave_share: float = 0.2
    rating_noise: float | None = None
    weights: RubricWeights = NEUTRAL
    stream: bool = True

    def __post_init__(self) -> None:
        if not all(0 <= share <= 1 for share in (self.follow_up_share, self.leave_share, self.out_of_scope_share)):
            raise ValueError("follow_up_share, leave_share and out_of_scope_share must lie within [0, 1]")
        if self.rating_noise is not None and self.rating_noise < 0:
            raise ValueError(f"rating_noise must be >= 0, got {self.rating_noise}")


@dataclass(frozen=True)
class Customer:
    """One simulated customer, every random choice drawn up front (same seed, same customer);
    ``intent`` None: it asks an out-of-scope question (and never follows up)."""

    intent: Intent | None
    persona: Persona
    opening: str
    reask: str
    follow_up: str | None
    rates: bool
    noise: float


@dataclass
class ChatResult:
    """What happened in one simulated chat: replies, the rubric's judgements and the rating."""

    intent: str
    persona: str
    conversation_id: str = ""
    adapter_version: str = ""
    replies: list[str] = field(default_factory=list)
    judgements: list[TurnJudgement] = field(default_factory=list)
    reasks: int = 0
    rubric: float = float("nan")
    rating: int | None = None
    error: str = ""


def make_customers(company: Company, n: int, config: CustomerConfig, seed: int = 0) -> list[Customer]:
    """``n`` customers: intents in turn (balanced), ``out_of_scope_share`` of them (spread evenly) asking
    an out-of-scope question instead, personas by weight, phrasings at random."""
    rng = random.Random(seed)
    weights = [p.weight for p in company.personas]
    questions = out_of_scope_questions(config.held_out)
    customers, asked_intents = [], 0
    for index in range(n):
        out_of_scope = int((index + 1) * config.out_of_scope_share) > int(index * config.out_of_scope_share)
        intent = None if out_of_scope else company.intents[(asked_intents + seed) % len(company.intents)]
        asked_intents += not out_of_scope
        persona = rng.choices(company.personas, weights)[0]
        pool = questions if intent is None else intent.held_out if config.held_out else intent.phrasings
        question = rng.choice(pool)
        opening = persona.phrase(question, rng)
        reask = rng.choice(REASKS) + (rng.choice(pool) if intent is not None else question)
        follow_up = persona.phrase(rng.choice(intent.follow_up.questions), rng) \
            if intent is not None and rng.random() < config.follow_up_share else None
        sigma = persona.rating_noise if config.rating_noise is None else config.rating_noise
        customers.append(Customer(intent, persona, opening, reask, follow_up,
                                  rates=rng.random() >= config.leave_share, noise=rng.gauss(0.0, sigma)))
    return customers


def stars(view: float, noise: float) -> int:
    """A 1-5 star rating: the customer's view of the chat plus noise, rounded half up and clipped."""
    return min(5, max(1, math.floor(view + noise + 0.5)))


def answered(judgement: TurnJudgement) -> bool:
    """Whether the customer got what it asked for (all key facts or an honest decline, no wrong ones,
    no invented promise, on topic)."""
    return (judgement.facts_found == 1 and not judgement.wrong_facts and not judgement.off_topic
            and not judgement.promise)


class SimulatedCustomer:
    """Plays one ``Customer`` against the bot through ``ChatClient``; returns a ``ChatResult``.
    ``facts`` reads articles' facts (share one ``LiveFacts`` across customers: once per article version)."""

    def __init__(self, company: Company, client: ChatClient, config: CustomerConfig = CustomerConfig(),
                 facts: LiveFacts | None = None):
        self.company = company
        self.client = client
        self.config = config
        self.facts = facts or LiveFacts()

    def chat(self, customer: Customer) -> ChatResult:
        """Read the article, open, ask (again if unanswered), maybe follow up, end, and maybe rate;
        errors are recorded."""
        result = ChatResult(customer.intent.name if customer.intent else OUT_OF_SCOPE, customer.persona.name)
        try:
            values = self._current_facts(customer.intent)
            intent = customer.intent if values is not None else None
            started = self.client.start()
            result.conversation_id, result.adapter_version = started.conversation_id, started.adapter_version
            if not self._ask(started, customer.opening, intent, values, False, result):
                result.reasks += 1
                self._ask(started, customer.reask, intent, values, False, result)
            if customer.follow_up is not None and intent is not None:
                self._ask(started, customer.follow_up, intent, values, True, result)
            self.client.end(started.conversation_id, started.token)
            result.rubric = conversation_score(result.judgements, result.reasks, self.config.weights)
            if customer.rates:
                view = conversation_score(result.judgements, result.reasks, self.config.weights,
                                          customer.persona.patience, customer.persona.flattery_bias)
                result.rating = stars(view, customer.noise)
                self.client.rate(started.conversation_id, started.token, result.rating)
        except (ChatAPIError, requests.RequestException, FactSentenceMissing) as exc:
            result.error = str(exc)
        return result

    def _current_facts(self, intent: Intent | None) -> dict[str, str] | None:
        """The intent's facts as its published article states them now (None: out of scope, or no
        article published for it any more)."""
        if intent is None:
            return None
        article = self.client.help.article(template_for(intent.name).id)
        return None if article is None else self.facts.of(intent, article)

    def _ask(self, started: Started, text: str, intent: Intent | None, values: dict[str, str] | None,
             follow_up: bool, result: ChatResult) -> bool:
        reply = self.client.send(started.conversation_id, started.token, text)
        judgement = (judge_out_of_scope(self.company, reply.text) if intent is None
                     else judge_reply(self.company, intent, reply.text, follow_up, values))
        result.replies.append(reply.text)
        result.judgements.append(judgement)
        return answered(judgement)
