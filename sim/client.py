"""HTTP clients of the bot, speaking exactly the widget's, the consoles' and the help centre's APIs.

``ChatClient`` is what the widget does: start a conversation, send messages (replies as
server-sent events, or JSON), end it, rate it, with ``Authorization: Bearer <token>``. While a
person has the chat (handed off), a message gets no bot reply: the bot answers 202 and ``send``
returns ``Forwarded``; ``follow`` reads the chat's live stream (the agent's replies, the status).
``ExpertAPI`` is what the expert console does: log in (session cookie + CSRF token), read the
queue and transcripts, annotate bot turns. ``KnowledgeConsole`` is what the console's Knowledge page
does for an operator: create, edit and revert help articles, and ask what the bot's live index
retrieves for a question. ``InboxAPI`` is what the agents' inbox does: presence, the waiting
conversations, claim, reply, resolve. The chat client and every console read the public help centre
(``help``: the knowledge base's articles as they are now) over their own session; all retry politely
on 429 (``Retry-After``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterator

import requests

API = "api/conversations"
EXPERT_API = "api/expert"
HELP_API = "api/help/articles"
KB_API = "api/kb"
INBOX_API = "api/inbox"


class ChatAPIError(RuntimeError):
    """The bot answered with an error (HTTP 4xx/5xx or an SSE ``error`` event)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code = status, code


@dataclass(frozen=True)
class Started:
    """A new conversation as ``POST /api/conversations`` returns it."""

    conversation_id: str
    token: str
    adapter_version: str


@dataclass(frozen=True)
class BotReply:
    """The bot's answer to one message (the JSON body, or the SSE ``done`` event's data); ``status`` is the
    conversation's after it (``waiting_for_agent`` when this reply handed the chat to a person), ``handoff``
    the reason when this reply handed it off or said that nobody is available ("" otherwise)."""

    turn_index: int
    text: str
    adapter_version: str
    finished: bool
    source: str = "model"
    status: str = "open"
    handoff: str = ""


@dataclass(frozen=True)
class Forwarded:
    """A message sent while a person has the chat (HTTP 202): stored for the agent, and no bot reply."""

    turn_index: int  # the customer's message
    status: str  # waiting_for_agent or with_agent


class _HTTP:
    """A requests session bound to a base URL, with JSON errors and 429 back-off."""

    def __init__(self, base_url: str, timeout_s: float = 120.0, max_retries: int = 8):
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.session = requests.Session()

    def call(self, method: str, path: str, *, headers: dict[str, str] | None = None,
             body: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
             stream: bool = False, timeout_s: float | None = None) -> requests.Response:
        """Send one request; wait and retry on 429; raise ``ChatAPIError`` on any other error status.
        ``timeout_s`` (default the client's) bounds the connection and each read."""
        for attempt in range(self.max_retries + 1):
            response = self.session.request(method, self.base_url + path, headers=headers, json=body,
                                            params=params, stream=stream, timeout=timeout_s or self.timeout_s)
            if response.status_code != 429 or attempt == self.max_retries:
                break
            time.sleep(float(response.headers.get("Retry-After") or 1.0))
        if response.status_code >= 400:
            raise _error(response)
        return response

    def close(self) -> None:
        self.session.close()


def _error(response: requests.Response) -> ChatAPIError:
    try:
        detail = response.json()["error"]
        return ChatAPIError(response.status_code, detail["code"], detail["message"])
    except (ValueError, KeyError, TypeError):
        return ChatAPIError(response.status_code, "http_error", response.text[:200])


class HelpCentre:
    """The public, read-only help centre: the knowledge base's published articles as they are now."""

    def __init__(self, http: _HTTP):
        self.http = http

    def article(self, article_id: str) -> dict[str, Any] | None:
        """``GET /api/help/articles/<id>``: id, title, tags, version, updated_at, body; None when the
        help centre has no such published article (404)."""
        try:
            return self.http.call("GET", f"{HELP_API}/{article_id}", headers={"Accept": "application/json"}).json()
        except ChatAPIError as exc:
            if exc.status == 404:
                return None
            raise


class ChatClient:
    """The widget's side of the chat API; ``stream`` asks for SSE replies as the widget does."""

    def __init__(self, base_url: str, stream: bool = True, timeout_s: float = 120.0):
        self.http = _HTTP(base_url, timeout_s)
        self.stream = stream
        self.help = HelpCentre(self.http)

    @staticmethod
    def _auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def start(self, meta: dict[str, str] | None = None) -> Started:
        """``POST /api/conversations``."""
        body = self.http.call("POST", API, body={"meta": meta or {}}, headers={"Accept": "application/json"}).json()
        return Started(body["conversation_id"], body["token"], body["adapter_version"])

    def send(self, conv_id: str, token: str, text: str) -> BotReply | Forwarded:
        """``POST /api/conversations/<id>/messages``: the customer's message, and the bot's reply, or
        ``Forwarded`` when the chat is with a person (202, a JSON body even when SSE was asked for)."""
        headers = self._auth(token)
        if self.stream:
            headers["Accept"] = "text/event-stream"
        response = self.http.call("POST", f"{API}/{conv_id}/messages", headers=headers, body={"text": text},
                                  stream=self.stream)
        if response.status_code == 202:
            queued = response.json()
            return Forwarded(queued["turn_index"], queued["status"])
        data = _read_sse(response) if self.stream else response.json()
        return BotReply(data["turn_index"], data["text"], data["adapter_version"], data["finished"],
                        data.get("source", "model"), data.get("status", "open"),
                        (data.get("handoff") or {}).get("reason", ""))

    def follow(self, conv_id: str, token: str, after: int, wait_s: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """``GET /api/conversations/<id>/events?after=``: the chat's live events, (``status`` or ``turn``, data),
        as the widget reads them while a person has the chat; ends with the stream (the chat is back with the
        bot or ended) or after ``wait_s`` seconds, whichever comes first."""
        headers = {**self._auth(token), "Accept": "text/event-stream"}
        until = time.monotonic() + wait_s
        response = self.http.call("GET", f"{API}/{conv_id}/events", headers=headers, params={"after": after},
                                  stream=True, timeout_s=wait_s)
        with response:
            try:
                yield from _sse_events(response, until)
            except (requests.Timeout, requests.ConnectionError):  # a read timeout while streaming is the latter
                return

    def end(self, conv_id: str, token: str) -> None:
        """``POST /api/conversations/<id>/end``."""
        self.http.call("POST", f"{API}/{conv_id}/end", headers=self._auth(token))

    def rate(self, conv_id: str, token: str, score: int, comment: str = "") -> None:
        """``POST /api/conversations/<id>/rating`` with 1-5 stars."""
        self.http.call("POST", f"{API}/{conv_id}/rating", headers=self._auth(token),
                       body={"score": score, "comment": comment})

    def transcript(self, conv_id: str, token: str) -> dict[str, Any]:
        """``GET /api/conversations/<id>``."""
        return self.http.call("GET", f"{API}/{conv_id}", headers=self._auth(token)).json()

    def close(self) -> None:
        self.http.close()


def _sse_events(response: requests.Response, until: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, JSON data) for each server-sent event of a streamed response; comments are skipped. Stops at the
    first line read after the monotonic time ``until``."""
    event, data = "", ""
    for line in response.iter_lines(chunk_size=None, decode_unicode=True):  # each chunk as it arrives
        if until is not None and time.monotonic() > until:
            return
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif not line and event:
            yield event, json.loads(data)
            event, data = "", ""


def _read_sse(response: requests.Response) -> dict[str, Any]:
    """The ``done`` event's data of an SSE reply; an ``error`` event raises ``ChatAPIError``."""
    with response:
        for event, data in _sse_events(response):
            if event == "done":
                return data
            if event == "error":
                detail = data["error"]
                raise ChatAPIError(200, detail["code"], detail["message"])
    raise ChatAPIError(response.status_code, "stream_ended", "the reply stream ended without a done event")


class _Console:
    """A signed-in console's session: the login (shared by every role) keeps the cookie and CSRF token."""

    def __init__(self, base_url: str, timeout_s: float = 60.0):
        self.http = _HTTP(base_url, timeout_s)
        self.csrf_token = ""
        self.help = HelpCentre(self.http)

    def _headers(self) -> dict[str, str]:
        return {"Accept": "application/json", "X-CSRF-Token": self.csrf_token}

    def login(self, name: str, password: str) -> dict[str, Any]:
        """``POST /api/expert/login`` {name, password}: keeps the session cookie and ``csrf_token``."""
        body = self.http.call("POST", f"{EXPERT_API}/login", body={"name": name, "password": password},
                              headers={"Accept": "application/json"}).json()
        self.csrf_token = body["csrf_token"]
        return body

    def close(self) -> None:
        self.http.close()


class ExpertAPI(_Console):
    """The expert console's JSON API, one method per HTTP call (session cookie + CSRF header)."""

    def queue(self, csat_max: int | None = 3, limit: int = 25, include_annotated: bool = False,
              csat_min: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """``GET /api/expert/queue?csat_min=&csat_max=&offset=&limit=&include_annotated=``: the ``conversations`` list."""
        params: dict[str, Any] = {"limit": limit, "include_annotated": int(include_annotated), "offset": offset}
        if csat_max is not None:
            params["csat_max"] = csat_max
        if csat_min is not None:
            params["csat_min"] = csat_min
        return self.http.call("GET", f"{EXPERT_API}/queue", params=params, headers=self._headers()).json()["conversations"]

    def transcript(self, conv_id: str) -> dict[str, Any]:
        """``GET /api/expert/conversations/<id>``: the conversation with its ``turns``."""
        return self.http.call("GET", f"{EXPERT_API}/conversations/{conv_id}", headers=self._headers()).json()

    def annotate(self, conv_id: str, turn_index: int, score: int, tags: list[str],
                 corrected_reply: str = "", note: str = "") -> dict[str, Any]:
        """``POST /api/expert/conversations/<id>/turns/<i>/annotations`` {score, tags, corrected_reply, note}."""
        body = {"score": score, "tags": tags, "corrected_reply": corrected_reply, "note": note}
        return self.http.call("POST", f"{EXPERT_API}/conversations/{conv_id}/turns/{turn_index}/annotations",
                              body=body, headers=self._headers()).json()


class KnowledgeConsole(_Console):
    """The Knowledge page's JSON API for an operator (session cookie + CSRF header): articles and retrieval."""

    def article(self, article_id: str) -> dict[str, Any]:
        """``GET /api/kb/articles/<id>``: the current version, body included."""
        return self.http.call("GET", f"{KB_API}/articles/{article_id}", headers=self._headers()).json()

    def create(self, article_id: str, title: str, body: str, tags: list[str]) -> dict[str, Any]:
        """``POST /api/kb/articles`` {id, title, body, tags}: a new published article at version 1."""
        return self.http.call("POST", f"{KB_API}/articles", headers=self._headers(),
                              body={"id": article_id, "title": title, "body": body, "tags": tags}).json()

    def edit(self, article_id: str, base_version: int, body: str) -> dict[str, Any]:
        """``PUT /api/kb/articles/<id>`` {base_version, body}: the next version (409 if one was saved meanwhile)."""
        return self.http.call("PUT", f"{KB_API}/articles/{article_id}", headers=self._headers(),
                              body={"base_version": base_version, "body": body}).json()

    def revert(self, article_id: str, to_version: int, base_version: int) -> dict[str, Any]:
        """``POST /api/kb/articles/<id>/revert`` {to_version, base_version}: old content as a new version."""
        return self.http.call("POST", f"{KB_API}/articles/{article_id}/revert", headers=self._headers(),
                              body={"to_version": to_version, "base_version": base_version}).json()

    def retrieve(self, question: str) -> dict[str, Any]:
        """``GET /api/kb/retrieve?q=``: what the bot's live index finds (revision, fits, results with versions)."""
        return self.http.call("GET", f"{KB_API}/retrieve", params={"q": question}, headers=self._headers()).json()


class InboxAPI(_Console):
    """The agents' inbox JSON API, one method per HTTP call (session cookie + CSRF header)."""

    def presence(self, status: str) -> dict[str, Any]:
        """``PUT /api/inbox/presence`` {status}: ``online`` or ``away`` (repeat it as a heartbeat)."""
        return self.http.call("PUT", f"{INBOX_API}/presence", body={"status": status}, headers=self._headers()).json()

    def conversations(self) -> dict[str, Any]:
        """``GET /api/inbox/conversations``: ``waiting`` (oldest first), ``claimed``, ``contact_requests``."""
        return self.http.call("GET", f"{INBOX_API}/conversations", headers=self._headers()).json()

    def transcript(self, conv_id: str) -> dict[str, Any]:
        """``GET /api/inbox/conversations/<id>``: its ``turns`` and ``handoffs``."""
        return self.http.call("GET", f"{INBOX_API}/conversations/{conv_id}", headers=self._headers()).json()

    def claim(self, conv_id: str) -> dict[str, Any]:
        """``POST /api/inbox/conversations/<id>/claim``; ``ChatAPIError`` 409 when another agent was first."""
        return self.http.call("POST", f"{INBOX_API}/conversations/{conv_id}/claim", headers=self._headers()).json()

    def reply(self, conv_id: str, text: str) -> dict[str, Any]:
        """``POST /api/inbox/conversations/<id>/messages`` {text}: the turn as the customer sees it."""
        return self.http.call("POST", f"{INBOX_API}/conversations/{conv_id}/messages", body={"text": text},
                              headers=self._headers()).json()

    def resolve(self, conv_id: str) -> dict[str, Any]:
        """``POST /api/inbox/conversations/<id>/resolve``: the chat ends (the customer may rate it)."""
        return self.http.call("POST", f"{INBOX_API}/conversations/{conv_id}/resolve", headers=self._headers()).json()
