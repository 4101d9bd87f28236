"""One factory, one signature, every kind of loader (compare DeepLearningExamples' `get_dali_train_loader`
/ `get_pytorch_train_loader`).

A loader is iterable over `Batch`, has `.backend`, `len()` (batches) and `set_epoch(epoch)`. What it
reads follows the model's input and the cache asked for:
- pixels, decoded per epoch: DALI or torchvision (`pixel_loaders.py`);
- pixels, decoded once into a uint8 cache in host or GPU memory and augmented there (`gpu_cache.py`);
- JPEG ghost maps of either kind (`ghost_inputs.py`), the ghost_cnn model's input: computed by
  DataLoader workers (`ghost_loaders.py`), by DALI decoding and the maps on the device
  (`dali_ghosts.py`), or per epoch on the device from a decoded set (`ghost_device.py`, `cache="gpu"`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from realfake.pipelines import jpeg_ghosts
from realfake.pipelines.ghost_loaders import GhostMapLoader, InMemoryGhostLoader
from realfake.pipelines.gpu_cache import CACHE_CHOICES, make_cached_loader
from realfake.pipelines.pixel_loaders import make_pixel_loader, resolve_backend
from realfake.pipelines.spec import DEFAULT_IMAGE_SIZE, AugmentSpec

log = logging.getLogger(__name__)


def get_loader(files: Sequence[str], labels: Sequence[int] | None, *, train: bool, backend: str = "auto",
               image_size: int = DEFAULT_IMAGE_SIZE, batch_size: int = 32, augment: AugmentSpec | None = None,
               num_workers: int = 2, seed: int = 0, shard_id: int = 0, num_shards: int = 1,
               device: str = "cpu", draft: bool = False, hw_decoder_load: float | None = None,
               input: str = "pixels", cache: str = "none", source_size: int | None = None,
               cache_paths: Sequence | None = None, progress: bool = True, ghost_shift: int = 0,
               regions: Sequence | None = None, ghost_maps: str = "pil", launder: float = 0.0):
    """Build a loader over `files`. Train loaders shuffle and augment (when `augment` is given); eval
    loaders keep order and deliver every file of the shard exactly once.

    shard_id / num_shards: one of several processes (DDP). An eval shard is a contiguous range
    (`spec.shard_range`); a train shard is this process's share of each epoch's permutation of all the
    files (`spec.train_shard`, DistributedSampler's semantics; ghost maps `spec.shard_of` their own),
    equal-sized so every process runs the same number of steps.

    cache="memory"/"gpu" (pixels): decode the files once (with `backend`) into a uint8 cache in host /
    GPU memory and augment batches there; `source_size`, the files' decoded side, scales the report's
    blur (specified for the decoded images) to the cache's size.
    input="ghosts": JPEG ghost maps of image_size-pixel crops, of kind `ghost_maps` ("pil" or "dct", see
    `ghost_inputs`), computed from the files by DataLoader workers; `cache_paths` (one per file, for
    that kind) keep them between runs, and train loaders hold the whole set in memory and augment with
    horizontal flips (`augment` given) and shifts of up to `ghost_shift` cells; `regions` (one per file,
    see `prepare.edited_regions`) come with their batches as `Batch.regions` (ghost-map train loaders
    only). backend="dali" decodes with DALI and computes the maps on `device` (eval loaders), cache="gpu"
    holds the decoded set on the GPU and computes the maps there each epoch ("pil" maps there are the
    reference's bit for bit, `jpeg_ghosts_exact`).

    launder: the share of train items replaced each epoch by a laundered copy of the file
    (`launder.drawn(seed, epoch, index)`: re-saved, resized or cropped, label unchanged); ghost maps of
    those are computed on the fly. Pixel models: the torchvision loader launders the bytes before
    decoding them; DALI and the decoded caches cannot, and refuse it.
    """
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} must be at least 1")
    if image_size < 8:
        raise ValueError(f"image size {image_size} is too small: use at least 8")
    if input not in ("pixels", "ghosts"):
        raise ValueError(f"unknown model input {input!r}: pixels or ghosts")
    if cache not in CACHE_CHOICES:
        raise ValueError(f"unknown cache {cache!r}: choose one of {', '.join(CACHE_CHOICES)}")
    if regions is not None and not (input == "ghosts" and train):
        raise ValueError("edited-region targets come with ghost-map training loaders only (--region-loss is for "
                         "ghost_cnn)")
    if not 0.0 <= launder <= 1.0:
        raise ValueError(f"launder {launder} must be a probability between 0 and 1 (e.g. 0.5)")
    if launder and not train:
        raise ValueError("laundering is for training loaders only: evaluate laundered copies with "
                         "`realfake evaluate --launder`")
    if input == "ghosts":
        loader = _ghost_loader(files, labels, train=train, backend=backend, image_size=image_size,
                               batch_size=batch_size, flip=augment is not None, shift=ghost_shift,
                               num_workers=num_workers, seed=seed, shard_id=shard_id, num_shards=num_shards,
                               cache_paths=cache_paths, progress=progress, regions=regions, kind=ghost_maps,
                               cache=cache, device=device, launder=launder)
    elif launder and (cache != "none" or resolve_backend("torch" if backend == "auto" else backend, device) != "torch"):
        raise ValueError("--launder on pixel models launders each file's bytes before the torchvision loader "
                         "decodes them: use --loader torch and --cache none (DALI and the decoded caches read "
                         "the files as saved)")
    elif cache != "none":
        if cache == "gpu" and not str(device).startswith("cuda"):
            raise ValueError(f"--cache gpu needs a CUDA device but the run is on {device}: use --cache memory")
        loader = make_cached_loader(files, labels, train=train, image_size=image_size, batch_size=batch_size,
                                    augment=augment, seed=seed, device=device if cache == "gpu" else "cpu",
                                    decode_backend=backend, num_workers=num_workers,
                                    augment_scale=image_size / max(source_size or image_size, 1), progress=progress,
                                    shard_id=shard_id, num_shards=num_shards)
    else:
        if launder:  # auto: the decoder that can launder
            backend = "torch"
        loader = make_pixel_loader(files, labels, train=train, backend=backend, image_size=image_size,
                                   batch_size=batch_size, augment=augment, num_workers=num_workers, seed=seed,
                                   shard_id=shard_id, num_shards=num_shards, device=device, draft=draft,
                                   hw_decoder_load=hw_decoder_load, launder=launder)
    log.info("loader: %s (%s, %d files, batch %d)", loader.backend, "train" if train else "eval", len(files),
             batch_size)
    return loader


def manifest_loader_options(input: str, data_dir, image_size: int, rows, ghost_maps: str = "pil") -> dict:
    """Extra get_loader keywords for manifest `rows` of a prepared data set read as `input`: none for
    pixels; for ghost maps, the input, their kind and the data set's map cache of that kind
    (DATA_DIR/cache, by content sha256)."""
    if input != "ghosts":
        return {}
    return {"input": "ghosts", "ghost_maps": ghost_maps,
            "cache_paths": jpeg_ghosts.cache_paths_for(data_dir, image_size, [r.sha256 for r in rows], ghost_maps)}


def _ghost_loader(files, labels, *, train, backend, image_size, batch_size, flip, shift, num_workers, seed,
                  shard_id, num_shards, cache_paths, progress, regions, kind, cache, device, launder):
    jpeg_ghosts.check_kind(kind)
    if cache == "memory":
        raise ValueError("ghost maps are held in memory whatever --cache says: use --cache none (or gpu, for "
                         "maps computed on the GPU each epoch)")
    if cache == "gpu":
        if not str(device).startswith("cuda"):
            raise ValueError(f"--cache gpu needs a CUDA device but the run is on {device}: drop --cache (ghost "
                             "maps are cached on disk and held in memory)")
        if num_shards != 1:
            raise ValueError("ghost-map loaders with --cache gpu are not sharded")
        from realfake.pipelines.ghost_device import DeviceGhostLoader

        return DeviceGhostLoader(files, labels, train=train, image_size=image_size, batch_size=batch_size, seed=seed,
                                 flip=flip, shift=shift, num_workers=num_workers, device=device, progress=progress,
                                 regions=regions, launder=launder, kind=kind)
    if backend == "dali":
        if train:
            raise ValueError("ghost-map training does not decode with DALI: use --cache gpu (the maps on the GPU "
                             "each epoch) or --loader auto")
        from realfake.pipelines.dali_ghosts import make_dali_ghost_loader

        return make_dali_ghost_loader(files, labels, image_size=image_size, batch_size=batch_size,
                                      num_workers=num_workers, shard_id=shard_id, num_shards=num_shards, device=device,
                                      kind=kind)
    if train:
        return InMemoryGhostLoader(files, labels, train=True, image_size=image_size, batch_size=batch_size, seed=seed,
                                   flip=flip, shift=shift, num_workers=num_workers, cache_paths=cache_paths,
                                   progress=progress, regions=regions, kind=kind, launder=launder,
                                   shard_id=shard_id, num_shards=num_shards)
    return GhostMapLoader(files, labels, image_size=image_size, batch_size=batch_size, num_workers=num_workers,
                          shard_id=shard_id, num_shards=num_shards, cache_paths=cache_paths, kind=kind)
