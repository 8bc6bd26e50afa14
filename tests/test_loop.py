"""The closed loop in miniature: real bot over HTTP, a real ``loopdesk worker`` subprocess, simulated
customers and expert, on the test-size model. It proves every stage runs, not that CSAT improves."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.comparison import write_comparison
from harness.loop import LoopConfig, run_loop
from harness.loop_cli import method_settings
from harness.plots import COMPARISON_PLOTS, PLOTS
from harness.report import write_report
from loopdesk.config import load_settings
from tests.trainer_helpers import as_round_file, small_round_config, trainer_settings


@pytest.mark.slow
def test_miniature_loop_rates_trains_releases_and_serves_the_new_version(settings, store, tmp_path,
                                                                          base_model_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the worker subprocess: tiny models on busy cores
    loop_settings = trainer_settings(settings, tmp_path / "data", base_model_dir)
    # 16 customers: 12 on the bot, of which the round holds out ~20% by a hash of the (random) conversation
    # ids. With 8 (6 on the bot) the hash held out 3 or more in ~10% of runs, which left fewer rewarded
    # turns than min_episodes (CI: "NotEnoughFeedback: 3 rewarded turns ...; a round needs 4").
    config = LoopConfig(rounds=1, customers_per_round=16, concurrency=4, held_out_share=0.25, seed=3,
                        round_config=as_round_file(small_round_config()), round_timeout_s=300, progress=False,
                        eval_customers=8)

    report = run_loop(loop_settings, config, tmp_path / "logs", echo=lambda line: None)

    before, after = report["rounds"]
    rated = [c for c in store.conversations.recent(limit=100) if c.csat is not None]
    assert before["version"] == "base" and before["csat"]["n"] >= 1 and len(rated) >= before["csat"]["n"]
    assert before["turns_annotated"] > 0 and before["held_out_csat"]["n"] + before["seen_csat"]["n"] >= 1

    training = after["training"]
    run = store.runs.get(training["run_id"])
    assert run.status == "succeeded", run.error  # the miniature's gate always passes
    assert run.trigger == "loop" and {"rm_eval_accuracy", "ppo", "gate_candidate_kl"} <= set(run.metrics)
    # the loop's gate (pass status active, the miniature's thresholds) is its worker's own, never the run's
    worker_file = json.loads((tmp_path / "logs" / "round-config.json").read_text())
    assert worker_file["gate"]["pass_status"] == "active" and worker_file["method"] == "ppo"
    assert run.config == {} and run.metrics["config"]["gate"]["margin"] == -10.0
    version = run.adapter_version
    assert store.adapters.get(version).status == "active" and store.adapters.active() == version

    assert after["version"] == version and after["served_versions"] == [version]
    served = [c for c in store.conversations.for_adapter(version) if c.n_turns > 0]
    assert served and all(c.meta.get("source") != "loop-swap-probe" for c in served)
    assert training["timings"]["swap_s"] >= 0

    # The fixed evaluation panel: the same 8 customers (6 seen, 2 held out) each round, on the served
    # version, in the sandbox: none of its chats reached the store the trainer reads.
    panels = [before["eval"], after["eval"]]
    assert all(p["customers"] == 8 and len(p["seen_ratings"]) == 6 and len(p["held_out_ratings"]) == 2
               and p["errors"] == 0 for p in panels)
    assert panels[0]["seed"] == panels[1]["seed"] == 3 + 250 and after["timings"]["eval_s"] > 0
    # every customer rates or leaves as drawn, whatever the bot said: the same ones rate in both rounds
    assert [r is None for r in panels[0]["seen_ratings"]] == [r is None for r in panels[1]["seen_ratings"]]
    stored = [c for c in store.conversations.recent(limit=500) if c.meta.get("source") != "loop-swap-probe"]
    assert len(stored) == 2 * 12  # two rounds of 12 seen-phrasing customers: no panel chat, no held-out one
    assert report["oracle"]["eval"]["csat"]["n"] >= 1 and report["oracle"]["eval"]["seen_ratings"]

    written = write_report(report, tmp_path / "report")
    assert {p.name for p in written} == {"report.json", "report.md", *PLOTS.values()}
    single = (tmp_path / "report" / "report.md").read_text()
    assert "## The fixed evaluation panel" in single and "--eval-customers 8 --ask-person-share 0.25" in single
    assert "## Handoffs" in single and all(r["handoffs"]["unheeded_requests"] == 0 for r in report["rounds"])
    assert "### Targets, on the fixed evaluation panel" in single
    assert all(p.stat().st_size > 0 for p in written)
    assert json.loads((tmp_path / "report" / "report.json").read_text())["rounds"][1]["version"] == version

    # The comparison: a "none" loop (no training, no worker) on the same customers, then one report.
    own = method_settings(loop_settings, "none")  # its own key prefix on the shared test Redis
    assert own.key_prefix != loop_settings.key_prefix and own.data_dir == loop_settings.data_dir / "loop" / "none"
    still = run_loop(own, replace(config, method="none", oracle=False), tmp_path / "logs-none",
                     echo=lambda line: None)
    assert [r["version"] for r in still["rounds"]] == ["base", "base"] and still["rounds"][1]["training"] is None
    assert report["oracle"]["csat"]["n"] >= 1 and report["oracle"]["csat"]["mean"] >= 4.0  # canonical replies
    personas = after["per_persona"]
    assert sum(p["chats"] for p in personas.values()) == after["chats"] - after["errors"]
    assert all(0 <= p["sway_share"] <= 1 for p in personas.values())
    written = write_comparison({"ppo": report, "none": still}, tmp_path / "compare")
    assert {p.name for p in written} >= {"report.md", "report.json", *COMPARISON_PLOTS.values()}
    md = (tmp_path / "compare" / "report.md").read_text()
    assert "| ppo | 0" in md and "| none | 1" in md and "closes ≥ 80% of the base → oracle gap" in md
    assert "| ppo − none | " in md  # same panel customers in both loops: paired across methods
    assert "faced the panel 3 times" in md  # the base: ppo's round 0 and both rounds of none, averaged
    assert "## Targets, checked on each method, on the fixed evaluation panel" in md
    assert (tmp_path / "compare" / "ppo" / "report.md").is_file() and (tmp_path / "compare" / "none" / "csat.png").is_file()

    # The same comparison from the report.json files of separate runs (loopdesk loop --combine).
    from click.testing import CliRunner

    from harness.loop_cli import loop as loop_command

    parts = [str(tmp_path / "compare" / m / "report.json") for m in ("ppo", "none")]
    done = CliRunner().invoke(loop_command, ["--combine", parts[0], "--combine", parts[1], "--out",
                                             str(tmp_path / "combined")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "combined" / "report.md").read_text() == md  # same data, same report
    twice = CliRunner().invoke(loop_command, ["--combine", parts[0], "--combine", parts[0]])
    assert twice.exit_code != 0 and "more than one report" in twice.output
    # the serving temperature is recorded and reproduced; reports served at different ones do not combine
    t = loop_settings.temperature
    assert report["temperature"] == t and f"`LOOPDESK_TEMPERATURE={t:g} loopdesk loop --rounds 1" in md
    hotter = json.loads(Path(parts[1]).read_text())
    hotter["temperature"] = t + 0.3
    (tmp_path / "hotter.json").write_text(json.dumps(hotter))
    mixed = CliRunner().invoke(loop_command, ["--combine", parts[0], "--combine", str(tmp_path / "hotter.json")])
    assert mixed.exit_code != 0 and "different temperatures" in mixed.output


@pytest.mark.slow
def test_comparing_methods_runs_each_on_its_own_embedded_redis_and_stops_it(tmp_path, base_model_dir):
    from click.testing import CliRunner

    from feedback_store.server import embedded_redis_pid
    from harness.loop_cli import loop as loop_command

    # the figure guard off: the test-size model alone fails every reply (with the guard, a reply whose wrong
    # figure it bans may pass), so every customer asks for a person
    env = {"LOOPDESK_DATA_DIR": str(tmp_path / "data"), "LOOPDESK_BASE_MODEL": str(base_model_dir),
           "REDIS_URL": "", "LOOPDESK_REDIS_URL": "", "OMP_NUM_THREADS": "1", "LOOPDESK_FIGURE_GUARD": "false"}
    done = CliRunner().invoke(loop_command, ["--rounds", "0", "--customers-per-round", "4", "--no-experts",
                                             "--no-oracle", "--method", "none", "--method", "sft",
                                             "--ask-person-share", "1", "--agent-delay", "0.1",
                                             "--out", str(tmp_path / "out")], env=env)
    assert done.exit_code == 0, done.output
    for method in ("none", "sft"):
        own = tmp_path / "data" / "loop" / method
        assert (own / "redis").is_dir() and embedded_redis_pid(own) is None  # its own server, stopped after
        [measured] = json.loads((tmp_path / "out" / method / "report.json").read_text())["rounds"]
        # every customer asks when the test-size model fails it: the 3 on the bot reach the simulated agent,
        # the held-out one in the sandbox (no agent there) is told that nobody is available
        handoffs = measured["handoffs"]
        assert measured["chats"] == 4 and (handoffs["handoffs"], handoffs["unheeded_requests"]) == (4, 0)
        assert handoffs["agent_answered"] == 3 and handoffs["resolution_rate"] in (0.0, None)
        assert "## Handoffs" in (tmp_path / "out" / method / "report.md").read_text()
    table = (tmp_path / "out" / "report.md").read_text()
    assert "| none | " in table and "| sft | " in table


def test_each_compared_method_runs_on_the_base_model_its_data_dir_chose(tmp_path):
    settings = load_settings({}, data_dir=tmp_path / "var")  # no LOOPDESK_BASE_MODEL: the data dir's choice
    own = method_settings(settings, "sft")
    assert own.data_dir == tmp_path / "var" / "loop" / "sft"
    assert own.base_model_ref == str((tmp_path / "var" / "base-model").resolve()) == str(
        Path(settings.base_model_ref).resolve())
