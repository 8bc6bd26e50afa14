"""The simulated agent: a person in the inbox, working through its JSON API as the simulated expert works
through the expert console's.

On duty (``on_duty``) it sets itself online and repeats that as the inbox page's heartbeat does, takes
the waiting conversations oldest first (claiming is atomic: one another agent took first is skipped),
and answers each, ``reply_delay_s`` after claiming it, with the reference reply to the customer's question
with the facts its help article states now (read from the help centre, ``sim.knowledge.LiveFacts``);
then it resolves the chat, which ends it, and the customer may rate it. The question is the last
customer message before the handoff that a KB phrasing places (``sim.rubric.identify_question``): an
intent's opening question or its follow-up. A question whose article is no longer published gets the
shop's decline, as does a chat whose messages place only out-of-scope questions; a chat whose messages
nothing places gets the oracle's request for more detail (``sim.oracle.CLARIFY``).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import requests

from sim.client import ChatAPIError, InboxAPI
from sim.company import Company
from sim.knowledge import FactSentenceMissing, LiveFacts, template_for
from sim.oracle import CLARIFY
from sim.rubric import identify_question


@dataclass(frozen=True)
class Answered:
    """One chat the agent took: its question's intent (None: unplaced), whether it was the follow-up, the reply."""

    conversation_id: str
    intent: str | None
    follow_up: bool
    reply: str


def agent_reply(company: Company, api: InboxAPI, facts: LiveFacts,
                transcript: dict[str, Any]) -> tuple[str, str | None, bool]:
    """(reply, intent name or None, follow-up?) for a handed-off chat (the inbox's transcript): the reference
    reply, with the article's current facts, to the last customer message before its latest handoff that a
    KB phrasing places (the decline when its article is gone). With none, the decline when a message asks
    an out-of-scope question: a request for a person dressed as "Hello, ..." contains the bare greeting
    "hello?", so an out-of-scope placement never hides an earlier KB question."""
    handoffs = transcript["handoffs"]
    before = handoffs[-1]["turn_index"] if handoffs else len(transcript["turns"])
    out_of_scope = False
    for turn in reversed([t for t in transcript["turns"] if t["role"] == "user" and t["index"] < before]):
        found = identify_question(company, turn["text"])
        if found is None or found.intent is None:
            out_of_scope = out_of_scope or found is not None
            continue
        article = api.help.article(template_for(found.intent.name).id)
        if article is None:
            return company.shop.decline(), found.intent.name, found.follow_up
        values = facts.of(found.intent, article)
        return found.intent.reference_reply(found.follow_up, values), found.intent.name, found.follow_up
    return (company.shop.decline() if out_of_scope else CLARIFY), None, False


@dataclass
class SimulatedAgent:
    """Claims, answers and resolves handed-off chats through ``InboxAPI`` (signed in as an agent)."""

    company: Company
    api: InboxAPI
    reply_delay_s: float = 1.0
    poll_s: float = 0.5
    answered: list[Answered] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    facts: LiveFacts = field(default_factory=LiveFacts)
    _stop: threading.Event = field(default_factory=threading.Event)

    def take(self, conv_id: str) -> Answered | None:
        """Claim one waiting chat, answer it after the delay and resolve it; None when another agent (or the
        customer, by ending it) was first."""
        try:
            self.api.claim(conv_id)
        except ChatAPIError as exc:
            if exc.status == 409:
                return None
            raise
        reply, intent, follow_up = agent_reply(self.company, self.api, self.facts, self.api.transcript(conv_id))
        if self._stop.wait(self.reply_delay_s):
            return None  # off duty meanwhile: the chat stays claimed, as a person's would
        self.api.reply(conv_id, reply)
        self.api.resolve(conv_id)
        done = Answered(conv_id, intent, follow_up, reply)
        self.answered.append(done)
        return done

    def work(self) -> list[Answered]:
        """One pass over the waiting chats, oldest first; returns the ones answered."""
        waiting = self.api.conversations()["waiting"]
        return [done for item in waiting if (done := self.take(item["conversation_id"])) is not None]

    def _run(self, heartbeat_s: float) -> None:
        beat = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() - beat >= heartbeat_s:
                    self.api.presence("online")
                    beat = time.monotonic()
                self.work()
            except (ChatAPIError, requests.RequestException, FactSentenceMissing) as exc:  # e.g. the chat ended first
                self.errors.append(str(exc))
            self._stop.wait(self.poll_s)

    @contextmanager
    def on_duty(self) -> Iterator[SimulatedAgent]:
        """Online (customers asking for a person reach it) and working in a thread until the block ends; then away."""
        heartbeat_s = float(self.api.presence("online")["heartbeat_s"])
        self._stop.clear()
        thread = threading.Thread(target=self._run, args=(heartbeat_s,), name="sim-agent", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=30)
            self.api.presence("away")
