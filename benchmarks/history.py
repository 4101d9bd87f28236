"""Benchmark history: one JSON line per figure in `<results dir>/history.jsonl`, appended by every run.

A line is `Figure.to_record(...)`: run_id, suite, name, unit, higher_is_better, median, spread,
repeats, samples, params, ratio_to, quick, env, date. Lines are only ever appended, so the file is the
whole history; `group_runs` puts the lines of one run back together.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realfake.benchmarks.harness import env_key

HISTORY_NAME = "history.jsonl"
REQUIRED_KEYS = ("run_id", "name", "unit", "higher_is_better", "median", "spread", "env", "date")


def history_path(results_dir: Path | str) -> Path:
    return Path(results_dir) / HISTORY_NAME


def append_records(path: Path | str, records: Iterable[Mapping[str, Any]]) -> int:
    """Append `records` as JSON lines (creating the folder and file); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(record, sort_keys=True) + "\n" for record in records]
    # One write call: concurrent runs (a nightly job and a manual run) interleave whole batches of lines.
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(lines))
    return len(lines)


def load_records(path: Path | str) -> list[dict[str, Any]]:
    """Every record of a history (or baseline) file, in file order.

    Raises FileNotFoundError for a missing file and ValueError naming the line for a malformed one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no benchmark history at {path}: run `realfake bench run --out {path.parent}` first, "
            f"or pass the results folder that holds {HISTORY_NAME}"
        )
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number} is not valid JSON ({exc.msg}): fix or delete that line") from None
            missing = [k for k in REQUIRED_KEYS if not isinstance(record, dict) or k not in record]
            if missing:
                raise ValueError(
                    f"{path}:{number} is not a benchmark record (missing {', '.join(missing)}): "
                    f"fix or delete that line"
                )
            records.append(record)
    return records


@dataclass
class Run:
    """The records of one `bench run`, by figure name."""

    run_id: str
    date: str  # of its first record (UTC ISO 8601, so strings sort by time)
    env_key: str
    quick: bool
    env: dict[str, Any]
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


def group_runs(records: Iterable[Mapping[str, Any]]) -> list[Run]:
    """Records grouped by run id, oldest run first (by date, then run id)."""
    runs: dict[str, Run] = {}
    for record in records:
        run = runs.get(record["run_id"])
        if run is None:
            env = dict(record["env"])
            run = runs[record["run_id"]] = Run(run_id=record["run_id"], date=record["date"], env_key=env_key(env),
                                               quick=bool(record.get("quick", False)), env=env)
        run.date = min(run.date, record["date"])
        run.figures[record["name"]] = dict(record)
    return sorted(runs.values(), key=lambda r: (r.date, r.run_id))


def comparable_runs(runs: Iterable[Run], like: Run) -> list[Run]:
    """The runs, other than `like` itself, on the same environment key and in the same mode (quick/full)."""
    return [r for r in runs if r.run_id != like.run_id and r.env_key == like.env_key and r.quick == like.quick]
