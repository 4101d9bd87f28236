"""Parquet score outputs. Parquet files cannot be appended to, so each batch is a numbered part file
`OUT.parts/part-NNNNNN.parquet`, written under a temporary name, fsynced and renamed into place (a part is
there whole or not at all). Closing the writer combines OUT and the parts into a new OUT, again written
aside and renamed, and deletes the parts. OUT's Parquet metadata records the first part number it does
not hold yet (`realfake.next_part`), so a crash between the rename and the deletion of the parts never
counts a part twice. While a run is going (or after a crash) the results are OUT plus OUT.parts/:
`read_parquet_rows` reads both, and the next run combines them.

pyarrow is imported inside the functions: CSV and JSONL runs never pay for it.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from realfake.jobs.tasks.outputs.common import Existing, OutputMismatch, fsync_dir

PARTS_SUFFIX = ".parts"
NEXT_PART_KEY = b"realfake.next_part"
_PART = re.compile(r"^part-(\d{6,})\.parquet$")
# Rows per row group when parts are combined (Parquet readers like big row groups, not one per batch).
ROW_GROUP_ROWS = 65_536


def _arrow_schema(columns: Sequence[str]):
    import pyarrow as pa

    types = {"path": pa.string(), "size": pa.int64(), "mtime": pa.string(), "p_fake": pa.float64(),
             "label": pa.string(), "decision": pa.string(), "threshold": pa.float64(), "engine_id": pa.string(),
             "reason": pa.string()}
    return pa.schema([(c, types[c]) for c in columns])


def parts_dir(path: Path) -> Path:
    return Path(str(path) + PARTS_SUFFIX)


def _next_part(path: Path) -> int:
    """The first part number that `path` (a combined file) does not hold."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    return int(metadata.get(NEXT_PART_KEY, b"0"))


def parquet_sources(path: Path) -> tuple[int, list[tuple[int, Path]], list[tuple[int, Path]]]:
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
        raise OutputMismatch(f"{path} is not a readable Parquet file ({exc})", "remove it or choose another --out") from exc
    if tuple(names) != tuple(columns):
        raise OutputMismatch(f"{path} has columns {','.join(names)}, not those of a score output "
                             f"({','.join(columns)})")


def _iter_parquet_rows(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
        yield from batch.to_pylist()


class ParquetWriter:
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
        merged_until, pending, stale = parquet_sources(self.path)
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

        _, pending, _ = parquet_sources(self.path)
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


def read_parquet_rows(path: Path, columns: Sequence[str]) -> Iterator[dict]:
    """The rows of a Parquet output: OUT and its uncombined parts."""
    if path.exists():
        _check_schema(path, columns)
    _, pending, _ = parquet_sources(path)
    for source in ([path] if path.exists() else []) + [p for _, p in pending]:
        _check_schema(source, columns)
        yield from _iter_parquet_rows(source)
