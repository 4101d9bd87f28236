"""The manifest: one CSV per prepared data set that every later step reads (never re-walking folders).

DATA_DIR/manifest.csv   one row per accepted image (columns = ManifestRow fields)
DATA_DIR/prepare.json   how it was made: source, seed, split fractions, counts, rejected, duplicates
DATA_DIR/rejected.csv   path,reason for every file that was not accepted
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

MANIFEST_NAME = "manifest.csv"
SUMMARY_NAME = "prepare.json"
REJECTED_NAME = "rejected.csv"
SPLITS = ("train", "valid", "test")


class ManifestError(ValueError):
    """A data directory that holds no usable manifest."""


@dataclass(frozen=True)
class ManifestRow:
    path: str  # absolute path of the image file
    label: int  # 0 = real, 1 = fake
    class_name: str
    sha256: str
    split: str  # train | valid | test
    group: str  # easy | mid | hard | real, or "" when file names do not carry it
    width: int
    height: int


_FIELDS = [f.name for f in fields(ManifestRow)]


def write_manifest(data_dir: Path, rows: list[ManifestRow]) -> Path:
    path = Path(data_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    tmp.replace(path)  # readers never see half a manifest
    return path


def read_manifest(data_dir: Path, split: str | None = None) -> list[ManifestRow]:
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{path} not found: run `realfake data prepare SRC --out {data_dir}` first"
        )
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != _FIELDS:
            raise ManifestError(f"{path} has columns {reader.fieldnames}, expected {_FIELDS}: prepare it again")
        rows = [
            ManifestRow(
                path=r["path"], label=int(r["label"]), class_name=r["class_name"], sha256=r["sha256"],
                split=r["split"], group=r["group"], width=int(r["width"]), height=int(r["height"]),
            )
            for r in reader
        ]
    if split is not None:
        if split not in SPLITS:
            raise ManifestError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        rows = [r for r in rows if r.split == split]
    return rows


def manifest_sha256(data_dir: Path) -> str:
    """Identifies the exact data a run was trained on (recorded in run and engine metadata)."""
    return hashlib.sha256((Path(data_dir) / MANIFEST_NAME).read_bytes()).hexdigest()
