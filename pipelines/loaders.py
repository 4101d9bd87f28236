"""One factory, one signature, every backend (compare DeepLearningExamples' `get_dali_train_loader` /
`get_pytorch_train_loader`). `auto` picks the best available: DALI GPU > DALI CPU > torchvision.

A loader is iterable over `Batch`, has `.backend`, `len()` (batches) and `set_epoch(epoch)`.
`input="ghosts"` gives JPEG ghost maps instead of pixels (`jpeg_ghosts.py`, the ghost_cnn model's input).
"""
from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence

from realfake.pipelines.spec import DEFAULT_IMAGE_SIZE, AugmentSpec

log = logging.getLogger(__name__)

LOADER_CHOICES = ("auto", "dali", "torch")


def dali_installed() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def cuda_device_present() -> bool:
    import torch

    return torch.cuda.is_available()


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
    return "dali-gpu" if wants_gpu and cuda_device_present() else "dali-cpu"


def get_loader(files: Sequence[str], labels: Sequence[int] | None, *, train: bool, backend: str = "auto",
               image_size: int = DEFAULT_IMAGE_SIZE, batch_size: int = 32, augment: AugmentSpec | None = None,
               num_workers: int = 2, seed: int = 0, shard_id: int = 0, num_shards: int = 1,
               device: str = "cpu", draft: bool = False, hw_decoder_load: float | None = None,
               input: str = "pixels", cache_paths: Sequence | None = None, progress: bool = True,
               ghost_shift: int = 0, regions: Sequence | None = None):
    """Build a loader over `files`. Train loaders shuffle and augment (when `augment` is given); eval
    loaders keep order and deliver every file of the shard exactly once.

    input="ghosts": JPEG ghost maps of image_size-pixel crops, computed with PIL whatever `backend`
    says (DALI decodes pixels only); `cache_paths` (one per file) keep them between runs, and train
    loaders hold the whole set in memory and augment with horizontal flips (`augment` given) and
    shifts of up to `ghost_shift` cells; `regions` (one per file, see `prepare.edited_regions`) come
    with their batches as `Batch.regions` (ghost-map train loaders only).
    """
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} must be at least 1")
    if image_size < 8:
        raise ValueError(f"image size {image_size} is too small: use at least 8")
    if regions is not None and not (input == "ghosts" and train):
        raise ValueError("edited-region targets come with ghost-map training loaders only (--region-loss is for "
                         "ghost_cnn)")
    if input == "ghosts":
        return _ghost_loader(files, labels, train=train, backend=backend, image_size=image_size,
                             batch_size=batch_size, flip=augment is not None, shift=ghost_shift,
                             num_workers=num_workers, seed=seed, shard_id=shard_id, num_shards=num_shards,
                             cache_paths=cache_paths, progress=progress, regions=regions)
    if input != "pixels":
        raise ValueError(f"unknown model input {input!r}: pixels or ghosts")
    resolved = resolve_backend(backend, device)
    common = dict(train=train, image_size=image_size, batch_size=batch_size, augment=augment,
                  num_workers=num_workers, seed=seed, shard_id=shard_id, num_shards=num_shards, device=device)
    if resolved == "torch":
        from realfake.pipelines.torch_loader import make_torch_loader

        loader = make_torch_loader(files, labels, draft=draft, **common)
    else:
        from realfake.pipelines.dali_loader import make_dali_loader

        extra = {} if hw_decoder_load is None else {"hw_decoder_load": hw_decoder_load}
        loader = make_dali_loader(files, labels, **common, **extra)
    log.info("loader: %s (%s, %d files, batch %d)", loader.backend, "train" if train else "eval",
             len(files), batch_size)
    return loader


def manifest_loader_options(input: str, data_dir, image_size: int, rows) -> dict:
    """Extra get_loader keywords for manifest `rows` of a prepared data set read as `input`: none for
    pixels; for ghost maps, the input and the data set's map cache (DATA_DIR/cache, by content sha256)."""
    if input != "ghosts":
        return {}
    from realfake.pipelines.jpeg_ghosts import cache_paths_for

    return {"input": "ghosts", "cache_paths": cache_paths_for(data_dir, image_size, [r.sha256 for r in rows])}


def _ghost_loader(files, labels, *, train, backend, image_size, batch_size, flip, shift, num_workers, seed,
                  shard_id, num_shards, cache_paths, progress, regions):
    from realfake.pipelines import jpeg_ghosts

    if backend == "dali":
        raise ValueError("--loader dali decodes pixels, but this model reads JPEG ghost maps, which PIL computes: "
                         "use --loader auto or torch")
    if train:
        if num_shards != 1:
            raise ValueError("ghost-map training loaders are not sharded")
        loader = jpeg_ghosts.InMemoryGhostLoader(files, labels, train=True, image_size=image_size,
                                                 batch_size=batch_size, seed=seed, flip=flip, shift=shift,
                                                 num_workers=num_workers, cache_paths=cache_paths, progress=progress,
                                                 regions=regions)
    else:
        loader = jpeg_ghosts.GhostMapLoader(files, labels, image_size=image_size, batch_size=batch_size,
                                            num_workers=num_workers, shard_id=shard_id, num_shards=num_shards,
                                            cache_paths=cache_paths)
    log.info("loader: %s (%s, %d files, batch %d)", loader.backend, "train" if train else "eval", len(files),
             batch_size)
    return loader
