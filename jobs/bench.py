"""`realfake bench run` as a job function: run benchmark suites and append their figures to a history.

The queue runs it like any other kind (`realfake submit bench ...`, or a nightly schedule); give the
spec an explicit `out`, so that every run appends to the same history rather than to the job's own
folder.
"""
from __future__ import annotations

import logging
from pathlib import Path

from realfake.jobs.params import OutputPath

log = logging.getLogger(__name__)


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
    from realfake.benchmarks.suites import run_suites, select_suites

    selected, skipped = select_suites(suites)
    summary = run_suites(selected, quick=quick, device=device, results_dir=Path(out))
    summary["skipped"] = skipped
    return summary
