"""What the backends share: rebuilding the engine's module from engine.json, running it in a reduced
precision behind a float32 interface, and the error a crashed compiler becomes."""
from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import torch
from realfake.models import MirrorAverage, build_ensemble
from torch import nn

# The dtype each precision of engine.json (schema.PRECISIONS) runs in.
PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BackendCrash(RuntimeError):
    """A backend's compiler killed the process it ran in (a signal, not an exception)."""


def model_from_meta(meta: Mapping[str, Any]) -> nn.Module:
    """An untrained module of the engine's architecture (eval mode, CPU): an Ensemble of `members` of it
    when the engine averages several runs, mirrored when it averages flips."""
    model = build_ensemble(meta["architecture"], int(meta["members"]), num_classes=int(meta["num_classes"]),
                           image_size=int(meta["image_size"]), dropout=meta["dropout"], width=meta["width"])
    return (MirrorAverage(model) if meta["tta"] == "flip" else model).eval()


class CastInput(nn.Module):
    """Runs `model` (already converted to `dtype`) on float32 input and returns float32 logits, so
    that an exported reduced-precision graph keeps the engine's float32 interface."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


class AutocastRunner:
    """Calls `module` under autocast to `precision` (nothing for fp32) on `device`."""

    def __init__(self, module: Callable[[torch.Tensor], torch.Tensor], device: str | torch.device, precision: str):
        self.module = module
        self.device_type = torch.device(device).type
        self.dtype = None if precision == "fp32" else PRECISION_DTYPES[precision]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.module(images)
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            return self.module(images)


def compiler_missing(device: str) -> str | None:
    """Why inductor cannot generate code for `device` here (no C++ compiler / no Triton), or None."""
    if str(device).startswith("cuda"):
        if importlib.util.find_spec("triton") is None:
            return "inductor needs Triton for CUDA code (pip install triton)"
        return None
    compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        return "inductor needs a C++ compiler for CPU code (install g++, or set CXX)"
    return None
