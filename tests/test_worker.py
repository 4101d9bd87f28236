"""The worker, end to end in real processes: child per job, two workers on one queue, kill -9 and restart,
cancel, SIGTERM, `submit --wait`, and the `jobs` commands."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _service_helpers import pid_gone, realfake, service_env, use_service_home, wait_for
from click.testing import CliRunner
from realfake.jobs.cli import main as cli
from realfake.jobs.service.spec import JobSpec
from realfake.jobs.service.store import JobStore

FAST = ["--poll", "0.1", "--grace", "1"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    return use_service_home(monkeypatch, tmp_path)


@pytest.fixture
def env(home):
    return service_env(home)


@pytest.fixture
def workers(env):
    """Start background workers; every one still running at the end is SIGKILLed and reaped."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "realfake.jobs.cli", "worker", *FAST, *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def submit(kind: str, max_attempts: int = 3, **args) -> int:
    return JobStore().submit(JobSpec(kind, args, default_out="out" if kind in ("sleep", "stubborn") else None),
                             max_attempts=max_attempts).id


def job_pid(job_id: int) -> int:
    """The pid of the runner child of a sleep/stubborn job, once it has started."""
    path = Path(JobStore().get(job_id).out) / "pid"
    return int(wait_for(lambda: path.exists() and path.read_text(), what=f"job {job_id} to start"))


def runs(job_id: int) -> list[str]:
    path = Path(JobStore().get(job_id).out) / "runs.txt"
    return path.read_text().split() if path.exists() else []


def test_each_job_runs_in_a_child_and_a_crash_does_not_stop_the_worker(home, env):
    ok, failing, crashing, after = (submit("sleep", tag="a"), submit("fail", message="bad input x"),
                                    submit("crash"), submit("sleep", tag="b"))
    result = realfake("worker", "--once", *FAST, env=env)
    assert result.returncode == 0, result.stderr
    store = JobStore()
    assert store.get(ok).state == "succeeded" and store.get(ok).result["tag"] == "a"
    assert json.loads((home / "jobs" / str(ok) / "result.json").read_text())["tag"] == "a"
    assert store.get(failing).state == "failed"
    assert store.get(failing).error == "RuntimeError: bad input x"  # the traceback's last line
    assert "Traceback" in open(store.get(failing).log_path).read()
    assert store.get(crashing).state == "failed" and "exited with code 9" in store.get(crashing).error
    assert store.get(after).state == "succeeded"  # the worker survived the crash
    assert int(runs(ok)[0]) != os.getpid()
    assert store.workers() == []  # its heartbeat row is gone on a clean exit


def test_two_workers_on_one_queue_never_run_a_job_twice(home, workers):
    ids = [submit("sleep", seconds=0.2, tag=str(i)) for i in range(12)]
    first, second = workers("--once"), workers("--once")
    for proc in (first, second):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    store = JobStore()
    for job_id in ids:
        job = store.get(job_id)
        assert job.state == "succeeded" and job.attempts == 1
        assert len(runs(job_id)) == 1  # ran exactly once
    assert len({store.get(job_id).worker_id for job_id in ids}) == 2  # both took part


def test_kill_9_of_a_worker_mid_job_then_restart_recovers_the_job(home, env, workers):
    job_id = submit("sleep", seconds=60, retry_seconds=0)
    worker = workers()
    first_runner = job_pid(job_id)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    # The runner dies with its worker (PR_SET_PDEATHSIG): nothing keeps running unowned.
    wait_for(lambda: pid_gone(first_runner), timeout_s=10, what="the orphaned runner to die")
    assert JobStore().get(job_id).state == "running"  # stranded until a worker looks

    result = realfake("worker", "--once", *FAST, env=env)
    assert result.returncode == 0, result.stderr
    job = JobStore().get(job_id)
    assert job.state == "succeeded" and job.attempts == 2
    assert len(runs(job_id)) == 1  # the killed attempt never finished
    log = open(job.log_path).read()
    assert "recovered: its worker died during attempt 1; now queued" in log
    assert "attempt 1/3" in log and "attempt 2/3" in log


def test_kill_9_with_no_attempts_left_fails_the_job_with_the_reason(home, env, workers):
    job_id = submit("sleep", max_attempts=1, seconds=60)
    worker = workers()
    job_pid(job_id)
    worker.kill()
    worker.wait(timeout=10)
    assert realfake("worker", "--once", *FAST, env=env).returncode == 0
    job = JobStore().get(job_id)
    assert job.state == "failed" and job.error == "worker died (1 attempts)" and runs(job_id) == []


def test_a_worker_taken_for_dead_stops_its_copy_of_a_recovered_job(home, workers):
    workers()
    job_id = submit("sleep", seconds=60, retry_seconds=0)
    first_runner = job_pid(job_id)
    store = JobStore()

    def recover_as_if_silent():
        # Make the live worker look like a silent one on another host (as a stalled heartbeat would);
        # without the child's pid the recovering side cannot kill it: only its own worker can.
        store.conn.execute("UPDATE workers SET hostname = 'elsewhere', heartbeat_at = 0")
        store.conn.execute("UPDATE jobs SET child_pid = NULL")
        return store.recover(stale_after_s=10)

    (recovered,) = wait_for(recover_as_if_silent, what="the recovery")
    assert recovered.id == job_id and recovered.state == "queued"
    wait_for(lambda: pid_gone(first_runner), timeout_s=10, what="the worker to stop its stale copy")
    job = wait_for(lambda: (j := JobStore().get(job_id)).terminal and j, timeout_s=20, what="the rerun")
    assert job.state == "succeeded" and job.attempts == 2
    assert len(runs(job_id)) == 1  # the stale copy never finished: the job ran to the end once


def test_cancelling_a_running_job_stops_it_within_seconds(home, workers):
    workers()
    job_id = submit("sleep", seconds=60)
    runner_pid = job_pid(job_id)
    result = CliRunner().invoke(cli, ["jobs", "cancel", str(job_id)])
    assert result.exit_code == 0 and "cancel requested" in result.stdout
    job = wait_for(lambda: (j := JobStore().get(job_id)).terminal and j, timeout_s=10, what="the cancel")
    assert job.state == "cancelled" and job.error == "cancelled by request"
    assert pid_gone(runner_pid) and runs(job_id) == []
    # A job that ignores SIGTERM is SIGKILLed after the grace period (1 s here).
    stubborn = submit("stubborn")
    stubborn_pid = job_pid(stubborn)
    JobStore().request_cancel(stubborn)
    job = wait_for(lambda: (j := JobStore().get(stubborn)).terminal and j, timeout_s=15, what="the SIGKILL")
    assert job.state == "cancelled" and pid_gone(stubborn_pid)
    # ...and the worker carries on.
    after = submit("sleep", tag="after")
    wait_for(lambda: JobStore().get(after).state == "succeeded", what="the next job")


def test_sigterm_stops_the_worker_and_puts_the_job_back(home, workers):
    worker = workers()
    job_id = submit("sleep", seconds=60)
    runner_pid = job_pid(job_id)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=15)
    assert worker.returncode == 0, err
    job = JobStore().get(job_id)
    assert job.state == "queued" and job.attempts == 0 and job.worker_id is None  # nothing half-claimed
    assert pid_gone(runner_pid)
    assert JobStore().workers() == []
    assert "shut down during attempt 1: job queued again" in open(job.log_path).read()


def test_submit_wait_follows_the_log_and_exits_with_the_outcome(home, env, workers):
    workers()
    ok = realfake("submit", "sleep", "--tag", "hello", "--wait", env=env)
    assert ok.returncode == 0, ok.stderr
    job_id = int(ok.stdout.splitlines()[0])
    assert "job 1 (sleep) attempt 1/3" in ok.stdout and "succeeded" in ok.stdout
    assert JobStore().get(job_id).result["tag"] == "hello"

    failed = realfake("submit", "fail", "--message", "nope", "--wait", env=env)
    assert failed.returncode == 1 and "RuntimeError: nope" in failed.stdout

    waiting = subprocess.Popen([sys.executable, "-m", "realfake.jobs.cli", "submit", "sleep", "--seconds", "60",
                                "--wait"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = int(wait_for(lambda: JobStore().list_jobs("running"), what="the job to run")[0].id)
    JobStore().request_cancel(job_id)
    out, err = waiting.communicate(timeout=20)
    assert waiting.returncode == 3, err
    assert f"job {job_id} cancelled" in err


def test_jobs_commands_list_show_logs_retry(home, env):
    ok, failing = submit("sleep", tag="t"), submit("fail", message="flaky")
    assert realfake("worker", "--once", *FAST, env=env).returncode == 0
    runner = CliRunner()
    table = runner.invoke(cli, ["jobs", "list"])
    assert table.exit_code == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "KIND", "STATE", "ATTEMPTS", "CREATED", "DURATION", "ERROR"]
    assert rows[0].split()[:4] == [str(ok), "sleep", "succeeded", "1/3"]
    assert rows[1].split()[:4] == [str(failing), "fail", "failed", "1/3"] and "RuntimeError: flaky" in rows[1]
    listed = json.loads(runner.invoke(cli, ["jobs", "list", "--state", "failed", "--json"]).stdout)
    assert [j["id"] for j in listed] == [failing] and listed[0]["error"] == "RuntimeError: flaky"
    shown = json.loads(runner.invoke(cli, ["jobs", "show", str(ok), "--json"]).stdout)
    assert shown["state"] == "succeeded" and shown["result"]["tag"] == "t" and shown["duration_s"] > 0
    text = runner.invoke(cli, ["jobs", "show", str(ok)]).stdout
    assert "state:     succeeded" in text and '"tag": "t"' in text
    logs = runner.invoke(cli, ["jobs", "logs", str(failing), "--follow"])
    assert logs.exit_code == 1 and "RuntimeError: flaky" in logs.stdout
    missing = runner.invoke(cli, ["jobs", "show", "999"])
    assert missing.exit_code == 2 and "no job 999" in missing.stderr

    retried = runner.invoke(cli, ["jobs", "retry", str(failing)])
    assert retried.exit_code == 0 and JobStore().get(failing).state == "queued"
    not_again = runner.invoke(cli, ["jobs", "retry", str(ok)])
    assert not_again.exit_code == 2 and "only failed or cancelled" in not_again.stderr
    assert realfake("worker", "--once", "--max-jobs", "1", *FAST, env=env).returncode == 0
    again = JobStore().get(failing)
    assert again.state == "failed" and again.attempts == 1
    assert open(again.log_path).read().count("attempt 1/3") == 2  # both runs in one log


@pytest.mark.slow
def test_a_real_train_job_end_to_end(home, env, tmp_path):
    from _train_helpers import make_prepared

    data_dir = make_prepared(tmp_path / "set", n_per_class=12, size=32)
    train = realfake("submit", "train", str(data_dir), "--model", "simple_cnn", "--epochs", "1", "--image-size",
                     "32", "--batch-size", "8", "--device", "cpu", "--loader", "torch", "--num-workers", "0",
                     "--no-compile", "--no-progress", "--name", "queued", env=env)
    assert train.returncode == 0, train.stderr
    train_id = int(train.stdout.strip())
    result = realfake("worker", "--once", *FAST, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    job = JobStore().get(train_id)
    assert job.state == "succeeded", open(job.log_path).read()[-3000:]
    run_dir = Path(job.result["run_dir"])
    assert run_dir == Path(job.out) / "queued" and (run_dir / "best.pt").exists()
    assert json.loads((run_dir / "config.json").read_text())["model"] == "simple_cnn"

