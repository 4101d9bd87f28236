"""The interface every score output format sits behind: `open_writer` (resume-aware, durable batch by
batch), `read_rows`, `read_existing`, `remove_output`. CSV and JSONL in `lines.py`, Parquet in
`parquet.py`; what they share (columns, `resolve_output`, `errors_path`) in `outputs.py`."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from realfake.jobs.tasks.outputs.common import RESULT_COLUMNS, Existing, OutputMismatch, output_format
from realfake.jobs.tasks.outputs.lines import LINE_FORMATS, LineWriter
from realfake.jobs.tasks.outputs.parquet import ParquetWriter, parts_dir, read_parquet_rows


def open_writer(path: str | os.PathLike, columns: Sequence[str] = RESULT_COLUMNS, *, resume: bool = True):
    """A writer for `path` (format from its suffix) with `.existing` (what it already holds: read back
    and, for CSV/JSONL, with a torn last line cut off), `.write(rows)` (durable on return) and `.close()`.

    resume=False starts a new, empty output in place of any old one.
    """
    path = Path(path)
    fmt = output_format(path)
    if fmt == "parquet":
        return ParquetWriter(path, columns, resume=resume)
    return LineWriter(path, columns, LINE_FORMATS[fmt], resume=resume)


def read_rows(path: str | os.PathLike, columns: Sequence[str] = RESULT_COLUMNS, *,
              fix: str | None = None) -> Iterator[dict]:
    """The rows of an output, typed, streamed; a torn last line is left out (the file is not changed).
    For Parquet, OUT and its uncombined parts. A missing output has no rows. `fix`: what a file that is
    not a score output tells the user to do, where it was given as an input (the default speaks of an
    OUT being resumed)."""
    path = Path(path)
    try:
        fmt = output_format(path)
        if fmt == "parquet":
            yield from read_parquet_rows(path, columns)
            return
        if not path.exists():
            return
        with open(path, "rb") as f:
            for row, _ in LINE_FORMATS[fmt].scan(f, columns, path):
                if row:
                    yield row
    except OutputMismatch as exc:
        if fix is None:
            raise
        raise OutputMismatch(exc.problem, fix) from None


def read_existing(path: str | os.PathLike, columns: Sequence[str] = RESULT_COLUMNS) -> Existing:
    """Paths and engine ids an output holds, without changing it."""
    existing = Existing()
    for row in read_rows(path, columns):
        existing.add(row)
    return existing


def remove_output(path: Path) -> None:
    """Delete an output and what belongs to it (Parquet parts, temporary files)."""
    for victim in (path, path.with_name(path.name + ".tmp")):
        if victim.exists():
            victim.unlink()
    shutil.rmtree(parts_dir(path), ignore_errors=True)
