"""Decode once, augment per epoch on the device: a loader over a uint8 image cache.

Training runs many epochs over a small set, so decoding every JPEG every epoch makes the decoder the
bottleneck (DESIGN.md). This loader decodes the files once, with any loader backend (DALI on the GPU,
torchvision...), into one uint8 tensor (N, 3, S, S) on the GPU (`--cache gpu`: the whole CIPLAB set at
600x600 is 1.9 GB) or in host memory (`--cache memory`: the same code on the CPU), then serves
batches from it. Train batches get the report's augmentation as batched tensor ops on that device
(`batch_ops`): rotation +-15 deg, horizontal flip, brightness and contrast +-0.2 in random order
(ColorJitter's), and the 7x13 Gaussian blur with sigma 6-7.

Differences from the file loaders, by design: augmentation runs on the resized image rather than at
decoded resolution, so the blur kernel and sigma are scaled by `augment_scale` (image size / decoded
size, e.g. 128/600: the same blur in the picture's terms), and rotation is bilinear (torchvision's
RandomRotation default is nearest, which at 128 px would add jagged edges the 600 px original does not
have). Evaluation batches are the decoded images unchanged: the same tensor as the backend gives.

Shuffle and augmentation are a pure function of (seed, epoch), so `--resume` is exact.
"""
from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from collections.abc import Sequence

import torch
from realfake.pipelines import batch_ops
from realfake.pipelines.pixel_loaders import make_pixel_loader
from realfake.pipelines.spec import MEAN, STD, AugmentSpec, Batch, InMemoryBatches, shard_range, train_shard
from tqdm import tqdm

log = logging.getLogger(__name__)

CACHE_CHOICES = ("none", "memory", "gpu")
# Decoded sets kept for reuse within one process (a sweep trains many runs on the same files).
_DECODED: OrderedDict[tuple, tuple[torch.Tensor, dict[int, str]]] = OrderedDict()
_KEEP_DECODED = 4


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Undo the loaders' normalization. Their images were uint8 before ToTensor/normalize, so the
    rounding recovers those bytes exactly."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() * std + mean).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)


def decode_all(files: Sequence[str], *, image_size: int, device: str, backend: str = "auto", batch_size: int = 64,
               num_workers: int = 2, progress: bool = True) -> tuple[torch.Tensor, dict[int, str]]:
    """(uint8 (N, 3, S, S) on `device`, {index: reason} of files that could not be decoded).

    Rows of undecodable files stay zero; the loader reports them in every batch that holds them.
    Results are memoised per (files, size, device, backend) for the life of the process.
    """
    key = (tuple(files), image_size, str(device), backend)
    if key in _DECODED:
        _DECODED.move_to_end(key)
        return _DECODED[key]
    decode_device = device if str(device).startswith("cuda") else "cpu"
    source = make_pixel_loader(list(files), None, train=False, backend=backend, image_size=image_size,
                               batch_size=batch_size, augment=None, num_workers=num_workers, seed=0, shard_id=0,
                               num_shards=1, device=decode_device)
    cache = torch.zeros((len(files), 3, image_size, image_size), dtype=torch.uint8, device=device)
    failed: dict[int, str] = {}
    for batch in tqdm(source, desc=f"decode into {device} cache", leave=False, unit="batch",
                      disable=None if progress else True):
        failed.update(dict(batch.errors))
        if batch.images.numel():
            cache[batch.indices.to(device)] = _to_uint8(batch.images.to(device))
    log.info("cached %d images at %dx%d on %s (%.0f MB, %d undecodable, decoded by %s)", len(files), image_size,
             image_size, device, cache.numel() / 1e6, len(failed), source.backend)
    _DECODED[key] = (cache, failed)
    while len(_DECODED) > _KEEP_DECODED:
        _DECODED.popitem(last=False)
    return cache, failed


def augment_batch(images: torch.Tensor, spec: AugmentSpec, generator: torch.Generator,
                  scale: float = 1.0) -> torch.Tensor:
    """The report's augmentation on float images (N, 3, H, W) in [0, 1], one draw per image.

    `scale` = image size / resolution the spec was written for: blur kernel and sigma shrink with it.
    """
    n = images.shape[0]
    g = generator
    out = batch_ops.affine(images, angle_deg=batch_ops.uniform(g, n, -spec.rotation_deg, spec.rotation_deg))
    out = batch_ops.hflip(out, batch_ops.bernoulli(g, n, spec.hflip_p))
    brightness = batch_ops.uniform(g, n, max(0.0, 1 - spec.brightness), 1 + spec.brightness)
    contrast = batch_ops.uniform(g, n, max(0.0, 1 - spec.contrast), 1 + spec.contrast)
    # ColorJitter applies its adjustments in a random order per image
    contrast_first = batch_ops.bernoulli(g, n, 0.5).to(out.device).view(n, 1, 1, 1)
    a = batch_ops.adjust_contrast(batch_ops.adjust_brightness(out, brightness), contrast)
    b = batch_ops.adjust_brightness(batch_ops.adjust_contrast(out, contrast), brightness)
    out = torch.where(contrast_first, b, a)
    blur = batch_ops.bernoulli(g, n, spec.blur_p)
    sigma = batch_ops.uniform(g, n, *spec.blur_sigma) * scale
    kernel = (batch_ops.odd_at_least_one(spec.blur_kernel[0] * scale),
              batch_ops.odd_at_least_one(spec.blur_kernel[1] * scale))
    if kernel != (1, 1):
        out = batch_ops.gaussian_blur_where(out, blur, kernel, sigma)
    return out


class CachedLoader(InMemoryBatches):
    """The standard Loader protocol (iterable of Batch, len, set_epoch, .backend) over a decoded cache."""

    def __init__(self, files: Sequence[str], labels: Sequence[int] | None, *, train: bool, image_size: int,
                 batch_size: int, augment: AugmentSpec | None = None, seed: int = 0, device: str = "cpu",
                 decode_backend: str = "auto", num_workers: int = 2, augment_scale: float = 1.0,
                 progress: bool = True, shard_id: int = 0, num_shards: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be at least 1")
        if labels is not None and len(labels) != len(files):
            raise ValueError(f"{len(files)} files but {len(labels)} labels: pass one label per file")
        self.device = torch.device(device)
        self.backend = "gpu-cache" if self.device.type == "cuda" else "memory-cache"
        self.images, self.failed = decode_all(files, image_size=image_size, device=str(self.device),
                                              backend=decode_backend, num_workers=num_workers, progress=progress)
        n = len(files)
        self.labels = torch.full((n,), -1, dtype=torch.int64) if labels is None else torch.as_tensor(
            list(labels), dtype=torch.int64)
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.augment = augment if train else None
        self.augment_scale = augment_scale
        # Every process holds the whole set: a train shard is its share of each epoch's permutation
        # (`spec.train_shard`); an eval shard is a fixed contiguous range, every file once over the shards.
        self.shard_id, self.num_shards = shard_id, num_shards
        self.eval_positions = None if train else torch.as_tensor(shard_range(n, shard_id, num_shards))
        self.drop_last = train and self.samples_per_epoch() > batch_size  # as the torch loader: no batch of one
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    def samples_per_epoch(self) -> int:
        return len(self.labels) // self.num_shards if self.train else len(self.eval_positions)

    def __iter__(self):
        n = len(self.labels)
        if self.train:
            order = torch.as_tensor(train_shard(n, self.seed, self.epoch, self.shard_id, self.num_shards),
                                    dtype=torch.int64)
        else:
            order = self.eval_positions
        # One augmentation stream per batch; a process other than the first of several draws its own.
        stream = f"{self.seed}:{self.epoch}" + (f":shard{self.shard_id}" if self.shard_id else "")
        for b in range(len(self)):
            positions = order[b * self.batch_size:(b + 1) * self.batch_size]
            errors = ()
            if self.failed:
                errors = tuple((i, self.failed[i]) for i in positions.tolist() if i in self.failed)
                keep = [i for i in positions.tolist() if i not in self.failed]
                positions = torch.tensor(keep, dtype=torch.int64)
            images = self.images[positions.to(self.device)].float().div_(255.0)
            if self.augment is not None and len(positions):
                g = torch.Generator().manual_seed(zlib.crc32(f"{stream}:{b}".encode()))
                images = augment_batch(images, self.augment, g, self.augment_scale)
            yield Batch(images=(images - self.mean) / self.std, labels=self.labels[positions].to(self.device),
                        indices=positions, errors=errors)


def make_cached_loader(files, labels, *, train, image_size, batch_size, augment=None, seed=0, device="cpu",
                       decode_backend="auto", num_workers=2, augment_scale=1.0, progress=True, shard_id=0,
                       num_shards=1) -> CachedLoader:
    return CachedLoader(files, labels, train=train, image_size=image_size, batch_size=batch_size, augment=augment,
                        seed=seed, device=device, decode_backend=decode_backend, num_workers=num_workers,
                        augment_scale=augment_scale, progress=progress, shard_id=shard_id, num_shards=num_shards)
