"""The Knowledge page's JSON API (real Redis; the routes never use the model): every route's role
boundary and CSRF check, edits checked against the version they were based on (a clear 409 that
names both versions), history and revert, the escaped preview, the retrieval check, and bad input
answered with a clear 4xx that leaves the knowledge base as it was."""

from __future__ import annotations

import pytest

from feedback_store import FeedbackStore
from loopdesk.config import Settings
from tests.console_helpers import add_accounts, sign_in
from tests.web_helpers import started_app

BODY = "Your money is back within 5 business days of your return reaching us."
READS = [("GET", "/api/kb/articles", None), ("GET", "/api/kb/articles/refunds", None),
         ("GET", "/api/kb/articles/refunds/versions", None), ("GET", "/api/kb/articles/refunds/versions/1", None),
         ("GET", "/api/kb/retrieve?q=money+back", None)]
WRITES = [("POST", "/api/kb/preview", {"body": "**hi**"}),
          ("POST", "/api/kb/articles", {"id": "shipping", "title": "Shipping", "body": "In 2 to 4 days."}),
          ("PUT", "/api/kb/articles/refunds", {"base_version": 1, "title": "Refunds and money back"}),
          ("POST", "/api/kb/articles/refunds/revert", {"to_version": 1, "base_version": 2}),
          ("POST", "/api/kb/articles/refunds/retire", {"base_version": 3})]


class Console:
    """A signed-in test client (or an anonymous one) that sends the CSRF token on writes."""

    def __init__(self, app, name: str | None):
        self.client = app.test_client()
        self.token = sign_in(self.client, name) if name else ""

    def call(self, method: str, path: str, body: dict | None = None, csrf: bool = True):
        headers = {"X-CSRF-Token": self.token} if csrf and self.token else {}
        return self.client.open(path, method=method, json=body, headers=headers)


@pytest.fixture
def app(settings: Settings, store: FeedbackStore):
    add_accounts(store)
    store.knowledge.create("refunds", "Refunds", BODY, ["refunds", "money"], by="cli")
    with started_app(settings, store) as built:
        yield built


def unchanged(store: FeedbackStore, revision: int) -> None:
    assert store.knowledge.revision() == revision
    assert [a.id for a in store.knowledge.snapshot().articles] == ["refunds"]


def error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.json["error"]["code"] == code
    return response.json["error"]["message"]


def test_anonymous_callers_get_401_and_the_page_sends_them_to_sign_in(app, store):
    anonymous = Console(app, None)
    for method, path, body in READS + WRITES:
        error(anonymous.call(method, path, body), 401, "login_required")
    page = anonymous.client.get("/knowledge")
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    unchanged(store, 1)


def test_experts_may_read_but_not_write(app, store):
    expert = Console(app, "erin")
    for method, path, body in READS:
        assert expert.call(method, path, body).status_code == 200, path
    for method, path, body in WRITES:
        assert "needs the operator role" in error(expert.call(method, path, body), 403, "wrong_role")
    page = expert.client.get("/knowledge").get_data(as_text=True)
    assert 'content="no"' in page and 'id="kb-new"' not in page and 'id="kb-editor"' not in page
    unchanged(store, 1)


@pytest.mark.parametrize("name", ["otto", "ada"])
def test_operators_and_admins_may_do_everything(app, store, name):
    console = Console(app, name)
    for method, path, body in READS:
        assert console.call(method, path, body).status_code == 200, path
    assert [console.call(m, p, b).status_code for m, p, b in WRITES] == [200, 201, 200, 200, 200]
    assert [(a.version, a.status, a.updated_by) for a in store.knowledge.history("refunds")] == [
        (1, "published", "cli"), (2, "published", name), (3, "published", name), (4, "retired", name)]
    assert store.knowledge.get("shipping").updated_by == name
    assert 'id="kb-new"' in console.client.get("/knowledge").get_data(as_text=True)


def test_every_write_needs_the_csrf_token(app, store):
    operator = Console(app, "otto")
    for method, path, body in WRITES:
        assert "CSRF" in error(operator.call(method, path, body, csrf=False), 403, "csrf_failed")
    wrong = operator.client.open("/api/kb/articles", method="POST", headers={"X-CSRF-Token": "forged"},
                                 json={"id": "shipping", "title": "Shipping", "body": "In 2 to 4 days."})
    error(wrong, 403, "csrf_failed")
    unchanged(store, 1)


def test_an_edit_based_on_an_old_version_is_a_409_naming_both_and_writes_nothing(app, store):
    otto, ada = Console(app, "otto"), Console(app, "ada")
    assert ada.call("PUT", "/api/kb/articles/refunds", {"base_version": 1, "body": "Money back in 3 days."}).json[
        "version"] == 2
    stale = otto.call("PUT", "/api/kb/articles/refunds", {"base_version": 1, "body": "Money back in 9 days."})
    assert error(stale, 409, "version_conflict").startswith(
        "someone else (ada) saved version 2 while you edited version 1")
    error(otto.call("POST", "/api/kb/articles/refunds/retire", {"base_version": 1}), 409, "version_conflict")
    mine = ada.call("PUT", "/api/kb/articles/refunds", {"base_version": 1, "title": "Refunds!"})
    assert error(mine, 409, "version_conflict").startswith("you saved version 2 in another window")
    ahead = otto.call("PUT", "/api/kb/articles/refunds", {"base_version": 7, "title": "Refunds!"})
    assert "there is no version 7" in error(ahead, 409, "version_conflict")
    current = store.knowledge.get("refunds")
    assert (current.version, current.body, current.updated_by) == (2, "Money back in 3 days.", "ada")
    assert store.knowledge.revision() == 2


def test_history_lists_every_version_and_revert_restores_an_old_one_as_a_new_version(app, store):
    otto = Console(app, "otto")
    otto.call("PUT", "/api/kb/articles/refunds", {"base_version": 1, "body": "Money back in 3 days.", "tags": ["money"]})
    history = otto.call("GET", "/api/kb/articles/refunds/versions").json["versions"]
    assert [(v["version"], v["updated_by"]) for v in history] == [(2, "otto"), (1, "cli")] and "body" not in history[0]
    first = otto.call("GET", "/api/kb/articles/refunds/versions/1").json
    assert first["body"] == BODY and first["html"] == f"<p>{BODY}</p>\n"
    reverted = otto.call("POST", "/api/kb/articles/refunds/revert", {"to_version": 1, "base_version": 2})
    assert reverted.status_code == 200 and reverted.json["version"] == 3
    assert (reverted.json["body"], reverted.json["tags"]) == (BODY, ["money", "refunds"])
    missing = otto.call("POST", "/api/kb/articles/refunds/revert", {"to_version": 9, "base_version": 3})
    assert "versions 1 to 3" in error(missing, 404, "not_found")
    error(otto.call("GET", "/api/kb/articles/refunds/versions/9"), 404, "not_found")
    error(otto.call("GET", "/api/kb/articles/nowhere/versions"), 404, "not_found")


def test_retire_then_publish_again(app, store):
    otto = Console(app, "otto")
    assert otto.call("POST", "/api/kb/articles/refunds/retire", {"base_version": 1}).json["status"] == "retired"
    assert "already retired" in error(otto.call("POST", "/api/kb/articles/refunds/retire", {"base_version": 2}),
                                      409, "conflict")
    assert otto.call("GET", "/api/kb/articles?status=retired").json["articles"][0]["id"] == "refunds"
    again = otto.call("PUT", "/api/kb/articles/refunds", {"base_version": 2, "status": "published"})
    assert (again.json["version"], again.json["status"]) == (3, "published")


def test_the_list_filters_by_status_and_text(app, store):
    otto = Console(app, "otto")
    otto.call("POST", "/api/kb/articles", {"id": "shipping", "title": "Shipping times", "body": "2 to 4 days.",
                                          "tags": ["delivery"]})
    listed = otto.call("GET", "/api/kb/articles?q=deliv").json
    assert [a["id"] for a in listed["articles"]] == ["shipping"] and listed["revision"] == 2
    assert "body" not in listed["articles"][0]
    error(otto.call("GET", "/api/kb/articles?status=draft"), 422, "invalid_request")


def test_preview_and_article_html_show_what_an_operator_typed_as_text(app, store):
    otto = Console(app, "otto")
    typed = ('<img src=x onerror="alert(1)"> **bold** [x](javascript:alert(1)) <script>alert(2)</script>\n\n'
             '| size | price |\n|:--|--:|\n| L | $129 |')
    html = otto.call("POST", "/api/kb/preview", {"body": typed}).json["html"]
    assert "<strong>bold</strong>" in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert "<img" not in html and "<script" not in html and 'href="javascript' not in html
    assert "<td>$129</td>" in html and "style=" not in html  # aligned cells, nothing inline for the CSP
    created = otto.call("POST", "/api/kb/articles", {"id": "hostile", "title": "<b>Bold</b> title", "body": typed})
    assert created.status_code == 201 and "<img" not in created.json["html"]
    assert created.json["title"] == "<b>Bold</b> title"  # stored as typed; the page shows it with textContent


def test_the_retrieval_check_shows_scores_and_the_threshold(app, store, settings):
    otto = Console(app, "otto")
    found = otto.call("GET", "/api/kb/retrieve?q=when+is+my+money+back").json
    assert (found["min_score"], found["top_k"], found["revision"]) == (settings.kb_min_score, 1, 1)
    (best,) = found["results"]
    assert best["id"] == "refunds" and best["version"] == 1 and best["score"] > 0
    assert best["passes"] == (best["score"] >= settings.kb_min_score) == found["fits"] == best["in_context"]
    nothing = otto.call("GET", "/api/kb/retrieve?q=capital+of+France").json
    assert nothing["results"] == [] and nothing["fits"] is False
    error(otto.call("GET", "/api/kb/retrieve?q=+"), 422, "invalid_request")
    error(otto.call("GET", "/api/kb/retrieve?q=" + "a" * 2001), 422, "invalid_request")


@pytest.mark.parametrize("body, status, code, says", [
    ({"id": "Bad Id!", "title": "T", "body": "B"}, 422, "invalid_request", "lowercase letters"),
    ({"id": "ok", "title": "", "body": "B"}, 422, "invalid_request", "title"),
    ({"id": "ok", "title": "T", "body": "x" * 20_001}, 422, "invalid_request", "20,000"),
    ({"id": "ok", "title": "T", "body": "B", "tags": ["Not A Tag"]}, 422, "invalid_request", "lowercase words"),
    ({"id": "ok", "title": "T", "body": "B", "colour": "red"}, 422, "invalid_request", "colour"),
    ({"id": "refunds", "title": "T", "body": "B"}, 409, "conflict", "already exists"),
])
def test_a_bad_new_article_is_refused_with_the_reason_and_nothing_is_written(app, store, body, status, code, says):
    assert says in error(Console(app, "otto").call("POST", "/api/kb/articles", body), status, code)
    unchanged(store, 1)


def test_a_body_that_is_too_big_or_not_json_is_refused_and_nothing_is_written(app, store, settings):
    otto = Console(app, "otto")
    huge = otto.call("PUT", "/api/kb/articles/refunds", {"base_version": 1, "body": "x" * settings.max_request_bytes})
    error(huge, 413, "body_too_large")
    headers = {"X-CSRF-Token": otto.token}
    error(otto.client.put("/api/kb/articles/refunds", data="{not json", headers={**headers, "Content-Type":
                                                                                  "application/json"}),
          400, "invalid_json")
    error(otto.client.put("/api/kb/articles/refunds", data="body=x", headers={**headers, "Content-Type": "text/plain"}),
          415, "unsupported_media_type")
    error(otto.call("PUT", "/api/kb/articles/refunds", {"base_version": 0, "title": "T"}), 422, "invalid_request")
    error(otto.call("PUT", "/api/kb/articles/nowhere", {"base_version": 1, "title": "T"}), 404, "not_found")
    error(otto.call("POST", "/api/kb/preview", {"body": "x" * 20_001}), 422, "invalid_request")
    assert store.knowledge.get("refunds").body == BODY
    unchanged(store, 1)
