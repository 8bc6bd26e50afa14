"""Liveness: real `loopdesk worker` and `loopdesk scheduler` processes write heartbeats to the real Redis,
go stale once killed and leave none when stopped cleanly; the operator API answers who is alive and why
each queued run waits (no worker, behind the running run, the run lock, its job gone)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

import pytest
from rq import Worker

from feedback_store import FeedbackStore
from feedback_store.connection import resolve_redis_url
from feedback_store.queue_waits import queue_waits
from loopdesk.config import Settings, SettingsError, load_settings
from tests.console_helpers import add_accounts, sign_in
from tests.web_helpers import started_app
from trainer.config import GateConfig
from trainer.jobs import WAITING
from trainer.scheduler import loop

INTERVAL_S, STALE_S = 0.2, 1.0


@pytest.fixture
def quick(settings: Settings) -> Settings:
    """The test's settings with heartbeats every 0.2 s, stale after 1 s."""
    return settings.replace(heartbeat_interval_s=INTERVAL_S, heartbeat_stale_s=STALE_S)


@pytest.fixture
def live_store(quick: Settings) -> FeedbackStore:
    return FeedbackStore.from_settings(quick, announce=False)


def start(quick: Settings, *args: str) -> subprocess.Popen:
    """A `loopdesk` subprocess on the test's Redis and key prefix, beating every 0.2 s."""
    env = {**os.environ, "REDIS_URL": resolve_redis_url(quick, announce=False), "OMP_NUM_THREADS": "1",
           "LOOPDESK_DATA_DIR": str(quick.data_dir), "LOOPDESK_KEY_PREFIX": quick.key_prefix,
           "LOOPDESK_HEARTBEAT_INTERVAL_S": str(INTERVAL_S), "LOOPDESK_HEARTBEAT_STALE_S": str(STALE_S)}
    return subprocess.Popen([sys.executable, "-m", "loopdesk.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def beat_of(store: FeedbackStore, role: str, pid: int):
    return next((b for b in store.heartbeats.list(role) if b.heartbeat.pid == pid), None)


def stopped(process: subprocess.Popen, sig: int) -> int:
    os.kill(process.pid, sig)
    return process.wait(20)


@pytest.fixture
def processes():
    """Started subprocesses, killed at the end if a test left them running."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_worker_process_beats_until_killed_then_goes_stale_and_the_api_says_no_worker_is_alive(
        quick, live_store, processes):
    worker = start(quick, "worker")
    processes.append(worker)
    beat = wait_for(lambda: beat_of(live_store, "worker", worker.pid), "the worker's first heartbeat").heartbeat
    assert beat.host == socket.gethostname() and beat.doing == WAITING and beat.run_id is None
    first = beat.last_beat
    again = wait_for(lambda: (b := beat_of(live_store, "worker", worker.pid)) and b.heartbeat.last_beat > first
                     and b, "a second heartbeat")
    assert again.alive and again.age_s < STALE_S and again.heartbeat.started_at == beat.started_at

    assert stopped(worker, signal.SIGKILL) == -signal.SIGKILL
    gone = wait_for(lambda: (b := beat_of(live_store, "worker", worker.pid)) and not b.alive and b,
                    "the killed worker's heartbeat to go stale", timeout_s=STALE_S * 5)
    assert gone.age_s > STALE_S and gone.heartbeat.id == beat.id

    run = live_store.training.enqueue_round("console")
    [wait] = queue_waits(live_store, live_store.runs.list(), live_store.heartbeats.list("worker"))
    assert (wait.run_id, wait.reason, wait.ahead) == (run.id, "no_worker", 0)
    assert wait.message.startswith("no worker alive (the last one was heard from ")
    assert "it waits until one starts (start one with: loopdesk worker)" in wait.message


def test_a_worker_stopped_cleanly_leaves_no_heartbeat(quick, live_store, processes):
    worker = start(quick, "worker")
    processes.append(worker)
    beat = wait_for(lambda: beat_of(live_store, "worker", worker.pid), "the worker's first heartbeat").heartbeat
    wait_for(lambda: any(w.name == beat.id and w.get_state() == "idle" for w in Worker.all(
             queue=live_store.training.queue)), "the worker, named as its heartbeat, to wait for jobs (its SIGTERM "
             "handler is set by then)")
    assert stopped(worker, signal.SIGTERM) == 0, worker.stderr.read().decode()
    assert live_store.heartbeats.list() == []
    assert live_store.redis.exists(live_store.keys.heartbeats()) == 0


def test_a_scheduler_process_beats_saying_how_often_it_checks_until_killed(quick, live_store, processes):
    scheduler = start(quick, "scheduler", "--interval", "0.5")
    processes.append(scheduler)
    checking = "checking the schedules and the canary every 0.5 s"  # once its first pass has pruned
    beat = wait_for(lambda: (b := beat_of(live_store, "scheduler", scheduler.pid)) and b.heartbeat.doing == checking
                    and b, "the scheduler's heartbeat after its first pass")
    assert beat.alive
    assert live_store.heartbeats.list("worker") == []
    stopped(scheduler, signal.SIGKILL)
    wait_for(lambda: not beat_of(live_store, "scheduler", scheduler.pid).alive, "the scheduler to go stale",
             timeout_s=STALE_S * 5)


def test_the_scheduler_loop_names_the_run_it_enqueued_and_removes_its_heartbeat_when_done(live_store,
                                                                                         monkeypatch):
    live_store.schedules.add("* * * * *")
    said: list[str] = []

    def enqueued(line: str) -> None:  # what the heartbeat says as the loop echoes the run it enqueued
        said.append(live_store.heartbeats.list("scheduler")[0].heartbeat.doing)

    monkeypatch.setattr("trainer.scheduler.time.time", lambda: 4_102_444_800.0)  # year 2100: due
    loop(live_store, GateConfig(), 0.1, echo=enqueued, once=True)
    assert said == ["checking the schedules and the canary every 0.1 s; last enqueued run r00001"]
    assert live_store.heartbeats.list("scheduler", now=4_102_444_800.0) == []


def test_a_queued_run_waits_behind_the_run_a_live_worker_runs_then_for_a_free_worker(live_store):
    running = live_store.training.enqueue_round("console")
    live_store.training.queue.remove(f"{live_store.keys.prefix}-{running.id}")  # the worker took its job
    live_store.runs.start(running.id, 0)
    first, second = live_store.training.enqueue_round("console"), live_store.training.enqueue_round("schedule:s1")
    with live_store.heartbeats.start("worker", WAITING) as worker, live_store.runs.lock():
        worker.set(f"running run {running.id}", run_id=running.id)
        runs = live_store.runs.list()
        waits = queue_waits(live_store, runs, live_store.heartbeats.list("worker"))
        assert [(w.run_id, w.reason, w.behind, w.ahead) for w in waits] == [
            (first.id, "behind_run", running.id, 0), (second.id, "behind_run", running.id, 1)]
        assert waits[0].message == (f"waiting behind run {running.id}, which worker {worker.id} on "
                                    f"{socket.gethostname()} (pid {os.getpid()}) is running")
        assert waits[1].message.endswith("; 1 queued run ahead of it")

        worker.set(WAITING)  # free, but the lock is still held by the running run: a worker would fail it
        [held, _] = queue_waits(live_store, live_store.runs.list(), live_store.heartbeats.list("worker"))
        assert (held.reason, held.behind) == ("lock_held", running.id)
        assert held.message.startswith(f"the training lock is held by run {running.id}, which no live worker runs")
        assert "a worker that takes this run before then fails it" in held.message

        worker.stop()  # no worker at all: the lock is worth telling too
        [alone, _] = queue_waits(live_store, live_store.runs.list(), live_store.heartbeats.list("worker"))
        assert (alone.reason, alone.behind) == ("no_worker", running.id)
        assert alone.message.startswith("no worker alive: it waits until one starts (start one with: loopdesk "
                                        f"worker); the training lock is held by run {running.id}")
    live_store.runs.finish(running.id, "failed", error="test")
    with live_store.heartbeats.start("worker", WAITING):
        waits = queue_waits(live_store, live_store.runs.list(), live_store.heartbeats.list("worker"))
    assert [(w.reason, w.message) for w in waits] == [
        ("next", "a worker is free and takes it next"),
        ("next", "a worker is free and takes it after the 1 queued run ahead of it")]


def test_a_queued_run_whose_job_left_the_queue_says_no_worker_will_take_it(live_store):
    run = live_store.training.enqueue_round("console")
    live_store.training.queue.empty()
    [wait] = queue_waits(live_store, live_store.runs.list(), [])
    assert (wait.run_id, wait.reason) == (run.id, "not_in_queue")
    assert "no worker will take it" in wait.message and "press Train now" in wait.message


def test_the_operator_api_lists_workers_and_schedulers_alive_or_stale_and_why_runs_wait(quick, live_store):
    add_accounts(live_store)
    with started_app(quick, live_store) as app:
        assert app.test_client().get("/api/operator/liveness").status_code == 401
        client = app.test_client()
        sign_in(client, "otto")
        run = live_store.training.enqueue_round("console")
        empty = client.get("/api/operator/liveness").json
        assert (empty["workers"], empty["schedulers"]) == ([], [])
        assert (empty["interval_s"], empty["stale_s"]) == (INTERVAL_S, STALE_S)
        assert [(q["run_id"], q["reason"]) for q in empty["queued"]] == [(run.id, "no_worker")]

        worker = live_store.heartbeats.start("worker", WAITING)
        worker.stop()
        live_store.heartbeats.beat(worker.record.model_copy(update={"last_beat": time.time() - 5}))  # it died
        with live_store.heartbeats.start("scheduler", "checking the schedules and the canary every 30 s") as scheduler:
            answer = client.get("/api/operator/liveness").json
        [stale], [alive] = answer["workers"], answer["schedulers"]
        assert (stale["id"], stale["alive"], stale["pid"], stale["doing"]) == (worker.id, False, os.getpid(), WAITING)
        assert 5 <= stale["age_s"] < 10 and stale["run_id"] is None
        assert (alive["id"], alive["alive"], alive["role"]) == (scheduler.id, True, "scheduler") and alive["age_s"] < 1
        [queued] = answer["queued"]
        assert queued["reason"] == "no_worker" and "the last one was heard from 5 s ago" in queued["message"]


def test_heartbeat_settings_must_beat_more_often_than_they_go_stale():
    assert load_settings({"LOOPDESK_HEARTBEAT_INTERVAL_S": "2", "LOOPDESK_HEARTBEAT_STALE_S": "6"}).heartbeat_stale_s == 6
    for interval, stale in (("0", "30"), ("30", "30")):
        with pytest.raises(SettingsError, match="LOOPDESK_HEARTBEAT_INTERVAL_S must be above 0 and below"):
            load_settings({"LOOPDESK_HEARTBEAT_INTERVAL_S": interval, "LOOPDESK_HEARTBEAT_STALE_S": stale})
