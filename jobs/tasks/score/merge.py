"""`realfake score merge OUT PART...`: join the outputs of `--shard i/n` runs into one."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from realfake.jobs.service.params import InputPath, OutputPath
from realfake.jobs.tasks.outputs.common import ERROR_COLUMNS, RESULT_COLUMNS, errors_path, resolve_output
from realfake.jobs.tasks.outputs.parquet import parts_dir
from realfake.jobs.tasks.outputs.writers import open_writer, read_rows, remove_output

# Rows per write when merging shard outputs.
MERGE_BATCH_ROWS = 10_000


def merge_outputs(out: OutputPath, shard_outputs: list[InputPath]) -> dict:
    """Join the outputs of `realfake score --shard i/n` runs into OUT (any format, from its suffix), and
    their errors files into OUT's errors file. All must hold the same engine's rows and no path may
    appear twice (shards are disjoint). OUT is written aside and renamed: it is replaced whole.
    """
    out_file = resolve_output(out)
    sources = [resolve_output(s) for s in shard_outputs]
    if not sources:
        raise ValueError("nothing to merge: pass the shard outputs after OUT")
    for source in sources:
        if not source.exists():
            raise FileNotFoundError(f"{source} does not exist: pass the --out of each shard's run")
        if source.resolve() == out_file.resolve():
            raise ValueError(f"{source} is both an input and OUT: merge into a new file")
    seen: dict[str, int] = {}  # path -> index of the source that holds it
    engine_ids: dict[str, Path] = {}

    def check(row: dict, k: int, what: Path) -> None:
        engine_ids.setdefault(row["engine_id"], what)
        if len(engine_ids) > 1:
            a, b = list(engine_ids.items())[:2]
            raise ValueError(f"{a[1]} holds scores of engine {a[0]} but {b[1]} of engine {b[0]}: "
                             "merge only the shards of one engine")
        if row["path"] in seen:
            raise ValueError(f"{row['path']} is in both {sources[seen[row['path']]]} and {what}: the shard outputs "
                             "overlap (the same shard twice, or shards of different --shard I/N?)")
        seen[row["path"]] = k

    def merge(columns, files: list[tuple[int, Path]], target: Path) -> int:
        tmp = target.with_name(f".{target.name}.merging{target.suffix}")
        remove_output(tmp)
        n = 0
        writer = open_writer(tmp, columns, resume=False)
        try:
            batch = []
            for k, path in files:
                for row in read_rows(path, columns, fix="merge only the outputs of `realfake score` runs"):
                    check(row, k, path)
                    batch.append(row)
                    if len(batch) >= MERGE_BATCH_ROWS:
                        writer.write(batch)
                        n += len(batch)
                        batch = []
            writer.write(batch)
            n += len(batch)
            writer.close()
        except BaseException:
            writer.close()
            remove_output(tmp)
            raise
        # OUT is replaced whole: parts left by an old Parquet run there would count as rows of the new one.
        shutil.rmtree(parts_dir(target), ignore_errors=True)
        os.replace(tmp, target)
        return n

    out_file.parent.mkdir(parents=True, exist_ok=True)
    rows = merge(RESULT_COLUMNS, list(enumerate(sources)), out_file)
    error_sources = [(k, errors_path(s)) for k, s in enumerate(sources) if errors_path(s).exists()]
    errors = merge(ERROR_COLUMNS, error_sources, errors_path(out_file))
    return {"out": str(out_file), "errors_file": str(errors_path(out_file)), "inputs": [str(s) for s in sources],
            "rows": rows, "errors": errors, "engine_id": next(iter(engine_ids), None)}
