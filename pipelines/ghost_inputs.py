"""A ghost-map model's input of one file, for either kind of maps: the one place that computes it.

Two kinds (`jpeg_ghosts.GHOST_MAPS`), recorded with every run and engine:
- "pil": `jpeg_ghosts.ghost_maps`, each file re-saved with PIL (the reference);
- "dct": `jpeg_ghosts_torch`, the same maps as batched DCT-domain tensor math from the decoder's YCbCr
  planes and the file's tables. A model trained on one kind reads that kind only.

Work is split the way a DataLoader splits it: `prepare_file` runs per file (in a worker: the PIL
re-saves for "pil", the decode to planes for "dct"), `finish` per batch (the "dct" maps of the whole
batch in one `maps_of_inputs` call). A JPEG the "dct" maps do not handle (`NeedsReference`: CMYK,
12-bit, arithmetic coding, odd sampling, ...) gets the reference maps for that file; `Prepared.fallback`
says why, and the loaders count and log it, so no file becomes wrong maps silently.

Where the batch's maps are computed on a GPU (`on_device`), "pil" files are decoded in the worker too
and `finish` computes their maps with `jpeg_ghosts_exact`: the reference maps bit for bit, as tensor
math (files it does not handle get PIL's re-saves in the worker: the same maps, no fallback).

CPU workers: `configure_worker` gives each worker process one torch thread (the maps are hundreds of
small operations; a second thread only waits for a descheduled core) and an allocator that keeps freed
memory (the "dct" maps are allocation-bound under glibc's default, which returns each large temporary
to the system: docs/ghost-maps.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from realfake.pipelines import jpeg_ghosts, jpeg_ghosts_exact
from realfake.pipelines.jpeg_ghosts_exact import ExactInput, load_exact_input
from realfake.pipelines.jpeg_ghosts_torch import GhostInput, NeedsReference, load_ghost_input, maps_of_inputs

log = logging.getLogger(__name__)

# glibc mallopt parameter: memory kept at the top of the heap when it grows or shrinks. 512 MB makes
# the freed temporaries of one batch's maps the next batch's memory (measured: 27-37 -> 17-22 ms of CPU
# a 600x600 file for the maps, the same as MALLOC_TOP_PAD_ set before the process starts).
M_TOP_PAD = -2
TOP_PAD_BYTES = 512 << 20


@dataclass
class Prepared:
    """One file after the per-file step: finished maps, or decoded planes whose maps `finish` computes."""

    maps: np.ndarray | None = None  # float32 (CHANNELS, S/8, S/8): "pil", or a "dct" file that fell back
    item: GhostInput | ExactInput | None = None  # decoded pixels and tables whose maps `finish` computes
    fallback: str | None = None  # why a "dct" file got the reference maps


def decoded_input(kind: str, pixels: torch.Tensor, keep_tables: torch.Tensor, keep_subsampling: int,
                  orientation: int) -> GhostInput | ExactInput:
    """What the maps of `kind` are computed from, for a file decoded elsewhere (DALI, a device cache):
    `pixels` (3, h, w) uint8 cropped as `mcu_crop` crops (RGB; YCbCr planes for "dct" files decoded so),
    the tables and sampling a keep re-save uses, and the EXIF orientation."""
    make = ExactInput if jpeg_ghosts.check_kind(kind) == "pil" else GhostInput
    return make(pixels, keep_tables, keep_subsampling, orientation)


def prepare_file(path: str | os.PathLike, image_size: int, kind: str, *, data: bytes | None = None,
                 on_device: bool = False) -> Prepared:
    """The per-file step for maps of `kind`. `data`: the file's bytes held in memory (a laundered copy),
    `path` naming it in errors. `on_device`: the maps of "pil" files too are left to `finish` (on a GPU).
    Raises InvalidImageError with the reference's reasons."""
    if jpeg_ghosts.check_kind(kind) == "pil" and not on_device:
        return Prepared(maps=jpeg_ghosts.ghost_maps(path, image_size, data=data))
    load = load_exact_input if kind == "pil" else load_ghost_input
    try:
        return Prepared(item=load(path, image_size, data=data))
    except NeedsReference as exc:
        return Prepared(maps=jpeg_ghosts.ghost_maps(path, image_size, data=data),
                        fallback=exc.reason if kind == "dct" else None)


def finish(prepared: Sequence[Prepared], image_size: int, *, device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, CHANNELS, S/8, S/8) float32 model input of prepared files, on `device`: those left to it in one
    batched call per kind."""
    cells = jpeg_ghosts.grid_cells(image_size)
    out = torch.empty((len(prepared), jpeg_ghosts.CHANNELS, cells, cells), dtype=torch.float32, device=device)
    for i, p in enumerate(prepared):
        if p.maps is not None:
            out[i] = torch.from_numpy(p.maps)
    dct = [i for i, p in enumerate(prepared) if isinstance(p.item, GhostInput)]
    exact = [i for i, p in enumerate(prepared) if isinstance(p.item, ExactInput)]
    if dct:
        out[dct] = maps_of_inputs([prepared[i].item for i in dct], image_size, device=device)
    if exact:
        out[exact] = jpeg_ghosts_exact.maps_of_inputs([prepared[i].item for i in exact], image_size, device=device)
    return out


def file_maps(path: str | os.PathLike, image_size: int, kind: str, *, data: bytes | None = None) -> np.ndarray:
    """The model input of one file for maps of `kind`: float32 (CHANNELS, S/8, S/8). Raises InvalidImageError."""
    prepared = prepare_file(path, image_size, kind, data=data)
    if prepared.fallback is not None:
        log.warning("%s: %s: its dct maps come from the PIL reference", path, prepared.fallback)
    return finish([prepared], image_size)[0].numpy()


def keep_freed_memory() -> bool:
    """Ask glibc to keep TOP_PAD_BYTES of freed memory (mallopt M_TOP_PAD); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(M_TOP_PAD, TOP_PAD_BYTES))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False


def configure_worker(worker_id: int | None = None) -> None:
    """A DataLoader `worker_init_fn` for ghost maps: one torch thread, freed memory kept."""
    torch.set_num_threads(1)
    keep_freed_memory()
