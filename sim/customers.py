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

Asking for a person: the ``ask_person_share`` of customers who do, when the bot fails them, ask at
once after a wrong or off-topic reply, and after a re-ask that still went unanswered (a reply that
merely misses facts gets the re-ask first), in one of ``PERSON_REQUESTS``, each of which the demo
shop's escalation article covers, so the bot hands off on it (``ChatResult.unheeded`` counts the
requests it answered instead). Once a person takes the chat (``waiting_for_agent``: on a request, or
the bot's own handoff when no article fitted or after too many re-asks) the customer asks nothing more:
it follows the chat's live stream, as the widget does, for up to ``agent_wait_s`` and judges the
person's replies against its pending question. Told on its request that nobody is available, it ends
the chat; told so by the bot on its own (no article fitted), it carries on with the bot. The rating
counts the person's replies and each request for a person as a re-ask; the rubric (the expert's view
of the bot) counts only the bot's. A handoff notice is no answer and is not judged (the decline when
no article fitted and nobody is available is). A message the bot answers with 202 (a person has the
chat) is counted in ``ChatResult.forwarded``, not judged, and not asked again.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import requests

from sim.client import ChatAPIError, ChatClient, Forwarded
from sim.company import Company, Intent, Persona
from sim.knowledge import FactSentenceMissing, LiveFacts, out_of_scope_questions, template_for
from sim.rubric import (NEUTRAL, OUT_OF_SCOPE, RubricWeights, TurnJudgement, conversation_score, judge_out_of_scope,
                        judge_reply)

REASKS = ["That doesn't answer my question. ", "Sorry, I don't understand. ", "Please just answer: "]
# Each retrieves the escalation article first in every persona's dressing (tests/test_sim_agent.py);
# "Can I speak to a human?" does not after "Come on. ... I don't have all day." (a tent article wins).
PERSON_REQUESTS = ["I want a real person, not a bot.", "Could I speak with a real human please?",
                   "I want to talk to a member of your support team.",
                   "I'd like to chat with a real person, not a bot.", "Can I talk to a real person, please?",
                   "Get me a real person.", "Is there a human I can talk to?"]
WITH_A_PERSON = ("waiting_for_agent", "with_agent")  # the statuses of a chat a person takes: the bot is quiet


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
        ask_person_share (float, default 0.25): share of customers who ask for a person when the bot
            fails them (module docstring); 0: nobody asks.
        agent_wait_s (float, default 30.0): how long a customer handed to a person waits for the chat
            to end (the person answers and resolves it) before ending it itself.
    """

    held_out: bool = False
    out_of_scope_share: float = 0.1
    follow_up_share: float = 0.5
    leave_share: float = 0.2
    rating_noise: float | None = None
    weights: RubricWeights = NEUTRAL
    stream: bool = True
    ask_person_share: float = 0.25
    agent_wait_s: float = 30.0

    def __post_init__(self) -> None:
        shares = (self.follow_up_share, self.leave_share, self.out_of_scope_share, self.ask_person_share)
        if not all(0 <= share <= 1 for share in shares):
            raise ValueError("follow_up_share, leave_share, out_of_scope_share and ask_person_share must lie "
                             "within [0, 1]")
        if self.agent_wait_s <= 0:
            raise ValueError(f"agent_wait_s must be > 0, got {self.agent_wait_s}")
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
    asks_person: bool = False
    person_request: str = PERSON_REQUESTS[0]


@dataclass
class ChatResult:
    """What happened in one simulated chat: the bot's answers and the rubric's judgements of them, the
    handoff (its reason, "" none), the person's replies, and the rating."""

    intent: str
    persona: str
    conversation_id: str = ""
    adapter_version: str = ""
    replies: list[str] = field(default_factory=list)
    judgements: list[TurnJudgement] = field(default_factory=list)
    reasks: int = 0
    forwarded: int = 0  # messages sent while a person had the chat: no bot reply
    handoff: str = ""  # why the bot handed the chat off (or said nobody is available); "" never
    asked_person: int = 0  # requests for a person the customer sent
    unheeded: int = 0  # of those, the ones the bot answered itself instead of handing off
    agent_replies: list[str] = field(default_factory=list)
    agent_judgements: list[TurnJudgement] = field(default_factory=list)
    rubric: float = float("nan")
    rating: int | None = None
    error: str = ""


def make_customers(company: Company, n: int, config: CustomerConfig, seed: int = 0) -> list[Customer]:
    """``n`` customers: intents in turn (balanced), ``out_of_scope_share`` of them (spread evenly) asking
    an out-of-scope question instead, personas by weight, phrasings at random. Who asks for a person, and
    how, is drawn from a generator of its own, so the other draws stay those of the seed."""
    rng, asking = random.Random(seed), random.Random(f"person:{seed}")
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
                                  rates=rng.random() >= config.leave_share, noise=rng.gauss(0.0, sigma),
                                  asks_person=asking.random() < config.ask_person_share,
                                  person_request=persona.phrase(asking.choice(PERSON_REQUESTS), asking)))
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
        """Read the article, open, ask (again, or for a person, if unanswered), maybe follow up, wait for the
        person who took the chat, end, and maybe rate; errors are recorded."""
        result = ChatResult(customer.intent.name if customer.intent else OUT_OF_SCOPE, customer.persona.name)
        try:
            values = self._current_facts(customer.intent)
            intent = customer.intent if values is not None else None
            started = self.client.start()
            chat = _Chat(self, started.conversation_id, started.token, customer, result, intent, values)
            result.conversation_id, result.adapter_version = started.conversation_id, started.adapter_version
            judgement = chat.ask(customer.opening)
            if chat.missed(judgement):
                if customer.asks_person and (judgement.wrong_facts or judgement.off_topic):
                    chat.ask_person()
                else:
                    result.reasks += 1
                    if chat.missed(chat.ask(customer.reask)) and customer.asks_person:
                        chat.ask_person()
            if customer.follow_up is not None and intent is not None and chat.open:
                chat.follow_up = True
                chat.ask(customer.follow_up)
            if chat.with_person:
                chat.wait_for_person()
            self.client.end(started.conversation_id, started.token)
            asked_again = result.reasks + result.asked_person
            result.rubric = conversation_score(result.judgements, asked_again, self.config.weights)
            if customer.rates:
                view = conversation_score(result.judgements + result.agent_judgements, asked_again,
                                          self.config.weights, customer.persona.patience,
                                          customer.persona.flattery_bias)
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


@dataclass
class _Chat:
    """One conversation in progress: what the customer sent last and where the chat stands."""

    player: SimulatedCustomer
    conv_id: str
    token: str
    customer: Customer
    result: ChatResult
    intent: Intent | None  # None: out of scope, or its article is no longer published
    values: dict[str, str] | None  # the intent's facts as its article states them now
    follow_up: bool = False  # the pending question is the intent's follow-up
    last_index: int = -1
    status: str = "open"
    handed_off: str = ""  # why the last reply handed the chat off (or said nobody is available); "" it did not
    told_nobody: bool = False  # the customer asked for a person and was told that nobody is available

    @property
    def open(self) -> bool:
        """Whether the customer still talks to the bot: nobody took the chat and it has not given up."""
        return self.status == "open" and not self.told_nobody

    @property
    def with_person(self) -> bool:
        """Whether a person will take the chat (or has it): the customer waits for them."""
        return self.status in WITH_A_PERSON

    def missed(self, judgement: TurnJudgement | None) -> bool:
        """Whether the bot, still answering, missed the question (``judgement``: of its last answer)."""
        return judgement is not None and self.open and not answered(judgement)

    def ask(self, text: str) -> TurnJudgement | None:
        """Send ``text``; the judgement of the bot's answer, or None when there is none to judge (a person
        has the chat, or the reply was a handoff notice)."""
        reply = self.player.client.send(self.conv_id, self.token, text)
        self.last_index, self.status = reply.turn_index, reply.status
        if isinstance(reply, Forwarded):
            self.result.forwarded += 1
            self.handed_off = ""
            return None
        self.handed_off = reply.handoff
        self.result.handoff = self.result.handoff or reply.handoff
        if reply.source == "handoff" or self.with_person:
            return None
        judgement = self.judge(reply.text)
        self.result.replies.append(reply.text)
        self.result.judgements.append(judgement)
        return judgement

    def judge(self, text: str) -> TurnJudgement:
        """The rubric's judgement of a reply to the pending question, against the article as it is now."""
        if self.intent is None:
            return judge_out_of_scope(self.player.company, text)
        return judge_reply(self.player.company, self.intent, text, self.follow_up, self.values)

    def ask_person(self) -> None:
        """Ask for a person in the customer's words; a reply that is no handoff leaves the request unheeded."""
        self.result.asked_person += 1
        self.ask(self.customer.person_request)
        if self.with_person:
            return
        if self.handed_off:
            self.told_nobody = True
        else:
            self.result.unheeded += 1

    def wait_for_person(self) -> None:
        """Follow the chat's live stream until the person ends it (or hands it back), at most ``agent_wait_s``;
        judge each of their replies against the pending question."""
        for event, data in self.player.client.follow(self.conv_id, self.token, self.last_index,
                                                     self.player.config.agent_wait_s):
            if event == "turn" and data["role"] == "agent":
                self.result.agent_replies.append(data["text"])
                self.result.agent_judgements.append(self.judge(data["text"]))
            elif event == "status" and data["status"] in ("open", "ended"):
                return
