"""A loaded engine: what every scoring job runs.

    engine = load_engine("engines_out/m1")      # checks engine.json, loads the backend's artifact
    p_fake = engine.predict(images)             # (N, C, H, W) float -> (N,) float32 on the CPU
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from realfake.engines.backends import COMPILED_ARTIFACT_BACKENDS, backend_module
from realfake.engines.evidence import Gate
from realfake.engines.schema import EngineError, engine_ghost_maps, one_line, parse_batch, read_engine_meta
from realfake.models import input_shape, model_input

log = logging.getLogger(__name__)


class Engine:
    """A loaded engine. `predict(images)` -> p_fake (float32, CPU) for any N: inputs above the batch
    range are split into chunks of `batch.max`, a chunk below `batch.min` is padded with zeros."""

    def __init__(self, path: Path, meta: dict, runner: Callable[[torch.Tensor], torch.Tensor], device: str):
        self.path = Path(path)
        self.meta = meta
        self.engine_id: str = meta["engine_id"]
        self.image_size: int = int(meta["image_size"])
        self.input: str = model_input(meta["architecture"])  # "pixels" or "ghosts" (JPEG ghost maps)
        self.ghost_maps: str | None = engine_ghost_maps(meta)  # the kind of ghost maps it reads; None: pixels
        self.input_shape: tuple[int, int, int] = input_shape(meta["architecture"], self.image_size)
        self.threshold: float = float(meta["threshold"])
        self.backend: str = meta["backend"]
        self.precision: str = meta["precision"]
        self.batch = parse_batch(meta["batch"])
        self.channels_last: bool = bool(meta["channels_last"])
        self.device = torch.device(device)
        self._runner = runner
        self._fake_index = list(meta["class_names"]).index("fake")
        self.gate = Gate.from_meta(meta["evidence"])  # None: the engine decides every file

    def __repr__(self) -> str:
        return (f"Engine({self.engine_id}, {self.backend} {self.precision}, {self.meta['architecture']}@{self.image_size}, "
                f"batch {self.batch}, {self.device})")

    def _check_images(self, images: torch.Tensor) -> None:
        channels, height, width = self.input_shape
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != channels:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            what = "images" if self.input == "pixels" else "JPEG ghost maps"
            raise ValueError(f"engine {self.engine_id} takes {what} of shape (N, {channels}, {height}, {width}), "
                             f"got {shape}")
        if tuple(images.shape[-2:]) != (height, width):
            raise ValueError(f"engine {self.engine_id} ({self.path}) was built for {self.image_size}x{self.image_size} "
                             f"images (input {height}x{width}), got {tuple(images.shape[-2:])}: load the images at "
                             f"image_size={self.image_size}")

    def logits(self, images: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Raw float32 logits (N, num_classes) on the CPU, run in chunks of `chunk_size` images
        (default and at most the engine's batch max)."""
        self._check_images(images)
        n = images.shape[0]
        if n == 0:
            return torch.empty(0, len(self.meta["class_names"]))
        step = min(chunk_size or self.batch.max, self.batch.max)
        out = []
        with torch.inference_mode():
            for start in range(0, n, step):
                chunk = images[start:start + step].to(self.device, torch.float32, non_blocking=True)
                real = chunk.shape[0]
                if real < self.batch.min:  # TensorRT profiles reject batches below their minimum
                    pad = chunk.new_zeros((self.batch.min - real, *chunk.shape[1:]))
                    chunk = torch.cat([chunk, pad])
                if self.channels_last:
                    chunk = chunk.contiguous(memory_format=torch.channels_last)
                else:
                    chunk = chunk.contiguous()
                out.append(self._runner(chunk)[:real].float().cpu())
        return torch.cat(out)

    def predict(self, images: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """p_fake (probability of class "fake") per image, float32 on the CPU (see `logits`)."""
        logits = self.logits(images, chunk_size)
        if logits.shape[0] == 0:
            return torch.empty(0)
        return torch.softmax(logits, dim=1)[:, self._fake_index].contiguous()

    def close(self) -> None:
        self._runner = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_device(meta: Mapping[str, Any], device: str | None, path: Path) -> str:
    built_for = meta["device"]
    if device is None or device == "auto":
        device = "cuda" if built_for == "cuda" else "cpu"
    device = str(device)
    wants_type = "cuda" if device.startswith("cuda") else "cpu"
    if meta["backend"] in COMPILED_ARTIFACT_BACKENDS and wants_type != built_for:
        if built_for == "cuda":
            raise EngineError(f"{path} holds a compiled ({meta['backend']}) engine built for CUDA; it cannot run "
                              "on the CPU: rebuild it with --device cpu")
        # A CPU-compiled package on a GPU host: run it where it was compiled for.
        log.warning("%s holds a compiled (%s) engine built for the CPU: running it there (rebuild it with "
                    "--device cuda to use the GPU)", path, meta["backend"])
        return "cpu"
    if wants_type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"{path} asks for a CUDA device but torch sees none: load it with device='cpu'"
                          + (" or rebuild it for the CPU" if meta["precision"] == "fp16" else ""))
    if meta["precision"] == "fp16" and wants_type == "cpu":
        raise EngineError(f"{path} is an fp16 engine, which needs a CUDA device: rebuild it with --precision "
                          "fp32 (or bf16) for the CPU")
    return device


def load_engine(path: str | Path, device: str | None = None, *, expected_image_size: int | None = None) -> Engine:
    """Load engine directory `path` on `device` (None: the device type it was built for)."""
    path = Path(path)
    meta = read_engine_meta(path, expected_image_size=expected_image_size)
    run_device = _load_device(meta, device, path)
    try:
        runner = backend_module(meta["backend"]).load(path, meta, run_device)
    except ValueError:  # EngineError included: already one clear line
        raise
    except Exception as exc:
        raise EngineError(f"{path}: the {meta['backend']} artifact {meta['artifact']['file']} failed to load "
                          f"({type(exc).__name__}: {one_line(exc)}): rebuild it with `realfake engine build`") from exc
    return Engine(path, meta, runner, run_device)
