"""`realfake explain`: evidence heat maps of an engine for image files, and the pointing game on a
prepared split (how often the hottest face region is one CIPLAB's file name says was edited).

Per image (run_explain), in OUT:
- `<name>.png`: the photo as the model saw it with the evidence over it (see engines/explain/files.py: render);
- `<name>.json`: the evidence per grid cell and per face region (docs/explain.md lists the fields);
- `index.csv`: one row per explained image (path, heatmap, evidence, p_fake, label, hottest regions);
- `errors.csv`: one row per file that could not be explained (path, reason); the run goes on.
`<name>` is the file's path below the folder it was found in, "/" turned into "__" (with a short hash
of the full path added when two inputs give the same name).

On a split (run_explain_evaluate), in OUT: `pointing.json` (the tables and every image's record per
engine), `pointing.md` (the tables), and `examples/<engine>/` with the PNG and evidence of the first
few fakes of each difficulty group and of the reals.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from PIL import Image
from realfake.engines.devices import resolve_device
from realfake.engines.explain import (
    evidence_document,
    format_pointing_md,
    image_record,
    load_explainer,
    plain_json,
    pointing_game,
    render,
    write_evidence_json,
)
from realfake.engines.registry import promoted_engine
from realfake.jobs.service.options import Bounds, check_arguments
from realfake.jobs.service.params import InputPath, OutputPath
from realfake.jobs.service.store import realfake_home
from realfake.pipelines.images import InvalidImageError
from realfake.pipelines.jpeg_ghosts import BLOCK, cache_paths_for, grid_cells
from realfake.pipelines.manifest import read_manifest
from realfake.pipelines.prepare import EDIT_REGIONS, edited_regions
from realfake.pipelines.walk import walk_images
from tqdm import tqdm

log = logging.getLogger(__name__)

INDEX_COLUMNS = ("path", "heatmap", "evidence", "p_fake", "label", "threshold", "hottest_by_max", "hottest_by_mean",
                 "region_head_top", "engine_id")
ERROR_COLUMNS = ("path", "reason", "engine_id")


class _Table:
    """A CSV file written row by row (flushed, so a killed run keeps what it wrote)."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path = path
        self.file = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, fieldnames=list(columns), lineterminator="\n")
        self.writer.writeheader()
        self.rows = 0

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()
        self.rows += 1

    def close(self) -> None:
        self.file.close()


def _output_name(rel: str, path: str, used: set[str]) -> str:
    stem = os.path.splitext(rel.replace("\\", "/"))[0].strip("/").replace("/", "__") or "image"
    if stem in used:
        stem = f"{stem}-{hashlib.sha1(path.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    used.add(stem)
    return stem


def _explain_files(explainer, items: Sequence[tuple[str, str]], out: Path, *, labels=None, groups=None,
                   cache_paths=None, batch_size: int, num_workers: int, dpi: int, render_png=True,
                   on_record=None, on_error=None, progress: bool = True, desc: str = "explain") -> int:
    """Explain `items` ((path, output name or None)) in order; write PNG + evidence for those with a name.
    Calls on_record(index, record, evidence_path, png_path) for every image explained and
    on_error(path, reason) for every file that could not be. Returns the number explained."""
    files = [path for path, _ in items]
    loader = explainer.loader(files, labels, batch_size=batch_size, num_workers=num_workers, cache_paths=cache_paths)
    done = 0
    with tqdm(total=len(files), desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for batch in loader:
            for index, reason in batch.errors:
                on_error(files[index], reason)
            if len(batch.indices):
                evidence = explainer.explain(batch.images)
                for index, item in zip(batch.indices.tolist(), evidence, strict=True):
                    path, name = items[index]
                    label = None if labels is None else int(labels[index])
                    group = None if groups is None else groups[index]
                    png = json_path = None
                    box = (0, 0, explainer.canvas_px, explainer.canvas_px)
                    photo = None
                    if name is not None:
                        try:
                            photo, box = explainer.photo(path)
                        except InvalidImageError as exc:  # changed since the loader read it
                            on_error(path, exc.reason)
                            continue
                    elif explainer.input == "ghosts":
                        box = _ghost_box(explainer, path)
                    record = image_record(item, box, path=path, label=label, group=group,
                                          threshold=explainer.threshold)
                    if name is not None:
                        json_path = write_evidence_json(evidence_document(item, record, explainer, box),
                                                        out / f"{name}.json")
                        if render_png:
                            png = render(item, record, explainer, photo, out / f"{name}.png", dpi=dpi)
                    on_record(index, record, json_path, png)
                    done += 1
            bar.update(len(batch.indices) + len(batch.errors))
    return done


def _ghost_box(explainer, path: str) -> tuple[int, int, int, int]:
    """Where a file's pixels lie on a ghost-map model's canvas, from its size alone (no decode)."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(0x0112) in (5, 6, 7, 8):
            width, height = height, width
    cells = grid_cells(explainer.image_size)
    cols = min(min(width, explainer.image_size) // BLOCK, cells)
    rows = min(min(height, explainer.image_size) // BLOCK, cells)
    left, top = (cells - cols) // 2 * BLOCK, (cells - rows) // 2 * BLOCK
    return left, top, left + cols * BLOCK, top + rows * BLOCK


def _examples(rows, per_group: int) -> set[int]:
    """Positions of the files to draw: the first `per_group` of each group in manifest order (the same
    for every engine), fakes with 1-3 regions coded first (with all four coded any map is a hit)."""
    def informative(row) -> bool:
        code = edited_regions(row.path, row.label)
        return row.label == 0 or (code is not None and 0 < sum(code) < len(EDIT_REGIONS))

    chosen, counts = set(), {}
    for wanted in (True, False):
        for i, row in enumerate(rows):
            if i not in chosen and informative(row) == wanted and counts.get(row.group, 0) < per_group:
                counts[row.group] = counts.get(row.group, 0) + 1
                chosen.add(i)
    return chosen


def _resolve_engine(engine) -> Path:
    if engine is None:
        return promoted_engine(realfake_home())
    return Path(engine)


def run_explain(
    inputs: list[InputPath],
    out: OutputPath,
    engine: InputPath | None = None,
    recursive: bool = True,
    batch_size: Annotated[int, Bounds(min=1)] = 16,
    num_workers: Annotated[int, Bounds(min=0)] = 2,
    device: str = "cpu",
    dpi: Annotated[int, Bounds(min=20)] = 100,
    progress: bool = True,
) -> dict:
    """Explain every image under INPUTS with an engine: per image a PNG of the evidence over the photo
    and a JSON file of the evidence per cell and per face region, in OUT.

    Args:
        inputs: Image files and folders (jpg, jpeg, png, bmp, webp in any letter case).
        out: Output folder (created): NAME.png, NAME.json, index.csv, errors.csv.
        engine: Engine directory (`realfake engine build`); default: the promoted engine.
        recursive: Explain the folders' subfolders too.
        batch_size: Images per batch through the model.
        num_workers: Decoding processes.
        device: cpu or cuda[:N] for the model.
        dpi: Resolution of the PNGs (a 4.6 x 4.4 inch figure).
        progress: Show a progress bar.

    Returns a summary: files, explained, errors, where everything went.
    """
    check_arguments(run_explain, locals())
    inputs = [str(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    if not inputs:
        raise ValueError("nothing to explain: pass image files or folders")
    for path in inputs:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: pass existing image files or folders")
    engine_dir = _resolve_engine(engine)
    explainer = load_explainer(engine_dir, device=resolve_device(device))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = _Table(out / "index.csv", INDEX_COLUMNS)
    errors = _Table(out / "errors.csv", ERROR_COLUMNS)
    started = time.perf_counter()
    items, used, files = [], set(), 0
    try:
        for found in walk_images(inputs, recursive=recursive):
            files += 1
            if found.error is not None:
                errors.write({"path": found.path, "reason": found.error, "engine_id": explainer.engine_id})
            elif os.path.getsize(found.path) == 0:
                errors.write({"path": found.path, "reason": "empty file", "engine_id": explainer.engine_id})
            else:
                items.append((found.path, _output_name(found.rel, found.path, used)))

        def on_record(i, record, json_path, png):
            head = record["region_head"]
            index.write({"path": record["path"], "heatmap": png.name if png else "",
                         "evidence": json_path.name if json_path else "", "p_fake": record["p_fake"],
                         "label": "fake" if record["called_fake"] else "real", "threshold": explainer.threshold,
                         "hottest_by_max": "+".join(record["hottest_by_max"]),
                         "hottest_by_mean": "+".join(record["hottest_by_mean"]),
                         "region_head_top": max(head, key=head.get) if head else "", "engine_id": explainer.engine_id})

        def on_error(path, reason):
            errors.write({"path": path, "reason": reason, "engine_id": explainer.engine_id})

        explained = _explain_files(explainer, items, out, batch_size=batch_size, num_workers=num_workers, dpi=dpi,
                                   on_record=on_record, on_error=on_error, progress=progress)
    finally:
        index.close()
        errors.close()
    seconds = time.perf_counter() - started
    summary = {"out": str(out), "index": str(index.path), "errors_file": str(errors.path), "engine": str(engine_dir),
               "engine_id": explainer.engine_id, "method": explainer.method, "files": files, "explained": explained,
               "errors": errors.rows, "seconds": round(seconds, 2)}
    log.info("explained %d, errors %d of %d files in %.1f s (%s, engine %s)", explained, errors.rows, files, seconds,
             explainer.method, explainer.engine_id)
    return summary


def run_explain_evaluate(
    data_dir: InputPath,
    engines: list[InputPath],
    out: OutputPath,
    split: str = "test",
    examples: Annotated[int, Bounds(min=0)] = 3,
    batch_size: Annotated[int, Bounds(min=1)] = 16,
    num_workers: Annotated[int, Bounds(min=0)] = 2,
    device: str = "cpu",
    dpi: Annotated[int, Bounds(min=20)] = 100,
    progress: bool = True,
) -> dict:
    """The pointing game of each engine on a split of a prepared data set: how often the hottest face
    region of a fake's evidence is one its file name says was edited, against chance, per difficulty
    group; evidence inside against outside the edited regions; the spread of the maps.

    Args:
        data_dir: Prepared data directory (`realfake data prepare` of CIPLAB-named files).
        engines: Engine directories to compare (one block of rows each).
        out: Output folder: pointing.json, pointing.md, examples/.
        split: Split of the manifest to use.
        examples: PNG + evidence for this many fakes of each difficulty group and reals, per engine.
        batch_size: Images per batch through the model.
        num_workers: Decoding processes.
        device: cpu or cuda[:N] for the model.
        dpi: Resolution of the example PNGs.
        progress: Show a progress bar.
    """
    check_arguments(run_explain_evaluate, locals())
    data_dir = Path(data_dir)
    rows = read_manifest(data_dir, split)
    if not rows:
        raise ValueError(f"split {split!r} of {data_dir} is empty: choose another --split")
    if not engines:
        raise ValueError("no engine to evaluate: pass --engine at least once")
    if not any(r.label == 1 for r in rows):
        raise ValueError(f"split {split!r} of {data_dir} has no fakes: the pointing game needs CIPLAB-named fakes")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shown = _examples(rows, examples)
    results, started = [], time.perf_counter()
    names = set()
    for engine in engines:
        engine_dir = Path(engine)
        explainer = load_explainer(engine_dir, device=resolve_device(device))
        name = engine_dir.name if engine_dir.name not in names else f"{engine_dir.name}-{explainer.engine_id}"
        names.add(name)
        example_dir = out / "examples" / name
        example_dir.mkdir(parents=True, exist_ok=True)
        records, failures = [None] * len(rows), []
        items = [(r.path, Path(r.path).stem if i in shown else None) for i, r in enumerate(rows)]
        cache = cache_paths_for(data_dir, explainer.image_size, [r.sha256 for r in rows], explainer.ghost_maps) \
            if explainer.input == "ghosts" else None

        def on_record(i, record, json_path, png, records=records):
            records[i] = record

        def on_error(path, reason, failures=failures):
            failures.append({"path": path, "reason": reason})

        _explain_files(explainer, items, example_dir, labels=[r.label for r in rows], groups=[r.group for r in rows],
                       cache_paths=cache, batch_size=batch_size, num_workers=num_workers, dpi=dpi,
                       on_record=on_record, on_error=on_error, progress=progress, desc=f"explain {name}")
        if failures:
            raise ValueError(f"{len(failures)} files of the {split} split of {data_dir} could not be read, e.g. "
                             f"{failures[0]['path']} ({failures[0]['reason']}): prepare the data set again")
        table = pointing_game(records)
        results.append({"name": name, "engine_dir": str(engine_dir), "engine_id": explainer.engine_id,
                        "architecture": explainer.architecture, "method": explainer.method,
                        "members": len(explainer.members), "views": list(explainer.views),
                        "region_head": explainer.region_heads is not None, "table": table, "images": records})
    title = f"Pointing game on the {split} split of {data_dir} ({len(rows)} images)"
    document = {"data_dir": str(data_dir), "split": split, "results": results}
    (out / "pointing.json").write_text(json.dumps(plain_json(document), indent=1) + "\n")
    (out / "pointing.md").write_text(format_pointing_md(results, title=title))
    return {"out": str(out), "table": str(out / "pointing.md"), "results": str(out / "pointing.json"),
            "engines": [r["name"] for r in results], "images": len(rows),
            "seconds": round(time.perf_counter() - started, 2)}
