"""Thumbnails of the scored files: small JPEGs embedded in the page as data URIs, or files beside it."""
from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from realfake.pipelines.images import InvalidImageError, load_rgb
from realfake.pipelines.provenance import usable_cores
from tqdm import tqdm

# Thumbnails are embedded in the page up to this many rows, linked from <report>_files/thumbs/ above it:
# at a few KB a thumbnail as base64 the embedded page stays well under 50 MB (docs/report.md).
EMBED_MAX_ROWS = 10_000
THUMB_SIZE = 80
THUMB_QUALITY = 70
THUMBNAIL_MODES = ("auto", "embed", "link", "none")


def make_thumbnail(path: str | os.PathLike, size: int = THUMB_SIZE, quality: int = THUMB_QUALITY) -> bytes:
    """A JPEG of the image at `path` whose longer side is `size` px (EXIF orientation applied; JPEGs
    decoded at a reduced DCT scale, see images.load_rgb). Raises InvalidImageError (a ValueError)
    for a file that cannot be decoded, with the reason."""
    img = load_rgb(path, draft_size=(size, size))
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _thumbnail_or_reason(path: str, size: int, quality: int) -> tuple[bytes | None, str | None]:
    try:
        return make_thumbnail(path, size, quality), None
    except InvalidImageError as exc:
        return None, exc.reason
    except Exception as exc:  # one bad file must not fail the report: it gets a placeholder with the reason
        return None, f"{type(exc).__name__}: {exc}"


def thumbnail_name(row: dict) -> str:
    """File name of a row's linked thumbnail: a hash of path, size and mtime, so that a report made
    again over a grown output reuses the thumbnails of files that did not change."""
    key = "\0".join(str(row.get(k, "")) for k in ("path", "size", "mtime"))
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".jpg"


def make_thumbnails(rows: Sequence[dict], mode: str, thumbs_dir: Path | None, *, size: int = THUMB_SIZE,
                    quality: int = THUMB_QUALITY, workers: int = 0, progress: bool = False,
                    link_prefix: str = "") -> list[tuple[str | None, str | None]]:
    """(URL, None) or (None, reason it could not be made) per row, in order.

    mode "embed": the URL is a data: URI. "link": the thumbnail is written to `thumbs_dir` (kept when
    already there) and the URL is `link_prefix` + its name; files of `thumbs_dir` no row uses are
    removed. "none": (None, None) for every row. PIL decodes and encodes with the GIL released, so
    `workers` threads (0: the usable cores) make them side by side.
    """
    if mode == "none":
        return [(None, None)] * len(rows)
    if mode not in ("embed", "link"):
        raise ValueError(f"unknown thumbnail mode {mode!r}: choose one of {', '.join(THUMBNAIL_MODES)}")
    if mode == "link":
        if thumbs_dir is None:
            raise ValueError("linked thumbnails need a folder to go to")
        thumbs_dir.mkdir(parents=True, exist_ok=True)
        names = [thumbnail_name(row) for row in rows]
        wanted = set(names)
        for old in thumbs_dir.glob("*.jpg"):
            if old.name not in wanted:
                old.unlink()

    def one(index: int) -> tuple[str | None, str | None]:
        path = str(rows[index]["path"])
        if mode == "link":
            target = thumbs_dir / names[index]
            if target.exists():
                return link_prefix + names[index], None
        data, reason = _thumbnail_or_reason(path, size, quality)
        if data is None:
            return None, reason
        if mode == "embed":
            return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii"), None
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return link_prefix + names[index], None

    workers = workers or usable_cores()
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(rows), desc="thumbnails", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        results = []
        for result in pool.map(one, range(len(rows))):
            results.append(result)
            bar.update(1)
    return results

