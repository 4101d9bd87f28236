"""What the `score --ray` tests share: a Ray held by a process of its own, reading a run's parts and locks,
the CLI in a subprocess, and the driver-imports / task-niceness check run against a running Ray and against a
Ray the command starts."""
import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _score_helpers import LAUNCHER, make_good_folder, rows_of
from realfake.jobs.tasks.score import cluster as score_ray

CLI_FAST = ["--loader", "torch", "--num-workers", "0", "--no-progress"]


def part_rows(out):
    """Rows in all the parts of a --ray OUT so far."""
    parts = score_ray.shards_dir(out).glob(f"part-*-of-*{out.suffix}")
    return sum(len(rows_of(p)) for p in parts if not p.name.endswith(".errors.csv"))


def lock_holder(lock: Path) -> int | None:
    """The pid written into a lock file by its holder."""
    text = lock.read_text().split() if lock.exists() else []
    return int(text[-1]) if len(text) >= 3 and text[-2] == "pid" else None


# A local Ray of 2 CPUs, started by this process, which prints its address and holds it until its stdin
# closes. The test process never joins it: a Ray driver exits when its node goes down, and a test process
# that was one would end the whole run instead of failing one test.
HOLD_RAY = """
import sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def ray_held_elsewhere(timeout_s: float = 120):
    """Start a local Ray in a process of its own; yields its address; shuts it down on exit. A local Ray
    asks for Ray's token (~/.ray/auth_token), so RAY_AUTH_MODE=token is set for the processes that join
    it while it runs."""
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    # Ray's messages go to a file: a pipe nobody reads would block the holder once full.
    with tempfile.TemporaryFile("w+") as messages:
        holder = subprocess.Popen([sys.executable, "-c", HOLD_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=messages, text=True)
        try:
            ready, _, _ = select.select([holder.stdout], [], [], timeout_s)
            address = holder.stdout.readline().strip() if ready else ""
            if not address:
                holder.kill()
                holder.wait()
                messages.seek(0)
                raise RuntimeError(f"the Ray for the tests did not start: {messages.read()[-3000:]}")
            yield address
        finally:
            if auth_mode is None:
                os.environ.pop("RAY_AUTH_MODE")
            else:
                os.environ["RAY_AUTH_MODE"] = auth_mode
            if holder.poll() is None:
                holder.stdin.close()  # ray.init's atexit shuts the node down
                try:
                    holder.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    holder.kill()
                    holder.wait()


def cli_command(folder, out, engine, address, shards, *extra, batch_size=1, patch=""):
    """`realfake score FOLDER --ray ADDRESS` as a subprocess command; `patch` is Python run before the CLI
    (e.g. to change a module constant of the driver)."""
    launcher = f"{patch}\n{LAUNCHER}" if patch else LAUNCHER
    shard_option = ["--ray-shards", str(shards)] if shards else []
    return [sys.executable, "-c", launcher, "score", str(folder), "--out", str(out), "--engine", str(engine),
            *CLI_FAST, "--batch-size", str(batch_size), "--json", "--ray", address, *shard_option, *extra]


def score_on_ray(folder, out, engine, address, shards=0, *extra, batch_size=8, patch="", as_json=True,
                 timeout_s=300):
    """Run `realfake score --ray` in a subprocess: (exit code, the --json summary, or the text summary
    without `as_json`, or None, stderr)."""
    command = cli_command(folder, out, engine, address, shards, *extra, batch_size=batch_size, patch=patch)
    result = subprocess.run([c for c in command if as_json or c != "--json"], capture_output=True, text=True,
                            timeout=timeout_s)
    if not as_json:
        return result.returncode, result.stdout, result.stderr
    summary = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result.returncode, summary, result.stderr


def wait_rows(out, proc, at_least, timeout_s=120):
    """Wait until the parts hold `at_least` rows while `proc` (the driver) runs; returns the count."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        rows = part_rows(out)
        if rows >= at_least:
            return rows
        time.sleep(0.02)
    raise AssertionError(f"the run ended or stalled before {at_least} rows: {proc.stderr.read()[-3000:] if proc.stderr else ''}")


def check_driver_imports_and_task_niceness(tmp_path: Path, engine: Path, address: str) -> None:
    """Run `score --ray ADDRESS` under `python -X importtime` and check that the driver never imported
    torch or matplotlib (only the tasks load them) and that each task scored at this process's niceness
    (the node's Ray's), not at Ray's worker default of +15."""
    folder = tmp_path / "in"
    make_good_folder(folder, n=12)
    command = cli_command(folder, tmp_path / "out.csv", engine, address, 2)
    result = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["scored"] == 12 and [t["niceness"] for t in summary["tasks"]] == [os.nice(0)] * 2
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"ray", "realfake.jobs.tasks.score.cluster", "realfake.engines.schema"} <= imported
    assert not {"torch", "matplotlib"} & imported, sorted({"torch", "matplotlib"} & imported)
