"""Heat maps the page shows on demand: an index CSV (path, heatmap) mapping scored files to images."""
from __future__ import annotations

import base64
import csv
import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

HEATMAPS_SUFFIX = ".heatmaps"  # OUT + this: the folder of heat maps found without --heatmaps
HEATMAP_INDEX = "index.csv"
HEATMAP_INDEX_COLUMNS = ("path", "heatmap")
HEATMAP_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
# Heat maps are embedded while their files add up to at most this many bytes, copied beside the page above.
HEATMAP_EMBED_MAX_BYTES = 20 * 2**20


def default_heatmaps(scores_file: Path) -> Path:
    """Where heat maps are looked for when none are named: OUT.heatmaps/ beside OUT."""
    return Path(str(scores_file) + HEATMAPS_SUFFIX)


def read_heatmap_index(index: str | os.PathLike) -> dict[str, Path]:
    """The heat-map mapping: scored file -> heat-map image.

    `index` is a CSV file, or a folder holding `index.csv`, with a header and (at least) the columns
    `path` (the scored file, as in the score output) and `heatmap` (a PNG or JPEG; a relative path is
    relative to the index file's folder). Other columns are ignored. Relative `path` values are
    relative to the index file's folder too.
    """
    index = Path(index)
    if index.is_dir():
        index = index / HEATMAP_INDEX
    if not index.is_file():
        raise FileNotFoundError(f"heat-map index {index} does not exist: pass a CSV with columns path,heatmap "
                                f"(or a folder holding {HEATMAP_INDEX})")
    base = index.parent
    mapping: dict[str, Path] = {}
    with open(index, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(HEATMAP_INDEX_COLUMNS) <= set(reader.fieldnames):
            raise ValueError(f"{index} has columns {','.join(reader.fieldnames or [])}: a heat-map index needs "
                             f"a header with {','.join(HEATMAP_INDEX_COLUMNS)}")
        for line, entry in enumerate(reader, start=2):
            if not entry.get("path") or not entry.get("heatmap"):
                raise ValueError(f"{index} line {line}: empty path or heatmap: every row names a scored file "
                                 "and its heat-map image")
            mapping[os.path.normpath(base / entry["path"])] = Path(os.path.normpath(base / entry["heatmap"]))
    return mapping


def heatmap_type(path: Path) -> str | None:
    """The MIME type of a heat-map file from its first bytes (PNG or JPEG), or None."""
    with open(path, "rb") as f:
        head = f.read(8)
    return next((mime for magic, mime in HEATMAP_TYPES.items() if head.startswith(magic)), None)


def heatmap_urls(mapping: dict[str, Path], paths: Sequence[str], heat_dir: Path, link_prefix: str,
                 max_embed_bytes: int = HEATMAP_EMBED_MAX_BYTES) -> tuple[dict[str, str], list[str], bool]:
    """(scored path -> URL of its heat map, problems, embedded?) for the `paths` that have one.

    The heat maps are embedded as data: URIs while they add up to at most `max_embed_bytes`, else
    copied into `heat_dir` and linked as `link_prefix` + name. A listed heat map that is missing or
    not a PNG/JPEG is left out and named in the problems, as are index entries for files the scores
    do not hold.
    """
    problems: list[str] = []
    wanted = {os.path.normpath(p): p for p in paths}
    found: dict[str, tuple[Path, str]] = {}
    for key, image in mapping.items():
        if key not in wanted:
            continue
        try:
            mime = heatmap_type(image)
        except OSError as exc:
            problems.append(f"{image}: {exc.strerror or exc}")
            continue
        if mime is None:
            problems.append(f"{image}: not a PNG or JPEG")
            continue
        found[wanted[key]] = (image, mime)
    unmatched = [key for key in mapping if key not in wanted]
    if unmatched:
        problems.append(f"{len(unmatched)} heat maps are for files not in the scores, e.g. {unmatched[0]}")
    embed = sum(image.stat().st_size for image, _ in found.values()) <= max_embed_bytes
    urls: dict[str, str] = {}
    if not embed:
        shutil.rmtree(heat_dir, ignore_errors=True)  # heat maps of an earlier report of this page
        heat_dir.mkdir(parents=True)
    for path, (image, mime) in found.items():
        if embed:
            urls[path] = f"data:{mime};base64," + base64.b64encode(image.read_bytes()).decode("ascii")
        else:
            name = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:20] + image.suffix.lower()
            shutil.copyfile(image, heat_dir / name)
            urls[path] = link_prefix + name
    return urls, problems, embed
