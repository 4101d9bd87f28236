"""What every loader backend agrees on: preprocessing constants, the augmentation spec, the batch type.

DALI and torchvision loaders both read these, so one change here changes every backend.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch.utils.data import DistributedSampler

DEFAULT_IMAGE_SIZE = 128  # the report's
# ImageNet statistics: the report normalized with fixed statistics, and these let ImageNet weights
# passed with --weights work unchanged.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CLASS_NAMES = ("real", "fake")  # label index = position; positive class = fake


@dataclass(frozen=True)
class AugmentSpec:
    """The report's training augmentation (Model 2.2), applied to the train split only.

    Order follows the report: rotate, flip, brightness/contrast, blur at decoded resolution, then
    resize. `blur_p` is torchvision's RandomApply default, which the report used.
    """

    rotation_deg: float = 15.0
    hflip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    blur_p: float = 0.5
    # (width, height) of the Gaussian kernel, as the report's GaussianBlur(kernel_size=(7, 13)): a
    # fixed 7x13 kernel, with sigma drawn uniformly from blur_sigma and used on both axes.
    blur_kernel: tuple[int, int] = (7, 13)
    blur_sigma: tuple[float, float] = (6.0, 7.0)

    def to_dict(self) -> dict:
        return asdict(self)


class Batch(NamedTuple):
    """One batch from any loader.

    images: float (N,3,H,W), normalized with MEAN/STD; labels: (N,) int64 (-1 where unknown);
    indices: (N,) int64 positions in the loader's file list; errors: (index, reason) for files of this
    batch that could not be decoded: they are left out of the tensors, never silently dropped.
    regions: (N, R) float, which face regions were edited (1) or not (0), NaN where unknown; only from
    training loaders given them (`prepare.edited_regions`, for `--region-loss`), else None.
    fallbacks: (index, reason) for files of this batch whose "dct" ghost maps came from the PIL reference
    (JPEGs the batched maps do not handle, see `ghost_inputs`): counted and logged by the caller.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    errors: tuple[tuple[int, str], ...] = ()
    regions: torch.Tensor | None = None
    fallbacks: tuple[tuple[int, str], ...] = ()


def shard_range(n_files: int, shard_id: int, num_shards: int) -> range:
    """The positions of one shard of a file list: contiguous, [n*i // k, n*(i+1) // k), which is how DALI's
    file reader shards, so every backend splits a list the same way."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard {shard_id} out of range for {num_shards} shards: use 0 <= shard_id < num_shards")
    return range(n_files * shard_id // num_shards, n_files * (shard_id + 1) // num_shards)


def train_shard(n_files: int, seed: int, epoch: int, shard_id: int, num_shards: int) -> list[int]:
    """The positions one of `num_shards` training processes reads in an epoch, in reading order: torch's
    DistributedSampler (shuffle, drop_last) over the files, i.e. one permutation of all of them per (seed,
    epoch), cut to a multiple of `num_shards`, every `num_shards`-th position from `shard_id` on. Shards
    are disjoint and equal-sized, so every process runs the same number of steps; with one shard it is
    the whole permutation. The permutation is `torch.randperm(n, seed * 100_003 + epoch)`."""
    sampler = DistributedSampler(range(n_files), num_replicas=num_shards, rank=shard_id, shuffle=True,
                                 seed=seed * 100_003, drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def shard_of(order: torch.Tensor, shard_id: int, num_shards: int) -> torch.Tensor:
    """One shard of an epoch's `order` of all files, cut as `train_shard` (DistributedSampler) cuts its
    permutation: for loaders that draw their own order."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard {shard_id} out of range for {num_shards} shards: use 0 <= shard_id < num_shards")
    return order[shard_id:len(order) // num_shards * num_shards:num_shards]


class InMemoryBatches:
    """len() and set_epoch() of the Loader protocol for loaders that hold a whole set in memory
    (`gpu_cache.CachedLoader`, `jpeg_ghosts.InMemoryGhostLoader`): they set `labels` (N,), `batch_size`
    and `drop_last`, and read `epoch` to draw each epoch's order. A training loader of one of several
    processes (`num_shards` > 1) reads `shard_of` that order: n // num_shards files an epoch."""

    labels: torch.Tensor
    batch_size: int
    drop_last: bool
    epoch: int = 0
    shard_id: int = 0
    num_shards: int = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def samples_per_epoch(self) -> int:
        return len(self.labels) // self.num_shards

    def __len__(self) -> int:
        n = self.samples_per_epoch()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
