"""`realfake score --ray` starting a Ray of its own (no address): the driver's imports and the tasks'
niceness, and a job's cancel stopping the tasks and that Ray.

These tests are kept apart from test_score_ray.py, whose module-wide Ray is shut down before they run:
Ray expects one instance per machine (a second one on the same node contends for its fixed ports, such as
the dashboard agent's, and for the two CPUs). The test process never joins a Ray itself: the commands
run in subprocesses, so a Ray that goes down fails one test rather than ending the test run.
"""
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _ray_helpers import check_driver_imports_and_task_niceness, lock_holder, part_rows, wait_rows
from _score_helpers import build_engines, make_good_folder
from _service_helpers import pid_gone, use_service_home, wait_for
from realfake.jobs.tasks.score import cluster as score_ray

ray = pytest.importorskip("ray", reason="needs Ray: pip install 'realfake[cluster]'")


@pytest.fixture(autouse=True)
def no_ray_of_this_process():
    assert not ray.is_initialized(), "a Ray started by an earlier test module still runs in this process"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return build_engines(tmp_path_factory.mktemp("engines"))[0]


def test_the_driver_of_a_ray_run_it_starts_never_imports_torch_and_its_tasks_run_at_the_nodes_niceness(
        tmp_path, engine):
    check_driver_imports_and_task_niceness(tmp_path, engine, "local")


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.slow
def test_cancelling_a_score_job_stops_its_tasks_and_its_local_ray(tmp_path, engine, monkeypatch):
    from realfake.jobs.service.spec import validate_spec
    from realfake.jobs.service.store import JobStore

    use_service_home(monkeypatch, tmp_path)
    folder = tmp_path / "in"
    make_good_folder(folder, n=400, seed=9)
    out = tmp_path / "scores.csv"
    spec = validate_spec("score", {"folders": [str(folder)], "engine": str(engine), "out": str(out), "ray": "local",
                                   "ray_shards": 2, "batch_size": 1, "num_workers": 0, "loader": "torch",
                                   "progress": False})
    job_id = JobStore().submit(spec).id
    worker = subprocess.Popen([sys.executable, "-m", "realfake.jobs.cli", "worker", "--once", "--poll", "0.1",
                               "--grace", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_rows(out, worker, 10, timeout_s=150)
        runner = lock_holder(score_ray.shards_dir(out) / score_ray.DRIVER_LOCK)
        # on 2 cores one task may run at a time, and Ray may start either shard first
        tasks = {lock_holder(Path(str(score_ray.part_path(out, i, 2)) + ".lock")) for i in range(2)} - {None}
        ray_processes = descendants(runner)  # the local Ray this job started: GCS, raylet, its workers
        assert tasks and tasks <= ray_processes and len(ray_processes) > 3
        JobStore().request_cancel(job_id)
        job = wait_for(lambda: (j := JobStore().get(job_id)).terminal and j, timeout_s=60, what="the cancel")
        worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert job.state == "cancelled"
    log = Path(job.log_path).read_text()
    # JobTerminated reached the runner as it is (not wrapped by Ray), within the grace
    assert "[realfake] terminated by SIGTERM" in log and "SystemError" not in log, log[-3000:]
    for pid in [runner, *ray_processes]:
        wait_for(lambda pid=pid: pid_gone(pid), timeout_s=30, what=f"process {pid} of the job's Ray to end")
    rows = part_rows(out)
    time.sleep(1)
    assert part_rows(out) == rows < 400  # nothing writes on
