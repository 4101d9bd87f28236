"""The two decoders of pixel files, one call: NVIDIA DALI (GPU `mixed` decode, or CPU-only) or
torchvision (PIL in DataLoader workers). `auto` picks the best available: DALI GPU > DALI CPU >
torchvision. Both give the same `Batch` of normalized images for the same files (tested).

DALI is imported only when it is chosen: it costs seconds and may need a driver. torch too is imported
only to pick between DALI's devices or make a loader: `LOADER_CHOICES` and the option checks serve
processes that never decode (a `score --ray` driver).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from realfake.pipelines.spec import AugmentSpec

LOADER_CHOICES = ("auto", "dali", "torch")


def dali_installed() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def resolve_backend(backend: str = "auto", device: str = "cpu") -> str:
    """Map a user choice to the backend that will run: "torch", "dali-cpu" or "dali-gpu"."""
    if backend not in LOADER_CHOICES:
        raise ValueError(f"unknown loader {backend!r}: choose one of {', '.join(LOADER_CHOICES)}")
    wants_gpu = str(device).startswith("cuda")
    if backend == "torch":
        return "torch"
    if backend == "dali" and not dali_installed():
        raise ValueError("--loader dali needs NVIDIA DALI: pip install 'realfake[dali]' (or use --loader torch)")
    if backend == "auto" and not dali_installed():
        return "torch"
    import torch

    return "dali-gpu" if wants_gpu and torch.cuda.is_available() else "dali-cpu"


def make_pixel_loader(files: Sequence[str], labels: Sequence[int] | None, *, train: bool, backend: str,
                      image_size: int, batch_size: int, augment: AugmentSpec | None, num_workers: int, seed: int,
                      shard_id: int, num_shards: int, device: str, draft: bool = False,
                      hw_decoder_load: float | None = None, launder: float = 0.0):
    """A DALI or torchvision loader over `files` (see `loaders.get_loader` for the arguments; `launder`
    is for the torchvision loader only)."""
    common = dict(train=train, image_size=image_size, batch_size=batch_size, augment=augment,
                  num_workers=num_workers, seed=seed, shard_id=shard_id, num_shards=num_shards, device=device)
    if resolve_backend(backend, device) == "torch":
        from realfake.pipelines.torch_loader import make_torch_loader

        return make_torch_loader(files, labels, draft=draft, launder=launder, **common)
    if launder:
        raise ValueError("--launder needs the torchvision loader (it launders the bytes before decoding): use "
                         "--loader torch")
    from realfake.pipelines.dali_loader import make_dali_loader

    extra = {} if hw_decoder_load is None else {"hw_decoder_load": hw_decoder_load}
    return make_dali_loader(files, labels, **common, **extra)
