"""The suite registry, the runner that turns a suite's Figures into history records, and `run_bench`,
the job function behind `realfake bench run` and the `bench` job kind.

A suite is a module with `run(quick: bool, device: str) -> list[Figure]` (device is "cpu" or
"cuda[:N]", already resolved). Quick mode must finish in under 2 minutes on 2 CPU cores; full mode
measures more models, sizes and repeats. Every suite reports, besides absolute figures, ratios
measured in the same run (`harness.ratio_figure`), which carry over between machines.
"""
from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from realfake.benchmarks.harness import (
    Figure,
    capture_env,
    env_key,
    new_run_id,
    utc_now,
)
from realfake.benchmarks.history import append_records, history_path
from realfake.jobs.service.params import OutputPath

log = logging.getLogger(__name__)

SuiteFn = Callable[..., list[Figure]]

# name -> module holding its `run(quick, device)`; the order is the order of `--suite all`.
SUITE_MODULES: dict[str, str] = {
    "pipelines": "realfake.benchmarks.suite_pipelines",  # decode+resize, train augmentation, per loader
    "train": "realfake.benchmarks.suite_train",  # training step per model, eager vs torch.compile
    "engines": "realfake.benchmarks.suite_engines",  # inference per backend, precision, batch size
    "score": "realfake.benchmarks.suite_score",  # end to end over a folder
    "score-ray": "realfake.benchmarks.suite_score_ray",  # `score` plain vs `score --ray` (needs Ray)
    "ghosts": "realfake.benchmarks.suite_ghosts",  # JPEG ghost maps: PIL reference vs batched torch
    "score-ghosts": "realfake.benchmarks.suite_score_ghosts",  # score with a ghost engine: pil vs dct maps
}
ALL = "all"


class SuiteUnavailable(ValueError):
    """A registered suite whose module cannot be imported (not written yet, or a missing dependency)."""


def load_suite(name: str) -> SuiteFn:
    """The `run` function of suite `name`."""
    if name not in SUITE_MODULES:
        raise ValueError(f"unknown benchmark suite {name!r}: choose {ALL} or one of {', '.join(SUITE_MODULES)}")
    try:
        module = importlib.import_module(SUITE_MODULES[name])
    except ImportError as exc:
        raise SuiteUnavailable(f"suite {name} not available: {exc}") from exc
    run = getattr(module, "run", None)
    if not callable(run):
        raise SuiteUnavailable(f"suite {name} not available: {SUITE_MODULES[name]} has no run(quick, device) function")
    return run


def parse_suite_names(names: Iterable[str]) -> list[str]:
    """["train,score", "pipelines"] -> ["train", "score", "pipelines"] (order kept, duplicates dropped)."""
    out: list[str] = []
    for item in names:
        for name in str(item).split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out or [ALL]


def select_suites(names: Iterable[str]) -> tuple[dict[str, SuiteFn], dict[str, str]]:
    """(name -> run function, name -> why skipped).

    `all` selects every registered suite that imports and skips (with a logged reason) the others; a
    suite named explicitly must be available, else ValueError.
    """
    names = parse_suite_names(names)
    selected: dict[str, SuiteFn] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name == ALL:
            for each in SUITE_MODULES:
                if each in selected or each in names:
                    continue
                try:
                    selected[each] = load_suite(each)
                except SuiteUnavailable as exc:
                    skipped[each] = str(exc)
                    log.warning("%s (skipped)", exc)
        else:
            selected[name] = load_suite(name)
    if not selected:
        raise ValueError("no benchmark suite is available: " + "; ".join(skipped.values()))
    return selected, skipped


def run_suites(selected: Mapping[str, SuiteFn], *, quick: bool, device: str, results_dir: Path | str,
               run_id: str | None = None) -> dict[str, Any]:
    """Run each suite, append its figures to `<results_dir>/history.jsonl` as it finishes, and return a
    JSON-serialisable summary (run id, history path, env, figures)."""
    from realfake.engines.devices import resolve_device

    device = resolve_device(device)
    env = capture_env(device)
    run_id = run_id or new_run_id()
    path = history_path(results_dir)
    log.info("bench run %s (%s) on %s -> %s", run_id, "quick" if quick else "full", env_key(env), path)
    summary_figures: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name, run in selected.items():
        start = time.perf_counter()
        figures = run(quick=quick, device=device)
        for fig in figures:
            if not isinstance(fig, Figure):
                raise TypeError(f"suite {name} returned {type(fig).__name__}, not a Figure")
            if fig.name in seen:
                raise ValueError(f"suite {name} reported figure {fig.name!r} twice: figure names must be unique in a run")
            seen.add(fig.name)
        records = [fig.to_record(run_id=run_id, env=env, date=utc_now(), quick=quick) for fig in figures]
        append_records(path, records)
        log.info("suite %s: %d figures in %.0f s", name, len(figures), time.perf_counter() - start)
        summary_figures += [
            {k: r[k] for k in ("suite", "name", "unit", "higher_is_better", "median", "spread", "repeats", "ratio_to")}
            for r in records
        ]
    return {
        "run_id": run_id,
        "history": str(path),
        "quick": quick,
        "device": device,
        "env_key": env_key(env),
        "env": env,
        "suites": list(selected),
        "figures": summary_figures,
    }


def run_bench(
    suites: list[str] = ["all"],  # noqa: B006 - read only; the job spec validator shows this default
    quick: bool = True,
    out: OutputPath = Path("benchmarks/results"),
    device: str = "auto",
) -> dict:
    """Run benchmark suites and append one record per figure to OUT/history.jsonl.

    Args:
        suites: suite names (pipelines, train, engines, score) or "all": every suite that is
            installed; the others are skipped with the reason.
        quick: quick mode (a few models and repeats, under 2 minutes per suite on 2 CPU cores)
            or full mode (every model, size and backend; for GPUs and nightly jobs).
        out: results folder whose history.jsonl collects every run; give the same folder to every
            run (and to `realfake bench compare`), e.g. the repository's benchmarks/results.
        device: auto (the GPU when torch sees one), cpu or cuda[:N].

    Returns the run id, history path, environment, the suites run and skipped (with the reason),
    and every figure's median and spread.
    """
    selected, skipped = select_suites(suites)
    summary = run_suites(selected, quick=quick, device=device, results_dir=Path(out))
    summary["skipped"] = skipped
    return summary
