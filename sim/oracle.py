"""The oracle: a stand-in bot that always gives the KB's canonical reply, for calibrating the simulator.

It serves the same chat API routes and bodies as ``bot/chat.py`` (JSON or SSE replies, bearer
tokens, end, rating) and the help centre's (the shop's articles as shipped), so oracle customers
take exactly the HTTP, rubric and rating path that real ones do; only the replies differ. It
recognises the question by the KB phrasing (or out-of-scope question) the message contains, as an
expert would, answers an out-of-scope one with the shop's decline, and keeps the chat's question
for messages it cannot place.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field

from flask import Flask, Response, abort, request

from sim.company import Company
from sim.knowledge import load_templates, render_article, template_by_id
from sim.rubric import Question, identify_question

VERSION = "oracle"
CLARIFY = "Could you tell me a little more about what you need help with?"


@dataclass
class _Chat:
    token: str
    question: Question | None = None
    turns: list[dict] = field(default_factory=list)
    status: str = "open"
    csat: int | None = None


def canonical_answer(company: Company, text: str, fallback: Question | None) -> tuple[str, Question | None]:
    """The canonical reply to a customer message and the question it was taken to be."""
    question = identify_question(company, text) or (Question(fallback.intent) if fallback else None)
    if question is None:
        return CLARIFY, None
    if question.intent is None:
        return company.shop.decline(), question
    return question.intent.reference_reply(question.follow_up), question


def help_article_body(company: Company, article_id: str) -> dict | None:
    """The help centre's JSON of one of the shop's articles as shipped (None: no such article)."""
    if article_id not in {t.id for t in load_templates()}:
        return None
    article = render_article(template_by_id(article_id), company)
    return {"id": article.id, "title": article.title, "tags": article.tags, "version": 1, "updated_at": 0.0,
            "body": article.body}


def create_oracle_app(company: Company) -> Flask:
    """A Flask app with the chat API's routes, answering every message with the canonical reply."""
    app = Flask(__name__)
    chats: dict[str, _Chat] = {}
    lock = threading.Lock()

    def chat_for(conv_id: str) -> _Chat:
        chat = chats.get(conv_id)
        if chat is None:
            abort(404)
        if request.headers.get("Authorization", "") != f"Bearer {chat.token}":
            abort(403)
        return chat

    @app.post("/api/conversations")
    def start() -> tuple[dict, int]:
        conv_id, token = secrets.token_hex(8), secrets.token_urlsafe(16)
        with lock:
            chats[conv_id] = _Chat(token)
        return {"conversation_id": conv_id, "token": token, "adapter_version": VERSION}, 201

    @app.post("/api/conversations/<conv_id>/messages")
    def message(conv_id: str) -> Response | dict:
        with lock:
            chat = chat_for(conv_id)
            text, chat.question = canonical_answer(company, request.get_json()["text"], chat.question)
            chat.turns.append({"role": "user", "text": request.get_json()["text"]})
            chat.turns.append({"role": "assistant", "text": text})
            reply = {"turn_index": len(chat.turns) - 1, "text": text, "adapter_version": VERSION, "finished": True}
        if request.accept_mimetypes.best_match(["application/json", "text/event-stream"]) == "text/event-stream":
            body = (f"event: delta\ndata: {json.dumps({'text': text})}\n\n"
                    f"event: done\ndata: {json.dumps(reply)}\n\n")
            return Response(body, mimetype="text/event-stream")
        return reply

    @app.get("/api/help/articles/<article_id>")
    def help_article(article_id: str) -> dict:
        article = help_article_body(company, article_id)
        if article is None:
            abort(404)
        return article

    @app.post("/api/conversations/<conv_id>/end")
    def end(conv_id: str) -> dict:
        with lock:
            chat_for(conv_id).status = "ended"
        return {"conversation_id": conv_id, "status": "ended", "ended_at": time.time()}

    @app.post("/api/conversations/<conv_id>/rating")
    def rate(conv_id: str) -> dict:
        score = int(request.get_json()["score"])
        with lock:
            chat_for(conv_id).csat = score
        return {"conversation_id": conv_id, "score": score, "comment": "", "changed": True}

    @app.get("/api/conversations/<conv_id>")
    def transcript(conv_id: str) -> dict:
        with lock:
            chat = chat_for(conv_id)
            turns = [{"index": i, **t} for i, t in enumerate(chat.turns)]
            return {"conversation_id": conv_id, "status": chat.status, "adapter_version": VERSION,
                    "csat": chat.csat, "turns": turns}

    return app
