"""Which files a scoring run scores: the walk of its folders, the run's shard of them, minus what OUT
already holds. What cannot be scored is reported on the way, with its reason, never skipped in silence.
Also the checks of a run's options, made before anything loads (here, or by a `--ray` driver that
never loads torch)."""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from realfake.pipelines.images import sniff_problem
from realfake.pipelines.walk import select_shard, walk_images


@dataclass
class WalkCounts:
    """Files met in this shard (image names; unlistable folders are not files) and those OUT holds."""

    files: int = 0
    skipped: int = 0


def check_folders(folders: list[str]) -> None:
    """Refuse a scoring run without folders, or with one that does not exist, before anything loads."""
    if not folders:
        raise ValueError("no folder to score: pass at least one FOLDER")
    for folder in folders:
        if not os.path.exists(folder):
            raise FileNotFoundError(f"{folder} does not exist: pass existing folders to score")


def mtime_iso(st_mtime: float) -> str:
    """A file's mtime as ISO 8601 in UTC with microseconds (what the mtime column holds)."""
    return dt.datetime.fromtimestamp(st_mtime, tz=dt.timezone.utc).isoformat(timespec="microseconds")


def files_to_score(folders: Sequence[str], *, recursive: bool, shard: tuple[int, int] | None, done: set[str],
                   on_error: Callable[[str, str], None], counts: WalkCounts, utf8_names: bool = False,
                   check_headers: bool = False) -> Iterator[tuple[str, int, str]]:
    """(path, size, mtime) of each file still to score, in walk order.

    `done` holds the paths OUT already has; every path met is added to it, so a file named twice (on its
    own and inside a folder given too) is scored once. `utf8_names`: file names must encode as UTF-8
    (Parquet needs it). `check_headers`: screen each file's header first (files DALI should not see,
    see `images.sniff_problem`).
    """
    for found in select_shard(walk_images(folders, recursive=recursive), shard):
        is_file = found.error is None or not found.error.startswith("unreadable directory")
        counts.files += is_file
        if found.path in done:
            counts.skipped += is_file
            continue
        done.add(found.path)
        if found.error is not None:
            on_error(found.path, found.error)
            continue
        try:
            st = os.stat(found.path)
        except OSError as exc:
            on_error(found.path, f"unreadable: {exc.strerror or exc}")
            continue
        if st.st_size == 0:
            on_error(found.path, "empty file")
            continue
        if utf8_names:
            try:
                found.path.encode("utf-8")
            except UnicodeEncodeError:
                on_error(found.path, "file name is not valid UTF-8, which Parquet needs: rename it, or score "
                                     "into .csv or .jsonl")
                continue
        if check_headers:
            problem = sniff_problem(found.path)
            if problem is not None:
                on_error(found.path, problem)
                continue
        yield found.path, st.st_size, mtime_iso(st.st_mtime)
