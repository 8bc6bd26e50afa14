"""What the expert and operator JSON APIs answer: queue order and filters, agreement, export,
schedules, adapters and CSAT statistics (real Redis; the app is built without starting the model,
which these routes never use)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pytest
from flask.testing import FlaskClient

from bot.charts import csat_by_version, csat_summary
from bot.expert import agreement
from feedback_store import FeedbackStore
from feedback_store.rating_weights import WeightRule, csat_stats, rating_weights
from feedback_store.records import Annotation, Conversation
from loopdesk.config import Settings
from tests.console_helpers import (
    add_accounts,
    register_record,
    seed_conversation,
    sign_in,
)
from tests.web_helpers import started_app


class Client:
    """A signed-in test client that sends the CSRF token on writes."""

    def __init__(self, client: FlaskClient, token: str):
        self.client, self.token = client, token

    def get(self, path: str, **kwargs):
        return self.client.get(path, **kwargs)

    def write(self, method: str, path: str, body: dict | None = None):
        return self.client.open(path, method=method, json=body, headers={"X-CSRF-Token": self.token})


@pytest.fixture
def app(settings: Settings, store: FeedbackStore):
    add_accounts(store)
    with started_app(settings, store) as built:
        yield built


def signed_in(app, name: str) -> Client:
    client = app.test_client()
    return Client(client, sign_in(client, name))


@pytest.fixture
def expert(app) -> Client:
    return signed_in(app, "erin")


@pytest.fixture
def operator(app) -> Client:
    return signed_in(app, "otto")


# ---- expert ----------------------------------------------------------------------------

def test_queue_lists_unannotated_first_then_lowest_csat_with_counts(store, expert):
    high, low, unrated, annotated = (seed_conversation(store, 5), seed_conversation(store, 2),
                                     seed_conversation(store), seed_conversation(store, 1))
    seed_conversation(store, 1, ended=False)  # open chats are not in the queue
    store.annotations.annotate(annotated.id, 1, "erin", 1)
    body = expert.get("/api/expert/queue").json
    assert [c["id"] for c in body["conversations"]] == [low.id, high.id, unrated.id, annotated.id]
    assert (body["unannotated"], body["annotated"]) == (3, 1)
    assert set(body["conversations"][0]) == {"id", "csat", "adapter_version", "created_at", "n_turns", "status"}
    only_new = expert.get("/api/expert/queue?include_annotated=false").json["conversations"]
    assert annotated.id not in [c["id"] for c in only_new]


def test_queue_filters_by_csat_dates_version_and_tag(store, expert):
    old = seed_conversation(store, 2, version="base")
    other = seed_conversation(store, 3, version="v0007")
    tagged = seed_conversation(store, 4)
    store.annotations.annotate(tagged.id, 1, "erin", -2, tags=["rude"])

    def ids(query: str) -> list[str]:
        response = expert.get(f"/api/expert/queue?{query}")
        assert response.status_code == 200, response.json
        return [c["id"] for c in response.json["conversations"]]

    assert ids("csat_min=3&csat_max=4") == [other.id, tagged.id]
    assert ids("adapter_version=v0007") == [other.id]
    assert ids("tag=rude") == [tagged.id]
    today = datetime.fromtimestamp(old.created_at, timezone.utc).date().isoformat()
    assert set(ids(f"since={today}&until={today}")) == {old.id, other.id, tagged.id}
    assert ids(f"since={other.created_at}&until={other.created_at}") == [other.id]
    assert ids("until=2000-01-01") == []
    assert ids("limit=1&offset=1") == [other.id]
    assert expert.get("/api/expert/queue?csat_min=9").status_code == 422
    assert expert.get("/api/expert/queue?since=yesterday").status_code == 422


def test_queue_counts_follow_its_filters(store, expert):
    old = seed_conversation(store, 2, version="base")
    seed_conversation(store, 3, version="v0007")
    tagged = seed_conversation(store, 4)
    seed_conversation(store)
    store.annotations.annotate(tagged.id, 1, "erin", -2, tags=["rude"])

    def counts(query: str) -> tuple[int, int]:
        body = expert.get(f"/api/expert/queue?{query}").json
        assert body["counts_complete"] is True
        return body["unannotated"], body["annotated"]

    assert counts("") == (3, 1)
    assert counts("csat_min=3&csat_max=4") == (1, 1)
    assert counts("csat_max=2") == (1, 0)
    assert counts("adapter_version=v0007") == (1, 0)
    assert counts("tag=rude") == (0, 1)
    assert counts("until=2000-01-01") == (0, 0)
    assert counts(f"since={old.created_at}&until={old.created_at}") == (1, 0)
    assert counts("csat_min=4&include_annotated=false") == (0, 1)


def test_transcript_shows_each_experts_annotation_and_their_agreement(app, store, expert):
    conv = seed_conversation(store, 2, customer_text="<script>alert(1)</script>")
    response = expert.write("POST", f"/api/expert/conversations/{conv.id}/turns/1/annotations",
                            {"score": -2, "tags": ["wrong_info"], "corrected_reply": "Use Orders.", "note": "n"})
    assert response.status_code == 201
    assert response.json["expert_id"] == "erin" and response.json["corrected_reply"] == "Use Orders."
    emil = signed_in(app, "emil")
    assert emil.write("POST", f"/api/expert/conversations/{conv.id}/turns/1/annotations",
                      {"score": 0, "tags": []}).status_code == 201
    body = expert.get(f"/api/expert/conversations/{conv.id}").json
    customer, bot = body["turns"]
    assert customer == {"index": 0, "role": "user", "text": "<script>alert(1)</script>",
                        "created_at": customer["created_at"]}
    assert [a["expert_id"] for a in bot["annotations"]] == ["erin", "emil"]
    assert bot["agreement"] == {"n": 2, "mean": -1.0, "spread": 2, "pairwise": 0.5, "exact": 0.0}
    assert "token_hash" not in body["conversation"] and "context" not in bot


def test_annotation_errors_are_typed(store, expert):
    conv = seed_conversation(store, 2)
    path = f"/api/expert/conversations/{conv.id}/turns"
    assert expert.write("POST", f"{path}/1/annotations", {"score": 3}).status_code == 422
    assert expert.write("POST", f"{path}/1/annotations", {"score": 1, "tags": ["Not A Tag"]}).status_code == 422
    assert expert.write("POST", f"{path}/1/annotations", {"score": 1, "typo": 1}).status_code == 422
    assert expert.write("POST", f"{path}/0/annotations", {"score": 1}).status_code == 422  # the customer's turn
    assert expert.write("POST", f"{path}/7/annotations", {"score": 1}).status_code == 404
    assert expert.write("POST", "/api/expert/conversations/nope/turns/1/annotations", {"score": 1}).status_code == 404
    assert store.annotations.for_conversation(conv.id) == {}


def test_export_is_one_json_line_per_annotation(store, expert):
    first, second = seed_conversation(store, 1), seed_conversation(store, 4)
    store.annotations.annotate(first.id, 1, "erin", -1, corrected_reply="Better")
    store.annotations.annotate(first.id, 1, "ada", -2)
    store.annotations.annotate(second.id, 1, "erin", 2, tags=["great"])
    response = expert.get("/api/expert/export.jsonl")
    assert response.status_code == 200 and response.mimetype == "application/x-ndjson"
    rows = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert sorted((r["conversation_id"], r["expert_id"], r["score"]) for r in rows) == sorted(
        [(first.id, "erin", -1), (first.id, "ada", -2), (second.id, "erin", 2)])
    row = next(r for r in rows if r["corrected_reply"])
    assert row["bot_reply"] == "It ships tomorrow." and row["customer_text"] == "Where is my order?"
    assert row["csat"] == 1 and row["adapter_version"] == "base"


def test_agreement_of_one_annotation_is_not_reported():
    one = Annotation(conversation_id="c", turn_index=1, expert_id="e", score=2)
    assert agreement([one]) is None
    assert agreement([one, one.model_copy(update={"expert_id": "f"})])["pairwise"] == 1.0


# ---- operator --------------------------------------------------------------------------

def test_schedules_are_validated_on_entry_and_show_their_next_three_runs(operator):
    preview = operator.get("/api/operator/cron-preview?cron=0%203%20*%20*%20*").json
    assert len(preview["next_runs"]) == 3 and all(t.endswith("03:00:00+00:00") for t in preview["next_runs"])
    refused = operator.get("/api/operator/cron-preview?cron=61%20*%20*%20*%20*")
    assert refused.status_code == 422 and "cron" in refused.json["error"]["message"]
    assert operator.write("POST", "/api/operator/schedules", {"cron": "every day"}).status_code == 422
    created = operator.write("POST", "/api/operator/schedules", {"cron": "*/30 * * * *"}).json
    assert created["enabled"] and len(created["next_runs"]) == 3
    path = f"/api/operator/schedules/{created['id']}"
    assert operator.write("PATCH", path, {"enabled": False}).json["enabled"] is False
    assert operator.get("/api/operator/schedules").json["schedules"][0]["enabled"] is False
    assert operator.write("DELETE", path).status_code == 200
    assert operator.write("DELETE", path).status_code == 404
    assert operator.get("/api/operator/schedules").json["schedules"] == []


def test_train_now_queues_a_console_run_whose_progress_can_be_polled(store, operator):
    run = operator.write("POST", "/api/operator/train").json
    assert run["status"] == "queued" and run["trigger"] == "console"
    assert [r["id"] for r in operator.get("/api/operator/runs").json["runs"]] == [run["id"]]
    store.runs.report(run["id"], step=0, kl=0.1)
    first = operator.get(f"/api/operator/runs/{run['id']}/progress").json
    assert [e["kl"] for e in first["events"]] == [0.1]
    store.runs.report(run["id"], step=1, kl=0.2)
    later = operator.get(f"/api/operator/runs/{run['id']}/progress?after={first['last']}").json
    assert [e["step"] for e in later["events"]] == [1]
    assert operator.get("/api/operator/runs/r99999/progress").status_code == 404


def test_adapters_compare_with_the_active_one_and_move_through_their_states(store, operator):
    active = register_record(store, metrics={"held_out_reward": 0.5, "kl": 1.0})
    store.adapters.promote(active.version)
    candidate = register_record(store, metrics={"held_out_reward": 0.75, "kl": 1.5, "note": "x"})
    body = operator.get("/api/operator/adapters").json
    assert (body["active"], body["canary"]) == (active.version, None)
    rows = {a["version"]: a for a in body["adapters"]}
    assert rows[candidate.version]["vs_active"] == {"held_out_reward": 0.25, "kl": 0.5}
    assert rows[active.version]["vs_active"] is None and "path" not in rows[active.version]

    base = f"/api/operator/adapters/{candidate.version}"
    assert operator.write("POST", f"{base}/canary", {}).json["status"] == "canary"
    assert operator.write("PUT", "/api/operator/canary-share", {"share": 1.5}).status_code == 422
    assert operator.write("PUT", "/api/operator/canary-share", {"share": 0.3}).json == {"canary_share": 0.3}
    assert operator.write("POST", f"{base}/promote").json["status"] == "active"
    assert operator.write("POST", "/api/operator/rollback", {}).status_code == 422  # a reason is required
    rolled = operator.write("POST", "/api/operator/rollback",
                            {"reason": "CSAT fell", "to_version": active.version}).json
    assert rolled == {"rolled_back": candidate.version, "active": active.version}
    assert operator.write("POST", f"{base}/promote").status_code == 409  # rejected stays rejected
    assert store.adapters.get(candidate.version).reason.startswith("CSAT fell (by otto)")


def test_csat_is_grouped_by_version_and_bucket_with_95_percent_intervals(store, operator):
    for score in (2, 4, 4):
        seed_conversation(store, score, version="v0001")
    seed_conversation(store, 5)
    seed_conversation(store)  # unrated: not counted
    body = operator.get("/api/operator/csat?bucket=hour&days=1").json
    series = {s["version"]: s["points"] for s in body["series"]}
    assert body["bucket_s"] == 3600 and set(series) == {"base", "v0001"}
    (point,) = series["v0001"]
    assert point["n"] == 3 and point["mean"] == pytest.approx(10 / 3, abs=1e-3)
    assert (point["lo"], point["hi"]) == (1.0, 5.0)  # clipped: t(2) = 4.303, sd 1.155
    assert series["base"][0] == {"t": series["base"][0]["t"], "n": 1, "n_eff": 1.0, "mean": 5.0, "lo": None,
                                 "hi": None, "unweighted_mean": 5.0}
    assert operator.get("/api/operator/csat?bucket=week").status_code == 422


def _own_clients(scores: list[int], start: float = 0.0, spacing: float = 1.0) -> list[Conversation]:
    """Rated conversations, each its own client, the i-th started and rated at ``start + i * spacing``."""
    return [Conversation(id=f"c{i}", token_hash="h", adapter_version="base", created_at=start + i * spacing,
                         updated_at=0, csat=score) for i, score in enumerate(scores)]


def _summary(scores: list[int]) -> dict:
    convs = _own_clients(scores)
    rule = WeightRule()
    return csat_summary(csat_stats(convs, rating_weights(convs, rule), rule))


def test_equal_weights_give_the_student_t_interval_and_the_normal_one_for_large_samples():
    stats = _summary([3, 4, 5, 4])
    half = 3.182 * math.sqrt(2 / 3) / 2
    assert stats["lo"] == pytest.approx(4 - half, abs=1e-3)
    assert stats["hi"] == 5.0  # 4 + 1.30, clipped to the scale
    assert (stats["n"], stats["n_eff"], stats["unweighted_mean"]) == (4, 4.0, 4.0)
    large = _summary([3, 4] * 50)
    assert large["hi"] - large["mean"] == pytest.approx(1.96 * math.sqrt(0.2525) / 10, abs=1e-3)
    day = 86400
    convs = _own_clients([3] * 4, spacing=day / 2)
    assert [p["n"] for p in csat_by_version(convs, day, WeightRule())["series"][0]["points"]] == [2, 2]


def test_csat_shown_is_weighted_as_the_canary_weighs_it():
    day = 86400
    honest = _own_clients([4] * 10, spacing=600)
    flood = [c.model_copy(update={"id": f"f{i}", "rater": "b" * 32, "csat": 1}) for i, c in
             enumerate(_own_clients([1] * 30, spacing=600))]
    totals = csat_by_version(honest + flood, day, WeightRule(share=1.0))["totals"]["base"]
    # ten customers at 4 and one client's 30 ratings at 1, which weigh 1 together: (40 + 1) / 11
    assert totals["mean"] == pytest.approx(41 / 11, abs=1e-4) and totals["n_eff"] == pytest.approx(11.0)
    assert totals["n"] == 40 and totals["unweighted_mean"] == pytest.approx(70 / 40)
