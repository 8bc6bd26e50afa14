"""Simulated customers: an intent, a persona and a hidden rubric, chatting over the widget's API.

A customer opens with one of the intent's KB phrasings (training or held-out ones), asks
again when the reply did not answer (missing facts, off topic), asks the intent's follow-up
question if it planned to, ends the chat and — unless it leaves without rating — rates it:
the rubric's score seen through its persona (patience; flattery-swayed personas reward
grovelling and compliments), plus Gaussian noise, rounded and clipped to 1-5 stars. Once the bot
has handed the chat to a person, a message gets no bot reply (HTTP 202): it is counted in
``ChatResult.forwarded``, not judged, and not asked again.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import requests

from sim.client import ChatAPIError, ChatClient, Forwarded
from sim.company import Company, Intent, Persona
from sim.rubric import NEUTRAL, RubricWeights, TurnJudgement, conversation_score, judge_reply

REASKS = ["That doesn't answer my question. ", "Sorry, I don't understand. ", "Please just answer: "]


@dataclass(frozen=True)
class CustomerConfig:
    """How simulated customers behave.

    Parameters:
        held_out (bool, default False): open with held-out phrasings (never in the training
            corpus) instead of training ones.
        follow_up_share (float, default 0.5): share of customers who ask the intent's follow-up.
        leave_share (float, default 0.2): share who end the chat without rating it.
        rating_noise (float | None, default None): std-dev in stars of the Gaussian rating
            noise; None uses each persona's own ``rating_noise`` (0.5-0.8 in the demo).
        weights (RubricWeights, default NEUTRAL): the rubric's penalties.
        stream (bool, default True): ask for SSE replies as the widget does (False: JSON).
    """

    held_out: bool = False
    follow_up_share: float = 0.5
    leave_share: float = 0.2
    rating_noise: float | None = None
    weights: RubricWeights = NEUTRAL
    stream: bool = True

    def __post_init__(self) -> None:
        if not (0 <= self.follow_up_share <= 1 and 0 <= self.leave_share <= 1):
            raise ValueError("follow_up_share and leave_share must lie within [0, 1]")
        if self.rating_noise is not None and self.rating_noise < 0:
            raise ValueError(f"rating_noise must be >= 0, got {self.rating_noise}")


@dataclass(frozen=True)
class Customer:
    """One simulated customer, every random choice drawn up front (same seed, same customer)."""

    intent: Intent
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
    forwarded: int = 0  # messages sent while a person had the chat: no bot reply
    rubric: float = float("nan")
    rating: int | None = None
    error: str = ""


def make_customers(company: Company, n: int, config: CustomerConfig, seed: int = 0) -> list[Customer]:
    """``n`` customers: intents in turn (balanced), personas by weight, phrasings at random."""
    rng = random.Random(seed)
    weights = [p.weight for p in company.personas]
    customers = []
    for index in range(n):
        intent = company.intents[(index + seed) % len(company.intents)]
        persona = rng.choices(company.personas, weights)[0]
        pool = intent.held_out if config.held_out else intent.phrasings
        opening = persona.phrase(rng.choice(pool), rng)
        reask = rng.choice(REASKS) + rng.choice(pool)
        follow_up = persona.phrase(rng.choice(intent.follow_up.questions), rng) \
            if rng.random() < config.follow_up_share else None
        sigma = persona.rating_noise if config.rating_noise is None else config.rating_noise
        customers.append(Customer(intent, persona, opening, reask, follow_up,
                                  rates=rng.random() >= config.leave_share, noise=rng.gauss(0.0, sigma)))
    return customers


def stars(view: float, noise: float) -> int:
    """A 1-5 star rating: the customer's view of the chat plus noise, rounded half up and clipped."""
    return min(5, max(1, math.floor(view + noise + 0.5)))


def answered(judgement: TurnJudgement) -> bool:
    """Whether the customer got what it asked for (all key facts, no wrong ones, on topic)."""
    return judgement.facts_found == 1 and not judgement.wrong_facts and not judgement.off_topic


class SimulatedCustomer:
    """Plays one ``Customer`` against the bot through ``ChatClient``; returns a ``ChatResult``."""

    def __init__(self, company: Company, client: ChatClient, config: CustomerConfig = CustomerConfig()):
        self.company = company
        self.client = client
        self.config = config

    def chat(self, customer: Customer) -> ChatResult:
        """Open, ask (again if unanswered), maybe follow up, end, and maybe rate; errors are recorded."""
        result = ChatResult(customer.intent.name, customer.persona.name)
        try:
            started = self.client.start()
            result.conversation_id, result.adapter_version = started.conversation_id, started.adapter_version
            if not self._ask(started.conversation_id, started.token, customer.opening, customer.intent, False, result):
                result.reasks += 1
                self._ask(started.conversation_id, started.token, customer.reask, customer.intent, False, result)
            if customer.follow_up is not None:
                self._ask(started.conversation_id, started.token, customer.follow_up, customer.intent, True, result)
            self.client.end(started.conversation_id, started.token)
            result.rubric = conversation_score(result.judgements, result.reasks, self.config.weights)
            if customer.rates:
                view = conversation_score(result.judgements, result.reasks, self.config.weights,
                                          customer.persona.patience, customer.persona.flattery_bias)
                result.rating = stars(view, customer.noise)
                self.client.rate(started.conversation_id, started.token, result.rating)
        except (ChatAPIError, requests.RequestException) as exc:
            result.error = str(exc)
        return result

    def _ask(self, conv_id: str, token: str, text: str, intent: Intent, follow_up: bool,
             result: ChatResult) -> bool:
        """Send ``text``; whether the customer is done with it (answered, or now with a person)."""
        reply = self.client.send(conv_id, token, text)
        if isinstance(reply, Forwarded):
            result.forwarded += 1
            return True
        judgement = judge_reply(self.company, intent, reply.text, follow_up)
        result.replies.append(reply.text)
        result.judgements.append(judgement)
        return answered(judgement)
