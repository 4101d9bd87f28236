"""Eager backend: the checkpoint's weights, rebuilt with `realfake.models.build_model` at load.

Runs anywhere, loads in a second, and is the reference every other backend is compared to. The
artifact is the state dict alone (`model.pt`, loadable with torch.load(weights_only=True)); the
architecture comes from engine.json. fp16/bf16 run under torch.autocast on the device. channels_last
is on: oneDNN and cuDNN run 2-D convolutions faster in NHWC (docs/engines.md).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from realfake.engines.backends.common import AutocastRunner, model_from_meta

NAME = "eager"
ARTIFACT = "model.pt"
CHANNELS_LAST = True


def unavailable_reason(device: str) -> str | None:
    return None


def build(model: torch.nn.Module, example: torch.Tensor, batch, precision: str, out_dir: Path, *,
          device: str) -> str:
    state = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
    torch.save({"model": state}, Path(out_dir) / ARTIFACT)
    return ARTIFACT


def load_module(engine_dir: Path, meta: Mapping[str, Any], device: str) -> torch.nn.Module:
    """The engine's model with its weights, in eval mode on `device` (channels_last as recorded)."""
    model = model_from_meta(meta)
    state = torch.load(Path(engine_dir) / meta["artifact"]["file"], map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    model = model.to(device).eval()
    if meta.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model


def load(engine_dir: Path, meta: Mapping[str, Any], device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return AutocastRunner(load_module(engine_dir, meta, device), device, meta["precision"])
