"""JPEG ghost maps: the input of the `ghost_cnn` model, read from each file's compression history.

A retouched face is a JPEG whose pasted or re-touched parts went through other compressions (another
quality, another 8x8 grid, a resize) than the rest. Re-saving the file at one JPEG quality changes
the blocks already compressed at that quality least: Farid's "JPEG ghosts" (Exposing Digital
Forgeries from JPEG Ghosts, IEEE TIFS 2009). Here each image is re-saved with its own quantization
tables and at the standard qualities 50, 55, ..., 95; the squared difference to the decoded
original, per YCbCr plane and averaged over each 8x8 block, gives 3 x 11 = 33 maps of (H/8, W/8)
cells. Maps are log-scaled and each is centred on its own mean, so a model sees where the history
differs from place to place, not the file's overall quality (docs/quality.md: why this input).

Images are read as stored (the block grid is in stored orientation) and the maps turned afterwards by
the EXIF orientation, like the pixels every other loader gives. An image larger than `image_size`
is centre-cropped on the 16-pixel MCU grid before re-saving (so the re-save sees the blocks the
file has); a smaller one gives smaller maps, padded with zeros (the centred mean) to the model's grid.

Costs 11 encodes and 12 decodes a file, so training computes
the maps once and keeps them on disk by content hash (`cache_dir`): later epochs, seeds, evaluations
and engine builds read them back. Only JPEG files have ghosts: anything else is the error "not a JPEG".
"""
from __future__ import annotations

import io
import logging
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, JpegImagePlugin
from realfake.pipelines.images import InvalidImageError, load_jpeg
from realfake.pipelines.prepare import EDIT_REGIONS
from realfake.pipelines.spec import Batch, InMemoryBatches, shard_of, shard_range
from realfake.pipelines.torch_loader import collate
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

log = logging.getLogger(__name__)

QUALITIES = ("keep", *range(50, 100, 5))
BLOCK = 8  # the JPEG block: one map cell
MCU = 16  # crops start on the 4:2:0 MCU grid, so the chroma blocks stay the file's own
CHANNELS = 3 * len(QUALITIES)
LOG_EPS = 0.01  # floor of log(): blocks that re-save exactly (flat areas) are 0 error
MAPS_VERSION = 1  # part of the cache folder name: change it when the maps change
GHOST_MAPS = ("pil",)  # how the maps are computed (`ghost_maps` of a run and an engine)


def grid_cells(image_size: int) -> int:
    """Map cells a side for a model of `image_size` pixels."""
    return image_size // BLOCK


def _ycbcr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB").convert("YCbCr"), dtype=np.float32).transpose(2, 0, 1)


def _resave(img: Image.Image, quality, source: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    if quality == "keep":
        # What PIL's quality="keep" does, which only works on the file object itself (not on a crop).
        kw = {"qtables": source.quantization}
        sampling = JpegImagePlugin.get_sampling(source)
        if sampling != -1:
            kw["subsampling"] = sampling
        img.save(buf, format="JPEG", **kw)
    else:
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _orient(maps: np.ndarray, orientation: int) -> np.ndarray:
    """Turn (C, H, W) maps as PIL's ImageOps.exif_transpose turns the image's pixels."""
    turned = {
        2: lambda m: m[:, :, ::-1],
        3: lambda m: m[:, ::-1, ::-1],
        4: lambda m: m[:, ::-1, :],
        5: lambda m: m.transpose(0, 2, 1),
        6: lambda m: np.rot90(m, -1, axes=(1, 2)),
        7: lambda m: m.transpose(0, 2, 1)[:, ::-1, ::-1],
        8: lambda m: np.rot90(m, 1, axes=(1, 2)),
    }.get(orientation, lambda m: m)(maps)
    return np.ascontiguousarray(turned)


def _centre_crop(img: Image.Image, image_size: int) -> tuple[Image.Image, int, int]:
    """(crop, h, w): the stored image's centre crop of at most image_size a side, started on the MCU grid,
    and the rows and columns of it that whole 8x8 blocks cover (what the maps describe)."""
    # A square bound: the same on the stored and the displayed (EXIF-turned) sides.
    side_w, side_h = min(img.size[0], image_size), min(img.size[1], image_size)
    left, top = (img.size[0] - side_w) // 2 // MCU * MCU, (img.size[1] - side_h) // 2 // MCU * MCU
    crop = img if (side_w, side_h) == img.size else img.crop((left, top, left + side_w, top + side_h))
    return crop, side_h // BLOCK * BLOCK, side_w // BLOCK * BLOCK


def raw_maps(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """(CHANNELS, h, w) float32 mean squared re-save error per 8x8 block and YCbCr plane, h and w at most
    image_size / 8, in display orientation. Raises InvalidImageError (incl. "not a JPEG")."""
    img, orientation = load_jpeg(path)
    with img:
        crop, h, w = _centre_crop(img, image_size)
        if h == 0 or w == 0:
            raise InvalidImageError(path, f"too small ({img.size[0]}x{img.size[1]}: ghost maps need 8x8 pixels)")
        base = _ycbcr(crop)
        maps = []
        try:
            for quality in QUALITIES:
                err = (base - _ycbcr(_resave(crop, quality, img))) ** 2
                maps.append(err[:, :h, :w].reshape(3, h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean((2, 4)))
        except (OSError, ValueError) as exc:  # a JPEG PIL decodes but cannot write back (odd tables/modes)
            raise InvalidImageError(path, "unsupported format") from exc
    return _orient(np.concatenate(maps), orientation)


def normalize(maps: np.ndarray, cells: int) -> np.ndarray:
    """Log-scale, centre each map on its own mean, and pad with zeros (centred) to (C, cells, cells)."""
    logged = np.log(maps.astype(np.float32) + LOG_EPS)
    logged -= logged.mean(axis=(1, 2), keepdims=True)
    out = np.zeros((logged.shape[0], cells, cells), dtype=np.float32)
    h, w = min(logged.shape[1], cells), min(logged.shape[2], cells)
    top, left = (cells - h) // 2, (cells - w) // 2
    out[:, top:top + h, left:left + w] = logged[:, :h, :w]
    return out


def ghost_view(path: str | os.PathLike, image_size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The pixels `ghost_maps` describes, where its cells lie: (uint8 (G, G, 3) canvas with G = 8 *
    grid_cells(image_size), black where the maps are padding; (x0, y0, x1, y1) of the image on it).
    For drawing evidence of a ghost-map model over the photo it saw. Raises InvalidImageError."""
    img, orientation = load_jpeg(path)
    with img:
        crop, h, w = _centre_crop(img, image_size)
        if h == 0 or w == 0:
            raise InvalidImageError(path, f"too small ({img.size[0]}x{img.size[1]}: ghost maps need 8x8 pixels)")
        pixels = np.asarray(crop.convert("RGB"))[:h, :w].transpose(2, 0, 1)
    pixels = _orient(pixels, orientation).transpose(1, 2, 0)
    cells = grid_cells(image_size)
    rows, cols = min(pixels.shape[0] // BLOCK, cells), min(pixels.shape[1] // BLOCK, cells)
    top, left = (cells - rows) // 2 * BLOCK, (cells - cols) // 2 * BLOCK  # as `normalize` pads
    canvas = np.zeros((cells * BLOCK, cells * BLOCK, 3), dtype=np.uint8)
    canvas[top:top + rows * BLOCK, left:left + cols * BLOCK] = pixels[:rows * BLOCK, :cols * BLOCK]
    return canvas, (left, top, left + cols * BLOCK, top + rows * BLOCK)


def ghost_maps(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """The model input of one file: float32 (CHANNELS, image_size/8, image_size/8)."""
    return normalize(raw_maps(path, image_size), grid_cells(image_size))


def cache_folder(data_dir: str | os.PathLike, image_size: int) -> Path:
    """Where a prepared data set keeps its files' maps (one .npy per content sha256)."""
    return Path(data_dir) / "cache" / f"jpeg-ghosts-v{MAPS_VERSION}-{image_size}px"


class GhostMapDataset(Dataset):
    """Maps of one file per item; a file that fails becomes an error entry (as the image loaders)."""

    def __init__(self, files: Sequence[str], labels: Sequence[int] | None, positions: Sequence[int],
                 image_size: int, cache_paths: Sequence[Path] | None = None):
        self.files, self.labels, self.positions = list(files), labels, list(positions)
        self.image_size, self.cache_paths = image_size, cache_paths

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        index = self.positions[i]
        label = -1 if self.labels is None else int(self.labels[index])
        cached = self.cache_paths[index] if self.cache_paths is not None else None
        if cached is not None and cached.is_file():
            maps = self._read(cached)
            if maps is not None:
                return torch.from_numpy(maps), label, index, None
        try:
            maps = ghost_maps(self.files[index], self.image_size)
        except InvalidImageError as exc:
            return None, label, index, exc.reason
        if cached is not None:  # written whole, then renamed: a killed run never leaves half a file
            tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, maps.astype(np.float16))
            os.replace(tmp, cached)
            maps = maps.astype(np.float16).astype(np.float32)  # what a later read gives
        return torch.from_numpy(maps), label, index, None


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


class GhostMapLoader:
    """Streams maps of `files` in order (evaluation, engine validation, folder scoring): the Loader
    protocol of `pipelines.loaders` (iterable of Batch, len, set_epoch, .backend)."""

    backend = "jpeg-ghosts"

    def __init__(self, files: Sequence[str], labels: Sequence[int] | None, *, image_size: int, batch_size: int,
                 num_workers: int = 2, shard_id: int = 0, num_shards: int = 1,
                 cache_paths: Sequence[Path] | None = None):
        positions = shard_range(len(files), shard_id, num_shards)
        self.dataset = GhostMapDataset(files, labels, positions, image_size, cache_paths)
        self.batch_size, self.num_workers = batch_size, num_workers

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        yield from DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                              collate_fn=collate, persistent_workers=False)


class InMemoryGhostLoader(InMemoryBatches):
    """Training batches: every file's maps computed (or read from the cache) once into host memory, then
    shuffled each epoch with random horizontal flips and, with `shift`, each batch moved by up to
    `shift` cells each way (edges repeated): faces are not all centred alike. Shuffle, flips and shifts
    are a pure function of (seed, epoch), so `--resume` is exact. A file without maps stops training
    (the data set changed since `realfake data prepare`) rather than shrinking the epoch. One of several
    training processes (`num_shards` > 1) holds every file's maps and reads its `spec.shard_of` each
    epoch's order; the processes after the first draw flips and shifts of their own (seeded by shard).

    `regions` (one per file: a tuple of 0/1 per edited region, `prepare.EDIT_REGIONS` order, or None
    where unknown) ride along as `Batch.regions`, the two eyes swapped where a map is mirrored."""

    backend = "jpeg-ghosts-memory"

    def __init__(self, files: Sequence[str], labels: Sequence[int], *, train: bool, image_size: int,
                 batch_size: int, seed: int = 0, flip: bool = True, shift: int = 0, num_workers: int = 2,
                 cache_paths: Sequence[Path] | None = None, progress: bool = True,
                 regions: Sequence[Sequence[int] | None] | None = None, shard_id: int = 0, num_shards: int = 1):
        if len(labels) != len(files):
            raise ValueError(f"{len(files)} files but {len(labels)} labels: pass one label per file")
        self.regions = None if regions is None else _regions_tensor(regions, len(files))
        cells = grid_cells(image_size)
        self.maps = torch.zeros((len(files), CHANNELS, cells, cells), dtype=torch.float16)
        source = GhostMapLoader(files, labels, image_size=image_size, batch_size=16, num_workers=num_workers,
                                cache_paths=cache_paths)
        for batch in tqdm(source, desc="JPEG ghost maps", unit="batch", leave=False, disable=None if progress else True):
            if batch.errors:
                index, reason = batch.errors[0]
                raise ValueError(f"{files[index]}: {reason}: ghost-map models train on JPEG files only; prepare "
                                 "a data set of JPEGs (or train a pixel model)")
            self.maps[batch.indices] = batch.images.to(torch.float16)
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.train, self.batch_size, self.seed, self.flip = train, batch_size, seed, flip and train
        self.shift = shift if train else 0
        self.shard_id, self.num_shards = shard_id, num_shards
        self.drop_last = train and self.samples_per_epoch() > batch_size  # no batch of one for BatchNorm

    def __iter__(self):
        n = len(self.labels)
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{self.epoch}".encode()))
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        if self.num_shards > 1:  # this process's share of the epoch
            order = shard_of(order, self.shard_id, self.num_shards)
        if self.shard_id:  # flips and shifts of its own (the first process draws as a single one does)
            generator.manual_seed(zlib.crc32(f"{self.seed}:{self.epoch}:shard{self.shard_id}".encode()))
        for b in range(len(self)):
            positions = order[b * self.batch_size:(b + 1) * self.batch_size]
            maps = self.maps[positions].float()
            regions = None if self.regions is None else self.regions[positions].clone()
            if self.flip:
                mirrored = torch.rand(len(positions), generator=generator) < 0.5
                maps[mirrored] = maps[mirrored].flip(3)
                if regions is not None:  # a mirrored face has its left eye on the right
                    regions[mirrored] = regions[mirrored][:, _MIRRORED_REGIONS]
            if self.shift:
                k, side = self.shift, maps.shape[-1]
                dy, dx = torch.randint(0, 2 * k + 1, (2,), generator=generator).tolist()
                maps = torch.nn.functional.pad(maps, (k, k, k, k), mode="replicate")[:, :, dy:dy + side, dx:dx + side]
            yield Batch(images=maps, labels=self.labels[positions], indices=positions, regions=regions)


# EDIT_REGIONS order (left eye, right eye, nose, mouth) after a horizontal flip.
_MIRRORED_REGIONS = [1, 0, 2, 3]


def _regions_tensor(regions: Sequence[Sequence[int] | None], n: int) -> torch.Tensor:
    if len(regions) != n:
        raise ValueError(f"{n} files but {len(regions)} region entries: pass one per file (None where unknown)")
    out = torch.full((n, len(EDIT_REGIONS)), float("nan"))
    for i, bits in enumerate(regions):
        if bits is not None:
            if len(bits) != len(EDIT_REGIONS):
                raise ValueError(f"file #{i}: {len(bits)} region bits, expected {len(EDIT_REGIONS)} ({', '.join(EDIT_REGIONS)})")
            out[i] = torch.as_tensor([float(b) for b in bits])
    return out


def cache_paths_for(data_dir: str | os.PathLike, image_size: int, sha256s: Sequence[str]) -> list[Path]:
    folder = cache_folder(data_dir, image_size)
    folder.mkdir(parents=True, exist_ok=True)
    return [folder / f"{sha}.npy" for sha in sha256s]
