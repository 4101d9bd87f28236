"""Research probe: which ghost-map channels carry the AUC that `dct` maps lose against `pil` maps.

Writes two copies of a prepared data set (its manifest and prepare.json) whose `dct` map cache holds
hybrid maps, so that `realfake train --ghost-maps dct` and `realfake evaluate` read them unchanged:

  keepP   dct maps whose keep channels (0-2: Y, Cb, Cr of the re-save with the file's own tables)
          are the pil reference's;
  keepD   pil maps whose keep channels are dct's.

The data set's own `pil` cache must be complete (any ghost_cnn run on `pil` maps fills it); its `dct`
cache is filled here where files are missing. Laundered evaluation does not apply: a laundered copy's
maps would be computed as plain `dct` maps, not as the hybrid.

    python docs/probes/keep_channels.py DATA_DIR OUT_DIR
    realfake train OUT_DIR/keepP --model ghost_cnn --image-size 600 --optimizer adamw --lr 0.002 \
        --weight-decay 0.001 --schedule onecycle --epochs 40 --batch-size 32 --no-compile --ghost-shift 4 \
        --region-loss 1 --ghost-maps dct --seed 0 --out runs --name keepP-s0
    realfake evaluate runs/keepP-s0 --calibrate --tta flip --checkpoint last
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from realfake.pipelines.ghost_loaders import GhostMapLoader
from realfake.pipelines.jpeg_ghosts import cache_folder, cache_paths_for
from realfake.pipelines.manifest import read_manifest

IMAGE_SIZE = 600
KEEP = slice(0, 3)  # QUALITIES[0] is "keep"; each quality has its Y, Cb, Cr maps in turn
VARIANTS = {"keepP": ("dct", "pil"), "keepD": ("pil", "dct")}  # name: (kind of the maps, kind of their keep)


def fill_dct_cache(data_dir: Path, rows) -> None:
    paths = cache_paths_for(data_dir, IMAGE_SIZE, [r.sha256 for r in rows], "dct")
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if not missing:
        return
    loader = GhostMapLoader([rows[i].path for i in missing], [rows[i].label for i in missing],
                            image_size=IMAGE_SIZE, batch_size=16, num_workers=2,
                            cache_paths=[paths[i] for i in missing], kind="dct")
    for batch in loader:  # the loader writes each file's maps to its cache path
        if batch.errors:
            raise SystemExit(f"{rows[missing[batch.errors[0][0]]].path}: {batch.errors[0][1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="a prepared data set with a complete pil map cache at 600 px")
    parser.add_argument("out_dir", type=Path, help="receives keepP/ and keepD/")
    args = parser.parse_args()
    rows = read_manifest(args.data_dir)
    fill_dct_cache(args.data_dir, rows)
    caches = {kind: cache_folder(args.data_dir, IMAGE_SIZE, kind) for kind in ("pil", "dct")}
    for name, (base_kind, keep_kind) in VARIANTS.items():
        copy = args.out_dir / name
        target = cache_folder(copy, IMAGE_SIZE, "dct")
        target.mkdir(parents=True, exist_ok=True)
        for meta in ("manifest.csv", "prepare.json", "rejected.csv"):
            if (args.data_dir / meta).exists():
                shutil.copy2(args.data_dir / meta, copy / meta)
        for r in rows:
            maps = np.load(caches[base_kind] / f"{r.sha256}.npy")
            maps[KEEP] = np.load(caches[keep_kind] / f"{r.sha256}.npy")[KEEP]
            np.save(target / f"{r.sha256}.npy", maps)
        print(f"{name}: {len(rows)} files in {target}")


if __name__ == "__main__":
    main()
