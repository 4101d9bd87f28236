"""The SQLite job store: concurrent submitters and claimers, state changes, recovery of dead workers."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from _service_helpers import service_env, use_service_home
from realfake.jobs.service.spec import JobSpec
from realfake.jobs.service.store import JobStateError, JobStore, follow_log


@pytest.fixture
def home(tmp_path, monkeypatch):
    return use_service_home(monkeypatch, tmp_path)


def sleep_spec(tag: str = "") -> JobSpec:
    return JobSpec("sleep", {"seconds": 0.0, "tag": tag}, default_out="out")


def start_together(code: str, n: int, home, tmp_path) -> list[subprocess.Popen]:
    """Start `n` Python processes running `code` (with INDEX and GO_FILE set) that wait for one signal
    file, so that they really hit the store at the same moment."""
    go = tmp_path / "go"
    prelude = textwrap.dedent(f"""
        import os, sys, time
        GO_FILE = {str(go)!r}
        INDEX = int(sys.argv[1])
        while not os.path.exists(GO_FILE):
            time.sleep(0.005)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code), str(i)],
                              env=service_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    time.sleep(0.5)  # let them all import and wait
    go.touch()
    return procs


def finish_all(procs: list[subprocess.Popen]) -> list[str]:
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out)
    return outputs


def test_concurrent_submitters_lose_nothing_and_ids_are_unique(home, tmp_path):
    # 8 processes x 25 jobs on a store none of them has created yet (schema and WAL switch race too).
    code = """
        from realfake.jobs.service.spec import JobSpec
        from realfake.jobs.service.store import JobStore
        store = JobStore()
        for i in range(25):
            job = store.submit(JobSpec("sleep", {"tag": f"{INDEX}-{i}"}, default_out="out"))
            print(job.id)
    """
    outputs = finish_all(start_together(code, 8, home, tmp_path))
    printed = [int(line) for out in outputs for line in out.split()]
    jobs = JobStore().list_jobs(limit=None)
    assert len(printed) == len(set(printed)) == 200
    assert sorted(printed) == [job.id for job in jobs]
    assert sorted(job.spec["tag"] for job in jobs) == sorted(f"{p}-{i}" for p in range(8) for i in range(25))
    assert all(job.state == "queued" and job.out == str(home / "jobs" / str(job.id) / "out") for job in jobs)
    assert JobStore().conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_claimers_never_take_one_job_twice(home, tmp_path):
    store = JobStore()
    for i in range(120):
        store.submit(sleep_spec(str(i)))
    code = """
        from realfake.jobs.service.store import JobStore
        store = JobStore()
        store.register_worker(f"w{INDEX}")
        while (job := store.claim(f"w{INDEX}")) is not None:
            print(job.id)
    """
    outputs = finish_all(start_together(code, 4, home, tmp_path))
    claimed = [int(line) for out in outputs for line in out.split()]
    assert sorted(claimed) == list(range(1, 121))  # every job once, none twice
    for index, out in enumerate(outputs):
        for job_id in map(int, out.split()):
            job = store.get(job_id)
            assert job.state == "running" and job.attempts == 1 and job.worker_id == f"w{index}"


def test_claim_takes_the_oldest_and_counts_attempts(home):
    store = JobStore()
    first, second = store.submit(sleep_spec("a")), store.submit(sleep_spec("b"))
    store.register_worker("w")
    claimed = store.claim("w")
    assert claimed.id == first.id and claimed.state == "running" and claimed.attempts == 1
    assert claimed.started_at is not None and claimed.worker_id == "w"
    assert store.claim("w").id == second.id
    assert store.claim("w") is None


def test_finish_is_fenced_by_attempt(home):
    store = JobStore()
    store.register_worker("w")
    job = store.submit(sleep_spec())
    store.claim("w")
    assert not store.finish(job.id, 2, "succeeded", result={"x": 1})  # not the running attempt
    assert store.get(job.id).state == "running"
    assert store.finish(job.id, 1, "succeeded", result={"x": 1})
    done = store.get(job.id)
    assert done.state == "succeeded" and done.result == {"x": 1} and done.finished_at >= done.started_at
    assert not store.finish(job.id, 1, "failed", error="late")  # a finished job stays finished
    assert store.get(job.id).state == "succeeded"


def test_cancel_and_retry(home):
    store = JobStore()
    store.register_worker("w")
    queued = store.submit(sleep_spec())
    cancelled = store.request_cancel(queued.id)
    assert cancelled.state == "cancelled" and cancelled.finished_at is not None  # at once
    with pytest.raises(JobStateError, match="already cancelled"):
        store.request_cancel(queued.id)
    running = store.submit(sleep_spec())
    store.claim("w")
    flagged = store.request_cancel(running.id)
    assert flagged.state == "running" and flagged.cancel_requested  # the worker stops it
    store.finish(running.id, 1, "cancelled", error="cancelled by request")

    retried = store.retry(queued.id)
    assert retried.state == "queued" and retried.attempts == 0 and not retried.cancel_requested
    assert retried.error is None and retried.out == queued.out  # same output folder: resumable jobs resume
    assert "retry requested" in open(retried.log_path).read()
    with pytest.raises(JobStateError, match="only failed or cancelled"):
        store.retry(queued.id)
    with pytest.raises(ValueError, match="no job 999"):
        store.get(999)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recovery_requeues_then_fails_after_max_attempts(home):
    store = JobStore()
    job = store.submit(sleep_spec(), max_attempts=2)
    for attempt in (1, 2):
        worker_id = f"dead-{attempt}"
        store.register_worker(worker_id)
        store.conn.execute("UPDATE workers SET pid = ? WHERE id = ?", (dead_pid(), worker_id))
        assert store.claim(worker_id).attempts == attempt
        (recovered,) = store.recover()
        assert recovered.id == job.id
        assert [w.id for w in store.workers()] == []  # the dead worker's row is gone
    assert recovered.state == "failed" and recovered.error == "worker died (2 attempts)"
    assert store.get(job.id).state == "failed"
    log = open(job.log_path).read()
    assert "now queued" in log and "now failed (worker died (2 attempts))" in log


def test_recovery_by_stale_heartbeat_and_cancel_requests(home):
    store = JobStore()
    store.register_worker("elsewhere")
    store.conn.execute("UPDATE workers SET hostname = 'other-host', heartbeat_at = ? WHERE id = 'elsewhere'",
                       (time.time() - 30,))
    first, second = store.submit(sleep_spec()), store.submit(sleep_spec())
    store.claim("elsewhere"), store.claim("elsewhere")
    store.request_cancel(second.id)
    assert store.recover(stale_after_s=60) == []  # 30 s of silence on another host: still alive
    recovered = {job.id: job for job in store.recover(stale_after_s=10)}
    assert recovered[first.id].state == "queued" and recovered[first.id].attempts == 1
    assert recovered[second.id].state == "cancelled"


def test_recovery_leaves_live_workers_alone(home):
    store = JobStore()
    store.register_worker("me")  # this process: alive, fresh heartbeat
    job = store.submit(sleep_spec())
    store.claim("me")
    assert store.recover() == []
    assert store.get(job.id).state == "running"
    assert [w.id for w in store.live_workers()] == ["me"]


def test_requeue_on_shutdown_does_not_count_the_attempt(home):
    store = JobStore()
    store.register_worker("w")
    job = store.submit(sleep_spec())
    store.claim("w")
    assert store.requeue(job.id, 1, note="shutting down")
    again = store.get(job.id)
    assert again.state == "queued" and again.attempts == 0 and again.worker_id is None


def test_follow_log_stops_when_the_job_ends(home):
    store = JobStore()
    store.register_worker("w")
    job = store.submit(sleep_spec())
    store.claim("w")
    job.job_dir.mkdir(parents=True)
    with open(job.log_path, "w") as f:
        f.write("line 1\n")
    store.finish(job.id, 1, "failed", error="RuntimeError: x")
    chunks = []
    final = follow_log(store, job.id, chunks.append, poll_s=0.01)
    assert final.state == "failed" and "".join(chunks) == "line 1\n"


def test_list_filters_and_rejects_unknown_states(home):
    store = JobStore()
    for _ in range(5):
        store.submit(sleep_spec())
    store.request_cancel(2)
    assert [j.id for j in store.list_jobs("cancelled")] == [2]
    assert [j.id for j in store.list_jobs(limit=2)] == [4, 5]
    with pytest.raises(ValueError, match="unknown state 'done'"):
        store.list_jobs("done")
