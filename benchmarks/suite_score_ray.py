"""The `score-ray` suite: `realfake score` plain against `realfake score --ray` on this machine, side by side.

Data: as the `score` suite (the CIPLAB set at ../shared/data/real_and_fake_face, or $REALFAKE_BENCH_DATA,
else generated faces), linked into one temporary folder. Engine: the `score` suite's cached simple_cnn
AOT engine at 128 px (random weights), on the CPU.

Each pass is the `realfake score` command in a fresh process over the whole folder into a fresh output
(`--no-resume`), timed from its start to its exit: interpreter, imports, engine load and, for Ray, its
start-up, task processes and the merge all count, as they do for someone who runs the command.
  plain        realfake score FOLDER --engine E --out OUT
  ray-local    ... --ray            starts a local Ray of this machine's cores in each pass
  ray-running  ... --ray ADDRESS    joins a local Ray that the suite started before the pass (a cluster
                                    already up); each pass is a new Ray job and still starts its own task
                                    processes
Full mode adds ray-running-4-shards (--ray-shards 4: what splitting costs on one machine).
The passes take turns, repeat by repeat, so that a busy machine slows them alike. The suite's Ray is up
only for the passes that join it: plain and ray-local run without a second Ray beside them, as they
would for someone who has none (two Rays on one node contend for the cores and slow each other's start).

Figures (model simple_cnn, 128 px):
  score-ray/e2e@128/simple_cnn/<pass>                  img/s of the whole command (files / wall seconds)
  score-ray/e2e@128/simple_cnn/<pass>_vs_plain         x   (goal: >= 0.9 on one machine)
  score-ray/e2e@128/simple_cnn/<pass>/in_run           img/s as the summary counts it: plain, walking to
                                                       the last row; --ray, from the tasks' submission to
                                                       the merged OUT (task processes starting included)
  score-ray/e2e@128/simple_cnn/<pass>/tasks            img/s inside the tasks, counted as plain's in_run:
                                                       all rows / the time some task was scoring (the union
                                                       of the tasks' scoring spans), without the fixed costs
  score-ray/e2e@128/simple_cnn/<pass>/tasks_vs_plain   x   against plain's in_run
  score-ray/e2e@128/simple_cnn/<pass>/startup_s        s   Ray's start (ray-local) or connection (ray-running)
  score-ray/e2e@128/simple_cnn/<pass>/extra_s          s   wall seconds of the pass minus those of plain

Quick mode: 300 files, 1 repeat after one warm-up pass each (about 2-3 minutes on 2 CPU cores, most of it
Ray starting). Full mode: 2000 files (the whole CIPLAB set when present), 3 repeats. `--copies K` links
every file K times (a folder K times larger, of the same images; figure names get /xK): the fixed costs
of a pass against a run of minutes rather than seconds.

Run alone: python -m realfake.benchmarks.suite_score_ray [--full] [--n-files N] [--repeats R] [--copies K]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from realfake.benchmarks.harness import Figure, figures_table, ratio_figure
from realfake.benchmarks.suite_pipelines import bench_images
from realfake.benchmarks.suite_score import cached_engine, class_folder
from realfake.pipelines.provenance import usable_cores

if importlib.util.find_spec("ray") is None:  # the registry skips a suite whose module does not import
    raise ImportError("needs Ray: pip install 'realfake[cluster]'")

log = logging.getLogger(__name__)

SUITE = "score-ray"
MODEL = "simple_cnn"
IMAGE_SIZE = 128
RUNNING = "{running}"  # stands for the address of the Ray that the suite started
SETTLE_S = 3.0  # after its start, Ray's agents keep a core busy for a moment: a cluster that is up is past that


@dataclass(frozen=True)
class RayBenchConfig:
    n_files: int
    repeats: int
    passes: tuple[tuple[str, tuple[str, ...]], ...]  # (name, extra `realfake score` arguments)
    timeout_s: float = 1800.0


PLAIN = ("plain", ())
RAY_LOCAL = ("ray-local", ("--ray",))
RAY_RUNNING = ("ray-running", ("--ray", RUNNING))
QUICK = RayBenchConfig(n_files=300, repeats=1, passes=(PLAIN, RAY_LOCAL, RAY_RUNNING))
FULL = RayBenchConfig(n_files=2000, repeats=3, passes=(PLAIN, RAY_LOCAL, RAY_RUNNING,
                                                       ("ray-running-4-shards", ("--ray", RUNNING, "--ray-shards", "4"))))


def score_pass(folder: Path, engine: Path, out: Path, extra: Sequence[str], timeout_s: float) -> tuple[float, dict]:
    """(wall seconds, summary) of one `realfake score` command in a fresh process."""
    command = [sys.executable, "-m", "realfake.jobs.cli", "score", str(folder), "--engine", str(engine), "--out",
               str(out), "--no-resume", "--no-progress", "--json", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` exited {result.returncode}: {result.stderr[-2000:]}")
    return seconds, json.loads(result.stdout)


def scoring_time(tasks: Sequence[dict]) -> float:
    """Seconds during which at least one task was scoring: the union of their scoring spans."""
    total, end = 0.0, float("-inf")
    for begin, finish in sorted((t["scoring_from"], t["scoring_to"]) for t in tasks):
        if finish > end:
            total += finish - max(begin, end)
            end = finish
    return total


class RunningRay:
    """The local Ray that the ray-running passes join: started before such a pass, shut down before a pass
    that must run without it. A Ray that the caller of the suite initialised is used as it is, and kept."""

    def __init__(self):
        import ray

        self.ray = ray
        self.callers = ray.is_initialized()
        self.address = ray.get_runtime_context().gcs_address if self.callers else None

    def needed(self, needed: bool) -> str | None:
        """Start or stop the suite's Ray for the next pass; its address when up."""
        if self.callers:
            return self.address
        if needed and self.address is None:
            sigterm = signal.getsignal(signal.SIGTERM)
            self.ray.init(address="local", num_cpus=usable_cores(), include_dashboard=False, log_to_driver=False)
            signal.signal(signal.SIGTERM, sigterm)
            self.address = self.ray.get_runtime_context().gcs_address
            time.sleep(SETTLE_S)
        elif not needed and self.address is not None:
            self.close()
        return self.address

    def close(self) -> None:
        if not self.callers and self.address is not None:
            self.ray.shutdown()
            self.address = None


def run(quick: bool, device: str, *, n_files: int | None = None, repeats: int | None = None,
        copies: int = 1) -> list[Figure]:
    """The suite's figures (CPU only: on a GPU machine the engine still runs on the CPU here)."""
    if str(device).startswith("cuda"):
        log.warning("score-ray measures the CPU path; device %s is not used", device)
    cfg = QUICK if quick else FULL
    cfg = replace(cfg, n_files=n_files or cfg.n_files, repeats=repeats or cfg.repeats)
    files, source = bench_images(cfg.n_files)
    files = files * copies
    folder = class_folder(files)
    engine = cached_engine(MODEL, "aot", "cpu", IMAGE_SIZE)
    log.info("score-ray suite: %d files from %s, engine %s", len(files), source, engine)
    scratch = Path(tempfile.mkdtemp(prefix="realfake-bench-ray-"))
    running = RunningRay()
    walls: dict[str, list[float]] = {name: [] for name, _ in cfg.passes}
    in_run: dict[str, list[float]] = {name: [] for name, _ in cfg.passes}
    tasks: dict[str, list[float]] = {name: [] for name, _ in cfg.passes}
    startup: dict[str, list[float]] = {name: [] for name, _ in cfg.passes}
    try:
        for repeat in range(1 + cfg.repeats):  # the first round warms the page cache and the engine: not kept
            for name, extra in cfg.passes:
                address = running.needed(RUNNING in extra)
                extra = tuple(address if a == RUNNING else a for a in extra)
                seconds, summary = score_pass(folder, engine, scratch / f"{name}.csv", extra, cfg.timeout_s)
                if summary["scored"] != len(files) or summary["errors"]:
                    raise RuntimeError(f"{name}: scored {summary['scored']} of {len(files)} files, "
                                       f"{summary['errors']} errors")
                log.info("%s: %.1f s (in run %.1f s, start-up %s s)", name, seconds, summary["seconds"],
                         summary.get("startup_s", "-"))
                if repeat:
                    walls[name].append(seconds)
                    in_run[name].append(summary["img_per_s"])
                    if "tasks" in summary:
                        tasks[name].append(sum(t["scored"] for t in summary["tasks"]) / scoring_time(summary["tasks"]))
                    startup[name].append(summary.get("startup_s", 0.0))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        running.close()
    prefix = f"{SUITE}/e2e@{IMAGE_SIZE}/{MODEL}" + (f"/x{copies}" if copies > 1 else "")
    params = {"image_size": IMAGE_SIZE, "n_files": len(files), "copies": copies, "data": source, "engine": "aot fp32",
              "cores": usable_cores(), "batch_size": 64, "workers": 2}
    figures: list[Figure] = []
    e2e = {name: Figure.from_samples(SUITE, f"{prefix}/{name}", [len(files) / s for s in walls[name]],
                                     params={**params, "args": " ".join(extra)}) for name, extra in cfg.passes}
    runs = {name: Figure.from_samples(SUITE, f"{prefix}/{name}/in_run", in_run[name], params=params)
            for name, _ in cfg.passes}
    plain_wall = statistics.median(walls["plain"])
    for name, _ in cfg.passes:
        figures.append(e2e[name])
        if name != "plain":
            figures.append(ratio_figure(e2e[name], e2e["plain"], f"{prefix}/{name}_vs_plain"))
        figures.append(runs[name])
        if name != "plain":
            inside = Figure.from_samples(SUITE, f"{prefix}/{name}/tasks", tasks[name], params=params)
            figures += [
                inside, ratio_figure(inside, runs["plain"], f"{prefix}/{name}/tasks_vs_plain"),
                Figure.from_samples(SUITE, f"{prefix}/{name}/startup_s", startup[name], unit="s",
                                    higher_is_better=False, params=params),
                Figure.from_samples(SUITE, f"{prefix}/{name}/extra_s", [s - plain_wall for s in walls[name]], unit="s",
                                    higher_is_better=False, params=params),
            ]
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="realfake score plain vs --ray on this machine.")
    parser.add_argument("--full", action="store_true", help="full mode (more files and repeats, a 4-shard pass)")
    parser.add_argument("--n-files", type=int, default=None, help="files per pass (default: the mode's)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--copies", type=int, default=1, help="link every file this many times (default 1)")
    args = parser.parse_args(argv)
    if args.copies < 1:
        parser.error(f"--copies {args.copies} must be 1 or more")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(figures_table(run(quick=not args.full, device="cpu", n_files=args.n_files, repeats=args.repeats,
                          copies=args.copies)))


if __name__ == "__main__":
    main()
