"""Cron schedules under an injected clock: one job per due time whoever looks, missed runs collapse,
pause/resume, the fixed output of score schedules (the scoring resume), and the CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from _service_helpers import use_service_home
from click.testing import CliRunner
from realfake.jobs.cli import main as cli
from realfake.jobs.service import schedules
from realfake.jobs.service.schedules import (
    add_schedule,
    list_schedules,
    pause_schedule,
    queue_due,
    resume_schedule,
)
from realfake.jobs.service.spec import JobSpec, validate_spec
from realfake.jobs.service.store import JobStore
from realfake.jobs.service.worker import Worker, WorkerOptions

NIGHTLY = "0 2 * * *"


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


T0 = utc("2031-05-01 12:00:00")  # the injected clock starts here


@pytest.fixture
def home(tmp_path, monkeypatch):
    return use_service_home(monkeypatch, tmp_path)


@pytest.fixture
def store(home):
    return JobStore()


def sleep_spec(tag: str = "nightly") -> JobSpec:
    return validate_spec("sleep", {"tag": tag})


def test_a_schedule_fires_once_per_due_time_under_an_injected_clock(store):
    added = add_schedule(store, "nightly", NIGHTLY, sleep_spec(), tz="UTC", now=T0)
    assert added.next_due == utc("2031-05-02 02:00:00")
    assert queue_due(store, now=utc("2031-05-02 01:59:59")) == []
    (job_id,) = queue_due(store, now=utc("2031-05-02 02:00:00"))
    job = store.get(job_id)
    assert job.schedule == "nightly" and job.due_at == utc("2031-05-02 02:00:00") and job.state == "queued"
    assert job.spec["tag"] == "nightly" and job.out == str(store.home / "jobs" / str(job_id) / "out")
    assert queue_due(store, now=utc("2031-05-02 02:00:30")) == []  # same due time: nothing more
    assert list_schedules(store)[0].next_due == utc("2031-05-03 02:00:00")
    assert len(queue_due(store, now=utc("2031-05-03 02:00:05"))) == 1


def test_several_workers_and_restarts_queue_a_due_time_once(store, home, tmp_path):
    add_schedule(store, "nightly", NIGHTLY, sleep_spec(), tz="UTC", now=T0)
    due = utc("2031-05-02 02:00:10")
    # Four processes look at the same instant, each with its own connection, like four workers.
    go = tmp_path / "go"
    code = (f"import os, time\nfrom realfake.jobs.service.schedules import queue_due\nfrom realfake.jobs.service.store import JobStore\n"
            f"store = JobStore()\nwhile not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
            f"print(len(queue_due(store, now={due!r})))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    time.sleep(0.5)
    go.touch()
    counts = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        counts.append(int(out))
    assert sorted(counts) == [0, 0, 0, 1]
    # A restarted worker (a new connection) at the same instant, or a bit later, queues nothing more.
    assert queue_due(JobStore(), now=due) == []
    assert queue_due(JobStore(), now=due + 600) == []
    assert len(store.list_jobs(schedule="nightly")) == 1


def test_the_store_refuses_a_second_job_for_one_due_time(store):
    with store.transaction() as conn:
        first = store.insert_job(conn, sleep_spec(), schedule="s", due_at=123.0)
        second = store.insert_job(conn, sleep_spec(), schedule="s", due_at=123.0)
        manual = store.insert_job(conn, sleep_spec())  # jobs without a schedule are never in conflict
        manual_too = store.insert_job(conn, sleep_spec())
    assert first is not None and second is None and manual != manual_too


def test_missed_runs_collapse_into_the_latest_one(store):
    add_schedule(store, "hourly", "0 * * * *", sleep_spec(), tz="UTC", now=T0)
    later = utc("2031-05-04 09:30:00")  # the workers were down for almost three days
    (job_id,) = queue_due(store, now=later)
    assert store.get(job_id).due_at == utc("2031-05-04 09:00:00")
    assert list_schedules(store)[0].next_due == utc("2031-05-04 10:00:00")


def test_pause_and_resume(store):
    add_schedule(store, "nightly", NIGHTLY, sleep_spec(), tz="UTC", now=T0)
    pause_schedule(store, "nightly")
    assert queue_due(store, now=utc("2031-05-05 03:00:00")) == []
    resumed = resume_schedule(store, "nightly", now=utc("2031-05-05 03:00:00"))
    assert resumed.next_due == utc("2031-05-06 02:00:00")  # the paused days are not made up
    assert queue_due(store, now=utc("2031-05-05 23:00:00")) == []


def test_time_zone_of_the_cron_fields(store):
    added = add_schedule(store, "madrid", NIGHTLY, sleep_spec(), tz="Europe/Madrid", now=T0)
    assert added.next_due == utc("2031-05-02 00:00:00")  # 02:00 CEST (UTC+2)


@pytest.mark.parametrize("name, cron, tz, message", [
    ("ok", "0 2 * *", "UTC", "invalid cron expression"),
    ("ok", "61 2 * * *", "UTC", "invalid cron expression"),
    ("bad name!", NIGHTLY, "UTC", "invalid schedule name"),
    ("ok", NIGHTLY, "Mars/Olympus", "unknown time zone"),
])
def test_bad_schedules_are_refused(store, name, cron, tz, message):
    with pytest.raises(ValueError, match=message):
        add_schedule(store, name, cron, sleep_spec(), tz=tz, now=T0)
    assert list_schedules(store) == []


def test_duplicate_names_are_refused(store):
    add_schedule(store, "nightly", NIGHTLY, sleep_spec(), tz="UTC", now=T0)
    with pytest.raises(ValueError, match="already exists"):
        add_schedule(store, "nightly", NIGHTLY, sleep_spec(), tz="UTC", now=T0)


def test_a_due_run_whose_spec_no_longer_holds_is_recorded_as_failed(store, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    add_schedule(store, "sweep", NIGHTLY, validate_spec("resume", {"folder": str(incoming)}), tz="UTC", now=T0)
    incoming.rmdir()
    (job_id,) = queue_due(store, now=utc("2031-05-02 02:00:00"))
    job = store.get(job_id)
    assert job.state == "failed" and "incoming does not exist" in job.error  # never silently skipped


def test_fixed_out_schedule_runs_handle_only_new_files(store, tmp_path, monkeypatch):
    # `resume` stands in for score (whose resume is score's own business): such a kind's schedule gets
    # one fixed output, so every run sees what the earlier runs did.
    monkeypatch.setattr(schedules, "FIXED_OUT_KINDS", frozenset({"resume"}))
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "a.jpg").touch()
    (incoming / "b.jpg").touch()
    added = add_schedule(store, "sweep", NIGHTLY, validate_spec("resume", {"folder": str(incoming)}), tz="UTC",
                         now=T0)
    assert added.spec["out"] == str(store.home / "schedules" / "sweep" / "out")

    clock = {"now": utc("2031-05-02 02:00:00")}
    options = WorkerOptions(once=True, poll_s=0.1)
    assert Worker(JobStore(), options, clock=lambda: clock["now"]).run() == 1
    (incoming / "c.jpg").touch()
    clock["now"] = utc("2031-05-03 02:00:00")
    assert Worker(JobStore(), options, clock=lambda: clock["now"]).run() == 1
    first, second = store.list_jobs(schedule="sweep")
    assert first.out == second.out == added.spec["out"]
    assert first.state == second.state == "succeeded"
    assert first.result == {"new": ["a.jpg", "b.jpg"], "skipped": 0}
    assert second.result == {"new": ["c.jpg"], "skipped": 2}


@pytest.mark.parametrize("kind, args", [("score", {"folders": ["incoming"]}), ("bench", {"suites": ["train"]})])
def test_score_and_bench_schedules_get_a_fixed_output(store, tmp_path, kind, args):
    assert kind in schedules.FIXED_OUT_KINDS
    (tmp_path / "incoming").mkdir()
    spec = validate_spec(kind, args, base_dir=tmp_path)
    added = add_schedule(store, f"{kind}-nightly", NIGHTLY, spec, tz="UTC", now=T0)
    assert added.spec["out"] == str(store.home / "schedules" / f"{kind}-nightly" / "out")
    (first,) = queue_due(store, now=utc("2031-05-02 02:00:00"))
    (second,) = queue_due(store, now=utc("2031-05-03 02:00:00"))
    assert store.get(first).out == store.get(second).out == added.spec["out"]
    assert store.get(first).state == store.get(second).state == "queued"


def test_other_kinds_keep_one_output_per_job(store):
    # A nightly training run must not overwrite the last one.
    added = add_schedule(store, "nightly", NIGHTLY, sleep_spec(), tz="UTC", now=T0)
    assert "out" not in added.spec and added.default_out
    (first,) = queue_due(store, now=utc("2031-05-02 02:00:00"))
    (second,) = queue_due(store, now=utc("2031-05-03 02:00:00"))
    assert store.get(first).out != store.get(second).out


def test_schedule_cli(home, tmp_path):
    spec = tmp_path / "nightly.toml"
    spec.write_text('kind = "sleep"\ntag = "cli"\n')
    runner = CliRunner()
    added = runner.invoke(cli, ["schedule", "add", "nightly", "--cron", NIGHTLY, "--tz", "UTC", str(spec)])
    assert added.exit_code == 0, added.output
    assert "schedule nightly: sleep at '0 2 * * *' (UTC); next run" in added.stdout
    bad = runner.invoke(cli, ["schedule", "add", "other", "--cron", "every night", str(spec)])
    assert bad.exit_code == 2 and "invalid cron expression" in bad.stderr
    invalid_spec = tmp_path / "bad.toml"
    invalid_spec.write_text('kind = "sleep"\nseconds = "long"\n')
    refused = runner.invoke(cli, ["schedule", "add", "other", "--cron", NIGHTLY, str(invalid_spec)])
    assert refused.exit_code == 2 and "'seconds'" in refused.stderr

    table = runner.invoke(cli, ["schedule", "list"]).stdout.splitlines()
    assert table[0].split() == ["NAME", "CRON", "TZ", "KIND", "STATE", "NEXT", "RUN", "LAST", "JOB"]
    assert table[1].split()[:2] == ["nightly", "0"] and "active" in table[1]
    assert runner.invoke(cli, ["schedule", "pause", "nightly"]).exit_code == 0
    listed = json.loads(runner.invoke(cli, ["schedule", "list", "--json"]).stdout)
    assert listed[0]["paused"] is True and listed[0]["spec"] == {"tag": "cli"}
    assert runner.invoke(cli, ["schedule", "resume", "nightly"]).exit_code == 0
    assert runner.invoke(cli, ["schedule", "remove", "nightly"]).exit_code == 0
    gone = runner.invoke(cli, ["schedule", "remove", "nightly"])
    assert gone.exit_code == 2 and "no schedule 'nightly'" in gone.stderr


@pytest.mark.slow
def test_a_scheduled_score_job_scores_only_new_files(store, tmp_path):
    """The real chain: train -> engine (in this process), then two scheduled score runs via the worker."""
    from _train_helpers import make_prepared
    from realfake.jobs.tasks.engine import run_engine_build
    from realfake.jobs.tasks.train import run_train

    data_dir = make_prepared(tmp_path / "set", n_per_class=12, size=32)
    trained = run_train(data_dir, model="simple_cnn", epochs=1, image_size=32, batch_size=8, device="cpu",
                        loader="torch", num_workers=0, compile=False, progress=False, out=tmp_path / "runs")
    engine = run_engine_build(trained["run_dir"], tmp_path / "engine", backend="eager", device="cpu")
    images = sorted((tmp_path / "set" / "images").glob("*.jpg"))
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for image in images[:4]:
        shutil.copy(image, incoming)
    spec = validate_spec("score", {"folders": [str(incoming)], "engine": engine["engine_dir"], "loader": "torch",
                                   "num_workers": 0, "device": "cpu", "progress": False})
    add_schedule(store, "incoming", NIGHTLY, spec, tz="UTC", now=T0)

    clock = {"now": utc("2031-05-02 02:00:00")}
    options = WorkerOptions(once=True, poll_s=0.1)
    assert Worker(JobStore(), options, clock=lambda: clock["now"]).run() == 1
    for image in images[-2:]:
        shutil.copy(image, incoming)
    clock["now"] = utc("2031-05-03 02:00:00")
    assert Worker(JobStore(), options, clock=lambda: clock["now"]).run() == 1
    first, second = store.list_jobs(schedule="incoming")
    assert first.state == "succeeded", open(first.log_path).read()[-2000:]
    assert second.state == "succeeded", open(second.log_path).read()[-2000:]
    assert first.out == second.out == str(store.home / "schedules" / "incoming" / "out")
    assert (first.result["scored"], second.result["scored"], second.result["skipped"]) == (4, 2, 4)
