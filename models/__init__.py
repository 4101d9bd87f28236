"""Model zoo: architectures by name, weight loading from a local file, backbone freezing.

    model = build_model("resnet18", image_size=128, weights=Path("resnet18-imagenet.pth"),
                        freeze_backbone=True)

Every model maps a float input batch to logits (N, num_classes); class order is `CLASS_NAMES`
("real", "fake"). Its `input` says what the batch holds: "pixels", images (N, 3, S, S) normalized
with `realfake.pipelines.spec.MEAN/STD`, or "ghosts", JPEG ghost maps (N, 33, S/8, S/8) of S-pixel
images (`realfake.pipelines.jpeg_ghosts`). Forward passes have no data-dependent control flow, so
the models work with channels_last, torch.compile and torch.export.

- simple_cnn, deep_cnn: the report's Model 1 and Model 2 (`report_cnns.py`); built for one image size.
- resnet18, efficientnet_b0, mobilenet_v3_small: torchvision nets with a new head
  (`torchvision_nets.py`); any input size >= 32.
- ghost_cnn: a small CNN over JPEG ghost maps (`ghost_cnn.py`); any size >= 64, default 600.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from realfake.pipelines.jpeg_ghosts import CHANNELS, grid_cells
from torch import nn

from . import ghost_cnn, report_cnns, torchvision_nets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _ModelSpec:
    build: Callable[[int, int, float | None], nn.Module]  # (num_classes, image_size, dropout)
    min_image_size: int
    head: str  # qualified name of the final linear layer (the part freeze_backbone keeps trainable)
    input: str = "pixels"  # or "ghosts": see the module docstring
    default_image_size: int = 128  # the report's
    has_width: bool = False  # build takes width= (channels of the first block; later blocks scale with it)


_MODELS: dict[str, _ModelSpec] = {
    "simple_cnn": _ModelSpec(report_cnns.simple_cnn, report_cnns.MIN_IMAGE_SIZE, "fc2"),
    "deep_cnn": _ModelSpec(report_cnns.deep_cnn, report_cnns.MIN_IMAGE_SIZE, "fc2"),
    **{
        name: _ModelSpec(getattr(torchvision_nets, name), torchvision_nets.MIN_IMAGE_SIZE, head)
        for name, head in torchvision_nets.HEAD_LAYERS.items()
    },
    "ghost_cnn": _ModelSpec(ghost_cnn.ghost_cnn, ghost_cnn.MIN_IMAGE_SIZE, "fc", input="ghosts",
                            default_image_size=ghost_cnn.DEFAULT_IMAGE_SIZE, has_width=True),
}

MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)

# Prefixes that wrappers add to state-dict keys: torch.compile's OptimizedModule, DataParallel/DDP.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def _spec(name: str) -> _ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}") from None


def min_image_size(name: str) -> int:
    """Smallest input side (pixels) that model `name` accepts."""
    return _spec(name).min_image_size


def model_input(name: str) -> str:
    """What model `name` reads: "pixels" or "ghosts"."""
    return _spec(name).input


def default_image_size(name: str) -> int:
    return _spec(name).default_image_size


def input_shape(name: str, image_size: int) -> tuple[int, int, int]:
    """(C, H, W) of one input of model `name` built for `image_size` pixels."""
    if model_input(name) == "ghosts":
        return (CHANNELS, grid_cells(image_size), grid_cells(image_size))
    return (3, image_size, image_size)


def build_model(
    name: str,
    *,
    num_classes: int = 2,
    image_size: int = 128,
    dropout: float | None = None,
    width: int | None = None,
    weights: Path | str | None = None,
    freeze_backbone: bool = False,
) -> nn.Module:
    """Build model `name` (one of MODEL_NAMES), in train mode, on the CPU.

    dropout: rate of the dropout in front of the classifier (None = the architecture's default:
        0.5 for the report's CNNs, none for resnet18, torchvision's 0.2 for the other two).
    weights: a local file saved with torch.save: a state dict, or a checkpoint dict holding one under
        "model" or "state_dict" (keys prefixed by torch.compile/DDP wrappers are accepted). The whole
        network must match; only the head may differ in class count (e.g. torchvision's ImageNet
        files with 1000 outputs), in which case the new head is kept and the skipped keys are logged.
    freeze_backbone: set requires_grad=False on every parameter except the head's. (BatchNorm
        running statistics still update in train mode, as in torchvision's fine-tuning recipe.)

    Raises ValueError for an unknown name, a too-small image size, an unreadable weights file, or
    weights that do not fit the model.
    """
    spec = _spec(name)
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(f"image size must be an integer number of pixels, got {image_size!r}")
    if image_size < spec.min_image_size:
        raise ValueError(f"image size {image_size} is too small for {name}: use at least {spec.min_image_size}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout {dropout} is out of range: use a rate in [0, 1), or None for the default")

    if width is not None:
        if not spec.has_width:
            raise ValueError(f"{name} has a fixed width: --width applies to ghost_cnn only")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive number of channels, got {width!r}")
    model = spec.build(num_classes, image_size, dropout, **({} if width is None else {"width": width}))
    if weights is not None:
        load_weights(model, weights, head=spec.head, model_name=name)
    if freeze_backbone:
        if weights is None:
            log.warning("%s: freezing a randomly initialized backbone; pass weights= to fine-tune a trained one", name)
        head_prefix = spec.head + "."
        for param_name, param in model.named_parameters():
            param.requires_grad = param_name.startswith(head_prefix)
    return model


def mean_probability_logits(logits: list[torch.Tensor]) -> torch.Tensor:
    """Logits whose softmax is the mean of the given logits' softmaxes (the log of the mean probability)."""
    p = torch.stack([x.float().softmax(1) for x in logits]).mean(0)
    return p.clamp_min(1e-12).log()


class Ensemble(nn.Module):
    """Models of one architecture run on the same input: logits whose softmax is the members' mean
    probability (log of the mean), so every consumer of logits averages p_fake over the members."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_probability_logits([member(x) for member in self.members])


class MirrorAverage(nn.Module):
    """A model run on the input and on its mirror image (the last axis flipped), with Ensemble's contract:
    logits whose softmax is the mean of the two probabilities (`evaluate --tta flip` inside an engine)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_probability_logits([self.model(x), self.model(x.flip(-1))])


def build_ensemble(name: str, members: int, **kwargs) -> nn.Module:
    """`members` untrained build_model(name, **kwargs) in an Ensemble; one member is the plain model."""
    models = [build_model(name, **kwargs) for _ in range(members)]
    return models[0] if members == 1 else Ensemble(models)


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The state dict in a torch.save file (plain, or under "model"/"state_dict"), wrapper prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist: pass the path of a file saved with torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(
            f"cannot read weights file {path} ({reason}): pass a state dict or checkpoint saved with torch.save"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise ValueError(
            f"weights file {path} holds no state dict: expected a dict of tensors, or a checkpoint "
            f"dict with one under 'model' or 'state_dict'"
        )
    state = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: Path | str, *, head: str, model_name: str) -> None:
    """Copy the tensors of file `path` into `model`; every non-head tensor must match by name and shape.

    Head tensors (`head` = qualified name of the final layer) whose shape differs (another class
    count) are skipped and logged, leaving the model's new head in place.
    """
    source = read_state_dict(path)
    target = model.state_dict()
    head_prefix = head + "."

    matched: dict[str, torch.Tensor] = {}
    skipped_head: list[str] = []
    mismatched: list[str] = []
    unexpected: list[str] = []
    for key, tensor in source.items():
        if key not in target:
            unexpected.append(key)
        elif tensor.shape == target[key].shape:
            matched[key] = tensor
        elif key.startswith(head_prefix):
            skipped_head.append(key)
        else:
            mismatched.append(f"{key} is {tuple(tensor.shape)} in the file, {tuple(target[key].shape)} in the model")
    # BatchNorm's num_batches_tracked is absent from older files (torchvision's ImageNet ResNets).
    missing = [
        k for k in target
        if k not in source and not k.startswith(head_prefix) and not k.endswith("num_batches_tracked")
    ]

    fix = f"use weights saved from {model_name} with the same image size and options"
    if not matched:
        raise ValueError(
            f"no tensor in weights file {path} fits {model_name} (file keys like {next(iter(source))!r}, "
            f"model keys like {next(iter(target))!r}): {fix}"
        )
    if mismatched:
        raise ValueError(f"weights file {path} does not fit {model_name}: {mismatched[0]} "
                         f"({len(mismatched)} mismatched tensors): {fix}")
    if missing or unexpected:
        details = []
        if missing:
            details.append(f"{len(missing)} model tensors missing from the file (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} file tensors not in the model (e.g. {unexpected[0]})")
        raise ValueError(f"weights file {path} does not fit {model_name}: {'; '.join(details)}: {fix}")

    model.load_state_dict(matched, strict=False)
    if skipped_head:
        log.info(
            "%s: loaded %d tensors from %s; kept the new head, skipping %s (another class count)",
            model_name, len(matched), path, ", ".join(skipped_head),
        )
    else:
        log.info("%s: loaded %d tensors from %s", model_name, len(matched), path)


__all__ = ["MODEL_NAMES", "Ensemble", "build_ensemble", "build_model", "default_image_size", "input_shape",
           "load_weights", "min_image_size", "model_input", "read_state_dict"]
