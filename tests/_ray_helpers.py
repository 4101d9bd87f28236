"""What the `score --ray` tests share: reading a run's parts and locks, the CLI in a subprocess, and the
driver-imports / task-niceness check run against a running Ray and against a Ray the command starts."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _score_helpers import LAUNCHER, make_good_folder
from realfake.jobs.tasks.outputs.writers import read_rows
from realfake.jobs.tasks.score import cluster as score_ray

FAST = dict(loader="torch", num_workers=0, batch_size=8, progress=False)
CLI_FAST = ["--loader", "torch", "--num-workers", "0", "--no-progress"]


def rows_of(path):
    return list(read_rows(path))


def part_rows(out):
    """Rows in all the parts of a --ray OUT so far."""
    parts = score_ray.shards_dir(out).glob(f"part-*-of-*{out.suffix}")
    return sum(len(rows_of(p)) for p in parts if not p.name.endswith(".errors.csv"))


def lock_holder(lock: Path) -> int | None:
    """The pid written into a lock file by its holder."""
    text = lock.read_text().split() if lock.exists() else []
    return int(text[-1]) if len(text) >= 3 and text[-2] == "pid" else None


def cli_command(folder, out, engine, address, shards, *extra):
    return [sys.executable, "-c", LAUNCHER, "score", str(folder), "--out", str(out), "--engine", str(engine),
            *CLI_FAST, "--batch-size", "1", "--json", "--ray", address, "--ray-shards", str(shards), *extra]


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
