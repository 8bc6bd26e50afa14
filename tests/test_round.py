"""One training round end to end with the real test-size model and real Redis: progress, gate,
release, watermark; failures leave no candidate; the next round cleans up after a killed one."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from bot.runtime.adapters import read_verified
from feedback_store.errors import LockHeldError
from feedback_store.records import AdapterVersion, AgentTurn
from loopdesk.adapter_format import WEIGHTS_FILE, InvalidAdapterError
from trainer.release import ORPHAN_REASON
from trainer.round import INTERRUPTED, NotEnoughFeedback, hash_position, held_out, recover, run_round
from tests.console_helpers import notice
from tests.trainer_helpers import CORRECTION, seed_conversations, small_round_config, trainer_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tsettings(settings, tmp_path, base_model_dir):
    return trainer_settings(settings, tmp_path, base_model_dir)


def test_held_out_conversations_are_stable_and_never_empty():
    ids = {f"c{i}" for i in range(50)}
    chosen = held_out(ids, 0.2)
    assert chosen == held_out(set(sorted(ids)), 0.2) and 3 <= len(chosen) <= 20
    assert len(held_out({"a", "b"}, 0.01)) == 1 and held_out({"a"}, 0.5) <= {"a"}


def test_round_without_new_feedback_fails_and_keeps_the_watermark(tsettings, store):
    with pytest.raises(NotEnoughFeedback):
        run_round(tsettings, store, config=small_round_config(), show_progress=False)
    (run,) = store.runs.list()
    assert run.status == "failed" and "NotEnoughFeedback" in run.error
    assert store.runs.training_watermark() == 0 and store.adapters.list() == []
    store.runs.lock().acquire().release()  # the lock was released


def test_failure_mid_round_leaves_no_candidate_and_releases_the_lock(tsettings, store, base_model_dir, monkeypatch):
    seed_conversations(store, base_model_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("trainer.reward_model.RewardModel.train", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_round(tsettings, store, config=small_round_config(), show_progress=False)
    (run,) = store.runs.list()
    assert run.status == "failed" and "disk on fire" in run.error
    assert [e["stage"] for _, e in store.runs.progress(run.id)] == ["export", "rewards"]
    assert store.adapters.list() == [] and store.runs.training_watermark() == 0
    store.runs.lock().acquire().release()


def test_a_queued_run_fails_when_another_round_holds_the_lock(tsettings, store):
    run = store.training.enqueue_round(trigger="test")
    with store.runs.lock():
        with pytest.raises(LockHeldError):
            run_round(tsettings, store, run_id=run.id, show_progress=False)
    assert store.runs.get(run.id).status == "failed"


def test_a_round_refuses_an_active_adapter_outside_the_adapters_dir_and_leaves_it_serving(tsettings, store,
                                                                                         tmp_path):
    now = time.time()
    store.adapters.register(AdapterVersion(version="v0001", path=str(tmp_path / "planted"), sha256="0" * 64,
                                           base_model=tsettings.base_model_ref, created_at=now, updated_at=now))
    store.adapters.promote("v0001")  # what anyone who can write Redis could do
    with pytest.raises(InvalidAdapterError, match="lies outside the adapters directory"):
        run_round(tsettings, store, config=small_round_config(), show_progress=False)
    (run,) = store.runs.list()
    assert run.status == "failed" and "v0001: the registry's path" in run.error and "refused" in run.error
    assert store.adapters.active() == "v0001" and [a.version for a in store.adapters.list()] == ["v0001"]


def test_a_queued_run_with_an_unknown_config_key_fails_with_the_reason(tsettings, store):
    run = store.training.enqueue_round(trigger="test", config={"rounds": 1})
    with pytest.raises(TypeError):
        run_round(tsettings, store, run_id=run.id, show_progress=False)
    assert store.runs.get(run.id).status == "failed" and "rounds" in store.runs.get(run.id).error


def test_recovery_fails_stale_runs_rejects_orphans_and_removes_temp_dirs(store, tmp_path):
    stale = store.runs.create({}, trigger="killed")
    store.runs.start(stale.id, 0)
    now = time.time()
    store.adapters.register(AdapterVersion(version="v0001", path="/x", sha256="0" * 64, base_model="m",
                                           created_at=now, updated_at=now))
    (tmp_path / ".tmp-v0001-dead").mkdir()
    report = recover(store, tmp_path)
    assert report["stale_runs"] == [stale.id] and report["orphan_adapters"] == ["v0001"]
    assert store.runs.get(stale.id).error == INTERRUPTED
    assert store.adapters.get("v0001").reason == ORPHAN_REASON and list(tmp_path.iterdir()) == []


def test_round_trains_gates_and_releases_a_canary(tsettings, store, base_model_dir):
    seed_conversations(store, base_model_dir)
    run = run_round(tsettings, store, config=small_round_config(), show_progress=False)
    assert run.status == "succeeded" and run.adapter_version == "v0001"
    adapter = store.adapters.get("v0001")
    assert adapter.status == "canary" and store.adapters.canary() == "v0001" and adapter.parent == "base"
    read_verified(adapter.path, "v0001", tsettings.base_model_ref, adapters_dir=tsettings.adapters_dir,
                  expected_sha256=adapter.sha256)
    metrics = run.metrics
    assert 0 < metrics["pairs_correction"] <= 8 and 0.0 <= metrics["rm_eval_accuracy"] <= 1.0
    assert metrics["gate_passed"] and metrics["gate_contexts"] >= 1
    events = [e for _, e in store.runs.progress(run.id)]
    assert [e["stage"] for e in events] == ["export", "rewards", "reward_model", "ppo_logged", "ppo_rollout",
                                            "gate", "release", "done"]
    assert [e["step"] for e in events] == list(range(1, len(events) + 1))  # counted without a visible bar
    assert store.runs.training_watermark() == run.watermark_to > 0
    assert (tsettings.data_dir / "runs" / run.id / "reward_model" / "adapter_model.safetensors").is_file()
    store.runs.lock().acquire().release()


def test_a_round_trains_on_feedback_with_handed_off_conversations_and_their_agent_replies(tsettings, store,
                                                                                         base_model_dir):
    ids = seed_conversations(store, base_model_dir)
    handed_off = ids[::4]
    for conv_id in handed_off:  # the customer pressed "Talk to a person"; an agent answered and resolved it
        store.handoffs.request(conv_id, "customer_button", True, notice())
        store.handoffs.claim(conv_id, "abe", "Abe")
        store.handoffs.reply(conv_id, AgentTurn(index=0, agent_id="abe", agent_name="Abe", text=CORRECTION,
                                                created_at=time.time()))
        store.handoffs.resolve(conv_id, "abe")
    turns, _ = store.feedback.export()
    demonstrations = {t.conversation_id: t.handoff for t in turns if t.handoff is not None}
    assert set(demonstrations) == set(handed_off)
    assert all(h.led_to_handoff and h.agent_reply == CORRECTION for h in demonstrations.values())
    config = small_round_config()
    run = run_round(tsettings, store, config=config, show_progress=False)
    assert run.status == "succeeded" and run.metrics["episodes"] == len(ids)
    # the agent's reply is chosen over the bot's in each trained conversation, but where an expert's
    # correction (every third turn) says the same: that pair is there already
    trained = set(ids) - held_out(set(ids), config.holdout_share)
    assert run.metrics["pairs_handoff"] == len({ids[i] for i in range(0, len(ids), 4) if i % 3} & trained)
    store.runs.lock().acquire().release()


def test_the_gates_external_evaluator_gets_a_candidate_directory_that_verifies(tsettings, store, base_model_dir,
                                                                               tmp_path):
    seed_conversations(store, base_model_dir)
    evaluator = tmp_path / "evaluator.py"
    evaluator.write_text(
        "import json, sys\n"
        "from loopdesk.adapter_format import verify\n"
        f"manifest = verify(sys.argv[sys.argv.index('--candidate') + 1], {str(base_model_dir)!r})\n"
        "print(json.dumps({'pass': True, 'candidate_score': 0.0, 'active_score': 0.0,\n"
        "                  'details': {'version': manifest['version'], 'parent': manifest['parent']}}))\n")
    config = small_round_config()
    config.gate.evaluator = f"{sys.executable} {evaluator}"
    run = run_round(tsettings, store, config=config, show_progress=False)
    assert run.status == "succeeded", run.metrics.get("gate_reasons")
    assert run.metrics["gate_external"]["details"] == {"version": run.adapter_version, "parent": "base"}


def test_a_round_does_not_start_from_an_active_adapter_that_fails_verification(tsettings, store, base_model_dir):
    seed_conversations(store, base_model_dir)
    config = small_round_config()
    config.gate.pass_status = "active"
    first = run_round(tsettings, store, config=config, show_progress=False)
    assert store.adapters.active() == first.adapter_version == "v0001"
    weights = Path(store.adapters.get("v0001").path) / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-4] + b"\1\2\3\4")
    with pytest.raises(InvalidAdapterError, match="sha256"):
        run_round(tsettings, store, config=config, show_progress=False)
    second = store.runs.list(limit=1)[0]
    assert second.id != first.id and second.status == "failed" and "sha256" in second.error
    assert [a.version for a in store.adapters.list()] == ["v0001"]


def test_a_warm_started_ppo_round_runs_sft_on_the_demonstrations_first_and_keeps_it_as_reference(tsettings, store, base_model_dir):
    seed_conversations(store, base_model_dir)  # every third turn has an expert correction
    config = small_round_config(warm_start_steps=3, kl_reference="start")
    config.baseline.batch_size = 4
    run = run_round(tsettings, store, config=config, show_progress=False)
    assert run.status == "succeeded"
    first_ppo_step = next(e for _, e in store.runs.progress(run.id) if e["stage"] == "ppo_logged")
    assert first_ppo_step["kl"] == pytest.approx(0.0, abs=1e-4)  # the KL reference is the warm-started adapter
    assert run.metrics["gate_candidate_kl"] > 0.0  # while the gate's KL budget still measures from the base
    warm = run.metrics["warm_start"]
    assert warm["method"] == "sft" and warm["steps"] == 3 and warm["corrections"] > 0
    assert run.metrics["ppo_update_s"] >= warm["update_s"] > 0  # the warm start is part of PPO's update
    events = [e["stage"] for _, e in store.runs.progress(run.id)]
    assert events == ["export", "rewards", "reward_model", "sft_warm_start", "ppo_logged", "ppo_rollout",
                      "gate", "release", "done"]
    # the baselines' budget counts the warm start and PPO-ptx's demonstrations: (1 + 1) PPO steps x 8 samples
    # x 4 epochs + (1 + 1) x 2 minibatch updates x 4 epochs x 8 demonstrations + 3 warm-start steps x 4 = 204 passes
    assert config.baseline_steps() == 51 and config.update_events == 3
    assert run.metrics["ptx_demonstrations"] == warm["examples"] and run.metrics["ppo"]["ptx_loss"] > 0


def test_the_reward_model_learns_from_all_feedback_so_far(tsettings, store, base_model_dir):
    share = small_round_config().holdout_share

    def corrected_kept(ids: list[str], every: set[str], this_round: list[str] | None = None) -> int:
        # a round keeps out the hold-out of everything so far and its own (which, when no id of the round
        # hashes below the share, is the round's lowest-hashed conversation)
        kept_out = held_out(set(ids), share) | held_out(set(this_round or ids), share)
        return len([c for c in every if c not in kept_out])

    first_ids = seed_conversations(store, base_model_dir, n=12, seed=0)
    first = run_round(tsettings, store, config=small_round_config(), show_progress=False)
    second_ids = seed_conversations(store, base_model_dir, n=12, seed=1)
    second = run_round(tsettings, store, config=small_round_config(), show_progress=False)
    corrected = set(first_ids[::3]) | set(second_ids[::3])  # seed_conversations corrects every 3rd chat
    assert first.metrics["pairs_correction"] == corrected_kept(first_ids, set(first_ids[::3]))
    assert second.metrics["episodes"] == 12  # PPO's logged steps see the new feedback only ...
    # ... while the reward model's pairs come from both rounds' feedback
    assert second.metrics["pairs_correction"] == corrected_kept(first_ids + second_ids, corrected, second_ids)
    assert second.metrics["pairs_correction"] > corrected_kept(second_ids, set(second_ids[::3]))


@pytest.mark.parametrize("gate_history", [True, False])
def test_the_gate_judges_on_the_held_out_conversations_of_every_round_so_far(tsettings, store, base_model_dir,
                                                                             gate_history):
    share = small_round_config().holdout_share
    first_ids: list[str] = []
    # conversation ids are random: seed until one hashes below the share, so the first round holds out a
    # conversation that every later round holds out too (12 ids miss it with probability 0.8^12, about 7%)
    while not any(hash_position(c) < share for c in first_ids):
        assert len(first_ids) < 96, "no conversation id hashed below the hold-out share"
        first_ids += seed_conversations(store, base_model_dir, n=12, seed=len(first_ids))
    first = run_round(tsettings, store, config=small_round_config(), show_progress=False)
    second_ids = seed_conversations(store, base_model_dir, n=12, seed=1)
    second = run_round(tsettings, store, config=small_round_config(gate_history=gate_history), show_progress=False)
    assert first.metrics["gate_conversations"] == len(held_out(set(first_ids), share))
    this_round = held_out(set(second_ids), share)
    earlier = {c for c in first_ids if hash_position(c) < share}  # held out by the first round too: never trained on
    assert earlier <= held_out(set(first_ids), share) and earlier
    expected = this_round | earlier if gate_history else this_round
    assert second.metrics["gate_conversations"] == len(expected)
