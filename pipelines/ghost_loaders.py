"""Loaders of JPEG ghost maps, of either kind (`ghost_inputs`): the input of ghost_cnn.

- `GhostMapLoader` streams the maps of a file list in order (evaluation, engine validation, folder
  scoring). DataLoader workers do the work: each item is prepared in `__getitem__` (PIL re-saves, or
  the decode to YCbCr planes), and the worker's collate computes the "dct" maps of its whole batch in
  one call. Maps found in the data set's cache (`cache_paths`, one folder per kind) are read back;
  others are written there.
- `InMemoryGhostLoader` holds a training set's maps in host memory and serves shuffled, flipped and
  shifted batches each epoch. With `launder` > 0 each epoch replaces that share of its items (real and
  fake alike, labels unchanged) by a fresh `launder.drawn(seed, epoch, index)` transform of the file,
  whose maps are computed on the fly by workers while the epoch trains; the clean items come from
  memory.

Every shuffle, flip, shift and laundering draw is a pure function of (seed, epoch[, index]), so
`--resume` is exact. Files the "dct" maps do not handle get the reference maps; each loader counts
them (`fallbacks`) and logs them.
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from realfake.pipelines import launder as laundering
from realfake.pipelines.ghost_inputs import Prepared, configure_worker, finish, prepare_file
from realfake.pipelines.images import InvalidImageError
from realfake.pipelines.jpeg_ghosts import CHANNELS, check_kind, grid_cells
from realfake.pipelines.prepare import EDIT_REGIONS
from realfake.pipelines.spec import Batch, InMemoryBatches, shard_of, shard_range
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

log = logging.getLogger(__name__)

# EDIT_REGIONS order (left eye, right eye, nose, mouth) after a horizontal flip.
MIRRORED_REGIONS = [1, 0, 2, 3]
LAUNDER_BATCH = 8  # laundered files a worker prepares (and finishes) at once


class GhostMapDataset(Dataset):
    """One file per item, prepared for maps of `kind` (`ghost_inputs.prepare_file`); a file that fails
    becomes an error entry (as the image loaders). Items: (Prepared | None, label, index, error reason,
    cache file to write)."""

    def __init__(self, files: Sequence[str], labels: Sequence[int] | None, positions: Sequence[int],
                 image_size: int, cache_paths: Sequence[Path] | None = None, kind: str = "pil"):
        self.files, self.labels, self.positions = list(files), labels, list(positions)
        self.image_size, self.cache_paths, self.kind = image_size, cache_paths, check_kind(kind)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        index = self.positions[i]
        label = -1 if self.labels is None else int(self.labels[index])
        cached = self.cache_paths[index] if self.cache_paths is not None else None
        if cached is not None and cached.is_file():
            maps = self._read(cached)
            if maps is not None:
                return Prepared(maps=maps), label, index, None, None
        try:
            prepared = prepare_file(self.files[index], self.image_size, self.kind)
        except InvalidImageError as exc:
            return None, label, index, exc.reason, None
        return prepared, label, index, None, cached

    def _read(self, cached: Path) -> np.ndarray | None:
        """The cached maps, or None for a file that is unreadable or of another shape (computed again)."""
        cells = grid_cells(self.image_size)
        try:
            maps = np.load(cached)
        except (OSError, ValueError, EOFError):
            log.warning("%s is damaged: computing those maps again", cached)
            return None
        if maps.shape != (CHANNELS, cells, cells):
            log.warning("%s holds maps of shape %s, not %s: computing them again", cached, maps.shape,
                        (CHANNELS, cells, cells))
            return None
        return maps.astype(np.float32)


class CollateMaps:
    """A DataLoader collate_fn (it runs in the worker): the batch's maps, the "dct" ones in one call,
    written to the cache where an item names a cache file."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, items) -> Batch:
        good = [it for it in items if it[0] is not None]
        errors = tuple((index, reason) for prepared, _, index, reason, _ in items if prepared is None)
        fallbacks = tuple((index, p.fallback) for p, _, index, _, _ in good if p.fallback is not None)
        maps = finish([it[0] for it in good], self.image_size) if good else torch.empty(0)
        for row, (_, _, _, _, cached) in enumerate(good):
            if cached is not None:  # written whole, then renamed: a killed run never leaves half a file
                half = maps[row].numpy().astype(np.float16)
                tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npy")
                np.save(tmp, half)
                os.replace(tmp, cached)
                maps[row] = torch.from_numpy(half.astype(np.float32))  # what a later read gives
        return Batch(images=maps, labels=torch.tensor([it[1] for it in good], dtype=torch.int64),
                     indices=torch.tensor([it[2] for it in good], dtype=torch.int64), errors=errors,
                     fallbacks=fallbacks)


def log_fallbacks(batch: Batch, files: Sequence[str]) -> int:
    """Log the files of `batch` whose "dct" maps came from the reference; returns how many."""
    for index, reason in batch.fallbacks:
        log.warning("%s: %s: its dct ghost maps come from the PIL reference", files[index], reason)
    return len(batch.fallbacks)


class GhostMapLoader:
    """Streams maps of `files` in order (evaluation, engine validation, folder scoring): the Loader
    protocol of `pipelines.loaders` (iterable of Batch, len, set_epoch, .backend). `fallbacks` counts
    the files whose "dct" maps came from the reference, over every pass."""

    def __init__(self, files: Sequence[str], labels: Sequence[int] | None, *, image_size: int, batch_size: int,
                 num_workers: int = 2, shard_id: int = 0, num_shards: int = 1,
                 cache_paths: Sequence[Path] | None = None, kind: str = "pil"):
        positions = shard_range(len(files), shard_id, num_shards)
        self.dataset = GhostMapDataset(files, labels, positions, image_size, cache_paths, kind)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.backend = "jpeg-ghosts" if kind == "pil" else f"jpeg-ghosts-{kind}"
        self.fallbacks = 0

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            collate_fn=CollateMaps(self.dataset.image_size), persistent_workers=False,
                            worker_init_fn=configure_worker if self.num_workers else None)
        for batch in loader:
            self.fallbacks += log_fallbacks(batch, self.dataset.files)
            yield batch


class LaunderedDataset(Dataset):
    """Items (index, transform) of one epoch, laundered (`launder.launder_file`) and prepared for maps of
    `kind`. Items: (Prepared | None, index, reason the file kept its clean maps)."""

    def __init__(self, files: Sequence[str], items: Sequence[tuple[int, laundering.Transform]], image_size: int,
                 kind: str, on_device: bool = False):
        self.files, self.items, self.image_size, self.kind = files, list(items), image_size, kind
        self.on_device = on_device

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        index, transform = self.items[i]
        path = self.files[index]
        try:
            data = laundering.launder_file(path, transform)
            return prepare_file(path, self.image_size, self.kind, data=data, on_device=self.on_device), index, None
        except (InvalidImageError, ValueError) as exc:  # e.g. a crop or downscale a tiny image cannot take
            return None, index, f"{transform.spec}: {exc}"


class FinishLaundered:
    """collate_fn of LaunderedDataset: (indices, maps (N, C, S/8, S/8) or the Prepared items when the maps
    are left to the caller's device, fallback reasons, files kept clean with the reason)."""

    def __init__(self, image_size: int, in_worker: bool):
        self.image_size, self.in_worker = image_size, in_worker

    def __call__(self, items):
        good = [(p, index) for p, index, _ in items if p is not None]
        kept = [(index, reason) for p, index, reason in items if p is None]
        fallbacks = [(index, p.fallback) for p, index in good if p.fallback is not None]
        prepared = [p for p, _ in good]
        payload = finish(prepared, self.image_size) if self.in_worker and prepared else prepared
        return [index for _, index in good], payload, fallbacks, kept


def laundered_items(n: int, order: Sequence[int], seed: int, epoch: int, p: float) -> list[tuple[int, laundering.Transform]]:
    """(index, transform) of the items of an epoch that training launders, in the order the epoch
    visits them (`order`: item indices)."""
    if p <= 0:
        return []
    out = []
    for index in order:
        transform = laundering.drawn(seed, epoch, int(index), p)
        if transform is not None:
            out.append((int(index), transform))
    return out


def stream_laundered(files: Sequence[str], items: Sequence[tuple[int, laundering.Transform]], image_size: int,
                     kind: str, num_workers: int, in_worker: bool = True):
    """Batches of FinishLaundered for `items`, in their order, computed ahead by `num_workers` workers
    (with `in_worker` False, decoded there and left to the caller's device)."""
    if not items:
        return iter(())
    dataset = LaunderedDataset(files, items, image_size, kind, on_device=not in_worker)
    loader = DataLoader(dataset, batch_size=LAUNDER_BATCH, shuffle=False,
                        num_workers=num_workers, collate_fn=FinishLaundered(image_size, in_worker),
                        persistent_workers=False, worker_init_fn=configure_worker if num_workers else None)
    return iter(loader)


class LaunderedSupply:
    """The laundered items of one epoch, handed out batch by batch as training reaches them: workers
    compute them ahead, in the order the epoch visits them. `take(positions)` -> {index: maps or Prepared}
    for the laundered items among `positions`, the rest of the epoch still computing."""

    def __init__(self, files: Sequence[str], items: Sequence[tuple[int, laundering.Transform]], image_size: int,
                 kind: str, num_workers: int, in_worker: bool = True):
        self.files, self.wanted = files, {index for index, _ in items}
        self.stream = stream_laundered(files, items, image_size, kind, num_workers, in_worker)
        self.ready: dict[int, object] = {}
        self.fallbacks = self.kept = 0

    def take(self, positions: Sequence[int]) -> dict[int, object]:
        needed = [i for i in positions if i in self.wanted]
        while any(i not in self.ready for i in needed):
            indices, payload, fallbacks, kept = next(self.stream)
            for row, index in enumerate(indices):
                self.ready[index] = payload[row]
            for index, reason in kept:  # the transform could not take this file: its clean maps stand
                log.warning("%s: not laundered this epoch (%s): its maps as saved are used", self.files[index], reason)
                self.wanted.discard(index)
                self.kept += 1
            for index, reason in fallbacks:
                log.warning("%s (laundered): %s: its dct ghost maps come from the PIL reference", self.files[index],
                            reason)
            self.fallbacks += len(fallbacks)
            needed = [i for i in needed if i in self.wanted]
        return {i: self.ready.pop(i) for i in needed}


class InMemoryGhostLoader(InMemoryBatches):
    """Training batches: every file's maps computed (or read from the cache) once into host memory, then
    shuffled each epoch with random horizontal flips and, with `shift`, each batch moved by up to
    `shift` cells each way (edges repeated): faces are not all centred alike. With `launder` > 0 that
    share of each epoch's items is replaced by laundered copies (module docstring). A file without
    maps stops training (the data set changed since `realfake data prepare`) rather than shrinking the
    epoch. One of several training processes (`num_shards` > 1) holds every file's maps and reads its
    `spec.shard_of` each epoch's order; the processes after the first draw flips and shifts of their own
    (seeded by shard).

    `regions` (one per file: a tuple of 0/1 per edited region, `prepare.EDIT_REGIONS` order, or None
    where unknown) ride along as `Batch.regions`, the two eyes swapped where a map is mirrored."""

    def __init__(self, files: Sequence[str], labels: Sequence[int], *, train: bool, image_size: int,
                 batch_size: int, seed: int = 0, flip: bool = True, shift: int = 0, num_workers: int = 2,
                 cache_paths: Sequence[Path] | None = None, progress: bool = True,
                 regions: Sequence[Sequence[int] | None] | None = None, kind: str = "pil", launder: float = 0.0,
                 shard_id: int = 0, num_shards: int = 1):
        if len(labels) != len(files):
            raise ValueError(f"{len(files)} files but {len(labels)} labels: pass one label per file")
        if not 0.0 <= launder <= 1.0:
            raise ValueError(f"launder {launder} must be a probability between 0 and 1")
        self.files, self.kind, self.image_size = list(files), check_kind(kind), image_size
        self.backend = "jpeg-ghosts-memory" if kind == "pil" else f"jpeg-ghosts-{kind}-memory"
        self.regions = None if regions is None else regions_tensor(regions, len(files))
        cells = grid_cells(image_size)
        self.maps = torch.zeros((len(files), CHANNELS, cells, cells), dtype=torch.float16)
        source = GhostMapLoader(files, labels, image_size=image_size, batch_size=16, num_workers=num_workers,
                                cache_paths=cache_paths, kind=kind)
        for batch in tqdm(source, desc="JPEG ghost maps", unit="batch", leave=False, disable=None if progress else True):
            if batch.errors:
                index, reason = batch.errors[0]
                raise ValueError(f"{files[index]}: {reason}: ghost-map models train on JPEG files only; prepare "
                                 "a data set of JPEGs (or train a pixel model)")
            self.maps[batch.indices] = batch.images.to(torch.float16)
        self.fallbacks = source.fallbacks
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.train, self.batch_size, self.seed, self.flip = train, batch_size, seed, flip and train
        self.shift = shift if train else 0
        self.launder = launder if train else 0.0
        self.num_workers = num_workers
        self.shard_id, self.num_shards = shard_id, num_shards
        self.drop_last = train and self.samples_per_epoch() > batch_size  # no batch of one for BatchNorm
        self.laundered = 0  # items laundered in the last epoch

    def __iter__(self):
        n = len(self.labels)
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{self.epoch}".encode()))
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        if self.num_shards > 1:  # this process's share of the epoch
            order = shard_of(order, self.shard_id, self.num_shards)
        if self.shard_id:  # flips and shifts of its own (the first process draws as a single one does)
            generator.manual_seed(zlib.crc32(f"{self.seed}:{self.epoch}:shard{self.shard_id}".encode()))
        used = order[:len(self) * self.batch_size].tolist()
        items = laundered_items(n, used, self.seed, self.epoch, self.launder)
        supply = LaunderedSupply(self.files, items, self.image_size, self.kind, self.num_workers)
        self.laundered = len(items)
        for b in range(len(self)):
            positions = order[b * self.batch_size:(b + 1) * self.batch_size]
            maps = self.maps[positions].float()
            laundered = supply.take(positions.tolist())
            for row, index in enumerate(positions.tolist()):
                if index in laundered:
                    maps[row] = laundered[index]
            yield augment_maps(maps, self.labels[positions], positions, generator, flip=self.flip, shift=self.shift,
                               regions=None if self.regions is None else self.regions[positions].clone())
        self.laundered -= supply.kept
        self.fallbacks += supply.fallbacks


def augment_maps(maps: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor, generator: torch.Generator, *,
                 flip: bool, shift: int, regions: torch.Tensor | None) -> Batch:
    """A training batch of maps: random horizontal flips per map (the eyes of `regions` swapped with
    them), then the whole batch moved by up to `shift` cells each way, edges repeated. The draws come
    from `generator` (CPU), so batches are a pure function of its seed on any device."""
    if flip:
        mirrored = torch.rand(len(positions), generator=generator) < 0.5
        index = mirrored.nonzero().squeeze(1).to(maps.device)
        maps[index] = maps[index].flip(3)
        if regions is not None:  # a mirrored face has its left eye on the right
            regions[mirrored] = regions[mirrored][:, MIRRORED_REGIONS]
    if shift:
        k, side = shift, maps.shape[-1]
        dy, dx = torch.randint(0, 2 * k + 1, (2,), generator=generator).tolist()
        maps = torch.nn.functional.pad(maps, (k, k, k, k), mode="replicate")[:, :, dy:dy + side, dx:dx + side]
    return Batch(images=maps, labels=labels, indices=positions, regions=regions)


def regions_tensor(regions: Sequence[Sequence[int] | None], n: int) -> torch.Tensor:
    """(n, len(EDIT_REGIONS)) float: 0/1 per edited region, NaN where a file's regions are unknown."""
    if len(regions) != n:
        raise ValueError(f"{n} files but {len(regions)} region entries: pass one per file (None where unknown)")
    out = torch.full((n, len(EDIT_REGIONS)), float("nan"))
    for i, bits in enumerate(regions):
        if bits is not None:
            if len(bits) != len(EDIT_REGIONS):
                raise ValueError(f"file #{i}: {len(bits)} region bits, expected {len(EDIT_REGIONS)} ({', '.join(EDIT_REGIONS)})")
            out[i] = torch.as_tensor([float(b) for b in bits])
    return out
