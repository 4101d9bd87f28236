"""Transfer-learning nets from torchvision with a new classification head.

ResNet18 is the report's transfer-learning model ("Transfer Learning": fine-tuning a pretrained
ResNet18); EfficientNet-B0 and MobileNetV3-Small are small modern torchvision nets added for speed
comparisons. All are built with `weights=None`: pretrained weights come only from a local file
(`build_model(..., weights=PATH)`), never from a download.

Each net ends in adaptive average pooling, so any input side >= MIN_IMAGE_SIZE works (the nets
downsample 32x; at 32 px the last feature map is 1x1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv_models

MIN_IMAGE_SIZE = 32

# Qualified name of each net's final (replaced) classification layer: what freeze_backbone leaves
# trainable and what weight loading may skip when a file's head has another class count.
HEAD_LAYERS = {
    "resnet18": "fc",
    "efficientnet_b0": "classifier.1",
    "mobilenet_v3_small": "classifier.3",
}


class DropoutLinear(nn.Linear):
    """nn.Linear that applies dropout to its input.

    Keeps the plain `weight`/`bias` state-dict keys of the layer it replaces, so a checkpoint loads
    whether or not the model that saved it used dropout (an nn.Sequential would rename them).
    """

    def __init__(self, in_features: int, out_features: int, p: float):
        super().__init__(in_features, out_features)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.dropout(x, self.p, self.training))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


def resnet18(num_classes: int, image_size: int, dropout: float | None) -> nn.Module:
    # torchvision's ResNet has no dropout; add it in front of the head only when asked.
    model = tv_models.resnet18(weights=None, num_classes=num_classes)
    if dropout is not None:
        model.fc = DropoutLinear(model.fc.in_features, num_classes, dropout)
    return model


def efficientnet_b0(num_classes: int, image_size: int, dropout: float | None) -> nn.Module:
    # The classifier is already Dropout -> Linear; `dropout` sets its rate (torchvision default 0.2).
    kwargs = {} if dropout is None else {"dropout": dropout}
    return tv_models.efficientnet_b0(weights=None, num_classes=num_classes, **kwargs)


def mobilenet_v3_small(num_classes: int, image_size: int, dropout: float | None) -> nn.Module:
    # Classifier: Linear(576->1024) Hardswish Dropout Linear(1024->classes); `dropout` sets the rate
    # of the dropout in front of the head (torchvision default 0.2).
    kwargs = {} if dropout is None else {"dropout": dropout}
    return tv_models.mobilenet_v3_small(weights=None, num_classes=num_classes, **kwargs)
