"""The engines a site has: find engine directories under a folder, list them, and promote the one that
scoring uses when none is named.

The promoted engine is recorded in `HOME/promoted_engine.json`; HOME is the caller's state folder
(`realfake.jobs.service.store.realfake_home()`, i.e. $REALFAKE_HOME or ~/.realfake).
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from realfake.engines.schema import ENGINE_JSON, EngineError, parse_batch, read_engine_meta

PROMOTED_JSON = "promoted_engine.json"


def promote_engine(path: str | Path, home: Path) -> dict:
    """Record `path` as the engine scoring uses when none is named; returns the record."""
    path = Path(path).resolve()
    meta = read_engine_meta(path)
    record = {"engine_dir": str(path), "engine_id": meta["engine_id"],
              "promoted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / (PROMOTED_JSON + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(home / PROMOTED_JSON)  # readers never see half a record
    return record


def promoted_record(home: Path) -> dict | None:
    record_file = Path(home) / PROMOTED_JSON
    if not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
        return record if isinstance(record, dict) and record.get("engine_dir") else None
    except json.JSONDecodeError:
        return None


def promoted_engine(home: Path) -> Path:
    """The engine directory `realfake engine promote` selected; ValueError when there is none."""
    record = promoted_record(home)
    if record is None:
        raise ValueError("no engine promoted: run `realfake engine promote ENGINE_DIR` or pass --engine")
    path = Path(record["engine_dir"])
    if not (path / ENGINE_JSON).is_file():
        raise ValueError(f"the promoted engine {path} no longer exists: promote another with "
                         "`realfake engine promote ENGINE_DIR` or pass --engine")
    return path


def find_engine_dirs(root: str | Path, max_depth: int = 3) -> list[Path]:
    """Engine directories at or below `root` (hidden folders skipped), sorted."""
    root = Path(root)
    found = []

    def walk(folder: Path, depth: int) -> None:
        if (folder / ENGINE_JSON).is_file():
            found.append(folder)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            walk(child, depth + 1)

    if root.is_dir():
        walk(root, 0)
    return found


def engine_rows(root: str | Path, home: Path) -> list[dict]:
    """One row per engine directory under `root`: id, backend, precision, model, image size,
    threshold, parity, promoted mark; a damaged one gets its error in `status`."""
    record = promoted_record(home)
    promoted_dir = Path(record["engine_dir"]).resolve() if record else None
    rows = []
    for folder in find_engine_dirs(root):
        row = {"engine_dir": str(folder), "promoted": folder.resolve() == promoted_dir}
        try:
            meta = read_engine_meta(folder)
        except EngineError as exc:
            rows.append({**row, "status": str(exc)})
            continue
        parity = meta.get("parity") or {}
        rows.append({**row, "engine_id": meta["engine_id"], "backend": meta["backend"],
                     "precision": meta["precision"], "model": meta["architecture"], "image_size": meta["image_size"],
                     "threshold": meta["threshold"], "threshold_method": (meta.get("threshold_method") or {}).get("method"),
                     "batch": str(parse_batch(meta["batch"])), "device": meta["device"],
                     "max_abs_diff_p": parity.get("max_abs_diff_p"), "label_agreement": parity.get("label_agreement"),
                     "created": meta.get("created"), "status": "ok"})
    return rows
