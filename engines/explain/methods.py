"""The two evidence methods: a class activation map of ghost_cnn's last feature map, laid on the JPEG
block grid, and Grad-CAM (pytorch-grad-cam) of the pixel models' last convolution stage."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

METHODS = {"ghosts": "cam", "pixels": "grad-cam"}
UNITS = {"cam": "fake-minus-real logit of the cell (class activation map)",
         "grad-cam": "Grad-CAM of the fake-minus-real logit, scaled to [0, 1] per image"}
# The module whose output Grad-CAM reads, per pixel architecture: the last convolution, or for the
# torchvision nets their last convolution stage (a residual block's output after its addition).
CAM_LAYERS = {"simple_cnn": "conv2", "deep_cnn": "conv4", "resnet18": "layer4", "efficientnet_b0": "features",
              "mobilenet_v3_small": "features"}


@dataclass
class Evidence:
    """One image's evidence. `values` (rows, cols) lies on a grid of `cell_px`-pixel cells over the model's
    input canvas (rows * cell_px pixels a side); NaN where no view of the model reaches."""

    p_fake: float
    values: np.ndarray
    cell_px: int
    region_head: dict[str, float] | None = None  # probability the region head gives each edited region


class FakeMinusReal:
    """A pytorch-grad-cam target: the fake logit minus the real one (what moves p_fake under softmax)."""

    def __init__(self, fake: int, real: int):
        self.fake, self.real = fake, real

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.fake] - output[..., self.real]


def feature_stride(model: nn.Module) -> int:
    """Input cells per cell of ghost_cnn's feature map: the product of the poolings before it."""
    stride, layer = 1, model.feature_map_layer()
    for module in model.features:
        if module is layer:
            return stride
        if isinstance(module, nn.MaxPool2d):
            stride *= module.stride if isinstance(module.stride, int) else module.stride[0]
    raise ValueError(f"{type(model).__name__}.feature_map_layer() is not one of its features")


@torch.no_grad()
def class_activation_map(model: nn.Module, maps: torch.Tensor, fake: int = 1, real: int = 0,
                         region_head=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logits (N, classes), CAM (N, h, w) on the feature grid, region logits (N, 4) or None) of a
    ghost_cnn on maps (N, 33, S/8, S/8). CAM cell = (w_fake - w_real) . features[:, cell].
    `region_head`: a `recipes.RegionLoss` with the run's trained head."""
    captured = {}
    handle = model.feature_map_layer().register_forward_hook(lambda module, inputs, output: captured.update(map=output))
    try:
        logits = model(maps)
    finally:
        handle.remove()
    features = captured["map"].float()
    weights = (model.fc.weight[fake] - model.fc.weight[real]).float()
    cam = torch.einsum("c,nchw->nhw", weights, features)
    regions = region_head.region_scores(features).float() if region_head is not None else None
    return logits.float(), cam, regions


def block_grid(cam: np.ndarray, stride: int, cells: int, mirrored: bool = False) -> np.ndarray:
    """CAMs (N, h, w) on the feature grid laid on the (N, cells, cells) input block grid: each feature
    cell repeated over the stride x stride blocks it pools, NaN where no feature cell reaches. A map of
    the mirrored input is flipped back, so each value lands on the blocks it came from."""
    n, h, w = cam.shape
    grid = np.full((n, cells, cells), np.nan, dtype=np.float32)
    spread = np.repeat(np.repeat(cam, stride, axis=1), stride, axis=2)[:, :cells, :cells]
    grid[:, :spread.shape[1], :spread.shape[2]] = spread
    return grid[:, :, ::-1].copy() if mirrored else grid


def grad_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor, fake: int = 1,
             real: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """(Grad-CAM (N, H, W) in [0, 1] at the input's pixels, logits (N, classes)) of the fake-minus-real
    logit at `layer`, by pytorch-grad-cam."""
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:
        raise ValueError("Grad-CAM for pixel models needs pytorch-grad-cam: pip install 'realfake[explain]' "
                         "(PyPI grad-cam)") from None
    targets = [FakeMinusReal(fake, real)] * images.shape[0]
    with GradCAM(model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=images, targets=targets)
        logits = cam.outputs.detach().float()
    return np.asarray(maps, dtype=np.float32), logits


def cam_layer(model: nn.Module, architecture: str) -> nn.Module:
    """The module Grad-CAM reads for a pixel model (CAM_LAYERS; else its last Conv2d)."""
    name = CAM_LAYERS.get(architecture)
    if name is not None:
        return model.get_submodule(name)
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{architecture} has no convolution for Grad-CAM to read")
    return convolutions[-1]
