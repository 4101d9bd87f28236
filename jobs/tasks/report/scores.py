"""The rows a report page is built from: a score output and its errors file, read back, with each
row's decision and the run's summary."""
from __future__ import annotations

import datetime as dt
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from realfake.jobs.tasks.outputs.common import (
    DECISIONS,
    ERROR_COLUMNS,
    PASS_A_SCORE_OUTPUT,
    RESULT_COLUMNS,
    errors_path,
    resolve_output,
)
from realfake.jobs.tasks.outputs.parquet import parts_dir
from realfake.jobs.tasks.outputs.writers import read_rows


@dataclass
class ScoreRun:
    """What the page is built from: the rows of a score output and of its errors file."""

    scores_file: Path
    rows: list[dict]
    errors: list[dict]
    errors_file: Path | None  # None: OUT has no errors file
    written: dt.datetime | None  # last change of OUT or its errors file (local time)


def read_scores(scores: str | os.PathLike) -> ScoreRun:
    """The rows of a score output (a file, or a job's output folder holding scores.csv) and of its
    errors file. A file that is not a score output is refused with the reason (`read_rows`)."""
    scores_file = resolve_output(Path(scores)).absolute()
    if not scores_file.exists() and not parts_dir(scores_file).is_dir():
        raise FileNotFoundError(f"{scores_file} does not exist: {PASS_A_SCORE_OUTPUT} "
                                "(a results file, or a job's output folder)")
    if scores_file.exists() and scores_file.stat().st_size == 0:
        raise ValueError(f"{scores_file} is empty: {PASS_A_SCORE_OUTPUT}")
    rows = list(read_rows(scores_file, RESULT_COLUMNS, fix=PASS_A_SCORE_OUTPUT))
    err_file = errors_path(scores_file)
    errors = list(read_rows(err_file, ERROR_COLUMNS, fix=PASS_A_SCORE_OUTPUT)) if err_file.exists() else []
    stamps = [p.stat().st_mtime for p in (scores_file, err_file) if p.exists()]
    written = dt.datetime.fromtimestamp(max(stamps)).astimezone() if stamps else None
    return ScoreRun(scores_file=scores_file, rows=rows, errors=errors,
                    errors_file=err_file if err_file.exists() else None, written=written)


def decision_of(row: dict) -> str:
    """The row's decision (real, fake or unknown)."""
    return str(row["decision"])


def finite_or_none(value) -> float | None:
    """p_fake as a number the page can hold (JSON has no NaN): None when missing or not finite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def ordered_decisions(found) -> list[str]:
    """The decisions to show: real, fake, unknown first (those present), then any other value."""
    found = set(found)
    return [d for d in DECISIONS if d in found] + sorted(found - set(DECISIONS))


def summarize(run: ScoreRun) -> dict:
    """The figures of the page's summary (also returned by run_report)."""
    decisions = Counter(decision_of(row) for row in run.rows)
    p_fake = sorted(p for p in (finite_or_none(row.get("p_fake")) for row in run.rows) if p is not None)
    thresholds = sorted({finite_or_none(row.get("threshold")) for row in run.rows} - {None})
    engine_ids = sorted({str(r["engine_id"]) for r in run.rows + run.errors if r.get("engine_id")})
    return {
        "scores": str(run.scores_file),
        "errors_file": str(run.errors_file) if run.errors_file else None,
        "written": run.written.isoformat(timespec="seconds") if run.written else None,
        "files": len(run.rows) + len(run.errors),
        "scored": len(run.rows),
        "errors": len(run.errors),
        "decisions": {d: decisions[d] for d in ordered_decisions(decisions)},
        "thresholds": thresholds,
        "engine_ids": engine_ids,
        "p_fake_median": statistics.median(p_fake) if p_fake else None,
        "no_p_fake": len(run.rows) - len(p_fake),
    }
