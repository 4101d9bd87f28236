"""Every training option, declared once.

`TrainConfig` is what `realfake train`, `realfake submit train`, sweep specs and `realfake pretrain`
(`PretrainConfig`: the same fields with pretraining's defaults, less those that do not apply) are made
from, and what a run's config.json records under "args". `validate()` gives the one-line errors of bad
combinations before any data is read.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from realfake.engines.recipes import SCHEDULES
from realfake.engines.trainer import OPTIMIZERS
from realfake.jobs.service.options import check_values, dataclass_params, option
from realfake.jobs.service.params import InputPath
from realfake.models import default_image_size, model_input
from realfake.pipelines.gpu_cache import CACHE_CHOICES
from realfake.pipelines.jpeg_ghosts import GHOST_MAPS
from realfake.pipelines.pixel_loaders import LOADER_CHOICES

PIXELS, GHOSTS = ("pixels",), ("ghosts",)
MODEL_HELP = ("simple_cnn (report's Model 1), deep_cnn (Model 2), resnet18, efficientnet_b0, mobilenet_v3_small "
              "(pixels); ghost_cnn (JPEG ghost maps: how each 8x8 block changes when the file is re-saved at 11 "
              "qualities).")


@dataclass(frozen=True)
class TrainConfig:
    """The options of one training run (see the module docstring); the defaults are the report's."""

    model: str = option("simple_cnn", MODEL_HELP)
    epochs: int = option(10, "Epochs to train (with --resume: the new total).", min=1)
    batch_size: int = option(32, "Images per training batch.", min=1)
    optimizer: str = option("adam", "Optimizer (adamw: decoupled weight decay).", choices=OPTIMIZERS)
    lr: float = option(1e-3, "Learning rate (the report: Adam 0.001, Adadelta 0.1).")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(0.0, "Weight decay.")
    step_size: int = option(0, "StepLR period in epochs; 0 keeps the LR constant.", min=0)
    gamma: float = option(0.1, "StepLR decay factor.")
    dropout: float | None = option(None, "Dropout probability (default: the model's own, 0.5 for the report's "
                                         "CNNs).")
    width: int | None = option(None, "Channels of ghost_cnn's first blocks, later ones 2x and 4x (default 32; 48 "
                                     "costs ~1.8x).", min=1, inputs=GHOSTS, applies="applies to ghost_cnn only")
    image_size: int | None = option(None, "Images are resized to SIZE x SIZE. Default: the model's own, the report's "
                                          "128 (600 for ghost_cnn, whose JPEG ghost maps cover a centre crop of SIZE x "
                                          "SIZE pixels at native resolution).")
    augment: bool = option(True, "The report's augmentation on the train split only: rotation ±15°, flip, "
                                 "brightness/contrast ±0.2, Gaussian blur (ghost maps: flips only).")
    compile: bool | None = option(None, "torch.compile the model. Default: on a GPU yes; on a CPU no (a cold compile "
                                        "costs more than it saves on short runs).")
    amp: bool = option(False, "Mixed precision where the device computes it natively: fp16 on a GPU, bf16 on CPUs "
                              "with bf16 units (AVX512-BF16/AMX); elsewhere fp32, with a warning.")
    channels_last: bool = option(False, "Use the channels_last memory format.")
    patience: int | None = option(None, "Stop after N epochs without a better valid loss.", min=1)
    seed: int = option(0, "Seed of the weights, the shuffle and the augmentation.")
    loader: str = option("auto", "auto = DALI on the GPU if there is one, DALI on the CPU where installed, "
                                 "torchvision otherwise.", choices=LOADER_CHOICES)
    num_workers: int = option(2, "Loader worker threads/processes.", min=0)
    weights: InputPath | None = option(None, "Local state dict to start from (e.g. ImageNet weights for "
                                                   "resnet18). Nothing is downloaded.")
    freeze_backbone: bool = option(False, "Train only the new head (torchvision models).")
    device: str = option("auto", "auto, cpu or cuda[:N].")
    nproc: int = option(1, "Train data-parallel in this many processes on this machine (torch.distributed DDP: gloo "
                           "on the CPU, which they share; nccl on CUDA, one GPU each). Each reads its share of "
                           "every epoch, so --batch-size is per process. Under torchrun leave it at 1: the "
                           "processes are torchrun's.", min=1)
    pseudo_fakes: float = option(0.0, "Self-blended pseudo-fakes: this fraction of each train batch's real images "
                                      "is copied, a face region (eyes/nose/mouth/face/random blob) blended with a "
                                      "colour-, scale- and position-jittered copy of itself or another real face, "
                                      "and added to the batch as an extra fake. Made on the training device, after "
                                      "the loader. 0 = off.", min=0, max=1, inputs=PIXELS)
    real_only: bool = option(False, "Train on the real images only; the pseudo-fakes are the fake class (needs "
                                    "--pseudo-fakes).", inputs=PIXELS)
    schedule: str | None = option(
        None, "LR schedule. Default: step when --step-size is given, else constant (the report's). cosine and "
              "onecycle step per batch.", choices=SCHEDULES)
    warmup_epochs: float = option(0.0, "Linear LR warm-up over this many epochs (fractions allowed); for onecycle, "
                                       "its rising part.", min=0)
    label_smoothing: float = option(0.0, "Label smoothing of the training loss (e.g. 0.1); validation loss stays "
                                         "plain cross-entropy.")
    ema: float = option(0.0, "Keep an exponential moving average of the weights with this decay (e.g. 0.999; "
                             "warmed up on short runs). The EMA is what is validated and saved in best.pt/last.pt. "
                             "0 = off.")
    blur: bool = option(True, "Keep the report's strong Gaussian blur (sigma 6-7) in --augment; it may erase the "
                              "retouching traces.")
    train_crop: int = option(0, "Train on random SIZE x SIZE crops of the --image-size images, validate and "
                                "evaluate on the full image (e.g. --image-size 600 --train-crop 384 keeps native "
                                "resolution). Any-size models only. 0 = off.", min=0, inputs=PIXELS)
    cache: str = option("none", "Decode the data once into a uint8 cache (host memory or GPU; the --loader backend "
                                "decodes) and augment each epoch on that device with batched tensor ops: epochs "
                                "then cost the model, not the decoder. ghost_cnn: gpu holds the decoded set on the GPU "
                                "and computes the maps there each epoch, pil maps bit for bit as PIL's re-saves "
                                "give them (they are otherwise cached on disk and in memory).", choices=CACHE_CHOICES)
    ghost_maps: str = option("pil", "How ghost_cnn's JPEG ghost maps are computed: pil (each file re-saved with PIL, the "
                                    "reference) or dct (the same maps as batched DCT-domain tensor math: several times "
                                    "cheaper, on the CPU or a GPU, close to pil but not equal, so a model trains on one "
                                    "kind). An engine computes the kind its run was trained on.", choices=GHOST_MAPS,
                             inputs=GHOSTS, applies="chooses how JPEG ghost maps are computed")
    launder: float = option(0.0, "Each epoch, replace this share of the training images (real and fake alike, labels "
                                 "unchanged) by a fresh laundered copy: re-saved at quality 70-95, resized by 0.5-0.9 or "
                                 "cropped off the 8x8 grid, drawn per (seed, epoch, image) from the family of "
                                 "docs/robustness.md. Ghost maps of those are computed on the fly; pixel models need "
                                 "--loader torch. 0 = off.", min=0, max=1)
    ghost_shift: int = option(0, "Move each training batch's JPEG ghost maps by up to N cells (8 px) each way, edges "
                                 "repeated (faces are not all centred alike). 0 = off.", min=0, inputs=GHOSTS,
                              applies="moves JPEG ghost maps")
    region_loss: float = option(0.0, "Weight of an auxiliary loss that asks the network's feature map to point at "
                                     "the regions each fake's file name says were edited (CIPLAB's ..._CCCC.jpg: "
                                     "left eye, right eye, nose, mouth); training only, the saved model is "
                                     "unchanged. 0 = off.", min=0, inputs=GHOSTS,
                                applies="is measured and wired for ghost_cnn")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> TrainConfig:
        """The config of a run's recorded args (config.json / checkpoint); options the run predates take
        their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in args.items() if key in known})

    def to_args(self) -> dict[str, Any]:
        """JSON-ready args, as config.json and checkpoints record them."""
        args = dataclasses.asdict(self)
        args["weights"] = str(self.weights) if self.weights is not None else None
        return args

    def resolved(self) -> TrainConfig:
        """With the defaults that depend on the model filled in (image size)."""
        if self.image_size is None:
            return dataclasses.replace(self, image_size=default_image_size(self.model))
        return self

    @property
    def input(self) -> str:
        """What the model reads: "pixels" or "ghosts"."""
        return model_input(self.model)

    @property
    def schedule_name(self) -> str:
        """--schedule, defaulting as before it existed: StepLR when --step-size is given, else constant."""
        return self.schedule or ("step" if self.step_size > 0 else "constant")

    def validate(self) -> None:
        """One-line errors for options out of range or that do not apply to the model, before any data
        is read."""
        by_name = {p.name: p for p in dataclass_params(type(self))}
        check_values(list(by_name.values()), dataclasses.asdict(self))
        model_input(self.model)  # an unknown model is one line naming the models there are
        if self.real_only and not self.pseudo_fakes:
            raise ValueError("--real-only trains on real images alone: give --pseudo-fakes RATE to make the fakes")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing {self.label_smoothing} must be in [0, 1) (e.g. 0.1)")
        if self.ema and not 0.0 < self.ema < 1.0:
            raise ValueError(f"--ema {self.ema} must be a decay between 0 and 1 (e.g. 0.999), or 0 for off")
        image_size = self.image_size or default_image_size(self.model)
        if self.train_crop < 0 or self.train_crop > image_size:
            raise ValueError(f"--train-crop {self.train_crop} must be between 1 and --image-size {image_size} "
                             "(0 = off)")
        self._check_inputs(by_name)
        if self.input == "ghosts" and self.cache == "memory":
            raise ValueError(f"{self.model}'s JPEG ghost maps are held in memory (and cached on disk) anyway: drop "
                             "--cache memory (--cache gpu computes the maps on the GPU each epoch)")
        if self.input == "pixels" and self.launder and (self.cache != "none" or self.loader == "dali"):
            raise ValueError("--launder on pixel models launders each file's bytes before the torchvision loader "
                             "decodes them: use --loader torch (or auto) without --cache")

    def _check_inputs(self, by_name) -> None:
        """Options declared for one model input, given to a model of the other (set = not the default)."""
        given = [p for p in by_name.values()
                 if p.inputs is not None and self.input not in p.inputs and getattr(self, p.name) != p.default]
        if not given:
            return
        if self.input == "ghosts":
            flags = [p.flag for p in given]
            raise ValueError(f"{self.model} reads JPEG ghost maps, not pixels, so {', '.join(flags)} do not apply: "
                             "drop them")
        first = given[0]
        raise ValueError(f"{first.flag} {first.applies or 'applies to ghost_cnn only'}; {self.model} reads pixels: "
                         "use --model ghost_cnn or drop it")


def derived_config(base: type, name: str, *, defaults: dict[str, Any], drop: tuple[str, ...]) -> type:
    """A config class with `base`'s fields and declarations, other `defaults`, and without `drop`."""
    fields = []
    for field in dataclasses.fields(base):
        if field.name in drop:
            continue
        default = defaults.get(field.name, field.default)
        fields.append((field.name, field.type, dataclasses.field(default=default, metadata=field.metadata)))
    unknown = set(defaults) - {f[0] for f in fields}
    if unknown:
        raise ValueError(f"{name}: defaults for fields it does not have: {', '.join(sorted(unknown))}")
    cls = dataclasses.make_dataclass(name, fields, frozen=True)
    cls.__module__ = __name__  # where its string annotations resolve
    return cls


# `realfake pretrain`: real images against their pseudo-fakes (so pseudo-fakes are on by default, one per
# real image), the modern schedule, no blur (it blurs the blending traces away).
PretrainConfig = derived_config(
    TrainConfig, "PretrainConfig",
    defaults={"model": "resnet18", "pseudo_fakes": 1.0, "schedule": "cosine", "warmup_epochs": 1.0, "blur": False},
    drop=("momentum", "step_size", "gamma", "dropout", "width", "patience", "weights", "freeze_backbone",
          "real_only", "ghost_shift", "region_loss"))
