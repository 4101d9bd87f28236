"""Score outputs: one writer per format behind one small interface, each durable batch by batch and
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
threshold, engine_id. Error rows (`ERROR_COLUMNS`, always CSV) go to `<OUT>.errors.csv`.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

RESULT_COLUMNS = ("path", "size", "mtime", "p_fake", "label", "threshold", "engine_id")
ERROR_COLUMNS = ("path", "reason", "engine_id")
# How a value read back from text (CSV) is typed; every other column is a string.
_TYPES = {"size": int, "p_fake": float, "threshold": float}
FORMATS = (".csv", ".jsonl", ".parquet")
# The file a score output directory holds (OUT given without a format suffix, e.g. a job's out/).
DEFAULT_NAME = "scores.csv"
ERRORS_SUFFIX = ".errors.csv"
PARTS_SUFFIX = ".parts"
NEXT_PART_KEY = b"realfake.next_part"
_PART = re.compile(r"^part-(\d{6,})\.parquet$")
# Rows per row group when parts are combined (Parquet readers like big row groups, not one per batch).
ROW_GROUP_ROWS = 65_536


class OutputMismatch(ValueError):
    """An existing file that cannot be resumed: not a score output, or damaged beyond a torn last line."""


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


def _typed(row: Mapping[str, str], columns: Sequence[str]) -> dict:
    out = {}
    for name in columns:
        value = row[name]
        cast = _TYPES.get(name)
        out[name] = cast(value) if cast is not None else value
    return out


# --------------------------------------------------------------------------- line formats (CSV, JSONL)

class _LineFormat:
    """Encoding of rows as lines, and the scan that reads them back and finds where the good part ends."""

    name = ""

    def header(self, columns: Sequence[str]) -> bytes:
        return b""

    def encode(self, rows: Iterable[Mapping], columns: Sequence[str]) -> bytes:
        raise NotImplementedError

    def scan(self, f, columns: Sequence[str], path: Path) -> Iterator[tuple[dict, int]]:
        """(row, byte offset just after it) for each complete row, after ({}, end of header); stops at
        the first that is not complete."""
        raise NotImplementedError

    def is_torn_row(self, tail: bytes) -> bool:
        """Whether `tail` (the bytes after the last complete row) can be what a kill in the middle of
        writing one row leaves: the start of one row, with no line end after it."""
        raise NotImplementedError


class _Csv(_LineFormat):
    name = "csv"

    def header(self, columns):
        return self.encode([dict(zip(columns, columns, strict=True))], columns)

    def encode(self, rows, columns):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="raise")
        writer.writerows(rows)
        # surrogateescape: a file name that is not valid UTF-8 is written back as the bytes it had.
        return buffer.getvalue().encode("utf-8", "surrogateescape")

    def scan(self, f, columns, path):
        consumed, line_complete = [0], [True]

        def lines():
            # csv.reader pulls exactly the lines of one record before yielding it, so `consumed` is the
            # offset of the end of the record just read (quoted fields may hold line breaks).
            for raw in iter(f.readline, b""):
                consumed[0] += len(raw)
                line_complete[0] = raw.endswith(b"\n")
                yield raw.decode("utf-8", "surrogateescape")

        reader = csv.reader(lines(), strict=True)
        try:
            header = next(reader)
        except (StopIteration, csv.Error):
            return
        if not line_complete[0]:
            return
        if tuple(header) != tuple(columns):
            raise OutputMismatch(f"{path} has columns {','.join(header)}, not those of a score output "
                                 f"({','.join(columns)}): choose another --out")
        yield {}, consumed[0]  # the header alone
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error:
                return
            if not line_complete[0] or len(record) != len(columns):
                return
            try:
                row = _typed(dict(zip(columns, record, strict=True)), columns)
            except ValueError:
                return
            yield row, consumed[0]


    def is_torn_row(self, tail):
        if tail.endswith(b"\n"):
            return False
        if b"\n" not in tail:
            return True
        # A quoted field may hold a line break (a file name with one): the tail must still be one record.
        try:
            records = list(csv.reader(io.StringIO(tail.decode("utf-8", "surrogateescape"), newline="")))
        except csv.Error:
            return False
        return len(records) <= 1


class _Jsonl(_LineFormat):
    name = "jsonl"

    def encode(self, rows, columns):
        # ensure_ascii keeps a non-UTF-8 file name (surrogate escapes) representable; json.loads gives it back.
        return "".join(json.dumps({c: row[c] for c in columns}) + "\n" for row in rows).encode("ascii")

    def scan(self, f, columns, path):
        offset = 0
        yield {}, 0
        first = True
        for raw in iter(f.readline, b""):
            if not raw.endswith(b"\n"):
                return
            try:
                row = json.loads(raw)
            except ValueError:
                return
            if not isinstance(row, dict):
                return
            if tuple(row) != tuple(columns):
                if first:
                    raise OutputMismatch(f"{path} holds rows with keys {','.join(row)}, not those of a score "
                                         f"output ({','.join(columns)}): choose another --out")
                return
            first = False
            offset += len(raw)
            yield row, offset

    def is_torn_row(self, tail):
        return b"\n" not in tail and tail.startswith(b'{"path": ')


_LINE_FORMATS = {"csv": _Csv(), "jsonl": _Jsonl()}


class _LineWriter:
    """Appends rows to a CSV or JSONL file: one write + flush + fsync per batch."""

    def __init__(self, path: Path, columns: Sequence[str], fmt: _LineFormat, *, resume: bool):
        self.path, self.columns, self.fmt = Path(path), tuple(columns), fmt
        self.existing = Existing()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists() and self.path.stat().st_size > 0:
            self._load_and_repair()
            self._file = open(self.path, "ab")
        else:
            self._start_new()

    def _start_new(self) -> None:
        # A fresh file (header only) replaces any old one in one rename: never half of each.
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(self.fmt.header(self.columns))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self._file = open(self.path, "ab")

    def _load_and_repair(self) -> None:
        size = self.path.stat().st_size
        good_end = 0
        with open(self.path, "rb") as f:
            for row, end in self.fmt.scan(f, self.columns, self.path):
                if row:
                    self.existing.add(row)
                good_end = end
        if good_end == size:
            return
        with open(self.path, "rb") as f:
            f.seek(good_end)
            tail = f.read()
        # The CSV header is written whole (renamed into place), so a CSV without one is not ours.
        if (good_end == 0 and self.fmt.name == "csv") or not self.fmt.is_torn_row(tail):
            # Complete lines that do not parse: the file was edited or damaged, not torn by a kill.
            raise OutputMismatch(f"{self.path} is damaged at byte {good_end} (not just a partial last line): "
                                 "repair or remove it, or choose another --out")
        with open(self.path, "r+b") as f:  # a torn last line from a kill mid-write: cut it off
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
        self.existing.repaired_bytes = size - good_end

    def write(self, rows: Sequence[Mapping]) -> None:
        """Append `rows`; they are on disk when this returns."""
        if not rows:
            return
        self._file.write(self.fmt.encode(rows, self.columns))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- Parquet (atomic parts)

def _arrow_schema(columns: Sequence[str]):
    import pyarrow as pa

    types = {"path": pa.string(), "size": pa.int64(), "mtime": pa.string(), "p_fake": pa.float64(),
             "label": pa.string(), "threshold": pa.float64(), "engine_id": pa.string(), "reason": pa.string()}
    return pa.schema([(c, types[c]) for c in columns])


def parts_dir(path: Path) -> Path:
    return Path(str(path) + PARTS_SUFFIX)


def _next_part(path: Path) -> int:
    """The first part number that `path` (a combined file) does not hold."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    return int(metadata.get(NEXT_PART_KEY, b"0"))


def _parquet_sources(path: Path) -> tuple[int, list[tuple[int, Path]], list[tuple[int, Path]]]:
    """(next part number, parts not yet combined into `path`, parts already in it) -- both sorted."""
    merged_until = _next_part(path) if path.exists() else 0
    pending, stale = [], []
    directory = parts_dir(path)
    if directory.is_dir():
        for entry in sorted(directory.iterdir()):
            match = _PART.match(entry.name)
            if match:
                number = int(match.group(1))
                (stale if number < merged_until else pending).append((number, entry))
    return merged_until, pending, stale


def _check_schema(path: Path, columns: Sequence[str]) -> None:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises ArrowInvalid for a file that is not Parquet
        raise OutputMismatch(f"{path} is not a readable Parquet file ({exc}): remove it or choose another --out") from exc
    if tuple(names) != tuple(columns):
        raise OutputMismatch(f"{path} has columns {','.join(names)}, not those of a score output "
                             f"({','.join(columns)}): choose another --out")


def _iter_parquet_rows(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
        yield from batch.to_pylist()


class _ParquetWriter:
    """Numbered part files, renamed into place; combined into OUT on close (see the module docstring)."""

    def __init__(self, path: Path, columns: Sequence[str], *, resume: bool):
        self.path, self.columns = Path(path), tuple(columns)
        self.schema = _arrow_schema(columns)
        self.parts = parts_dir(self.path)
        self.existing = Existing()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        if self._tmp.exists():
            self._tmp.unlink()  # a combine killed before its rename
        if not resume:
            if self.path.exists():
                self.path.unlink()
            shutil.rmtree(self.parts, ignore_errors=True)
        if self.path.exists():
            _check_schema(self.path, self.columns)
        merged_until, pending, stale = _parquet_sources(self.path)
        for _, part in stale:  # combined already; a crash came before their deletion
            part.unlink()
        self.parts.mkdir(exist_ok=True)
        for leftover in self.parts.glob("*.tmp"):
            leftover.unlink()
        sources = ([self.path] if self.path.exists() else []) + [p for _, p in pending]
        for source in sources:
            _check_schema(source, self.columns)
            for row in _iter_parquet_rows(source):
                self.existing.add(row)
        self.next_part = max([merged_until] + [n + 1 for n, _ in pending])
        self._closed = False

    def write(self, rows: Sequence[Mapping]) -> None:
        """Write `rows` as the next part file; it is on disk, whole, when this returns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        table = pa.Table.from_pylist([{c: row[c] for c in self.columns} for row in rows], schema=self.schema)
        final = self.parts / f"part-{self.next_part:06d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.parts)
        self.next_part += 1

    def close(self) -> None:
        """Combine OUT and the parts into a new OUT (streamed, row group by row group)."""
        if self._closed:
            return
        self._closed = True
        import pyarrow as pa
        import pyarrow.parquet as pq

        _, pending, _ = _parquet_sources(self.path)
        if self.path.exists() and not pending:
            shutil.rmtree(self.parts, ignore_errors=True)
            return
        schema = self.schema.with_metadata({NEXT_PART_KEY: str(self.next_part).encode()})
        sources = ([self.path] if self.path.exists() else []) + [p for _, p in pending]
        buffered: list[pa.RecordBatch] = []
        n_buffered = 0
        with open(self._tmp, "wb") as f:
            with pq.ParquetWriter(f, schema) as writer:
                for source in sources:
                    for batch in pq.ParquetFile(source).iter_batches(batch_size=ROW_GROUP_ROWS):
                        buffered.append(batch)
                        n_buffered += batch.num_rows
                        if n_buffered >= ROW_GROUP_ROWS:
                            writer.write_table(pa.Table.from_batches(buffered, schema=self.schema))
                            buffered, n_buffered = [], 0
                if buffered or not sources:
                    writer.write_table(pa.Table.from_batches(buffered, schema=self.schema))
            f.flush()
            os.fsync(f.fileno())
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        shutil.rmtree(self.parts, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- the interface

def open_writer(path: str | os.PathLike, columns: Sequence[str] = RESULT_COLUMNS, *, resume: bool = True):
    """A writer for `path` (format from its suffix) with `.existing` (what it already holds: read back
    and, for CSV/JSONL, with a torn last line cut off), `.write(rows)` (durable on return) and `.close()`.

    resume=False starts a new, empty output in place of any old one.
    """
    path = Path(path)
    fmt = output_format(path)
    if fmt == "parquet":
        return _ParquetWriter(path, columns, resume=resume)
    return _LineWriter(path, columns, _LINE_FORMATS[fmt], resume=resume)


def read_rows(path: str | os.PathLike, columns: Sequence[str] = RESULT_COLUMNS) -> Iterator[dict]:
    """The rows of an output, typed, streamed; a torn last line is left out (the file is not changed).
    For Parquet, OUT and its uncombined parts. A missing output has no rows."""
    path = Path(path)
    fmt = output_format(path)
    if fmt == "parquet":
        if path.exists():
            _check_schema(path, columns)
        _, pending, _ = _parquet_sources(path)
        for source in ([path] if path.exists() else []) + [p for _, p in pending]:
            _check_schema(source, columns)
            yield from _iter_parquet_rows(source)
        return
    if not path.exists():
        return
    with open(path, "rb") as f:
        for row, _ in _LINE_FORMATS[fmt].scan(f, columns, path):
            if row:
                yield row


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
