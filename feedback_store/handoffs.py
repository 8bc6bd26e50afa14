"""Handoffs to a person: the request, an agent's claim, their replies, the transfer back to the bot,
the resolution, the email a customer leaves when nobody is available; agents' presence; and the
live follow of a conversation that the widget's and the inbox's streams read.

A conversation's status moves ``open`` → ``waiting_for_agent`` (asked for a person while one is
available) → ``with_agent`` (claimed) → ``open`` again (transferred back to the bot) or ``ended``
(resolved). Each move is one Lua script that checks the status it starts from, so two agents
never claim the same conversation and only the claimer (or a supervisor) answers it. Every move
is announced on the conversation's events channel. When the handoff is over (resolved,
transferred back, or ended by the customer while with the agent) the conversation enters the
feedback log, so the trainer's export sees the agents' replies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterator, Literal

import redis
from pydantic import ValidationError

from feedback_store.conversations import MAX_TURNS, parse_conversation, parse_turn
from feedback_store.errors import NotFoundError, ValidationFailed
from feedback_store.keys import Keys
from feedback_store.lua import Script
from feedback_store.records import AgentTurn, BotTurn, Conversation, Handoff, HandoffReason, Turn
from loopdesk.pii import mask_pii

PRESENCE_TTL_S = 45  # an agent counts as online this long after the inbox page's last heartbeat
Presence = Literal["online", "away", "offline"]

_REQUEST = """
-- KEYS: conv, turns, handoff, earlier handoffs, waiting, events channel
-- ARGV: conv id, reason, now, available (1/0), notice turn json, max turns
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no such conversation') end
local f = redis.call('HMGET', KEYS[1], 'status', 'n_turns')
if f[1] == 'ended' then return fail('CONFLICT', 'the conversation has ended') end
if f[1] ~= 'open' then return {-1, f[1]} end
if tonumber(f[2]) >= tonumber(ARGV[6]) then
  return fail('CONFLICT', 'the conversation reached its limit of ' .. ARGV[6] .. ' turns')
end
local old = redis.call('HGETALL', KEYS[3])
local record = {}
for i = 1, #old, 2 do record[old[i]] = old[i + 1] end
if #old > 0 then
  redis.call('RPUSH', KEYS[4], cjson.encode(record))
  redis.call('DEL', KEYS[3])
end
local index = redis.call('RPUSH', KEYS[2], ARGV[5]) - 1
redis.call('HSET', KEYS[3], 'conversation_id', ARGV[1], 'reason', ARGV[2], 'requested_at', ARGV[3],
           'turn_index', index, 'available', ARGV[4])
if record['contact_email'] and not record['resolved_at'] then
  redis.call('HSET', KEYS[3], 'contact_email', record['contact_email'], 'contact_at', record['contact_at'])
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3], 'n_turns', index + 1)
redis.call('HINCRBY', KEYS[1], 'handoffs', 1)
local status = 'open'
if ARGV[4] == '1' then
  status = 'waiting_for_agent'
  redis.call('HSET', KEYS[1], 'status', status)
  redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
end
redis.call('PUBLISH', KEYS[6], index)
return {index, status}
"""

_CLAIM = """
-- KEYS: conv, handoff, waiting, claimed, events channel   ARGV: conv id, agent, agent name, now
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no such conversation') end
local status = redis.call('HGET', KEYS[1], 'status')
local by = redis.call('HGET', KEYS[2], 'claimed_by')
if status == 'with_agent' and by then return fail('CONFLICT', 'the conversation is with ' .. by .. ' already') end
if status ~= 'waiting_for_agent' or by then
  return fail('CONFLICT', 'the conversation is not waiting for an agent (it is ' .. status .. ')')
end
redis.call('HSET', KEYS[2], 'claimed_by', ARGV[2], 'agent_name', ARGV[3], 'claimed_at', ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'with_agent', 'updated_at', ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('PUBLISH', KEYS[5], 'status')
return 1
"""

# Shared by the writes only the claimer may make; a supervisor (an admin) may make them in any claimed chat.
_CLAIMER = """
local function refused(conv, handoff, agent, supervisor)
  if redis.call('EXISTS', conv) == 0 then return fail('NOTFOUND', 'no such conversation') end
  local status = redis.call('HGET', conv, 'status')
  if status ~= 'with_agent' then
    return fail('CONFLICT', 'the conversation is ' .. status .. ', not with an agent: claim it first')
  end
  local by = redis.call('HGET', handoff, 'claimed_by')
  if by ~= agent and supervisor ~= '1' then
    return fail('FORBIDDEN', 'the conversation is with ' .. tostring(by) .. ', not with ' .. agent)
  end
  return nil
end
local function handed_back(conv_id, seq, log)
  redis.call('ZADD', log, redis.call('INCR', seq), conv_id)
end
"""

_REPLY = _CLAIMER + """
-- KEYS: conv, handoff, turns, events channel   ARGV: agent, supervisor (1/0), turn json, now, max turns
local no = refused(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if no then return no end
if tonumber(redis.call('HGET', KEYS[1], 'n_turns')) >= tonumber(ARGV[5]) then
  return fail('CONFLICT', 'the conversation reached its limit of ' .. ARGV[5] .. ' turns')
end
local index = redis.call('RPUSH', KEYS[3], ARGV[3]) - 1
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4], 'n_turns', index + 1)
redis.call('PUBLISH', KEYS[4], index)
return index
"""

_TRANSFER = _CLAIMER + """
-- KEYS: conv, handoff, claimed, events channel, feedback seq, feedback log   ARGV: agent, supervisor, now, conv id
local no = refused(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if no then return no end
redis.call('HSET', KEYS[2], 'returned_at', ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'open', 'updated_at', ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[4])
handed_back(ARGV[4], KEYS[5], KEYS[6])
redis.call('PUBLISH', KEYS[4], 'status')
return 1
"""

_RESOLVE = _CLAIMER + """
-- KEYS: conv, handoff, claimed, contact requests, annotation queue, events channel, feedback seq, feedback log
-- ARGV: agent, supervisor, now, conv id, adapter queue prefix
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no such conversation') end
if redis.call('HGET', KEYS[1], 'status') == 'with_agent' then
  local no = refused(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
  if no then return no end
  redis.call('HSET', KEYS[2], 'resolved_at', ARGV[3], 'resolved_by', ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'ended', 'ended_at', ARGV[3], 'updated_at', ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[4])
  redis.call('ZREM', KEYS[4], ARGV[4])
  requeue(KEYS[1], KEYS[5], ARGV[5])
  handed_back(ARGV[4], KEYS[7], KEYS[8])
  redis.call('PUBLISH', KEYS[6], 'status')
  return 'ended'
end
local h = redis.call('HMGET', KEYS[2], 'contact_email', 'resolved_at')
if h[1] and h[1] ~= '' and not h[2] then
  redis.call('HSET', KEYS[2], 'resolved_at', ARGV[3], 'resolved_by', ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[4])
  return 'answered'
end
return fail('CONFLICT', 'nothing to resolve: the conversation is not with an agent and has no open contact request')
"""

_CONTACT = """
-- KEYS: handoff, contact requests   ARGV: email, now, conv id
if redis.call('EXISTS', KEYS[1]) == 0 then
  return fail('CONFLICT', 'nobody has been asked for in this conversation: ask for a person first')
end
if redis.call('HGET', KEYS[1], 'resolved_at') then
  return fail('CONFLICT', 'the team has already answered this request')
end
redis.call('HSET', KEYS[1], 'contact_email', ARGV[1], 'contact_at', ARGV[2])
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3])
return 1
"""


def parse_handoff(fields: dict[str, str]) -> Handoff:
    """A stored handoff (hash fields, or an archived one's JSON object) back as its record."""
    return Handoff(**{k: v for k, v in fields.items() if v != ""})


@dataclass(frozen=True)
class Change:
    """What a live stream of a conversation learns: a new turn, or its status (and handoff) now."""

    turn: Turn | None = None
    conversation: Conversation | None = None
    handoff: Handoff | None = None


class Handoffs:
    """Handoff writes (each one Lua script), the inbox's queries, presence and the live follow."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self._r = client
        self._keys = keys
        self._request = Script(client, _REQUEST)
        self._claim = Script(client, _CLAIM)
        self._reply = Script(client, _REPLY)
        self._transfer = Script(client, _TRANSFER)
        self._resolve = Script(client, _RESOLVE)
        self._contact = Script(client, _CONTACT)

    # the customer's side -----------------------------------------------------------------
    def request(self, conv_id: str, reason: HandoffReason, available: bool, notice: BotTurn) -> tuple[int, str]:
        """Hand an open conversation to a person: log the bot's ``notice`` and the handoff; with an agent
        ``available`` the status becomes ``waiting_for_agent``, else it stays ``open``.

        Returns (the notice's turn index, the status); (-1, status) when the conversation is with a person
        already (nothing is written). Raises ConflictError once it has ended.
        """
        k = self._keys
        index, status = self._request(
            [k.conversation(conv_id), k.turns(conv_id), k.handoff(conv_id), k.earlier_handoffs(conv_id),
             k.handoffs_waiting(), k.conversation_events(conv_id)],
            [conv_id, reason, notice.created_at, int(available), notice.model_dump_json(exclude={"index"}), MAX_TURNS])
        return int(index), status

    def leave_contact(self, conv_id: str, email: str) -> Handoff:
        """Keep the email address the customer left for a reply with the conversation's latest handoff."""
        self._contact([self._keys.handoff(conv_id), self._keys.contact_requests()], [email, time.time(), conv_id])
        return self.get(conv_id)

    # the agents' side ----------------------------------------------------------------------
    def claim(self, conv_id: str, agent: str, agent_name: str) -> Handoff:
        """Take a waiting conversation; ConflictError when it is not waiting (another agent was first)."""
        k = self._keys
        self._claim([k.conversation(conv_id), k.handoff(conv_id), k.handoffs_waiting(), k.handoffs_with_agents(),
                     k.conversation_events(conv_id)], [conv_id, agent, agent_name, time.time()])
        return self.get(conv_id)

    def reply(self, conv_id: str, turn: AgentTurn, supervisor: bool = False) -> AgentTurn:
        """Log the agent's reply, PII masked (``loopdesk.pii.mask_pii``, as the customer's messages are); only
        the claimer (or a ``supervisor``) may, while the chat is with them. Returns the turn as stored."""
        k = self._keys
        try:
            turn = AgentTurn(**{**turn.model_dump(), "text": mask_pii(turn.text)})
        except ValidationError as exc:
            raise ValidationFailed(f"invalid reply: {exc.errors()[0]['msg']}") from None
        index = self._reply([k.conversation(conv_id), k.handoff(conv_id), k.turns(conv_id),
                             k.conversation_events(conv_id)],
                            [turn.agent_id, int(supervisor), turn.model_dump_json(exclude={"index"}),
                             turn.created_at, MAX_TURNS])
        return turn.model_copy(update={"index": int(index)})

    def transfer_to_bot(self, conv_id: str, agent: str, supervisor: bool = False) -> Handoff:
        """Give the conversation back to the bot (status ``open``)."""
        k = self._keys
        self._transfer([k.conversation(conv_id), k.handoff(conv_id), k.handoffs_with_agents(),
                        k.conversation_events(conv_id), k.feedback_seq(), k.feedback_log()],
                       [agent, int(supervisor), time.time(), conv_id])
        return self.get(conv_id)

    def resolve(self, conv_id: str, agent: str, supervisor: bool = False) -> str:
        """Resolve the handoff: a conversation with the agent ends (``"ended"``); an open contact request is
        marked answered (``"answered"``). ConflictError when there is neither."""
        k = self._keys
        return self._resolve(
            [k.conversation(conv_id), k.handoff(conv_id), k.handoffs_with_agents(), k.contact_requests(), k.queue(),
             k.conversation_events(conv_id), k.feedback_seq(), k.feedback_log()],
            [agent, int(supervisor), time.time(), conv_id, k.queue_by_adapter_prefix()])

    # presence ------------------------------------------------------------------------------
    def set_presence(self, agent: str, presence: Literal["online", "away"], ttl_s: int = PRESENCE_TTL_S) -> None:
        """Record the agent as online or away for ``ttl_s`` seconds (the inbox page refreshes it)."""
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self._keys.agent_presence(agent), presence, ex=ttl_s)
        if presence == "online":
            pipe.zadd(self._keys.agents_online(), {agent: time.time() + ttl_s})
        else:
            pipe.zrem(self._keys.agents_online(), agent)
        pipe.execute()

    def presence(self, agent: str) -> Presence:
        """``online``, ``away``, or ``offline`` once the last heartbeat has expired."""
        return self._r.get(self._keys.agent_presence(agent)) or "offline"

    def agents_online(self) -> list[str]:
        """The agents whose online presence has not expired."""
        key, now = self._keys.agents_online(), time.time()
        pipe = self._r.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", f"({now}")
        pipe.zrangebyscore(key, now, "+inf")
        return sorted(pipe.execute()[1])

    # reads -----------------------------------------------------------------------------------
    def get(self, conv_id: str) -> Handoff | None:
        """The conversation's latest handoff, or None."""
        fields = self._r.hgetall(self._keys.handoff(conv_id))
        return parse_handoff(fields) if fields else None

    def history(self, conv_id: str) -> list[Handoff]:
        """Every handoff of the conversation, oldest first."""
        pipe = self._r.pipeline(transaction=True)
        pipe.lrange(self._keys.earlier_handoffs(conv_id), 0, -1)
        pipe.hgetall(self._keys.handoff(conv_id))
        earlier, latest = pipe.execute()
        return [parse_handoff(json.loads(raw)) for raw in earlier] + ([parse_handoff(latest)] if latest else [])

    def waiting(self, limit: int = 100) -> list[Handoff]:
        """Conversations waiting for an agent, oldest request first."""
        return self._listed(self._keys.handoffs_waiting(), limit)

    def claimed(self, limit: int = 100) -> list[Handoff]:
        """Conversations with an agent, by claim time."""
        return self._listed(self._keys.handoffs_with_agents(), limit)

    def contact_requests(self, limit: int = 100) -> list[Handoff]:
        """Handoffs whose customer left an email address that nobody has answered yet, oldest first."""
        return self._listed(self._keys.contact_requests(), limit)

    def asked(self, handoffs: list[Handoff]) -> dict[str, str]:
        """Conversation id → the customer's message just before each handoff's notice (none after a button)."""
        pipe = self._r.pipeline(transaction=False)
        for handoff in handoffs:
            pipe.lindex(self._keys.turns(handoff.conversation_id), handoff.turn_index - 1)
        found = zip(handoffs, pipe.execute())
        return {h.conversation_id: turn.text for h, raw in found if raw and h.turn_index > 0
                for turn in [parse_turn(h.turn_index - 1, raw)] if turn.role == "user"}

    def _listed(self, key: str, limit: int) -> list[Handoff]:
        pipe = self._r.pipeline(transaction=False)
        for conv_id in self._r.zrange(key, 0, max(1, min(limit, 1000)) - 1):
            pipe.hgetall(self._keys.handoff(conv_id))
        return [parse_handoff(f) for f in pipe.execute() if f]

    # following a conversation live -------------------------------------------------------------
    def follow(self, conv_id: str, after: int = -1, idle_s: float = 15.0) -> Iterator[Change | None]:
        """The conversation as it changes: first its status, then each turn after index ``after`` and each
        change of status or claimer, as they happen; None after ``idle_s`` without news (a keep-alive).
        Runs until the caller stops iterating or the conversation is erased or pruned; NotFoundError for an
        unknown conversation."""
        k = self._keys
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(k.conversation_events(conv_id))  # before the first read: no change falls in between
        try:
            shown: tuple | None = None
            while True:
                pipe = self._r.pipeline(transaction=True)
                pipe.hgetall(k.conversation(conv_id))
                pipe.lrange(k.turns(conv_id), after + 1, -1)
                pipe.hgetall(k.handoff(conv_id))
                fields, raw_turns, handoff_fields = pipe.execute()
                if not fields:
                    if shown is None:
                        raise NotFoundError(f"no conversation {conv_id!r}")
                    return  # erased or pruned while followed
                for raw in raw_turns:
                    after += 1
                    yield Change(turn=parse_turn(after, raw))
                conv = parse_conversation(fields)
                handoff = parse_handoff(handoff_fields) if handoff_fields else None
                state = (conv.status, handoff.claimed_by if handoff else "")
                if state != shown:
                    shown = state
                    yield Change(conversation=conv, handoff=handoff)
                if pubsub.get_message(timeout=idle_s) is None:
                    yield None
        finally:
            pubsub.close()
