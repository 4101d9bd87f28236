"""`--cache gpu` for ghost maps: the decoded set on the device, the maps computed there each epoch.

The CPU keeps ghost maps on disk and in memory, because the reference maps cost 150-200 ms of a core a
file through PIL. As batched tensor math on a GPU they cost less than reading them back: this loader
decodes every file once (DataLoader workers, `ghost_inputs.prepare_file(on_device=True)`: for "dct" maps
PIL's decode to the decoder's YCbCr planes, for "pil" maps to RGB, cropped as the maps crop them, with
the tables from the header), holds the pixels on the device as uint8 (the CIPLAB set at 600 px: 1.5 GB),
and computes each batch's maps there (`ghost_inputs.finish`: `jpeg_ghosts_torch` for "dct", the exact
reference maps of `jpeg_ghosts_exact` for "pil"). Per epoch, as the in-memory loader: the shuffle, flips
and shifts (`ghost_loaders.augment_maps`, the same draws for the same seed and epoch), and with `launder`
the laundered items, re-saved and decoded by host workers while the epoch trains, their maps computed on
the device.

Files the device maps do not handle keep their reference maps, computed once on the host.
The code runs on any device; the CPU runs it in the tests.
"""
from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence

import torch
from realfake.pipelines.ghost_inputs import Prepared, configure_worker, decoded_input, finish, prepare_file
from realfake.pipelines.ghost_loaders import LaunderedSupply, augment_maps, laundered_items, regions_tensor
from realfake.pipelines.images import InvalidImageError
from realfake.pipelines.jpeg_ghosts import check_kind
from realfake.pipelines.jpeg_ghosts_exact import ExactInput
from realfake.pipelines.jpeg_ghosts_torch import GhostInput
from realfake.pipelines.spec import InMemoryBatches
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

log = logging.getLogger(__name__)


class _Decode(Dataset):
    def __init__(self, files: Sequence[str], image_size: int, kind: str):
        self.files, self.image_size, self.kind = files, image_size, kind

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            return index, prepare_file(self.files[index], self.image_size, self.kind, on_device=True), None
        except InvalidImageError as exc:
            return index, None, exc.reason


def _as_list(items):
    return items


class DeviceGhostLoader(InMemoryBatches):
    """Loader protocol (iterable of Batch, len, set_epoch, .backend) over a decoded set on `device`."""

    def __init__(self, files: Sequence[str], labels: Sequence[int] | None, *, train: bool, image_size: int,
                 batch_size: int, seed: int = 0, flip: bool = True, shift: int = 0, num_workers: int = 2,
                 device: str = "cuda", progress: bool = True, regions: Sequence[Sequence[int] | None] | None = None,
                 launder: float = 0.0, kind: str = "dct"):
        if labels is not None and len(labels) != len(files):
            raise ValueError(f"{len(files)} files but {len(labels)} labels: pass one label per file")
        self.files, self.image_size, self.device = list(files), image_size, torch.device(device)
        self.kind = check_kind(kind)
        self.backend = f"jpeg-ghosts-{kind}-{'gpu' if self.device.type == 'cuda' else 'device'}"
        n = len(self.files)
        self.planes = torch.zeros((n, 3, image_size, image_size), dtype=torch.uint8, device=self.device)
        self.keep_tables = torch.zeros((n, 3, 64), dtype=torch.float32, device=self.device)
        self.sizes: list[tuple[int, int]] = [(0, 0)] * n
        self.subsampling, self.orientation = [0] * n, [1] * n
        self.reference: dict[int, torch.Tensor] = {}  # maps of the files the device maps do not handle
        self._decode_all(num_workers, progress)
        self.labels = torch.full((n,), -1, dtype=torch.int64) if labels is None else \
            torch.as_tensor(list(labels), dtype=torch.int64)
        self.regions = None if regions is None else regions_tensor(regions, n)
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.flip, self.shift = flip and train, shift if train else 0
        self.launder, self.num_workers = (launder if train else 0.0), num_workers
        self.drop_last = train and n > batch_size  # no batch of one for BatchNorm
        self.laundered = 0

    def _decode_all(self, num_workers: int, progress: bool) -> None:
        self.fallbacks = 0
        loader = DataLoader(_Decode(self.files, self.image_size, self.kind), batch_size=16, num_workers=num_workers,
                            collate_fn=_as_list, worker_init_fn=configure_worker if num_workers else None)
        for items in tqdm(loader, desc=f"decode into {self.device} ghost cache", unit="batch", leave=False,
                          disable=None if progress else True):
            for index, prepared, reason in items:
                if prepared is None:
                    raise ValueError(f"{self.files[index]}: {reason}: ghost-map models train on JPEG files only; "
                                     "prepare a data set of JPEGs (or train a pixel model)")
                if prepared.item is None:  # the reference's maps, once
                    if prepared.fallback is not None:  # a dct file given pil maps (a pil file's are its own)
                        log.warning("%s: %s: its dct ghost maps come from the PIL reference", self.files[index],
                                    prepared.fallback)
                        self.fallbacks += 1
                    self.reference[index] = finish([prepared], self.image_size)[0].to(self.device)
                    continue
                item = prepared.item
                pixels = item.rgb if self.kind == "pil" else item.planes
                height, width = pixels.shape[-2:]
                self.planes[index, :, :height, :width] = pixels.to(self.device)
                self.keep_tables[index] = item.keep_tables.to(self.device, torch.float32)
                self.sizes[index] = (height, width)
                self.subsampling[index], self.orientation[index] = item.keep_subsampling, item.orientation
        log.info("ghost cache: %d files decoded on %s (%.0f MB), %d with reference maps", len(self.files), self.device,
                 self.planes.numel() / 1e6, len(self.reference))

    def _inputs(self, index: int) -> GhostInput | ExactInput:
        height, width = self.sizes[index]
        return decoded_input(self.kind, self.planes[index, :, :height, :width], self.keep_tables[index],
                             self.subsampling[index], self.orientation[index])

    def maps(self, positions: Sequence[int], laundered: dict[int, Prepared] | None = None) -> torch.Tensor:
        """(N, CHANNELS, S/8, S/8) float32 maps on the device of the files at `positions`; `laundered`
        replaces some of them by their laundered copies' decoded pixels."""
        laundered = laundered or {}
        prepared = [laundered[i] if i in laundered else
                    Prepared(maps=None, item=self._inputs(i)) if i not in self.reference else None
                    for i in positions]
        computed = [p for p in prepared if p is not None]
        out = finish(computed, self.image_size, device=self.device) if computed else None
        rows, k = [], 0
        for i, p in zip(positions, prepared, strict=True):
            if p is None:
                rows.append(self.reference[i])
            else:
                rows.append(out[k])
                k += 1
        return torch.stack(rows)

    def __iter__(self):
        n = len(self.labels)
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{self.epoch}".encode()))
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        items = laundered_items(n, order[:len(self) * self.batch_size].tolist(), self.seed, self.epoch, self.launder)
        supply = LaunderedSupply(self.files, items, self.image_size, self.kind, self.num_workers, in_worker=False)
        self.laundered = len(items)
        for b in range(len(self)):
            positions = order[b * self.batch_size:(b + 1) * self.batch_size]
            maps = self.maps(positions.tolist(), supply.take(positions.tolist()))
            regions = None if self.regions is None else self.regions[positions].clone()
            yield augment_maps(maps, self.labels[positions], positions, generator, flip=self.flip, shift=self.shift,
                               regions=regions)
        self.laundered -= supply.kept
        self.fallbacks += supply.fallbacks
