"""The public help centre (real Redis; no model needed): published articles only, a search through
the live index, Markdown rendered with raw HTML escaped, clear 404s, a per-IP rate limit of its
own and the chat API's CORS answers."""

from __future__ import annotations

import pytest

from feedback_store import FeedbackStore
from loopdesk.config import Settings
from tests.web_helpers import started_app

HOSTILE_TITLE = "Gift cards <b>& vouchers</b>"
HOSTILE_BODY = "**Yes**, we sell them.\n\n<script>window.__pwned = 1</script> [click](javascript:alert(1))"


def seed(store: FeedbackStore) -> None:
    store.knowledge.create("refunds", "Refunds: when do I get my money back?",
                           "Your **money** is back within 5 business days.", ["money", "refunds"])
    store.knowledge.create("gift-cards", HOSTILE_TITLE, HOSTILE_BODY, ["gifts"])
    store.knowledge.create("old-policy", "The old returns policy", "Returns within 14 days.", ["returns"])
    store.knowledge.retire("old-policy", 1, "cli")


@pytest.fixture
def app(settings: Settings, store: FeedbackStore):
    seed(store)
    with started_app(settings.replace(cors_origins="https://shop.example"), store) as built:
        yield built


def test_the_list_has_the_published_articles_only_by_title(app):
    response = app.test_client().get("/api/help/articles")
    assert response.status_code == 200
    body = response.json
    assert body["query"] is None
    assert [a["id"] for a in body["articles"]] == ["gift-cards", "refunds"]
    refunds = body["articles"][1]
    assert set(refunds) == {"id", "title", "tags", "version", "updated_at", "score"} and refunds["score"] is None
    assert (refunds["version"], refunds["tags"]) == (1, ["money", "refunds"])


def test_an_article_comes_with_its_markdown_body(app, store):
    store.knowledge.update("refunds", 1, "otto", body="Your money is back within **3** business days.")
    article = app.test_client().get("/api/help/articles/refunds").json
    assert article["version"] == 2 and article["body"] == "Your money is back within **3** business days."


@pytest.mark.parametrize("article_id", ["old-policy", "nowhere", "Bad_Id", "x" * 300])
def test_a_retired_unknown_or_malformed_id_is_a_clear_404(app, article_id):
    response = app.test_client().get(f"/api/help/articles/{article_id}")
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    assert "help article" in response.json["error"]["message"]
    page = app.test_client().get(f"/help/{article_id}")
    assert page.status_code == 404 and b"help article" in page.data


def test_a_search_goes_through_the_live_index_best_first(app):
    body = app.test_client().get("/api/help/articles?q=when+is+my+money+back").json
    assert body["query"] == "when is my money back"
    assert body["articles"][0]["id"] == "refunds" and body["articles"][0]["score"] > 0
    scores = [a["score"] for a in body["articles"]]
    assert scores == sorted(scores, reverse=True) and "old-policy" not in {a["id"] for a in body["articles"]}
    assert app.test_client().get("/api/help/articles?q=zzzzqqq").json["articles"] == []
    too_long = app.test_client().get("/api/help/articles?q=" + "a" * 501)
    assert too_long.status_code == 422 and "500" in too_long.json["error"]["message"]


def test_the_help_pages_escape_what_an_operator_typed(app):
    client = app.test_client()
    listing = client.get("/help").get_data(as_text=True)
    assert "Gift cards &lt;b&gt;&amp; vouchers&lt;/b&gt;" in listing and "<b>&" not in listing
    assert 'href="/help/refunds"' in listing and "old returns policy" not in listing
    page = client.get("/help/gift-cards")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "<strong>Yes</strong>" in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html and "<script>window" not in html
    assert "[click](javascript:alert(1))" in html and 'href="javascript' not in html  # not made a link
    assert "<script" not in html and "style=" not in html  # nothing inline for the CSP to refuse
    searched = client.get("/help?q=money").get_data(as_text=True)
    assert "Refunds: when do I get my money back?" in searched and "Gift cards" not in searched


def test_the_demo_shop_links_its_help_centre(app):
    assert b'href="/help"' in app.test_client().get("/").data


def test_the_help_centre_has_a_per_ip_budget_of_its_own(settings, store):
    seed(store)
    with started_app(settings.replace(rate_limit_per_ip="3/minute"), store) as app:
        client = app.test_client()
        assert [client.get("/api/help/articles").status_code for _ in range(3)] == [200, 200, 200]
        limited = client.get("/api/help/articles/refunds")
        assert limited.status_code == 429 and limited.json["error"]["code"] == "rate_limited"
        assert client.get("/help").status_code == 429
        assert client.post("/api/conversations").status_code != 429  # the chat API counts apart


def test_other_origins_get_the_chat_apis_cors_answers(app):
    client = app.test_client()
    allowed = client.get("/api/help/articles", headers={"Origin": "https://shop.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert allowed.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    preflight = client.open("/api/help/articles/refunds", method="OPTIONS",
                            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    other = client.get("/api/help/articles", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
