"""Regression check: the newest run of a history against a baseline on the same environment.

Baseline, per figure:
- `last-K` (default last-5): the median of that figure's medians over the K most recent earlier runs
  with the same environment key (see `harness.ENV_KEY_FIELDS`) and mode (quick/full); its spread is
  the larger of the runs' typical recorded spread (median IQR) and the IQR of their medians, so
  run-to-run drift counts as noise as well as within-run jitter.
- a file: the newest run in that JSONL file (a saved history or a copy of one run's lines) on the same
  environment and mode; when it holds none on this environment, its newest run in the same mode,
  with a warning (absolute figures from another machine rarely compare; ratio figures do).

Verdict, per figure, with `worse` = the relative change in the bad direction (lower img/s, more s):
- regression:  worse > threshold AND the change exceeds the noise band sqrt(IQR_base^2 + IQR_new^2)
- improvement: the same, in the good direction
- noise:       past the threshold but inside the noise band (not a failure: rerun with more repeats)
- ok:          within the threshold
- new / missing: the figure has no baseline / the baseline has a figure this run lacks
"""
from __future__ import annotations

import fnmatch
import math
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realfake.benchmarks.harness import fmt_value, median_and_spread
from realfake.benchmarks.history import Run, comparable_runs, group_runs, load_records
from realfake.jobs.service.tables import format_table

DEFAULT_BASELINE = "last-5"
DEFAULT_THRESHOLD = 0.10
# Below this many baseline runs the run-to-run drift is unknown (a GPU run may pick other cuDNN
# algorithms, a shared CPU other neighbours): verdicts stand, with a warning.
MIN_BASELINE_RUNS = 3
# Params that the harness calibrates per run (not choices of the suite): a difference is not a change.
CALIBRATED_PARAMS = frozenset({"steps_per_repeat"})

REGRESSION, IMPROVEMENT, NOISE, OK, NEW, MISSING = "regression", "improvement", "noise", "ok", "new", "missing"


def parse_threshold(text: str | float) -> float:
    """"10%" -> 0.10; a bare number is a fraction ("0.1"). Must lie in (0, 1)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"threshold {text!r} is not a number: write a percentage such as 10% or a fraction such as 0.1") from None
    if not 0 < value < 1:
        raise ValueError(f"threshold {text!r} is out of range: use a percentage between 0% and 100%, e.g. 10%")
    return value


def parse_baseline(text: str) -> int | Path:
    """"last-K" -> K (an int >= 1); anything else is the path of a JSONL file that must exist."""
    match = re.fullmatch(r"last-(\d+)", text.strip())
    if match:
        k = int(match.group(1))
        if k < 1:
            raise ValueError(f"baseline {text!r} asks for no runs: use last-1 or more")
        return k
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"baseline file {path} does not exist: pass a history .jsonl file or last-K (e.g. last-5)")
    return path


@dataclass(frozen=True)
class Baseline:
    median: float
    spread: float
    runs: int  # how many runs it summarizes
    params: dict[str, Any] = field(default_factory=dict)  # of the newest of them


@dataclass(frozen=True)
class FigureComparison:
    name: str
    unit: str
    higher_is_better: bool
    baseline: Baseline | None
    new: float | None
    new_spread: float | None
    verdict: str
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """new / baseline (> 1 is better for img/s and x, worse for s)."""
        if self.baseline is None or self.new is None or self.baseline.median == 0:
            return None
        return self.new / self.baseline.median

    @property
    def noise(self) -> float | None:
        """The noise band as a fraction of the baseline."""
        if self.baseline is None or self.new_spread is None or self.baseline.median == 0:
            return None
        return math.hypot(self.baseline.spread, self.new_spread) / abs(self.baseline.median)


@dataclass
class CompareResult:
    new_run: Run
    threshold: float
    baseline_desc: str  # where the baseline came from, for the report
    rows: list[FigureComparison]
    warnings: list[str] = field(default_factory=list)

    @property
    def has_baseline(self) -> bool:
        """Whether at least one figure of the new run has a baseline to compare with."""
        return any(row.baseline is not None and row.new is not None for row in self.rows)

    @property
    def regressions(self) -> list[FigureComparison]:
        return [row for row in self.rows if row.verdict == REGRESSION]

    @property
    def status(self) -> str:
        if not self.has_baseline:
            return "no-baseline"
        return REGRESSION if self.regressions else OK


def judge(baseline: float, baseline_spread: float, new: float, new_spread: float, *,
          higher_is_better: bool, threshold: float) -> str:
    """The verdict for one figure (see the module docstring)."""
    if baseline == 0:
        return OK if new == 0 else (IMPROVEMENT if (new > 0) == higher_is_better else REGRESSION)
    change = (new - baseline) / abs(baseline)
    worse = -change if higher_is_better else change
    noise = math.hypot(baseline_spread, new_spread) / abs(baseline)
    if abs(worse) <= threshold:
        return OK
    if abs(worse) <= noise:
        return NOISE
    return REGRESSION if worse > 0 else IMPROVEMENT


def baseline_from_runs(runs: Iterable[Run]) -> dict[str, Baseline]:
    """Per figure name, the summary of that figure over `runs` (oldest first)."""
    per_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for name, record in run.figures.items():
            per_name.setdefault(name, []).append(record)
    baselines = {}
    for name, records in per_name.items():
        medians = [float(r["median"]) for r in records]
        typical_spread = statistics.median(float(r["spread"]) for r in records)
        between_runs = median_and_spread(medians)[1]
        baselines[name] = Baseline(median=statistics.median(medians), spread=max(typical_spread, between_runs),
                                   runs=len(records), params=dict(records[-1].get("params") or {}))
    return baselines


def compare_runs(new_run: Run, baselines: Mapping[str, Baseline], threshold: float) -> list[FigureComparison]:
    rows = []
    for name, record in new_run.figures.items():
        unit, better_up = record["unit"], bool(record["higher_is_better"])
        new, new_spread = float(record["median"]), float(record["spread"])
        base = baselines.get(name)
        if base is None:
            rows.append(FigureComparison(name, unit, better_up, None, new, new_spread, NEW))
            continue
        verdict = judge(base.median, base.spread, new, new_spread, higher_is_better=better_up, threshold=threshold)
        changed = sorted(
            key for key in set(base.params) | set(record.get("params") or {})
            if key not in CALIBRATED_PARAMS and base.params.get(key) != (record.get("params") or {}).get(key)
        )
        note = f"params differ: {', '.join(changed)}" if changed else ""
        rows.append(FigureComparison(name, unit, better_up, base, new, new_spread, verdict, note))
    for name in sorted(set(baselines) - set(new_run.figures)):
        base = baselines[name]
        rows.append(FigureComparison(name, "", True, base, None, None, MISSING, "not measured in this run"))
    return rows


def compare_history(records: Iterable[Mapping[str, Any]], *, baseline: int | Path = 5,
                    threshold: float = DEFAULT_THRESHOLD, run_id: str | None = None,
                    pattern: str = "*") -> CompareResult:
    """Compare run `run_id` (default: the newest) of `records` against `baseline`: last-K (an int) or a
    file, on the figures whose name matches the glob `pattern` (e.g. "*_vs_*": the ratio figures)."""
    records = list(records)
    runs = group_runs(r for r in records if fnmatch.fnmatchcase(r["name"], pattern))
    if records and not runs:
        raise ValueError(f"no figure in the history matches {pattern!r}: widen --figure (e.g. 'train/*')")
    if not runs:
        raise ValueError("the benchmark history holds no runs: run `realfake bench run` first")
    if run_id is None:
        new_run = runs[-1]
    else:
        matches = [r for r in runs if r.run_id == run_id]
        if not matches:
            raise ValueError(f"run {run_id!r} is not in the history: pick one of {', '.join(r.run_id for r in runs[-5:])}")
        new_run = matches[0]

    warnings: list[str] = []
    if isinstance(baseline, int):
        earlier = [r for r in comparable_runs(runs, new_run) if (r.date, r.run_id) < (new_run.date, new_run.run_id)]
        chosen = earlier[-baseline:]
        desc = (f"median of the last {len(chosen)} {new_run.mode} run(s) on this environment "
                f"(asked for last-{baseline})" if chosen else "")
    else:
        file_records = [r for r in load_records(baseline) if fnmatch.fnmatchcase(r["name"], pattern)]
        file_runs = [r for r in group_runs(file_records) if r.run_id != new_run.run_id]
        same_env = comparable_runs(file_runs, new_run)
        chosen = same_env[-1:]
        if not chosen:
            chosen = [r for r in file_runs if r.quick == new_run.quick][-1:]
            if chosen:
                warnings.append(f"baseline run {chosen[0].run_id} ran on another environment "
                                f"({chosen[0].env_key}); absolute figures may not compare, ratio figures do")
        desc = f"run {chosen[0].run_id} of {baseline}" if chosen else ""

    if 0 < len(chosen) < MIN_BASELINE_RUNS:
        warnings.append(f"the baseline holds {len(chosen)} run(s): run-to-run drift shows only from "
                        f"{MIN_BASELINE_RUNS} runs on (use last-K), so a verdict near the noise band may be noise")
    baselines = baseline_from_runs(chosen)
    result = CompareResult(new_run=new_run, threshold=threshold, baseline_desc=desc,
                           rows=compare_runs(new_run, baselines, threshold), warnings=warnings)
    return result


def format_comparison(result: CompareResult) -> str:
    """The report `realfake bench compare` prints: a header, the table, the verdict line."""
    run = result.new_run
    lines = [f"run {run.run_id} ({run.mode}, {run.date}) on {run.env_key}"]
    lines += [f"warning: {w}" for w in result.warnings]
    if not result.baseline_desc:
        lines.append(
            f"no baseline yet: no earlier {run.mode} run on this environment to compare with; "
            f"this run becomes the baseline of the next compare"
        )
        return "\n".join(lines)
    lines.append(f"baseline: {result.baseline_desc}; threshold {100 * result.threshold:g}% beyond the noise band")
    rows = []
    for row in result.rows:
        base = row.baseline
        ratio = f"{row.ratio:.3f}" if row.ratio is not None else "-"
        noise = f"{100 * row.noise:.1f}%" if row.noise is not None else "-"
        unit = row.unit + ("" if row.higher_is_better or not row.unit else " (lower is better)")
        rows.append([row.name, unit, fmt_value(base.median if base else None), fmt_value(row.new),
                     ratio, noise, row.verdict.upper() if row.verdict == REGRESSION else row.verdict, row.note])
    lines.append(format_table(["figure", "unit", "baseline", "new", "new/base", "noise", "verdict", "note"],
                              rows, align_right=(2, 3, 4, 5)))
    regressions = result.regressions
    if regressions:
        lines.append(f"FAIL: {len(regressions)} figure(s) regressed past {100 * result.threshold:g}%: "
                     + ", ".join(r.name for r in regressions))
    elif not result.has_baseline:
        lines.append("no baseline yet: no figure of this run was measured in the baseline run(s)")
    else:
        lines.append(f"OK: no figure regressed past {100 * result.threshold:g}%")
    return "\n".join(lines)
