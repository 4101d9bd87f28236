"""The source report's two custom CNNs (docs/source-report.txt, "Pruebas de Modelos").

`SimpleCNN` is Model 1 ("Modelo 1", trained with Adam) and `DeepCNN` is Model 2 ("Modelo 2.1"/"2.2",
the same network trained without and with data augmentation). The report's layer lists and its
torchsummary tables disagree in places; where they do, the parameter counts decide, because they pin
the layer sizes: at 128 px Model 1 has 8,408,386 parameters in its convolutions and linear layers
(plus 128 in BatchNorm, which the summary leaves out) and Model 2 has 134,608,002 in total.

The first linear layer's input size follows from `image_size`: two 2x2 max-pools (floor mode) leave
`image_size // 4` pixels per side, so any size >= MIN_IMAGE_SIZE works, divisible by 4 or not.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Two 2x2 poolings leave image_size // 4 pixels a side; below 16 that is under 4x4, too little for
# the linear layers to see any spatial structure.
MIN_IMAGE_SIZE = 16
DEFAULT_DROPOUT = 0.5


def _pooled_side(image_size: int) -> int:
    # MaxPool2d(2) floors, twice: the same arithmetic as the forward pass.
    return image_size // 2 // 2


def _check_input(x: torch.Tensor, image_size: int, model: str) -> None:
    # Shape (not data) check: static under torch.export/compile, and a clearer error than
    # "mat1 and mat2 shapes cannot be multiplied" when an engine is fed the wrong image size.
    if x.shape[-2:] != (image_size, image_size):
        raise ValueError(
            f"{model} was built for {image_size}x{image_size} images but got "
            f"{tuple(x.shape[-2:])}: resize the input or build the model with that image_size"
        )


class SimpleCNN(nn.Module):
    """Model 1: two convolutions (BatchNorm after the second), two max-pools, two linear layers.

    conv(3->32) ReLU pool / conv(32->64) BN ReLU pool / fc(64*(s/4)^2 -> 128) ReLU dropout / fc(128 -> 2)
    """

    def __init__(self, num_classes: int = 2, image_size: int = 128, dropout: float = DEFAULT_DROPOUT):
        super().__init__()
        self.image_size = image_size
        side = _pooled_side(image_size)
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc1 = nn.Linear(64 * side * side, 128)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.image_size, "simple_cnn")
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)  # logical (N, C*H*W) order, also for channels_last input
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


class DeepCNN(nn.Module):
    """Model 2: four convolutions in two blocks, BatchNorm after the first of each, dropout on the
    last feature map and before the output layer.

    conv(3->32) BN ReLU / conv(32->64) ReLU / pool /
    conv(64->128) BN ReLU / conv(128->256) ReLU / dropout / pool /
    fc(256*(s/4)^2 -> 512) ReLU dropout / fc(512 -> 2)
    """

    def __init__(self, num_classes: int = 2, image_size: int = 128, dropout: float = DEFAULT_DROPOUT):
        super().__init__()
        self.image_size = image_size
        side = _pooled_side(image_size)
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, stride=1, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.conv4 = nn.Conv2d(128, 256, kernel_size=3, stride=1, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        # Two modules, as in the report's summary (Dropout-8 on the feature map, Dropout-11 on fc1).
        self.dropout_features = nn.Dropout(dropout)
        self.fc1 = nn.Linear(256 * side * side, 512)
        self.dropout_fc = nn.Dropout(dropout)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.image_size, "deep_cnn")
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.pool(self.dropout_features(F.relu(self.conv4(x))))
        x = torch.flatten(x, 1)
        x = self.dropout_fc(F.relu(self.fc1(x)))
        return self.fc2(x)


def simple_cnn(num_classes: int, image_size: int, dropout: float | None) -> SimpleCNN:
    return SimpleCNN(num_classes, image_size, DEFAULT_DROPOUT if dropout is None else dropout)


def deep_cnn(num_classes: int, image_size: int, dropout: float | None) -> DeepCNN:
    return DeepCNN(num_classes, image_size, DEFAULT_DROPOUT if dropout is None else dropout)
