"""The shared benchmark harness: timing with warm-up and repeats, the Figure type, environment capture,
tables.

Every suite (`suite_pipelines`, `suite_train`, `suite_engines`, `suite_score`) measures with
`measure_throughput` (or times something itself and calls `Figure.from_samples`) and returns a list of
`Figure`s; `realfake.benchmarks.suites.run_suites` stamps them with the run id, the environment and the
date and appends them to the history (one JSON line per figure, see `Figure.to_record`).

Statistics: a figure's value is the *median* of its repeats and its *spread* the interquartile range
(IQR, numpy's linear percentiles) of the same samples, both in the figure's unit. The median and IQR
ignore one slow repeat (a page fault, another process waking up), which the mean and standard
deviation would not.

This module does not import torch at its top, so `realfake bench compare` and `plot` stay fast.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from realfake.jobs.service.tables import format_table
from realfake.pipelines.provenance import dist_version, usable_cores

# The fields of a record's env that must agree for two runs to be compared in absolute terms:
# the same CPU model and usable core count, the same GPU (or none), the same torch, and the same
# device the suites ran on (a CPU run and a GPU run on one machine are different environments).
# torchvision/DALI versions, the git commit and the hostname are recorded but do not split history:
# a new commit is exactly what a compare is meant to judge.
ENV_KEY_FIELDS = ("cpu", "cores", "gpu", "torch", "device")

UNIT_RATIO = "x"


@dataclass
class Figure:
    """One measured figure of one run: the median and spread of `samples`, in `unit`.

    name: "<suite>/<what>@<size>/<variant>", e.g. "train/simple_cnn@128/compiled"; unique in a run.
    ratio_to: for a ratio figure (unit "x"), the name of the figure it divides by.
    params: what was measured (batch size, image size, steps per repeat, ...); recorded, not compared.
    """

    suite: str
    name: str
    unit: str
    higher_is_better: bool
    median: float
    spread: float
    repeats: int
    samples: list[float] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    ratio_to: str | None = None

    @classmethod
    def from_samples(cls, suite: str, name: str, samples: Sequence[float], *, unit: str = "img/s",
                     higher_is_better: bool = True, params: Mapping[str, Any] | None = None) -> Figure:
        median, spread = median_and_spread(samples)
        return cls(suite=suite, name=name, unit=unit, higher_is_better=higher_is_better, median=median,
                   spread=spread, repeats=len(samples), samples=[float(s) for s in samples],
                   params=dict(params or {}))

    def to_record(self, *, run_id: str, env: Mapping[str, Any], date: str, quick: bool) -> dict[str, Any]:
        """The JSON line of this figure in the history."""
        record = {"run_id": run_id, **asdict(self), "quick": quick, "env": dict(env), "date": date}
        return record


def median_and_spread(samples: Sequence[float]) -> tuple[float, float]:
    """(median, interquartile range) of `samples`; the spread of a single sample is 0."""
    values = [float(s) for s in samples]
    if not values:
        raise ValueError("cannot summarize an empty list of samples: measure at least one repeat")
    if len(values) == 1:
        return values[0], 0.0
    import numpy as np

    q1, q3 = np.percentile(values, [25, 75])
    return statistics.median(values), float(q3 - q1)


def ratio_figure(numerator: Figure, denominator: Figure, name: str, *,
                 higher_is_better: bool = True) -> Figure:
    """numerator / denominator as a figure of its own (unit "x"), e.g. compiled / eager images/s.

    The two figures were measured in the same run, so the ratio carries over between machines where
    the absolute figures do not. Its value is the ratio of the medians; its spread adds the two
    relative spreads in quadrature (the usual propagation for a quotient).
    """
    if denominator.median == 0:
        raise ValueError(f"cannot divide {numerator.name} by {denominator.name}: its median is 0")
    value = numerator.median / denominator.median
    rel_num = numerator.spread / numerator.median if numerator.median else 0.0
    rel_den = denominator.spread / denominator.median
    return Figure(
        suite=numerator.suite, name=name, unit=UNIT_RATIO, higher_is_better=higher_is_better,
        median=value, spread=abs(value) * math.hypot(rel_num, rel_den),
        repeats=min(numerator.repeats, denominator.repeats), samples=[],
        params={"numerator": numerator.name, "denominator": denominator.name}, ratio_to=denominator.name,
    )


class Measurement(NamedTuple):
    samples: list[float]  # items/s of each repeat
    steps_per_repeat: int


def measure_throughput(step: Callable[[], object], *, items_per_step: int, repeats: int, warmup: int = 2,
                       min_repeat_s: float = 0.5, max_steps_per_repeat: int = 100,
                       sync: Callable[[], None] | None = None) -> Measurement:
    """Items per second of `step`, once per repeat (compare timm's benchmark.py).

    `warmup` untimed calls first (allocator, cuDNN autotuning, lazy initialisation); the last of them
    sizes the repeats so that each lasts about `min_repeat_s` (at least 1, at most
    `max_steps_per_repeat` steps): fast steps get enough calls to beat the clock's resolution, slow
    ones stay bounded. `sync` waits for queued device work (torch.cuda.synchronize) so that the clock
    measures the work and not its launch.
    """
    if repeats < 1 or warmup < 1 or items_per_step < 1:
        raise ValueError(f"measure_throughput needs repeats, warmup and items_per_step >= 1, got "
                         f"{repeats}, {warmup}, {items_per_step}")
    sync = sync or (lambda: None)
    last_step_s = 0.0
    for _ in range(warmup):
        start = time.perf_counter()
        step()
        sync()
        last_step_s = time.perf_counter() - start
    steps = max(1, min(max_steps_per_repeat, math.ceil(min_repeat_s / max(last_step_s, 1e-9))))
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        samples.append(items_per_step * steps / (time.perf_counter() - start))
    return Measurement(samples, steps)


def sync_for(device: str) -> Callable[[], None] | None:
    """The call that waits for `device`'s queued work (None on CPU, where work runs synchronously)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return lambda: torch.cuda.synchronize(device)


def nvjpeg_rate(paths: Sequence[str], *, batch: int, image_size: int, seconds: float, warmup: int = 3,
                device: str = "cuda") -> float:
    """img/s of torchvision.io.decode_jpeg on `device` (one batch of `batch` of the files, repeated to
    fill it when there are fewer) plus an antialiased resize of each image to `image_size`: the
    reference GPU decoder outside the product, for the GPU scripts (gpu_check.py, gpu_score.py)."""
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg, read_file

    data = [read_file(p) for p in paths[:batch]]
    data = (data * (batch // len(data) + 1))[:batch]
    sync = sync_for(device) or (lambda: None)

    def step():
        for image in decode_jpeg(data, device=device):  # sizes may differ: resize one by one, as a loader would
            F.interpolate(image[None].float(), size=(image_size, image_size), mode="bilinear", antialias=True)

    for _ in range(warmup):
        step()
    sync()
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        done += batch
    sync()
    return done / (time.perf_counter() - start)


# --- environment ---------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_state(repo: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding this package, or (None, None) outside a git checkout."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return commit.stdout.strip(), dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def capture_env(device: str) -> dict[str, Any]:
    """What a figure depends on besides the code: hardware, library versions, commit."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        gpu = torch.cuda.get_device_name(index)
    commit, dirty = git_state()
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "gpu": gpu,
        "device": "cuda" if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "torchvision": dist_version("torchvision"),
        "dali": dist_version("nvidia-dali"),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
        "git_dirty": dirty,
        "hostname": socket.gethostname(),
    }


def env_key(env: Mapping[str, Any]) -> str:
    """The part of an environment that must match for a baseline: see ENV_KEY_FIELDS."""
    cpu, cores, gpu, torch_version, device = (env.get(k) for k in ENV_KEY_FIELDS)
    return f"{cpu} x{cores} | {gpu or 'no GPU'} | torch {torch_version} | {device}"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    # Sortable by time; the random tail keeps two runs started in the same second apart.
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


# --- tables --------------------------------------------------------------------------------------

def fmt_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def figures_table(figures: Iterable[Figure | Mapping[str, Any]]) -> str:
    """figure | median | spread (IQR) | spread % | unit | repeats, for Figures or their records."""
    rows = []
    for fig in figures:
        f = asdict(fig) if isinstance(fig, Figure) else fig
        median, spread = f["median"], f["spread"]
        pct = f"{100 * spread / abs(median):.1f}%" if median else "-"
        unit = f["unit"] + ("" if f["higher_is_better"] else " (lower is better)")
        rows.append([f["name"], fmt_value(median), fmt_value(spread), pct, unit, f["repeats"]])
    return format_table(["figure", "median", "IQR", "IQR %", "unit", "n"], rows, align_right=(1, 2, 3, 5))
