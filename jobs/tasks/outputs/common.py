"""Score outputs: one writer per format behind one small interface (`open_writer`, `read_rows`), each durable batch by batch and
readable back, so that a run killed at any moment (kill -9, power loss after the last fsync) resumes
with no row lost and none twice.

Formats, chosen by OUT's suffix:
- `.csv` and `.jsonl`: one line per row, appended; each batch is one write followed by flush + fsync.
  A kill in the middle of a write can leave a partial last line: reopening for resume cuts it off
  (the file is truncated after the last complete row) before anything is appended. A file that is
  damaged anywhere else, or that is not a score output at all, is refused, never truncated.
- `.parquet`: Parquet files cannot be appended to, so each batch is a numbered part file
  `OUT.parts/part-NNNNNN.parquet`, written under a temporary name, fsynced and renamed into place
  (a part is there whole or not at all). Closing the writer (the end of a run, also after an error)
  combines OUT and the parts into a new OUT, again written aside and renamed, and deletes the parts.
  OUT's Parquet metadata records the first part number it does not hold yet (`realfake.next_part`), so
  a crash between the rename and the deletion of the parts never counts a part twice. While a run is
  going (or after a crash) the results are OUT plus OUT.parts/: `read_rows` reads both, and the next
  run combines them.

Result columns: path (absolute), size (bytes), mtime (ISO 8601, UTC, microseconds), p_fake, label,
decision, reason, threshold, engine_id. Error rows (`ERROR_COLUMNS`, always CSV) go to `<OUT>.errors.csv`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# label: the engine's call at its threshold; decision: what the service decides, the label or "unknown" where
# the engine's evidence gate says the file no longer carries what the engine reads (reason: why).
RESULT_COLUMNS = ("path", "size", "mtime", "p_fake", "label", "decision", "reason", "threshold", "engine_id")
DECISIONS = ("real", "fake", "unknown")
ERROR_COLUMNS = ("path", "reason", "engine_id")
# How a value read back from text (CSV) is typed; every other column is a string.
TEXT_TYPES = {"size": int, "p_fake": float, "threshold": float}
FORMATS = (".csv", ".jsonl", ".parquet")
# The file a score output directory holds (OUT given without a format suffix, e.g. a job's out/).
DEFAULT_NAME = "scores.csv"
ERRORS_SUFFIX = ".errors.csv"


# What to do about a file given as a score output that is not one (read_rows(..., fix=)).
PASS_A_SCORE_OUTPUT = "pass the --out of a `realfake score` run"


class OutputMismatch(ValueError):
    """An existing file that cannot be resumed: not a score output, or damaged beyond a torn last line.
    `problem` says what is wrong with the file, `fix` what to do (for an OUT about to be written: choose
    another one); the message is both."""

    def __init__(self, problem: str, fix: str = "choose another --out"):
        super().__init__(f"{problem}: {fix}")
        self.problem, self.fix = problem, fix

    def __reduce__(self):  # pickled whole (a Ray task's error reaches its driver so)
        return type(self), (self.problem, self.fix)


@dataclass
class Existing:
    """What an output already holds: the paths in it, the engine ids seen, and its row count."""

    paths: set[str] = field(default_factory=set)
    engine_ids: set[str] = field(default_factory=set)
    rows: int = 0
    repaired_bytes: int = 0  # bytes of a torn last line cut off when it was opened for resume

    def add(self, row: Mapping) -> None:
        self.paths.add(row["path"])
        self.engine_ids.add(row["engine_id"])
        self.rows += 1


def resolve_output(out: str | os.PathLike) -> Path:
    """The results file for OUT: OUT itself when it ends in .csv/.jsonl/.parquet; OUT/scores.csv when
    OUT is a folder or has no suffix (a job's own output directory); any other suffix is an error."""
    out = Path(out)
    if out.suffix.lower() in FORMATS and not out.is_dir():
        return out
    if out.is_dir() or out.suffix == "":
        return out / DEFAULT_NAME
    raise ValueError(f"unknown output format {out.suffix!r} in {out}: end --out with .csv, .parquet or .jsonl")


def errors_path(out: Path) -> Path:
    """`<OUT>.errors.csv`: the errors of OUT's runs (one per format, so two outputs never share one)."""
    return Path(str(out) + ERRORS_SUFFIX)


def output_format(path: Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unknown output format {suffix!r} in {path}: use .csv, .parquet or .jsonl")
    return suffix[1:]


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def typed_row(row: Mapping[str, str], columns: Sequence[str]) -> dict:
    out = {}
    for name in columns:
        value = row[name]
        cast = TEXT_TYPES.get(name)
        out[name] = cast(value) if cast is not None else value
    return out
