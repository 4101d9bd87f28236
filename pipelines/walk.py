"""Streaming folder walk for scoring: every image file under some folders, one at a time.

- Memory stays flat: only the listing of the directories on the current path is held (each sorted by
  name, so two walks of the same tree yield the same order), never the whole tree.
- Extensions are matched case-insensitively against `IMAGE_EXTENSIONS` (IMG_1.JPG counts).
- Symbolic links are followed, each directory is walked once: directories are remembered by
  (st_dev, st_ino), so a link back to an ancestor (a loop) or a second link to a directory already
  walked is passed over with a warning -- its files are scored once, under the first path met.
- Nothing is skipped in silence: a directory that cannot be listed, a broken link with an image name
  and an image name on something that is not a regular file (a FIFO would block the decoder) come out
  as entries with an `error`, which scoring writes to its errors file.
- Sharding (`--shard i/n`) is by a hash of the path relative to the folder it was found under, so a
  file keeps its shard when files are added or removed elsewhere, and every machine that mounts the
  folder elsewhere agrees.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class Found(NamedTuple):
    """One entry of a walk.

    path: absolute, as reached (a symlinked directory keeps the link's name in the path);
    rel: the path relative to the folder it was found under, with "/" separators (what sharding hashes);
    error: None for an image file; else why this path cannot be scored (an unlistable directory, ...).
    """

    path: str
    rel: str
    error: str | None = None


class DirEntryInfo(NamedTuple):
    """What the walk needs of one directory entry (symlinks followed)."""

    name: str
    kind: str  # "dir", "file", "broken-link" or "other"


def has_image_extension(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    return os.path.splitext(name)[1].lower() in extensions


def _kind(entry: os.DirEntry) -> str:
    try:
        if entry.is_dir():  # follows symlinks
            return "dir"
        if entry.is_file():
            return "file"
        os.stat(entry.path)  # neither: a FIFO, socket, device... or a link to nothing
        return "other"
    except FileNotFoundError:
        return "broken-link"
    except OSError:
        return "other"


def list_dir(path: str) -> list[DirEntryInfo]:
    """The entries of one directory, sorted by name. Raises OSError when it cannot be listed."""
    with os.scandir(path) as it:
        entries = [DirEntryInfo(e.name, _kind(e)) for e in it]
    entries.sort()
    return entries


def dir_key(path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of a directory, links followed: its identity for loop detection."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def walk_images(folders: Iterable[str | os.PathLike], *, recursive: bool = True,
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Iterator[Found]:
    """Every image file under `folders` (a path given that is a file is taken as it is), in a
    deterministic order: the folders in the order given, each depth-first with entries sorted by name.

    A folder that does not exist raises FileNotFoundError before anything is yielded. `recursive=False`
    reads only the folders' own files.
    """
    extensions = tuple(e.lower() for e in extensions)
    roots = [os.path.abspath(os.fspath(f)) for f in folders]
    for root in roots:
        if not os.path.exists(root):
            raise FileNotFoundError(f"{root} does not exist: pass existing folders to score")
    visited: set[tuple[int, int]] = set()
    for root in roots:
        if not os.path.isdir(root):
            yield Found(root, os.path.basename(root))  # a file named explicitly: scored whatever its name
            continue
        yield from _walk_root(root, recursive, extensions, visited)


def _walk_root(root: str, recursive: bool, extensions: tuple[str, ...],
               visited: set[tuple[int, int]]) -> Iterator[Found]:
    try:
        key = dir_key(root)
    except OSError as exc:
        yield Found(root, "", f"unreadable directory: {_reason(exc)}")
        return
    if key in visited:
        log.warning("%s was walked already (given twice, or under another folder given): passed over", root)
        return
    visited.add(key)
    # One frame per directory on the current path: (its path, its path relative to root, its key,
    # an iterator over its sorted listing). Explicit, so a deep tree cannot hit the recursion limit.
    stack: list[tuple[str, str, tuple[int, int], Iterator[DirEntryInfo]]] = []
    try:
        stack.append((root, "", key, iter(list_dir(root))))
    except OSError as exc:
        yield Found(root, "", f"unreadable directory: {_reason(exc)}")
        return
    while stack:
        dir_path, dir_rel, _, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        path = os.path.join(dir_path, entry.name)
        rel = f"{dir_rel}/{entry.name}" if dir_rel else entry.name
        if entry.kind == "dir":
            if not recursive:
                continue
            try:
                key = dir_key(path)
            except OSError as exc:
                yield Found(path, rel, f"unreadable directory: {_reason(exc)}")
                continue
            if key in visited:
                on_path = any(frame[2] == key for frame in stack)
                log.warning("%s: %s, passed over", path,
                            "symlink loop (points back to a folder above it)" if on_path
                            else "folder already walked under another path")
                continue
            visited.add(key)
            try:
                listing = list_dir(path)
            except OSError as exc:
                yield Found(path, rel, f"unreadable directory: {_reason(exc)}")
                continue
            stack.append((path, rel, key, iter(listing)))
        elif os.path.splitext(entry.name)[1].lower() in extensions:
            if entry.kind == "file":
                yield Found(path, rel)
            elif entry.kind == "broken-link":
                yield Found(path, rel, "unreadable: broken symbolic link")
            else:
                yield Found(path, rel, "unreadable: not a regular file")


# --------------------------------------------------------------------------- sharding

def parse_shard(text: str | None) -> tuple[int, int] | None:
    """"i/n" -> (i, n) with 0 <= i < n; None -> None (no sharding)."""
    if text is None or str(text).strip() == "":
        return None
    index, sep, count = str(text).partition("/")
    try:
        if not sep:
            raise ValueError
        i, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"--shard {text!r} is not I/N: write e.g. --shard 0/4 for the first of 4 shards") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r} is out of range: use 0 <= I < N, e.g. --shard 0/{max(n, 2)}")
    return i, n


def shard_of(rel: str, num_shards: int) -> int:
    """Stable shard of a relative path: blake2b of its UTF-8 bytes, modulo `num_shards`."""
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def select_shard(found: Iterable[Found], shard: tuple[int, int] | None) -> Iterator[Found]:
    """The entries of shard (i, n): a fixed 1/n of them, the same whoever walks."""
    if shard is None:
        yield from found
        return
    index, count = shard
    for entry in found:
        if shard_of(entry.rel, count) == index:
            yield entry
