"""GhostCNN: a small CNN over JPEG ghost maps (`realfake.pipelines.jpeg_ghosts`), not over pixels.

Its input is (N, 33, S/8, S/8): 3 YCbCr planes x 11 re-save qualities, one cell per 8x8 JPEG block of
an S-pixel image. Five 3x3 convolutions (BatchNorm, ReLU) and three 2x2 poolings: the last
convolution's outputs sit 8 cells (64 px) apart and each sees 36 cells (288 px), an eye or mouth with
the face around it to compare with; a global max-pool keeps the strongest local evidence anywhere in
the face, so a small edit is not averaged away, and any map size works.
"""
from __future__ import annotations

from realfake.pipelines.jpeg_ghosts import BLOCK, CHANNELS
from torch import nn

# Three 2x2 poolings need at least 8 cells a side: 64 pixels.
MIN_IMAGE_SIZE = 8 * BLOCK
DEFAULT_IMAGE_SIZE = 600  # CIPLAB's side: the maps cover the whole face
DEFAULT_DROPOUT = 0.3
DEFAULT_WIDTH = 32  # channels of the first blocks; 64 and 128 after


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class GhostCNN(nn.Module):
    def __init__(self, num_classes: int = 2, width: int = DEFAULT_WIDTH, dropout: float = DEFAULT_DROPOUT):
        super().__init__()
        self.features = nn.Sequential(
            _block(CHANNELS, width), _block(width, width), nn.MaxPool2d(2),
            _block(width, 2 * width), _block(2 * width, 2 * width), nn.MaxPool2d(2), nn.MaxPool2d(2),
            _block(2 * width, 4 * width), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * width, num_classes)
        self.map_channels = 4 * width

    def forward(self, x):
        return self.fc(self.dropout(self.features(x)))

    def feature_map_layer(self) -> nn.Module:
        """The last convolution block, before the global max-pool: its (N, map_channels, S/64, S/64)
        output lies on a grid over the face (`engines.recipes.RegionLoss` reads it while training)."""
        return self.features[7]


def ghost_cnn(num_classes: int, image_size: int, dropout: float | None, width: int | None = None) -> GhostCNN:
    return GhostCNN(num_classes, width=DEFAULT_WIDTH if width is None else width,
                    dropout=DEFAULT_DROPOUT if dropout is None else dropout)
