"""`realfake score --ray` on a running Ray: the same rows and errors as plain score, resume after kill -9 of a
Ray worker and of the driver, the install hint, the token error, and a folder a task cannot see.

One local Ray of 2 CPUs, held by a process of its own, serves the tests; the drivers that join it run in
subprocesses. The tests where the command starts a Ray of its own are in test_score_ray_local.py, which
runs after this module's Ray is shut down.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _ray_helpers import (
    check_driver_imports_and_task_niceness,
    cli_command,
    lock_holder,
    part_rows,
    ray_held_elsewhere,
    score_on_ray,
    wait_rows,
)
from _score_helpers import FAST, build_engines, errors_of, make_good_folder, rows_of, write_bad_files
from _service_helpers import pid_gone, wait_for
from click.testing import CliRunner
from realfake.jobs.cli import main
from realfake.jobs.tasks.score import cluster as score_ray
from realfake.jobs.tasks.score import run_score
from realfake.pipelines.walk import shard_of


@pytest.fixture(scope="module")
def cluster():
    """A local Ray of 2 CPUs for the module, held by a process of its own; yields its address. Every run
    that connects to it is a subprocess (see ray_held_elsewhere)."""
    pytest.importorskip("ray", reason="needs Ray: pip install 'realfake[cluster]'")
    with ray_held_elsewhere() as address:
        yield address


@pytest.fixture(autouse=True)
def no_ray_in_this_process():
    yield
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized(), "a test joined Ray in this process"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    return build_engines(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def engine(engines):
    return engines[0]


# ----------------------------------------------------------------------------------------------- same results

def test_ray_gives_the_rows_and_errors_of_plain_score_and_resumes(tmp_path, cluster, engines):
    engine, other = engines
    folder = tmp_path / "in"
    files = make_good_folder(folder, n=200, seed=2)
    bad = write_bad_files(folder / "bad")
    plain_out, ray_out = tmp_path / "plain.csv", tmp_path / "ray.csv"
    plain = run_score([str(folder)], plain_out, engine=engine, **FAST)
    code, summary, stderr = score_on_ray(folder, ray_out, engine, cluster, 4)
    assert code == 1 and summary is not None, stderr[-3000:]  # 1: some files could not be scored

    for key in ("files", "scored", "skipped", "errors", "engine_id", "threshold", "image_size", "folders"):
        assert summary[key] == plain[key], key
    assert summary["scored"] == len(files) and summary["errors"] == len(bad) and summary["ray_shards"] == 4
    # the tasks score at the niceness of the node's Ray (this process's), not at Ray's worker default of +15
    assert [t["niceness"] for t in summary["tasks"]] == [os.nice(0)] * 4
    parts = sorted(score_ray.shards_dir(ray_out).glob("part-*-of-4.csv"))
    assert len(parts) == 4 and all(rows_of(p) for p in parts)  # four real shards, each with rows
    reference = {r["path"]: r for r in rows_of(plain_out)}
    rows = rows_of(ray_out)
    assert len(rows) == len(reference) and {r["path"] for r in rows} == set(reference)
    for row in rows:
        assert {**row, "p_fake": None} == {**reference[row["path"]], "p_fake": None}
        assert row["p_fake"] == pytest.approx(reference[row["path"]]["p_fake"], abs=1e-6)
    assert errors_of(ray_out) == errors_of(plain_out)

    # a rerun resumes every part: nothing scored again, OUT rebuilt with the same rows
    code, again, stderr = score_on_ray(folder, ray_out, engine, cluster)
    assert code == 1 and again is not None, stderr[-3000:]
    assert again["scored"] == 0 and again["skipped"] == len(files) and again["ray_shards"] == 4
    assert again["retried_errors"] == len(bad) and errors_of(ray_out) == errors_of(plain_out)
    assert sorted(r["path"] for r in rows_of(ray_out)) == sorted(reference)
    # what could count a file twice or mix engines is refused before Ray is joined
    with pytest.raises(ValueError, match="holds 4 shards of an earlier run"):
        run_score([str(folder)], ray_out, engine=engine, ray=cluster, ray_shards=2, **FAST)
    with pytest.raises(ValueError, match="holds scores of engine"):
        run_score([str(folder)], ray_out, engine=other, ray=cluster, **FAST)
    with pytest.raises(ValueError, match="must score the same folders"):
        run_score([str(folder / "sub")], ray_out, engine=engine, ray=cluster, **FAST)
    with pytest.raises(ValueError, match="was not written by `score --ray`"):
        run_score([str(folder)], plain_out, engine=engine, ray=cluster, **FAST)
    # --no-resume starts over, with another shard count if asked
    code, fresh, stderr = score_on_ray(folder, ray_out, engine, cluster, 2, "--no-resume")
    assert code == 1 and fresh is not None, stderr[-3000:]
    assert fresh["scored"] == len(files) and fresh["skipped"] == 0 and len(rows_of(ray_out)) == len(files)
    assert sorted(p.name for p in score_ray.shards_dir(ray_out).iterdir()) == [
        "driver.lock", "part-0-of-2.csv", "part-0-of-2.csv.errors.csv", "part-0-of-2.csv.lock",
        "part-1-of-2.csv", "part-1-of-2.csv.errors.csv", "part-1-of-2.csv.lock", "shards.json"]


def test_options_that_do_not_go_with_ray_are_refused(tmp_path, engine):
    folder = tmp_path / "in"
    make_good_folder(folder, n=2)
    shard_and_ray = CliRunner().invoke(main, ["score", str(folder), "--out", str(tmp_path / "c.csv"), "--engine",
                                              str(engine), "--shard", "0/2", "--ray"])
    assert shard_and_ray.exit_code == 2 and "error: --shard and --ray do not go together" in shard_and_ray.output
    not_an_address = CliRunner().invoke(main, ["score", "--ray", str(folder), str(folder), "--out",
                                               str(tmp_path / "d.csv"), "--engine", str(engine)])
    assert not_an_address.exit_code == 2 and "is not a Ray address" in not_an_address.output


def test_the_driver_of_a_ray_run_never_imports_torch_and_its_tasks_run_at_the_nodes_niceness(
        tmp_path, cluster, engine):
    """Only the tasks load torch: the command that submits them and merges their parts does not pay for
    a second import of it before any task starts."""
    check_driver_imports_and_task_niceness(tmp_path, engine, cluster)


# ----------------------------------------------------------------------------------------------- failures

# In the driver, after it has checked the folders and just before it submits the tasks: from there on the
# tasks' node cannot see the folder.
HIDE_FOLDER_FROM_TASKS = """
import os
from realfake.jobs.tasks.score import cluster
real_resources = cluster.task_resources
def hide_folder_from_tasks(*args):
    os.rename(os.environ["FOLDER"], os.environ["FOLDER"] + ".elsewhere")
    return real_resources(*args)
cluster.task_resources = hide_folder_from_tasks
"""


def test_a_folder_a_task_cannot_see_is_one_clear_error(tmp_path, cluster, engine, monkeypatch):
    folder = tmp_path / "in"
    make_good_folder(folder, n=12)
    monkeypatch.setenv("FOLDER", str(folder))
    code, _, stderr = score_on_ray(folder, tmp_path / "s.csv", engine, cluster, 2, patch=HIDE_FOLDER_FROM_TASKS)
    assert code == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert f"cannot see folder {folder}: every node must see it at the same path" in errors[0]
    assert errors[0].startswith("error: node ")


def test_without_ray_installed_the_flag_says_how_to_install(tmp_path, engine, monkeypatch):
    folder = tmp_path / "in"
    make_good_folder(folder, n=2)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = CliRunner().invoke(main, ["score", str(folder), "--out", str(tmp_path / "s.csv"), "--engine", str(engine),
                                       "--ray"])
    assert result.exit_code == 2
    assert "error: --ray needs Ray, which is not installed in this environment: pip install 'realfake[cluster]'" \
        in result.output


def test_a_cluster_that_asks_for_a_token_says_how_to_give_it(tmp_path, engine, monkeypatch):
    ray = pytest.importorskip("ray")

    def refused(**_):  # what ray.init raises when the cluster runs with RAY_AUTH_MODE=token and this side does not
        try:
            raise RuntimeError("Failed to connect to GCS. ray.exceptions.AuthenticationError: RPC error: "
                               "InvalidAuthToken: Authentication token is missing or incorrect.")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379") from cause

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh command, whatever this process runs
    monkeypatch.setattr(ray, "init", refused)
    folder = tmp_path / "in"
    make_good_folder(folder, n=2)
    result = CliRunner().invoke(main, ["score", str(folder), "--out", str(tmp_path / "s.csv"), "--engine", str(engine),
                                       "--ray", "10.0.0.9:6379"])
    assert result.exit_code == 2, result.output
    assert ("error: the Ray cluster at 10.0.0.9:6379 asks for an authentication token: set RAY_AUTH_MODE=token"
            in result.output)


def test_a_part_has_one_writer_at_a_time(tmp_path):
    lock = tmp_path / "part-0-of-2.csv.lock"
    with score_ray.exclusive_lock(lock, wait_s=0, busy="wait for it"):
        with pytest.raises(OSError, match=f"is locked by .* pid {os.getpid()}: wait for it"):
            with score_ray.exclusive_lock(lock, wait_s=0.3, busy="wait for it"):
                pass
    with score_ray.exclusive_lock(lock, wait_s=0, busy="free again"):  # released with the block
        pass


def test_a_task_waits_for_the_lock_of_its_part_and_names_the_holder(tmp_path, cluster, engine):
    folder = tmp_path / "in"
    make_good_folder(folder, n=12)
    out = tmp_path / "scores.parquet"
    score_ray.shards_dir(out).mkdir()
    lock = Path(str(score_ray.part_path(out, 0, 2)) + score_ray.LOCK_SUFFIX)
    short_wait = "from realfake.jobs.tasks.score import cluster; cluster.LOCK_WAIT_S = 1.0"
    with score_ray.exclusive_lock(lock, wait_s=0, busy="held by the test"):  # as an orphaned task would
        code, _, stderr = score_on_ray(folder, out, engine, cluster, 2, patch=short_wait)
    assert code == 2 and re.search(f"is locked by .* pid {os.getpid()}: an earlier task of shard 0/2", stderr), \
        stderr[-3000:]
    assert not score_ray.part_path(out, 0, 2).exists()  # nothing written to the part while it was held
    # the rerun finishes: exit code 0 and the text summary, with shard 1's rows kept if it had finished
    code, text, stderr = score_on_ray(folder, out, engine, cluster, as_json=False)
    assert code == 0, stderr[-3000:]
    counts = re.search(r"files 12  scored (\d+) \(real \d+  fake \d+  unknown \d+\)  skipped (\d+) ", text)
    assert counts and int(counts[1]) + int(counts[2]) == 12, text
    assert int(counts[1]) >= len(rows_of(score_ray.part_path(out, 0, 2))), text
    assert "ray:     2 shards on 1 node(s)" in text
    assert sorted(r["path"] for r in rows_of(out)) == sorted({r["path"] for r in rows_of(out)}) and len(rows_of(out)) == 12


def test_a_task_asks_for_what_one_score_process_uses():
    one_small_node = [{"Resources": {"CPU": 2.0}}]
    # 2 decoders + 1 engine thread, capped at the node's 2 CPUs: one task at a time, the engine on 1 thread
    assert score_ray.task_resources("cpu", 2, 0, one_small_node) == (2.0, 0.0, 1, 1)
    assert score_ray.task_resources("cpu", 0, 0, one_small_node) == (1.0, 0.0, 1, 2)
    nodes = [{"Resources": {"CPU": 16.0, "GPU": 2.0}}, {"Resources": {"CPU": 8.0}},
             {"Resources": {"CPU": 64.0}, "Alive": False}]
    assert score_ray.task_resources("cpu", 2, 2, nodes) == (4.0, 0.0, 2, 6)
    # a CUDA engine: one GPU per task, so as many tasks at once as GPUs
    assert score_ray.task_resources("cuda", 2, 0, nodes) == (3.0, 1.0, 1, 2)


# ----------------------------------------------------------------------------------------------- kill -9

@pytest.mark.slow
def test_kill_9_of_a_ray_worker_is_retried_and_resumes_its_part(tmp_path, cluster, engine):
    folder = tmp_path / "in"
    files = make_good_folder(folder, n=400, seed=7)
    out = tmp_path / "scores.csv"
    in_shard_0 = sum(shard_of(str(p.relative_to(folder)), 2) == 0 for p in files)
    # with the progress bar on: the driver's one bar, no bar of a task
    command = [c for c in cli_command(folder, out, engine, cluster, 2) if c != "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part, lock = score_ray.part_path(out, 0, 2), Path(str(score_ray.part_path(out, 0, 2)) + ".lock")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not (part.exists() and len(rows_of(part)) >= 20):
            time.sleep(0.02)
        worker = lock_holder(lock)
        assert worker is not None and proc.poll() is None, proc.stderr.read()[-3000:]
        os.kill(worker, signal.SIGKILL)
        at_kill = len(rows_of(part))
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert at_kill < in_shard_0  # killed mid-shard
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["scored"] == len(files) and summary["skipped"] == 0 and summary["files"] == len(files)
    # the retry resumed the part: it scored only what the killed attempt had not written
    assert summary["tasks"][0]["scored"] <= in_shard_0 - at_kill
    rows = rows_of(out)
    assert len(rows) == len(files) and sorted(r["path"] for r in rows) == sorted(map(str, files))
    assert lock_holder(lock) != worker  # shard 0 was finished by a retry in another process
    assert "score on ray (2 shards)" in stderr and "score 0/2" not in stderr and "score 1/2" not in stderr


@pytest.mark.slow
def test_kill_9_of_the_driver_then_rerun_scores_every_file_once(tmp_path, cluster, engine):
    folder = tmp_path / "in"
    files = make_good_folder(folder, n=400, seed=8)
    out = tmp_path / "scores.jsonl"
    proc = subprocess.Popen(cli_command(folder, out, engine, cluster, 2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_rows(out, proc, 20)
        tasks = [lock_holder(Path(str(score_ray.part_path(out, i, 2)) + ".lock")) for i in range(2)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and not out.exists()  # died before its merge
    # Ray ends the dead driver's tasks: no orphan writes on into the parts the rerun resumes
    for pid in filter(None, tasks):
        wait_for(lambda pid=pid: pid_gone(pid), timeout_s=60, what=f"task process {pid} to end with its driver")
    before = part_rows(out)
    assert 20 <= before < len(files)
    code, summary, stderr = score_on_ray(folder, out, engine, cluster)
    assert code == 0, stderr[-3000:]
    assert summary["skipped"] == before and summary["scored"] == len(files) - before
    rows = rows_of(out)
    assert len(rows) == len(files) and sorted(r["path"] for r in rows) == sorted(map(str, files))


# ----------------------------------------------------------------------------------------------- jobs

def test_a_score_spec_carries_ray(tmp_path):
    from realfake.jobs.service.spec import SpecError, validate_spec

    folder = tmp_path / "in"
    folder.mkdir()
    spec = validate_spec("score", {"folders": ["in"], "ray": "auto", "ray_shards": 4}, base_dir=tmp_path)
    assert spec.args["ray"] == "auto" and spec.args["ray_shards"] == 4
    with pytest.raises(SpecError, match="key 'ray' of kind 'score' must be a string"):
        validate_spec("score", {"folders": ["in"], "ray": 3}, base_dir=tmp_path)


def test_the_benchmark_counts_concurrent_tasks_once():
    pytest.importorskip("ray", reason="needs Ray: pip install 'realfake[cluster]'")
    from realfake.benchmarks.suite_score_ray import scoring_time

    overlapping_then_alone = [{"scoring_from": 0.0, "scoring_to": 2.0}, {"scoring_from": 1.0, "scoring_to": 3.0},
                              {"scoring_from": 5.0, "scoring_to": 6.0}]
    assert scoring_time(overlapping_then_alone) == 4.0
