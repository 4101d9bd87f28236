"""CSV and JSONL score outputs: one line per row, appended; each batch is one write followed by flush +
fsync. A kill in the middle of a write can leave a partial last line: reopening for resume cuts it off
(the file is truncated after the last complete row) before anything is appended. A file that is damaged
anywhere else, or that is not a score output at all, is refused, never truncated."""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from realfake.jobs.tasks.outputs.common import Existing, OutputMismatch, fsync_dir, typed_row


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
                                 f"({','.join(columns)})")
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
                row = typed_row(dict(zip(columns, record, strict=True)), columns)
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
                                         f"output ({','.join(columns)})")
                return
            first = False
            offset += len(raw)
            yield row, offset

    def is_torn_row(self, tail):
        return b"\n" not in tail and tail.startswith(b'{"path": ')


LINE_FORMATS = {"csv": _Csv(), "jsonl": _Jsonl()}


class LineWriter:
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
            raise OutputMismatch(f"{self.path} is damaged at byte {good_end} (not just a partial last line)",
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
