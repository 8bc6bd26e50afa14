"""Training as RQ jobs: the worker runs queued rounds, the scheduler enqueues due ones, and a
worker killed mid-round leaves no candidate behind while the next round succeeds."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import zlib

import pytest
from click.testing import CliRunner
from rq import Callback, Queue
from rq.job import Job
from rq.serializers import JSONSerializer, PickleSerializer

from feedback_store.connection import resolve_redis_url
from feedback_store.errors import LockHeldError
from feedback_store.heartbeats import Heartbeats
from trainer.cli import scheduler as scheduler_command, worker as worker_command
from trainer.config import GateConfig
from trainer.round import INTERRUPTED, run_round
from trainer.scheduler import tick
from trainer.worker import make_worker, work
from tests.trainer_helpers import as_round_file, seed_conversations, small_round_config, trainer_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LOCK_TTL_S = 2


def test_scheduler_enqueues_a_round_for_each_due_schedule(store):
    schedule = store.schedules.add("* * * * *")
    runs, canary = tick(store, GateConfig(), {"rollout_steps": 2}, now=time.time() + 120)
    assert [r.trigger for r in runs] == [f"schedule:{schedule.id}"] and canary is None
    assert store.runs.get(runs[0].id).status == "queued" and store.runs.get(runs[0].id).config == {"rollout_steps": 2}
    job = store.training.queue.jobs[0]
    assert job.func_name == "trainer.jobs.run_round" and list(job.args) == [runs[0].id]
    stored = store.training.connection.hget(job.key, "data")
    assert json.loads(zlib.decompress(stored))[0] == "trainer.jobs.run_round"  # JSON, not pickle
    assert tick(store, GateConfig(), now=time.time() + 120)[0] == []  # already handled this minute


def test_scheduler_command_prints_what_it_enqueues(settings, store, monkeypatch):
    store.schedules.add("* * * * *")
    monkeypatch.setenv("LOOPDESK_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LOOPDESK_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setattr("trainer.scheduler.time.time", lambda: 4_102_444_800.0)  # year 2100: due
    result = CliRunner().invoke(scheduler_command, ["--once"])
    assert result.exit_code == 0, result.output
    assert "enqueued training run r00001 (schedule:" in result.output
    assert store.runs.get("r00001").config == {}
    for flag in ("--pass-status", "--gate-evaluator"):  # the gate is the worker's: nothing to record
        refused = CliRunner().invoke(scheduler_command, ["--once", flag, "active"])
        assert refused.exit_code == 2 and f"No such option '{flag}'" in refused.output


def test_scheduler_records_how_its_round_overrides_train_and_never_their_gate(settings, store, monkeypatch, tmp_path):
    store.schedules.add("* * * * *")
    path = tmp_path / "round.json"
    path.write_text('{"rollout_steps": 4, "gate": {"contexts": 16}}')
    monkeypatch.setenv("LOOPDESK_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LOOPDESK_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("LOOPDESK_ROUND_ROLLOUT_STEPS", "2")
    monkeypatch.setattr("trainer.scheduler.time.time", lambda: 4_102_444_800.0)
    result = CliRunner().invoke(scheduler_command, ["--once", "--round-config", str(path)])
    assert result.exit_code == 0, result.output
    assert store.runs.get("r00001").config == {"rollout_steps": 2}  # its gate section: its own canary check


class CreatesAFile:
    """A pickle payload: unpickling it creates ``path`` (any code could run instead)."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def _failed_without_running(store, job_id: str) -> str:
    """Run the worker over the queue; return the job's recorded failure (it must have failed)."""
    assert make_worker(store).work(burst=True) is True
    job = Job.fetch(job_id, connection=store.training.connection, serializer=JSONSerializer)
    assert job.get_status() == "failed" and store.training.pending() == 0
    return job.latest_result().exc_string


def test_a_pickled_job_written_into_redis_runs_nothing_in_the_worker(store, tmp_path):
    marker = tmp_path / "pickle-ran"
    raw = Queue(store.training.queue.name, connection=store.training.connection, serializer=PickleSerializer)
    job = raw.enqueue("trainer.jobs.run_round", CreatesAFile(marker))  # what RQ's default serializer writes
    error = _failed_without_running(store, job.id)
    assert not marker.exists() and "DeserializationError" in error


@pytest.mark.parametrize("call", ["other function", "callback"])
def test_a_json_job_that_is_not_a_training_round_is_refused(store, tmp_path, call):
    marker = tmp_path / "command-ran"
    raw = Queue(store.training.queue.name, connection=store.training.connection, serializer=JSONSerializer)
    if call == "other function":
        job = raw.enqueue("os.system", f"touch {marker}")
    else:
        job = raw.enqueue("trainer.jobs.run_round", "r00001", on_failure=Callback("os.system"),
                          on_success=Callback("os.system"))
    error = _failed_without_running(store, job.id)
    assert not marker.exists() and "RefusedJobError" in error and "is not a training round" in error


def test_a_queued_run_that_records_a_gate_field_fails_and_runs_no_evaluator(settings, store, tmp_path,
                                                                             base_model_dir):
    marker = tmp_path / "evaluator-ran"
    tsettings = trainer_settings(settings, tmp_path, base_model_dir)
    run = store.training.enqueue_round(trigger="test", config={"rollout_steps": 1, "gate": {
        "evaluator": f"touch {marker}", "margin": -10.0}})
    work(store, tsettings, small_round_config(), burst=True)
    failed = store.runs.get(run.id)
    assert failed.status == "failed" and not marker.exists()
    assert failed.error.startswith("WorkerOnlyFieldError: the run's recorded config sets gate.evaluator, gate.margin")
    assert store.adapters.list() == []


def test_worker_refuses_an_unknown_round_variable(monkeypatch):
    monkeypatch.setenv("LOOPDESK_ROUND_GATE__EVALUTOR", "panel")
    result = CliRunner().invoke(worker_command, ["--burst"])
    assert result.exit_code == 2 and "unknown variable LOOPDESK_ROUND_GATE__EVALUTOR" in result.output


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lock_free(store) -> bool:
    try:
        store.runs.lock().acquire().release()
        return True
    except LockHeldError:
        return False


@pytest.mark.slow
def test_worker_killed_mid_round_leaves_no_candidate_and_the_next_round_succeeds(settings, store, tmp_path,
                                                                                 base_model_dir):
    tsettings = trainer_settings(settings, tmp_path, base_model_dir, run_lock_ttl_s=LOCK_TTL_S)
    seed_conversations(store, base_model_dir)
    env = {**os.environ, "REDIS_URL": resolve_redis_url(settings, announce=False), "OMP_NUM_THREADS": "1",
           "LOOPDESK_DATA_DIR": str(tmp_path), "LOOPDESK_KEY_PREFIX": settings.key_prefix,
           "LOOPDESK_BASE_MODEL": str(base_model_dir), "LOOPDESK_RUN_LOCK_TTL_S": str(LOCK_TTL_S),
           "LOOPDESK_MAX_REPLY_TOKENS": "12", "LOOPDESK_HEARTBEAT_INTERVAL_S": "0.2",
           "LOOPDESK_HEARTBEAT_STALE_S": "1"}
    heartbeats = Heartbeats(store.redis, store.keys, interval_s=0.2, stale_s=1.0)  # as the worker beats
    own = tmp_path / "round.json"  # the worker's own round config: its gate is never a queued run's
    own.write_text(json.dumps(as_round_file(small_round_config())))
    killed = store.training.enqueue_round(trigger="test")
    worker = subprocess.Popen([sys.executable, "-m", "loopdesk.cli", "worker", "--round-config", str(own)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: any(e["stage"] == "rewards" for _, e in store.runs.progress(killed.id)), 120,
                  "the worker to start training")
        [beat] = heartbeats.list("worker")
        assert beat.alive and (beat.heartbeat.pid, beat.heartbeat.run_id) == (worker.pid, killed.id)
        assert beat.heartbeat.doing == f"running run {killed.id}"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    _wait_for(lambda: not heartbeats.list("worker")[0].alive, 5, "the killed worker's heartbeat to go stale")
    assert store.runs.get(killed.id).status == "running"
    assert [a for a in store.adapters.list() if a.status == "candidate"] == []
    _wait_for(lambda: _lock_free(store), LOCK_TTL_S * 5, "the dead worker's lock to expire")

    nxt = store.training.enqueue_round(trigger="test")
    run = run_round(tsettings, store, run_id=nxt.id, config=small_round_config(), show_progress=False)
    assert run.status == "succeeded" and store.adapters.get(run.adapter_version).status == "canary"
    assert store.runs.get(killed.id).status == "failed" and store.runs.get(killed.id).error == INTERRUPTED
    assert [a.status for a in store.adapters.list()] == ["canary"]
    assert not any(p.name.startswith(".tmp-") for p in tsettings.adapters_dir.iterdir())
