"""compile backend: the eager artifact, torch.compile'd when the engine loads.

Mode: inductor's default on both CPU and GPU. The compile happens at every load (a cold compile costs
tens of seconds on a small CPU, less with a warm inductor cache), so `max-autotune`'s minutes of kernel
benchmarking would be paid by every scoring job; "reduce-overhead" (CUDA graphs) records one graph
per batch size and only pays off for tiny batches. Where compile time matters, use the `aot`
backend, which compiles once at build. On the CPU, inductor's `freezing` folds the weights into
constants and pre-packs them for oneDNN (inference only: engines run under inference_mode).

The batch dimension is marked dynamic (torch._dynamo.mark_dynamic), so batch sizes inside the
engine's range share one graph; batch 1 gets its own (dynamo specializes sizes 0 and 1).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from realfake.engines.backends import eager
from realfake.engines.backends.common import AutocastRunner, compiler_missing

NAME = "compile"
ARTIFACT = eager.ARTIFACT
CHANNELS_LAST = True
build = eager.build


def unavailable_reason(device: str) -> str | None:
    return compiler_missing(device)


def compile_options(device: str) -> dict[str, Any]:
    """Inductor options for this device (see the module docstring)."""
    return {"freezing": True} if not str(device).startswith("cuda") else {}


class DynamicBatch:
    """Marks the batch dimension dynamic before each call (without bounds: dynamo's range guards
    around bounded marks proved brittle; Engine.predict keeps batches inside the range anyway)."""

    def __init__(self, runner: Callable[[torch.Tensor], torch.Tensor]):
        self.runner = runner

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] >= 2:
            torch._dynamo.mark_dynamic(images, 0)
        return self.runner(images)


def load(engine_dir: Path, meta: Mapping[str, Any], device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    model = eager.load_module(engine_dir, meta, device)
    compiled = torch.compile(model, options=compile_options(device))
    runner = AutocastRunner(compiled, device, meta["precision"])
    return DynamicBatch(runner)
