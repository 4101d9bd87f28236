"""Inference engines: a selected model compiled once into an engine directory, loaded by every scoring job.

    engine_dir = build_engine("runs/simple_cnn-20250101", "engines_out/m1", backend="aot", threshold="auto")
    engine = load_engine(engine_dir)            # or load_engine(promoted_engine())
    p_fake = engine.predict(images)             # (N, 3, S, S) normalized float -> (N,) float32 on the CPU

An engine directory holds one artifact and `engine.json` (architecture, image size, mean/std, class
names, decision threshold and how it was chosen, source run and checkpoint hash, backend, precision,
batch range, channels_last, device, versions, parity against eager fp32, artifact hash).

Backends, one file each under `engines/backends/`, behind one small interface:

    NAME, ARTIFACT                                   registry name, artifact file name
    unavailable_reason(device) -> str | None         why it cannot run on `device` here (None: it can)
    build(model, example, batch, precision, out_dir, *, device) -> str   writes the artifact, returns its name
    load(engine_dir, meta, device) -> callable       float32 images on `device` -> logits

- eager:    the state dict (`model.pt`); rebuilt by architecture name at load; fp16/bf16 by autocast.
- compile:  the same artifact, torch.compile'd at load (a cold compile costs 20-40 s on 2 CPU cores).
- aot:      torch.export with a dynamic batch dimension, packaged by AOTInductor (`model.pt2`);
            loads in a fraction of a second without compiling. Tied to the torch version.
- tensorrt: Torch-TensorRT's dynamo path, saved as an ExportedProgram (`model.ep`). CUDA only.

`auto` picks the best that can run on the device: tensorrt > aot > compile > eager, and records why.

Every build measures parity on the run's validation images: the engine against the eager fp32 model,
max/mean |p_engine - p_eager| and label agreement at the decision threshold, and fails (leaving no
output) when they are worse than the precision's tolerance (PARITY_TOLERANCE).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ENGINE_JSON = "engine.json"
PROMOTED_JSON = "promoted_engine.json"
HOME_ENV = "REALFAKE_HOME"

# Registry name -> module under realfake.engines.backends. Order = preference of `auto`.
BACKEND_MODULES = {"tensorrt": "tensorrt", "aot": "aot", "compile": "compiled", "eager": "eager"}
BACKENDS = tuple(BACKEND_MODULES)
BACKEND_CHOICES = ("auto", *BACKENDS)
PRECISIONS = ("fp32", "fp16", "bf16")
PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Backends whose artifact is compiled code: only the torch (and Torch-TensorRT) that built it runs it.
COMPILED_ARTIFACT_BACKENDS = ("aot", "tensorrt")

# Largest allowed max |p_engine - p_eager fp32| on the validation images, per precision. fp32 on a
# GPU allows TF32 convolutions (cuDNN's default, and TensorRT's). bf16 keeps 8 bits of mantissa, so
# probabilities move by ~1e-2 on a trained model; fp16 keeps 11.
PARITY_TOLERANCE = {"fp32": 1e-4, "fp32-cuda": 2e-3, "fp16": 1e-2, "bf16": 5e-2}
# Smallest allowed share of validation images whose label (at the decision threshold) the engine
# and eager fp32 agree on. A label can flip only where p_eager is within the tolerance of the
# threshold, so this gate bites only when many images sit right at the threshold.
MIN_LABEL_AGREEMENT = {"fp32": 0.99, "fp16": 0.98, "bf16": 0.98}
PARITY_MAX_IMAGES = 512  # validation images compared at build (the threshold uses the whole split)
ENGINE_TTA = ("none", "flip")  # test-time views an engine can average (crops resize: not for ghost maps)

CORE_FIELDS = ("format_version", "architecture", "image_size", "num_classes", "mean", "std", "class_names",
               "threshold", "backend", "precision", "batch", "channels_last", "device")
REQUIRED_FIELDS = (*CORE_FIELDS, "engine_id", "artifact", "versions")


class EngineError(ValueError):
    """A damaged or mismatched engine directory; the message names the file and the fix."""


class BackendCrash(RuntimeError):
    """A backend's compiler killed the process it ran in (a signal, not an exception)."""


class BatchRange(NamedTuple):
    """Batch sizes an engine is built for: TensorRT optimizes for `opt`; every backend accepts
    min..max in one call (Engine.predict splits larger inputs and pads smaller ones)."""

    min: int
    opt: int
    max: int

    def as_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def parse_batch(value: str | Sequence[int] | Mapping[str, int] | BatchRange) -> BatchRange:
    """"1:64:256", (1, 64, 256) or {"min": 1, "opt": 64, "max": 256} -> BatchRange, checked."""
    if isinstance(value, Mapping):
        value = (value.get("min"), value.get("opt"), value.get("max"))
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 3:
            raise ValueError(f"--batch {value!r} must be MIN:OPT:MAX, e.g. 1:64:256")
        try:
            value = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"--batch {value!r} must be three integers MIN:OPT:MAX, e.g. 1:64:256") from None
    try:
        low, opt, high = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"batch range {value!r} must be three integers (min, opt, max), e.g. 1:64:256") from None
    if not 1 <= low <= opt <= high:
        raise ValueError(f"batch range {low}:{opt}:{high} must satisfy 1 <= MIN <= OPT <= MAX, e.g. 1:64:256")
    return BatchRange(low, opt, high)


def parse_threshold(value: str | float) -> float | str:
    """"auto" (chosen on the validation split) or a probability in [0, 1]."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--threshold {value!r} must be a probability between 0 and 1, or auto") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"--threshold {number} must be between 0 and 1 (or auto)")
    return number


def backend_module(name: str):
    """The module of backend `name` (imported on first use: TensorRT's needs CUDA libraries)."""
    if name not in BACKEND_MODULES:
        raise EngineError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    return importlib.import_module(f"realfake.engines.backends.{BACKEND_MODULES[name]}")


def resolve_backend(choice: str, device: str, crashed: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(backend, why): `auto` takes the first of tensorrt > aot > compile > eager that can run on
    `device` and is not in `crashed` (backend -> why its build crashed); a named backend that cannot
    raises ValueError saying what to install or use."""
    if choice not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {choice!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    if choice != "auto":
        reason = backend_module(choice).unavailable_reason(device)
        if reason:
            raise ValueError(f"--backend {choice} cannot run on {device} here: {reason}")
        return choice, f"--backend {choice}"
    passed = []
    for name in BACKENDS:
        reason = (crashed or {}).get(name) or backend_module(name).unavailable_reason(device)
        if reason is None:
            why = f"auto: best available on {device}"
            return name, why + (f" (passed over {'; '.join(passed)})" if passed else "")
        passed.append(f"{name}: {reason}")
    raise AssertionError("the eager backend runs everywhere")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; checks "cpu" / "cuda[:N]"."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} asked for a GPU but torch sees none: use --device cpu")
        return device
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda[:N]")
    return device


def cpu_has_bf16_units() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512-BF16 or AMX); without, bf16 is emulated
    and runs many times slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> tuple[str, str]:
    """(precision, why): `auto` is bf16 where the device computes it natively (GPUs with bf16, CPUs
    with AVX512-BF16/AMX: on this project's 2-core EPYC an aot bf16 Model 1 ran 1.8-1.9x its fp32 at
    batch 64, parity 3e-4), fp16 on older GPUs, fp32 elsewhere. The build's parity check still applies."""
    if precision != "auto":
        return precision, "asked for"
    if str(device).startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: the GPU computes bf16 natively"
        return "fp16", "auto: the GPU has no bf16, fp16 instead"
    if cpu_has_bf16_units():
        return "bf16", "auto: the CPU has bf16 units (AVX512-BF16/AMX)"
    return "fp32", "auto: the CPU has no bf16 units"


def check_precision(precision: str, device: str) -> None:
    """Refuse precisions that cannot run well on `device`; warn about slow ones."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    on_gpu = str(device).startswith("cuda")
    if precision == "fp16" and not on_gpu:
        # CPUs have no fast fp16 arithmetic (oneDNN runs it through slow reference kernels).
        raise ValueError("--precision fp16 needs a CUDA device: on a CPU use fp32, or bf16 where the CPU has "
                         "bf16 units (AVX512-BF16/AMX)")
    if precision == "bf16" and not on_gpu and not cpu_has_bf16_units():
        log.warning("bf16 on this CPU (no AVX512-BF16/AMX units) is emulated and runs many times slower than "
                    "fp32: prefer --precision fp32")
    if precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16 is not supported by {torch.cuda.get_device_name()}: use fp16")


def parity_tolerance(precision: str, device: str) -> float:
    if precision == "fp32" and str(device).startswith("cuda"):
        return PARITY_TOLERANCE["fp32-cuda"]
    return PARITY_TOLERANCE[precision]


# --- helpers the backends share --------------------------------------------------------------------

def model_from_meta(meta: Mapping[str, Any]) -> nn.Module:
    """An untrained module of the engine's architecture (eval mode, CPU): an Ensemble of `members` of it
    when the engine averages several runs."""
    from realfake.models import MirrorAverage, build_ensemble

    model = build_ensemble(meta["architecture"], int(meta.get("members", 1)), num_classes=int(meta["num_classes"]),
                           image_size=int(meta["image_size"]), dropout=meta.get("dropout"), width=meta.get("width"))
    return (MirrorAverage(model) if meta.get("tta", "none") == "flip" else model).eval()


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compute_engine_id(meta: Mapping[str, Any]) -> str:
    """First 12 hex digits of sha256 over the artifact's hash and the fields that change what the
    engine computes: the same engine always gets the same id, any other engine another."""
    core = {key: meta.get(key) for key in CORE_FIELDS}
    # Later fields count only when set, so the ids of engines built before them stay valid.
    core.update({key: meta[key] for key in ("width", "tta") if meta.get(key) not in (None, "none")})
    core["artifact_sha256"] = meta["artifact"]["sha256"]
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:12]


def versions(backend: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def dist(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    found = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": dist("torchvision"),
             "realfake": dist("realfake")}
    if backend == "tensorrt":
        found["torch_tensorrt"] = dist("torch-tensorrt") or dist("torch_tensorrt")
    return found


def _base_version(version: str | None) -> str:
    return (version or "").split("+", 1)[0]


# --- the engine ------------------------------------------------------------------------------------

class Engine:
    """A loaded engine. `predict(images)` -> p_fake (float32, CPU) for any N: inputs above the batch
    range are split into chunks of `batch.max`, a chunk below `batch.min` is padded with zeros."""

    def __init__(self, path: Path, meta: dict, runner: Callable[[torch.Tensor], torch.Tensor], device: str):
        from realfake.models import input_shape, model_input

        self.path = Path(path)
        self.meta = meta
        self.engine_id: str = meta["engine_id"]
        self.image_size: int = int(meta["image_size"])
        self.input: str = model_input(meta["architecture"])  # "pixels" or "ghosts" (JPEG ghost maps)
        self.input_shape: tuple[int, int, int] = input_shape(meta["architecture"], self.image_size)
        self.threshold: float = float(meta["threshold"])
        self.backend: str = meta["backend"]
        self.precision: str = meta["precision"]
        self.batch = parse_batch(meta["batch"])
        self.channels_last: bool = bool(meta["channels_last"])
        self.device = torch.device(device)
        self._runner = runner
        self._fake_index = list(meta["class_names"]).index("fake")

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


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def read_engine_meta(path: str | Path, *, expected_image_size: int | None = None,
                     verify_artifact: bool = True) -> dict:
    """engine.json of engine directory `path`, checked: present and readable, known format and
    backend, all fields, the artifact present with the recorded sha256, the engine id matching the
    fields, the torch version for compiled artifacts, the image size the caller expects. Each problem
    raises EngineError with one line naming the file and the fix."""
    path = Path(path)
    meta_file = path / ENGINE_JSON
    rebuild = "rebuild it with `realfake engine build`"
    if not path.is_dir():
        raise EngineError(f"engine directory {path} does not exist: pass a folder written by `realfake engine build`")
    if not meta_file.is_file():
        raise EngineError(f"{meta_file} is missing: {path} is not an engine directory of `realfake engine build` "
                          f"(or is damaged: {rebuild})")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineError(f"{meta_file} is damaged (not valid JSON: {_one_line(exc)}): {rebuild}") from None
    if not isinstance(meta, dict):
        raise EngineError(f"{meta_file} is damaged (not a JSON object): {rebuild}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise EngineError(f"{meta_file} has format version {meta.get('format_version')!r}, this realfake reads "
                          f"{FORMAT_VERSION}: {rebuild}")
    missing = [key for key in REQUIRED_FIELDS if key not in meta]
    if missing:
        raise EngineError(f"{meta_file} is damaged (missing {', '.join(missing)}): {rebuild}")
    if not isinstance(meta["artifact"], dict) or not isinstance(meta["versions"], dict):
        raise EngineError(f"{meta_file} is damaged (artifact and versions must be objects): {rebuild}")
    try:
        parse_batch(meta["batch"])
    except ValueError:
        raise EngineError(f"{meta_file} is damaged (batch {meta['batch']!r} is not a valid range): {rebuild}") from None
    if meta["backend"] not in BACKENDS:
        raise EngineError(f"{meta_file} names unknown backend {meta['backend']!r} (this realfake knows "
                          f"{', '.join(BACKENDS)}): {rebuild}")
    if meta["precision"] not in PRECISIONS:
        raise EngineError(f"{meta_file} names unknown precision {meta['precision']!r}: {rebuild}")
    artifact = path / str(meta["artifact"].get("file", ""))
    if not meta["artifact"].get("file") or not artifact.is_file():
        raise EngineError(f"{path} is damaged: its artifact {artifact.name or '(none)'} is missing: {rebuild}")
    if verify_artifact and sha256_file(artifact) != meta["artifact"].get("sha256"):
        raise EngineError(f"{artifact} is damaged (its sha256 differs from the one in {ENGINE_JSON}): {rebuild}")
    if compute_engine_id(meta) != meta["engine_id"]:
        raise EngineError(f"{meta_file} was edited after the build (its fields no longer match engine id "
                          f"{meta['engine_id']}): {rebuild} with the settings you want")
    if meta["backend"] in COMPILED_ARTIFACT_BACKENDS:
        built = _base_version(meta["versions"].get("torch"))
        if built != _base_version(torch.__version__):
            raise EngineError(f"{path} holds a compiled ({meta['backend']}) engine built with torch {built}, "
                              f"this is torch {_base_version(torch.__version__)}: compiled artifacts run only on "
                              f"the torch that built them: {rebuild} (or use an eager/compile engine)")
    if expected_image_size is not None and int(meta["image_size"]) != int(expected_image_size):
        raise EngineError(f"{path} was built for {meta['image_size']} px images, not {expected_image_size}: use an "
                          f"engine built at {expected_image_size} px, or load the images at {meta['image_size']} px")
    return meta


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
                          f"({type(exc).__name__}: {_one_line(exc)}): rebuild it with `realfake engine build`") from exc
    return Engine(path, meta, runner, run_device)


# --- building --------------------------------------------------------------------------------------

class Validation(NamedTuple):
    """Validation images for parity and the threshold: an iterable of (images, labels | None) batches."""

    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor | None]]]
    description: str


def random_validation(shape: Sequence[int], n: int = 64, batch_size: int = 32, seed: int = 0) -> Validation:
    """Seeded random normal inputs of `shape` (C, H, W) without labels: parity only (no --threshold auto)."""

    def batches():
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, n, batch_size):
            yield torch.randn(min(batch_size, n - start), *shape, generator=generator), None

    return Validation(batches, f"{n} random images")


def split_validation(data_dir: Path, image_size: int, split: str = "valid", batch_size: int = 32,
                     num_workers: int = 2, input: str = "pixels") -> Validation:
    """The files of `split` in DATA_DIR's manifest, through the torchvision loader (in order), or
    their JPEG ghost maps (input="ghosts", read from the data set's map cache when there)."""
    from realfake.pipelines.loaders import get_loader, manifest_loader_options
    from realfake.pipelines.manifest import read_manifest

    rows = read_manifest(data_dir, split)
    if not rows:
        raise ValueError(f"the {split} split of {data_dir} is empty: an engine needs validation images for its "
                         "parity check and threshold; prepare the data with a non-zero valid fraction")

    extra = manifest_loader_options(input, data_dir, image_size, rows)

    def batches():
        loader = get_loader([r.path for r in rows], [r.label for r in rows], train=False, backend="torch",
                            image_size=image_size, batch_size=batch_size, num_workers=num_workers, **extra)
        for batch in loader:
            if batch.errors:
                index, reason = batch.errors[0]
                raise ValueError(f"validation file {rows[index].path} could not be decoded ({reason}): "
                                 f"prepare {data_dir} again")
            yield batch.images, batch.labels

    return Validation(batches, f"{len(rows)} {split} images of {data_dir}")


def choose_threshold(threshold: float | str, target_fpr: float | None, labels, p_fake) -> tuple[float, dict]:
    """(threshold, how it was chosen). `auto`: the EER point of the validation ROC, or with
    `target_fpr` the lowest threshold whose false positive rate stays at or below it."""
    import numpy as np
    from realfake.engines.metrics import equal_error_rate, threshold_at_fpr

    if threshold != "auto":
        if target_fpr is not None:
            raise ValueError("--target-fpr applies to --threshold auto only: drop one of them")
        return float(threshold), {"method": "fixed"}
    if labels is None:
        raise ValueError("--threshold auto needs labelled validation images: build from a run directory, or "
                         "pass a fixed --threshold")
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(p_fake, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("--threshold auto needs both real and fake images in the validation split: pass a fixed "
                         "--threshold")
    eer, eer_threshold = equal_error_rate(y, p)
    if target_fpr is None:
        return eer_threshold, {"method": "eer", "eer": eer, "n_images": int(y.size)}
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"--target-fpr {target_fpr} must be between 0 and 1")
    value = threshold_at_fpr(y, p, target_fpr)
    achieved = float(np.mean(p[y == 0] >= value))
    caught = float(np.mean(p[y == 1] >= value))
    if caught == 0.0:
        # Ties at the top (a weak model saturates) can leave only "call nothing fake" under the target.
        log.warning("no threshold keeps the false positive rate at or below %g while catching any validation "
                    "fake: threshold %.4f calls nothing fake; raise --target-fpr or use a better model",
                    target_fpr, value)
    return value, {"method": "target_fpr", "target_fpr": target_fpr, "fpr": achieved, "tpr": caught, "eer": eer,
                   "n_images": int(y.size)}


def measure_parity(p_eager: torch.Tensor, p_engine: torch.Tensor, threshold: float, precision: str,
                   device: str) -> dict:
    """max/mean |p_engine - p_eager| and label agreement at `threshold`, with the gates they must pass."""
    p_eager, p_engine = p_eager.double(), p_engine.double()
    diff = (p_engine - p_eager).abs()
    agree = ((p_engine >= threshold) == (p_eager >= threshold)).double()
    tolerance = parity_tolerance(precision, device)
    result = {
        "reference": "eager fp32",
        "n_images": int(diff.numel()),
        "max_abs_diff_p": float(diff.max()) if diff.numel() else 0.0,
        "mean_abs_diff_p": float(diff.mean()) if diff.numel() else 0.0,
        "label_agreement": float(agree.mean()) if agree.numel() else 1.0,
        "label_flips": int((agree == 0).sum()),
        "tolerance": tolerance,
        "min_label_agreement": MIN_LABEL_AGREEMENT[precision],
    }
    # One flip is always allowed: an `auto` threshold is one of the validation scores, so that image sits
    # exactly at it and any rounding moves it (on a small split, one flip is more than 1-2%).
    allowed_flips = max(1, int((1.0 - result["min_label_agreement"]) * result["n_images"]))
    result["passed"] = result["max_abs_diff_p"] <= tolerance and result["label_flips"] <= allowed_flips
    return result


@contextlib.contextmanager
def _partial_dir(out: Path) -> Iterator[Path]:
    """A scratch folder beside `out`, renamed to `out` on success and deleted on any failure, so a
    failed build never leaves a half-written engine behind."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists: choose another --out, or delete it to rebuild")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        if out.exists():
            out.rmdir()  # empty (checked above): e.g. the job store's pre-made output folder
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _eager_reference(model: nn.Module, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    reference = model.to(device).eval()

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = reference(images.to(device, torch.float32)).float()
        return logits.cpu()

    return run


def _build_artifact(backend: str, model: nn.Module, example: torch.Tensor, batch: BatchRange, precision: str,
                    work: Path, device: str, meta: dict[str, Any]):
    """Build the backend's artifact into `work` and record the backend in `meta`; (name, module, artifact).

    `auto` moves on to the next backend when a build crashes (BackendCrash: AOTInductor killed by a
    signal), and says so in backend_choice; a backend asked for by name raises instead."""
    crashed: dict[str, str] = {}
    while True:
        chosen, why = resolve_backend(backend, device, crashed)
        log.info("engine backend: %s (%s)", chosen, why)
        module = backend_module(chosen)
        try:
            with torch.no_grad():
                artifact = module.build(model, example, batch, precision, work, device=device)
            break
        except BackendCrash as exc:
            if backend != "auto":
                raise
            log.warning("%s; auto tries the next backend", exc)
            crashed[chosen] = f"its {precision} build crashed: {str(exc).splitlines()[0]}"
    meta["backend"] = chosen
    meta["backend_choice"] = {"requested": backend, "reason": why}
    meta["channels_last"] = bool(getattr(module, "CHANNELS_LAST", False))
    meta["versions"] = versions(chosen)
    return chosen, module, artifact


def build_engine_from_model(
    model: nn.Module,
    out: str | Path,
    *,
    architecture: str,
    image_size: int,
    backend: str = "auto",
    precision: str = "fp32",
    batch: str | Sequence[int] | BatchRange = (1, 64, 256),
    threshold: float | str = 0.5,
    target_fpr: float | None = None,
    device: str = "cpu",
    validation: Validation | None = None,
    dropout: float | None = None,
    width: int | None = None,
    tta: str = "none",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    source: Mapping[str, Any] | None = None,
    parity_images: int = PARITY_MAX_IMAGES,
) -> Path:
    """Build an engine directory from an in-memory model (what `build_engine` does after loading a
    run; benchmarks call it with random weights). `model` must be `build_model(architecture,
    image_size=..., dropout=..., width=...)` with trained weights, or an Ensemble of such models. Returns `out`.
    tta="flip" builds the model averaged with its run on the mirror image (twice the compute)."""
    from realfake.models import Ensemble, MirrorAverage, input_shape, model_input
    from realfake.pipelines.spec import CLASS_NAMES, MEAN, STD

    started = time.perf_counter()
    batch = parse_batch(batch)
    threshold = parse_threshold(threshold)
    if threshold != "auto" and target_fpr is not None:
        raise ValueError("--target-fpr applies to --threshold auto only: drop one of them")
    device = resolve_device(device)
    requested_precision = precision
    precision, precision_why = resolve_precision(precision, device)
    check_precision(precision, device)
    log.info("engine precision: %s (%s)", precision, precision_why)
    shape = input_shape(architecture, int(image_size))
    validation = validation or random_validation(shape)
    class_names = list(class_names or CLASS_NAMES)
    if "fake" not in class_names:
        raise ValueError(f"class names {class_names} have no 'fake' class: p_fake is undefined")
    if tta not in ENGINE_TTA:
        raise ValueError(f"unknown --tta {tta!r} for an engine: choose one of {', '.join(ENGINE_TTA)}")
    model = model.eval().to(device)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "engine_id": None,
        "architecture": architecture,
        "input": model_input(architecture),
        "members": len(model.members) if isinstance(model, Ensemble) else 1,
        "tta": tta,
        "image_size": int(image_size),
        "num_classes": len(class_names),
        "dropout": dropout,
        "width": width,
        "mean": list(mean or MEAN),
        "std": list(std or STD),
        "class_names": class_names,
        "threshold": None,
        "threshold_method": None,
        "backend": None,
        "backend_choice": None,
        "precision": precision,
        "precision_choice": {"requested": requested_precision, "reason": precision_why},
        "batch": batch.as_dict(),
        "channels_last": None,
        "device": "cuda" if device.startswith("cuda") else "cpu",
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
        "versions": None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": dict(source or {}),
        "parity": None,
        "artifact": None,
        "build_s": None,
    }
    if tta == "flip":
        model = MirrorAverage(model)
    out = Path(out)
    with _partial_dir(out) as work:
        example = torch.randn(max(2, min(batch.opt, 8)), *shape, device=device)
        chosen, module, artifact = _build_artifact(backend, model, example, batch, precision, work, device, meta)
        meta["artifact"] = {"file": artifact, "sha256": sha256_file(work / artifact)}
        runner = module.load(work, meta, device)
        engine = Engine(work, {**meta, "engine_id": "(building)", "threshold": 0.5}, runner, device)

        # One pass over the validation images: eager fp32 (the reference) and the engine.
        reference = _eager_reference(model, device)
        p_eager, p_engine, labels = [], [], []
        fake = class_names.index("fake")
        for images, y in validation.batches():
            p_eager.append(torch.softmax(reference(images), 1)[:, fake])
            p_engine.append(engine.predict(images))
            if y is not None:
                labels.append(y.cpu())
        engine.close()
        p_eager_all, p_engine_all = torch.cat(p_eager), torch.cat(p_engine)
        labels_all = torch.cat(labels) if labels else None

        value, how = choose_threshold(threshold, target_fpr, labels_all, p_engine_all.numpy())
        meta["threshold"], meta["threshold_method"] = float(value), how
        n = min(parity_images, p_eager_all.numel())
        meta["parity"] = parity = measure_parity(p_eager_all[:n], p_engine_all[:n], float(value), precision, device)
        parity["images"] = validation.description
        if not parity["passed"]:
            raise ValueError(
                f"{chosen} {precision} engine fails parity against eager fp32 on {parity['n_images']} validation "
                f"images: max |dp| {parity['max_abs_diff_p']:.3g} (tolerance {parity['tolerance']:.3g}), label "
                f"agreement {parity['label_agreement']:.3f} (minimum {parity['min_label_agreement']}): "
                "nothing was written; use --precision fp32 or another --backend")
        meta["build_s"] = round(time.perf_counter() - started, 2)
        meta["engine_id"] = compute_engine_id(meta)
        (work / ENGINE_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("engine %s (%s %s) written to %s in %.1f s; parity max |dp| %.2g", meta["engine_id"], chosen, precision,
             out, meta["build_s"], meta["parity"]["max_abs_diff_p"])
    return out


def build_engine(
    run_dir: str | Path,
    out: str | Path,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    batch: str | Sequence[int] | BatchRange = (1, 64, 256),
    threshold: float | str = 0.5,
    target_fpr: float | None = None,
    device: str = "cpu",
    checkpoint: str = "best",
    num_workers: int = 2,
    ensemble: Sequence[str | Path] = (),
    tta: str = "none",
) -> Path:
    """Compile RUN_DIR's checkpoint into engine directory `out`, with parity and (for
    threshold="auto") the operating point measured on the run's validation split. Returns `out`.
    `ensemble`: other runs of the same model and data set; the engine averages p_fake over all.
    `tta`: "flip" averages p_fake over each image and its mirror, as `evaluate --tta flip` does."""
    from realfake.pipelines.manifest import manifest_sha256

    run_dir = Path(run_dir).resolve()
    parse_batch(batch), parse_threshold(threshold)  # bad options fail before the checkpoint loads
    from realfake.engines.trainer import load_runs

    members = [run_dir, *(Path(p).resolve() for p in ensemble)]
    model, config, state = load_runs(members, checkpoint)
    data_dir = Path(config["data_dir"])
    if manifest_sha256(data_dir) != config["manifest_sha256"]:
        raise ValueError(f"the manifest in {data_dir} changed since {run_dir} was trained: its validation split "
                         "may overlap the training data; train again on the new data")
    source = {"run_dir": str(run_dir), "checkpoint": checkpoint, "epoch": state.get("epoch"),
              "checkpoint_sha256": sha256_file(run_dir / f"{checkpoint}.pt"), "data_dir": str(data_dir),
              "manifest_sha256": config["manifest_sha256"]}
    if len(members) > 1:
        source["ensemble"] = [{"run_dir": str(p), "checkpoint_sha256": sha256_file(p / f"{checkpoint}.pt")}
                              for p in members]
    validation = split_validation(data_dir, int(config["image_size"]), num_workers=num_workers,
                                  input=config.get("input", "pixels"))
    return build_engine_from_model(
        model, out, architecture=config["model"], image_size=int(config["image_size"]), backend=backend,
        precision=precision, batch=batch, threshold=threshold, target_fpr=target_fpr, device=device,
        validation=validation, dropout=config.get("dropout"), width=config.get("width"), tta=tta,
        mean=config.get("mean"), std=config.get("std"),
        class_names=config.get("class_names"), source=source)


# --- registry: list, show, promote -----------------------------------------------------------------

def realfake_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".realfake").expanduser()


def promote_engine(path: str | Path) -> dict:
    """Record `path` as the engine scoring uses when none is named; returns the record."""
    path = Path(path).resolve()
    meta = read_engine_meta(path)
    record = {"engine_dir": str(path), "engine_id": meta["engine_id"],
              "promoted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    home = realfake_home()
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / (PROMOTED_JSON + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(home / PROMOTED_JSON)  # readers never see half a record
    return record


def promoted_record() -> dict | None:
    record_file = realfake_home() / PROMOTED_JSON
    if not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
        return record if isinstance(record, dict) and record.get("engine_dir") else None
    except json.JSONDecodeError:
        return None


def promoted_engine() -> Path:
    """The engine directory `realfake engine promote` selected; ValueError when there is none."""
    record = promoted_record()
    if record is None:
        raise ValueError("no engine promoted: run `realfake engine promote ENGINE_DIR` or pass --engine")
    path = Path(record["engine_dir"])
    if not (path / ENGINE_JSON).is_file():
        raise ValueError(f"the promoted engine {path} no longer exists: promote another with "
                         "`realfake engine promote ENGINE_DIR` or pass --engine")
    return path


def find_engine_dirs(root: str | Path, max_depth: int = 3) -> list[Path]:
    """Engine directories at or below `root` (hidden folders skipped), sorted."""
    root = Path(root)
    found = []

    def walk(folder: Path, depth: int) -> None:
        if (folder / ENGINE_JSON).is_file():
            found.append(folder)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            walk(child, depth + 1)

    if root.is_dir():
        walk(root, 0)
    return found


def engine_rows(root: str | Path) -> list[dict]:
    """One row per engine directory under `root`: id, backend, precision, model, image size,
    threshold, parity, promoted mark; a damaged one gets its error in `status`."""
    record = promoted_record()
    promoted_dir = Path(record["engine_dir"]).resolve() if record else None
    rows = []
    for folder in find_engine_dirs(root):
        row = {"engine_dir": str(folder), "promoted": folder.resolve() == promoted_dir}
        try:
            meta = read_engine_meta(folder)
        except EngineError as exc:
            rows.append({**row, "status": str(exc)})
            continue
        parity = meta.get("parity") or {}
        rows.append({**row, "engine_id": meta["engine_id"], "backend": meta["backend"],
                     "precision": meta["precision"], "model": meta["architecture"], "image_size": meta["image_size"],
                     "threshold": meta["threshold"], "threshold_method": (meta.get("threshold_method") or {}).get("method"),
                     "batch": str(parse_batch(meta["batch"])), "device": meta["device"],
                     "max_abs_diff_p": parity.get("max_abs_diff_p"), "label_agreement": parity.get("label_agreement"),
                     "created": meta.get("created"), "status": "ok"})
    return rows
