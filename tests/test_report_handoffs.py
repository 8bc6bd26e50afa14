"""The loop report's handoff figures, from hand-made chat results: the statistics, the Markdown table
(the round's own customers and the panel), the target, and report.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from harness.report import markdown, targets, write_report
from sim.customers import ChatResult
from sim.simulate import handoff_stats


def chat(rating: int | None, handoff: str = "", asked: int = 0, unheeded: int = 0) -> ChatResult:
    return ChatResult("returns", "patient", rating=rating, handoff=handoff, asked_person=asked, unheeded=unheeded,
                      rubric=3.0)


def test_handoff_rate_resolution_rate_and_unheeded_requests_by_hand():
    results = [chat(5), chat(4), chat(3), chat(None),                   # bot only: two resolved of three rated
               chat(5, "customer_asked", asked=1), chat(None, "no_article"),  # handed off: never resolved
               chat(2, asked=1, unheeded=1)]                            # asked, and the bot answered anyway
    stats = handoff_stats(results)
    assert (stats.handoffs, stats.resolved, stats.person_requests, stats.unheeded_requests) == (2, 2, 2, 1)
    assert stats.handoff_rate == pytest.approx(2 / 7) and stats.resolution_rate == pytest.approx(2 / 5)
    empty = handoff_stats([])
    assert math.isnan(empty.handoff_rate) and math.isnan(empty.resolution_rate)


def ci(mean: float, n: int = 4) -> dict:
    return {"mean": mean, "low": mean - 0.5, "high": mean + 0.5, "n": n}


def round_row(index: int, own: list[ChatResult], panel: list[ChatResult], agent_answered: int) -> dict:
    """A round as ``harness.measure`` records it, its handoffs from the results given."""
    return {"round": index, "version": "base" if index == 0 else "v0001", "seed": 1000 * index, "chats": len(own),
            "errors": 0, "unrated_share": 0.25, "csat": ci(3.0), "rubric": ci(2.8), "seen_csat": ci(3.1),
            "held_out_csat": ci(2.9), "seen_rubric": 2.8, "held_out_rubric": 2.7,
            "per_intent": {"returns": {"csat": ci(3.0), "rubric": 2.8, "chats": len(own)}},
            "served_versions": ["base"], "turns_annotated": 2,
            "handoffs": {**asdict(handoff_stats(own)), "agent_answered": agent_answered},
            "replies": 6, "wrong_facts_share": 0.1, "over_apologetic_share": 0.0, "reply_words": 20.0,
            "per_persona": {}, "timings": {"simulate_s": 1.0, "expert_s": 0.5}, "training": None,
            "eval": {"customers": len(panel), "errors": 0, "seed": 250, "csat": ci(3.0), "rubric": ci(2.8),
                     "seen_csat": ci(3.0), "held_out_csat": ci(3.0), "handoffs": asdict(handoff_stats(panel)),
                     "seen_ratings": [r.rating for r in panel], "held_out_ratings": []}}


def loop_report() -> dict:
    first = round_row(0, [chat(5), chat(4, "customer_asked", asked=1), chat(2, "reasks"), chat(None)],
                      [chat(5), chat(1, "customer_asked", asked=1)], agent_answered=2)
    second = round_row(1, [chat(5), chat(4), chat(5, "customer_asked", asked=1), chat(3)],
                       [chat(5), chat(4)], agent_answered=1)
    return {"config": {"rounds": 1, "customers_per_round": 4, "held_out_share": 0.0, "experts": True, "seed": 0,
                       "concurrency": 2, "eval_customers": 2, "ask_person_share": 0.25, "agent_delay_s": 1.0},
            "base_model": "tiny", "temperature": 0.7, "rounds": [first, second], "oracle": None, "wall_s": 60.0}


def test_the_report_shows_handoffs_per_round_on_its_customers_and_the_panel(tmp_path):
    report = loop_report()
    md = markdown(report)
    assert "## Handoffs" in md
    assert ("| round | version | handed off | resolution rate | requests for a person | not handed off | "
            "answered by the agent | panel: handed off | panel: resolution rate | panel: not handed off |") in md
    # round 0: 2 of 4 handed off; 1 of 3 rated resolved (5 without a handoff); panel: 1 of 2, 1 of 2 rated
    assert "| 0 | base | 50% (2) | 33% | 1 | 0 | 2 | 50% (1) | 50% | 0 |" in md
    assert "| 1 | v0001 | 25% (1) | 50% | 1 | 0 | 1 | 0% (0) | 100% | 0 |" in md  # 5 and 4 of 4 rated
    assert "--ask-person-share 0.25 --agent-delay 1.0`" in md
    assert ("every request for a person is handed off", "0 of 2 not", True) in targets(report, None)

    report["rounds"][1]["handoffs"]["unheeded_requests"] = 1
    assert ("every request for a person is handed off", "1 of 2 not", False) in targets(report, None)
    write_report(report, tmp_path)
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["rounds"][0]["handoffs"] == {"handoffs": 2, "handoff_rate": 0.5, "resolved": 1,
                                                "resolution_rate": pytest.approx(1 / 3), "person_requests": 1,
                                                "unheeded_requests": 0, "agent_answered": 2}
    assert written["rounds"][0]["eval"]["handoffs"]["handoff_rate"] == 0.5


def test_a_report_from_before_handoffs_were_measured_has_no_handoff_section():
    report = loop_report()
    for row in report["rounds"]:
        del row["handoffs"], row["eval"]["handoffs"]
    del report["config"]["ask_person_share"], report["config"]["agent_delay_s"]
    md = markdown(report)
    assert "## Handoffs" not in md and "--ask-person-share" not in md
    assert not [t for t, _, _ in targets(report, None) if "person" in t]
