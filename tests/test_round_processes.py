"""A training round on two processes (``accelerate launch --num_processes 2`` on the CPU, gloo): the main
process publishes one verified, gated adapter and records the run once, with each process's rollouts;
a PPO step split over two processes trains the weights one process would; a process that fails mid-round
fails the run, publishes nothing and frees the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bot.runtime.adapters import read_verified
from feedback_store.connection import resolve_redis_url
from trainer.config import PPOConfig
from trainer.round_config import RoundConfig
from trainer.team import LaunchError, StoppedError, Team
from tests.trainer_helpers import as_round_file, seed_conversations, small_round_config, trainer_settings

LAUNCH_TIMEOUT_S = 240  # two processes loading torch and training the test-size model on two shared cores
STAGES = ["export", "rewards", "reward_model", "ppo_logged", "ppo_rollout", "gate", "release", "done"]


def accelerate_launch(module: str, *args: str, env: dict[str, str], processes: int = 2) -> subprocess.CompletedProcess:
    """``python -m module args`` on ``processes`` CPU processes of one accelerate launch (gloo)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={processes}",
               "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "--main_process_port=0",
               "-m", module, *args]
    return subprocess.run(command, env={**env, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S)


@pytest.fixture
def launch_env(settings, tmp_path: Path, base_model_dir: Path) -> dict[str, str]:
    """The environment of a ``loopdesk train`` on this test's Redis prefix, data in ``tmp_path``, with the
    test-size model and a round that trains in seconds (``--round-config`` in ``tmp_path``)."""
    (tmp_path / "round.json").write_text(json.dumps(as_round_file(small_round_config())))
    return {**os.environ, "REDIS_URL": resolve_redis_url(settings, announce=False), "OMP_NUM_THREADS": "1",
            "LOOPDESK_DATA_DIR": str(tmp_path), "LOOPDESK_KEY_PREFIX": settings.key_prefix,
            "LOOPDESK_BASE_MODEL": str(base_model_dir), "LOOPDESK_MAX_REPLY_TOKENS": "12"}


@pytest.mark.slow
def test_a_round_on_two_processes_publishes_one_verified_adapter_with_each_process_rollouts(
        settings, store, tmp_path, base_model_dir, launch_env):
    seed_conversations(store, base_model_dir)
    done = accelerate_launch("loopdesk", "train", "--round-config", str(tmp_path / "round.json"), env=launch_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 1 of 2 trained its share of the round" in done.stderr

    (run,) = store.runs.list()  # recorded once, by the main process
    assert run.status == "succeeded" and run.adapter_version == "v0001" and run.metrics["gate_passed"]
    (adapter,) = store.adapters.list()
    assert adapter.version == "v0001" and adapter.status == "canary" and store.adapters.canary() == "v0001"
    tsettings = trainer_settings(settings, tmp_path, base_model_dir)
    read_verified(adapter.path, "v0001", tsettings.base_model_ref, adapters_dir=tsettings.adapters_dir,
                  expected_sha256=adapter.sha256)
    # each process rolled out and replayed its half of every batch of 8
    assert run.metrics["processes"] == {"count": 2, "logged_episodes": [4, 4], "rollout_episodes": [4, 4]}
    events = [e for _, e in store.runs.progress(run.id)]
    assert [e["stage"] for e in events] == STAGES  # one progress stream: only the main process reports
    rollout = next(e for e in events if e["stage"] == "ppo_rollout")
    assert (rollout["episodes"], rollout["process_episodes"]) == (8.0, 4.0)
    assert store.runs.training_watermark() == run.watermark_to > 0
    store.runs.lock().acquire().release()


@pytest.mark.slow
def test_a_process_that_fails_mid_round_fails_the_run_publishes_nothing_and_frees_the_lock(
        store, tmp_path, base_model_dir, launch_env):
    seed_conversations(store, base_model_dir)
    done = accelerate_launch("tests.failing_peer", "train", "--round-config", str(tmp_path / "round.json"),
                             env=launch_env)
    assert done.returncode != 0 and "process 1 ran out of memory in its rollout" in done.stderr
    (run,) = store.runs.list()
    assert run.status == "failed" and run.error and run.adapter_version is None
    assert [e["stage"] for _, e in store.runs.progress(run.id)][:4] == STAGES[:4]  # it failed in the rollouts
    assert store.adapters.list() == [] and store.runs.training_watermark() == 0
    assert not (tmp_path / "adapters").exists() or list((tmp_path / "adapters").iterdir()) == []
    store.runs.lock().acquire().release()


@pytest.mark.slow
def test_a_ppo_step_on_two_processes_trains_the_weights_one_process_trains(tmp_path, base_model_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "tests.ppo_steps", str(base_model_dir), str(tmp_path / "one.pt")],
                         env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert one.returncode == 0, one.stderr[-3000:]
    two = accelerate_launch("tests.ppo_steps", str(base_model_dir), str(tmp_path / "two.pt"), env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    single, split = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert len(split["digests"]) == 2 and len(set(split["digests"])) == 1  # the processes hold the same weights
    assert [s["process_episodes"] for s in split["stats"]] == [4.0, 4.0]
    assert [s["episodes"] for s in split["stats"]] == [s["episodes"] for s in single["stats"]] == [8.0, 8.0]
    for name, weight in single["weights"].items():
        moved = weight.abs().max()  # LoRA B and the value head start at zero
        if "lora_B" in name or "v_head" in name:
            assert moved > 1e-3, name
        # averaged gradients and whole-batch whitening: the step one process takes on all eight samples
        torch.testing.assert_close(split["weights"][name], weight, atol=1e-5, rtol=1e-3)


def test_a_round_on_several_processes_refuses_batch_sizes_they_cannot_share_equally(monkeypatch):
    monkeypatch.setattr(Team, "size", property(lambda team: 2))
    team = Team()
    share = team.share_of(small_round_config())
    assert (share.ppo.batch_size, share.ppo.mini_batch_size, share.reward_model.batch_size) == (4, 2, 4)
    assert share.ppo.ptx_batch_size == 4 and share.baseline.batch_size == 8  # no baseline in a PPO round
    with pytest.raises(ValueError, match=r"ppo.mini_batch_size \(3\) must be multiples of the 2 processes"):
        team.share_of(small_round_config(ppo=PPOConfig(batch_size=8, mini_batch_size=3)))
    kto = RoundConfig.from_dict({"method": "kto", "baseline": {"batch_size": 2}})
    with pytest.raises(ValueError, match="fewer than the 2 examples a batch needs"):
        team.share_of(kto)


def test_processes_that_formed_no_process_group_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun starts them, without ACCELERATE_USE_CPU on a CPU machine
    with pytest.raises(LaunchError, match="ACCELERATE_USE_CPU=true"):
        Team.launched()


def test_the_main_process_turns_the_launchers_sigterm_into_a_failure_it_can_record(monkeypatch):
    monkeypatch.setattr(Team, "size", property(lambda team: 2))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StoppedError, match="another process of the round fails"):
        with Team().leading():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at the next bytecode
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_sigterm_while_the_round_records_its_failure_lets_it_finish(monkeypatch):
    monkeypatch.setattr(Team, "size", property(lambda team: 2))
    recorded = []
    with pytest.raises(RuntimeError, match="gloo: connection closed"):
        with Team().leading():
            try:
                raise RuntimeError("gloo: connection closed by peer")
            except RuntimeError:
                os.kill(os.getpid(), signal.SIGTERM)  # as the launcher stops the process mid-cleanup
                time.sleep(0.2)
                recorded.append("failed")
                raise
    assert recorded == ["failed"]
