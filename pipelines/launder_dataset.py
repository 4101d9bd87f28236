"""`realfake data launder`: a laundered copy of a data set, to score engines on it end to end.

SRC is either
- a prepared DATA_DIR (its manifest.csv; `split` picks one split): every file of the manifest is
  laundered, and OUT/manifest.csv lists the laundered files with the SAME labels, classes, difficulty
  groups and split assignment (new sha256, width and height), so `realfake evaluate-scores` and every
  other manifest reader work on OUT as on DATA_DIR; or
- an image folder in a layout `data prepare` takes (the archive's real_and_fake_face/training_real +
  training_fake, or real/ and fake/ class folders): every file under the class folders is laundered;
  prepare OUT's copy afterwards (the split then follows the new contents).

Files keep their path relative to the data set root, under OUT/<root folder name>/, and their names
(labels, CIPLAB's easy/mid/hard prefixes and edited-region codes live in the names); only a file
that was not a JPEG gets the extension .jpg, since it now holds one. Each file gets `transform`, or
with "random" its own `launder.draw(seed, 0, index)`, index = its position in the sorted listing of
the whole source (independent of `split`, so a split's files get the draws they get in a full copy).

Files that cannot be laundered (not an image, truncated, too small for the crop, a name clash) are
listed in OUT/rejected.csv with the reason and left out of OUT/manifest.csv; OUT/launder.csv gives
each laundered file's source and transform; OUT/launder.json the settings and counts.

A rerun into the same OUT resumes: files are written whole (a temporary file, then renamed), so any
file present is complete and is kept; only missing files are laundered. OUT must hold a copy made with
the same source, listing, transform, seed, split and Pillow version, or nothing: anything else is
refused, so no copy ever mixes two settings. Files are laundered by a pool of processes.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from PIL import Image
from realfake.pipelines import launder
from realfake.pipelines.images import InvalidImageError
from realfake.pipelines.manifest import (
    MANIFEST_NAME,
    REJECTED_NAME,
    SPLITS,
    ManifestRow,
    read_manifest,
    write_manifest,
)

MARKER_NAME = "launder.json"
RECORD_NAME = "launder.csv"
_JPEG_EXTENSIONS = (".jpg", ".jpeg")
_TMP_SUFFIX = ".launder-tmp"  # a file being written; one left by a killed run is removed on the rerun

LAUNDERED_DIR = "laundered"  # DATA_DIR/laundered/<split>/<transform>/: a prepared data set's laundered splits


@dataclass(frozen=True)
class _Item:
    """One source file and where its laundered copy goes."""

    index: int  # position in the sorted listing of the whole source
    source: str
    rel: str  # output path relative to OUT
    spec: str  # the transform applied to this file
    row: ManifestRow | None  # the source manifest row (prepared DATA_DIR only)


@dataclass
class LaunderSummary:
    """What `launder_dataset` did; `settings` + counts are the content of launder.json."""

    source: str
    source_kind: str  # data_dir | folder
    out: str
    root: str  # OUT/<root folder name>: where the laundered files are
    transform: str
    seed: int
    split: str | None
    files: int  # source files considered (the split's, for a DATA_DIR with split)
    laundered: int  # written by this run
    kept: int  # already in OUT from an earlier run
    rejected: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    manifest_path: str | None = None  # OUT/manifest.csv, for a DATA_DIR source
    split_counts: dict[str, int] = field(default_factory=dict)
    rejected_path: str = ""
    record_path: str = ""


# --------------------------------------------------------------------------------------------------
# Listing the source


def _listing_from_manifest(data_dir: Path) -> tuple[list[tuple[str, ManifestRow | None]], Path]:
    rows = read_manifest(data_dir)
    if not rows:
        raise ValueError(f"{data_dir / MANIFEST_NAME} lists no files: prepare the data set again")
    root = Path(os.path.commonpath([str(Path(r.path).parent) for r in rows]))
    return [(r.path, r) for r in sorted(rows, key=lambda r: r.path)], root


def _listing_from_folder(folder: Path) -> tuple[list[tuple[str, ManifestRow | None]], Path]:
    from realfake.pipelines.prepare import find_class_dirs

    root, class_dirs, _ = find_class_dirs(folder)
    # Every file under a class folder, hidden ones included: junk is listed as rejected, as by prepare.
    files = sorted(str(p) for d in class_dirs.values() for p in d.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"the class folders of {root} hold no files: nothing to launder")
    return [(f, None) for f in files], root


def _out_rel(source: str, root: Path) -> str:
    rel = Path(source).relative_to(root)
    if rel.suffix.lower() not in _JPEG_EXTENSIONS:
        rel = rel.with_suffix(".jpg")  # a PNG (or BMP, WebP) comes out as a JPEG
    return (Path(root.name or "images") / rel).as_posix()


def _listing_hash(listing: list[tuple[str, ManifestRow | None]]) -> str:
    digest = hashlib.sha256()
    for source, row in listing:
        digest.update(f"{source}\0{row.sha256 if row else ''}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# The work of one file (runs in a pool process)


def _launder_one(task: tuple[str, str, str]) -> tuple[str | None, str, int, int, bool]:
    """(reason or None, sha256, width, height, kept) for one (source, out path, spec)."""
    source, out_path, spec = task
    out = Path(out_path)
    kept = out.is_file()  # files are renamed into place whole: one that is there is complete
    try:
        if kept:
            data = out.read_bytes()
        else:
            data = launder.launder_file(source, spec)
    except InvalidImageError as exc:
        return exc.reason, "", 0, 0, kept
    except ValueError as exc:  # a transform the image cannot take (too small for the crop)
        return str(exc).removeprefix(f"{source}: "), "", 0, 0, kept
    except OSError as exc:
        if kept:
            return f"{out} from an earlier run is unreadable ({exc.strerror or exc}): remove it", "", 0, 0, kept
        return f"cannot be written as JPEG: {exc}", "", 0, 0, kept
    if not kept:
        tmp = out.with_name(f".{out.name}.{os.getpid()}{_TMP_SUFFIX}")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            return f"unwritable: {out}: {exc.strerror or exc}", "", 0, 0, kept
    try:
        with Image.open(io.BytesIO(data)) as img:  # the header only
            width, height = img.size
    except (OSError, SyntaxError, ValueError) as exc:  # only a file changed by someone else since
        return f"{out} is not a readable JPEG ({exc}): remove it and rerun", "", 0, 0, kept
    return None, hashlib.sha256(data).hexdigest(), width, height, kept


# --------------------------------------------------------------------------------------------------


def _settings(summary: LaunderSummary, listing_hash: str) -> dict:
    return {"source": summary.source, "source_kind": summary.source_kind, "transform": summary.transform,
            "seed": summary.seed if summary.transform == launder.RANDOM else None,  # a fixed spec ignores it
            "split": summary.split, "listing_sha256": listing_hash, "pillow": metadata.version("pillow")}


def _check_out(out: Path, settings: dict, source_root: Path) -> None:
    """Refuse an OUT that overlaps the source or holds anything but a copy made with `settings`."""
    if out.is_relative_to(source_root) or source_root.is_relative_to(out):
        raise ValueError(f"--out {out} overlaps the source data set {source_root}: choose a folder outside it "
                         "(laundered files must never mix with, or replace, the originals)")
    if not out.exists() or not any(out.iterdir()):
        return
    marker = out / MARKER_NAME
    if not marker.is_file():
        raise ValueError(f"{out} is not empty and was not written by `data launder`: choose another --out")
    try:
        earlier = json.loads(marker.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{marker} is unreadable ({exc}): choose another --out or remove {out}") from None
    changed = [f"{k} {earlier.get(k)!r} -> {v!r}" for k, v in settings.items() if earlier.get(k) != v]
    if changed:
        raise ValueError(f"{out} holds a laundered copy made with other settings ({'; '.join(changed)}): "
                         "choose another --out, or remove it to start over")


def _write_csv(path: Path, fieldnames: list[str], rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _write_marker(out: Path, settings: dict, summary: LaunderSummary | None) -> None:
    content = {"settings": settings, "complete": summary is not None}
    if summary is not None:
        content.update(files=summary.files, laundered=summary.laundered + summary.kept,
                       rejected=len(summary.rejected), split_counts=summary.split_counts)
    tmp = out / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / MARKER_NAME)


def launder_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    transform: str | launder.Transform,
    *,
    seed: int = 0,
    split: str | None = None,
    workers: int = 2,
    progress: bool = True,
) -> LaunderSummary:
    """Write a laundered copy of SRC (a prepared DATA_DIR or an image folder) into OUT; see the module
    docstring. `transform` is a spec (`launder.parse`) or "random" (one `launder.draw` per file)."""
    from tqdm import tqdm

    spec = transform.spec if isinstance(transform, launder.Transform) else str(transform).strip()
    fixed = None if spec == launder.RANDOM else launder.parse(spec)
    if seed < 0:
        raise ValueError(f"--seed {seed} must be >= 0")
    if workers < 1:
        raise ValueError(f"--workers {workers} must be >= 1")
    src_path = Path(src).expanduser()
    if not src_path.exists():
        raise ValueError(f"{src_path} not found: give a prepared DATA_DIR or an image folder")
    src_path = src_path.resolve()
    if src_path.is_file():
        raise ValueError(f"{src_path} is a file: give a prepared DATA_DIR (with {MANIFEST_NAME}) or an image "
                         "folder (unzip an archive first)")
    if (src_path / MANIFEST_NAME).is_file():
        source_kind = "data_dir"
        listing, root = _listing_from_manifest(src_path)
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown --split {split!r}: choose one of {', '.join(SPLITS)}")
    else:
        if split is not None:
            raise ValueError(f"--split {split} needs a prepared DATA_DIR: {src_path} has no {MANIFEST_NAME} "
                             "(prepare it first, or launder the whole folder without --split)")
        source_kind = "folder"
        listing, root = _listing_from_folder(src_path)
    out_path = Path(out).expanduser().resolve()

    summary = LaunderSummary(source=str(src_path), source_kind=source_kind, out=str(out_path),
                             root=str(out_path / (root.name or "images")), transform=fixed.spec if fixed else spec,
                             seed=seed, split=split, files=0, laundered=0, kept=0)
    settings = _settings(summary, _listing_hash(listing))
    _check_out(out_path, settings, root)

    items: list[_Item] = []
    rejected: list[dict[str, str]] = []
    claimed: dict[str, str] = {}  # output path -> source, to catch a.png and a.jpg both becoming a.jpg
    for index, (source, row) in enumerate(listing):
        if split is not None and row.split != split:
            continue
        rel = _out_rel(source, root)
        if rel in claimed:
            rejected.append({"path": source, "reason": f"name clash: {claimed[rel]} is also written as {rel}"})
            continue
        claimed[rel] = source
        item_spec = fixed.spec if fixed else launder.draw(seed, 0, index).spec
        items.append(_Item(index, source, rel, item_spec, row))
    summary.files = len(items) + len(rejected)

    out_path.mkdir(parents=True, exist_ok=True)
    _write_marker(out_path, settings, None)
    for stale in Path(summary.root).rglob(f"*{_TMP_SUFFIX}"):  # left by a killed run: never a whole file
        stale.unlink()
    tasks = [(it.source, str(out_path / it.rel), it.spec) for it in items]
    bar = dict(total=len(tasks), desc="launder", unit="img", disable=None if progress else True)
    if workers == 1 or len(tasks) <= 1:
        results = [_launder_one(t) for t in tqdm(tasks, **bar)]
    else:
        # spawn: a fresh interpreter per worker, safe whatever threads the caller (torch) started.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            results = list(tqdm(pool.map(_launder_one, tasks, chunksize=4), **bar))
        finally:  # on Ctrl-C, do not launder what is still queued (a rerun resumes)
            pool.shutdown(wait=True, cancel_futures=True)

    manifest_rows: list[ManifestRow] = []
    record: list[dict] = []
    for item, (reason, sha, width, height, kept) in zip(items, results, strict=True):
        if reason is not None:
            rejected.append({"path": item.source, "reason": reason})
            continue
        summary.kept += kept
        summary.laundered += not kept
        path = str(out_path / item.rel)
        record.append({"path": path, "source": item.source, "transform": item.spec})
        if item.row is not None:
            manifest_rows.append(ManifestRow(path=path, label=item.row.label, class_name=item.row.class_name,
                                             sha256=sha, split=item.row.split, group=item.row.group,
                                             width=width, height=height))
    rejected.sort(key=lambda r: r["path"])
    summary.rejected = rejected
    summary.rejected_path = str(out_path / REJECTED_NAME)
    summary.record_path = str(out_path / RECORD_NAME)
    _write_csv(out_path / REJECTED_NAME, ["path", "reason"], rejected)
    _write_csv(out_path / RECORD_NAME, ["path", "source", "transform"], record)
    if source_kind == "data_dir":
        manifest_rows.sort(key=lambda r: r.path)
        summary.manifest_path = str(write_manifest(out_path, manifest_rows))
        for r in manifest_rows:
            summary.split_counts[r.split] = summary.split_counts.get(r.split, 0) + 1
    _write_marker(out_path, settings, summary)
    return summary


def laundering_specs(requested: list[str] | None) -> list[str]:
    """The transform specs asked for, `family` expanded to the default family, each checked (canonical form)."""
    specs: list[str] = []
    for item in requested or ():
        for spec in (launder.FAMILY if item == "family" else [item]):
            canonical = launder.parse(spec).spec
            if canonical not in specs:
                specs.append(canonical)
    return specs


def laundered_split(data_dir: Path, spec: str, split: str, *, workers: int = 2, progress: bool = True) -> Path:
    """DATA_DIR/laundered/<split>/<spec>/: the split's files laundered by `spec`, with a manifest of the
    same splits (made once, then reused: `launder_dataset` resumes; one folder per split, as engine builds
    launder the valid split and `evaluate --launder` the test split). A file that cannot be laundered
    is an error: the laundered rows must be the split's rows."""
    out = Path(data_dir) / LAUNDERED_DIR / split / spec.replace(":", "_").replace(",", "_").replace("=", "")
    summary = launder_dataset(data_dir, out, spec, split=split, workers=workers, progress=progress)
    if summary.rejected:
        first = summary.rejected[0]
        raise ValueError(f"{first['path']} could not be laundered by {spec} ({first['reason']}): "
                         f"{len(summary.rejected)} files of the {split} split are listed in {summary.rejected_path}")
    return out
