"""Building an engine: a run's checkpoint compiled by a backend, checked against eager fp32 on the run's
validation images, with its decision threshold chosen there, written whole or not at all.

    engine_dir = build_engine("runs/simple_cnn-20250101", "engines_out/m1", backend="aot", threshold="auto")

Every build measures parity on the run's validation images: the engine against the eager fp32 model,
max/mean |p_engine - p_eager| and label agreement at the decision threshold, and fails (leaving no
output) when they are worse than the precision's tolerance (PARITY_TOLERANCE).

One module, though long: build, parity, threshold and the laundering gate all read the same validation
pass, which is computed once per build.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from realfake.engines.backends import BACKEND_CHOICES, backend_module, resolve_backend
from realfake.engines.backends.common import BackendCrash
from realfake.engines.devices import PRECISION_CHOICES, check_precision, resolve_device, resolve_precision
from realfake.engines.evidence import evidence_features, fit_gate
from realfake.engines.metrics import equal_error_rate, threshold_at_fpr
from realfake.engines.runtime import Engine
from realfake.engines.schema import (
    ENGINE_JSON,
    ENGINE_TTA,
    FORMAT_VERSION,
    BatchRange,
    compute_engine_id,
    parse_batch,
    parse_threshold,
)
from realfake.engines.trainer import load_runs
from realfake.models import Ensemble, MirrorAverage, input_shape, model_input
from realfake.pipelines.jpeg_ghosts import check_kind
from realfake.pipelines.launder import FAMILY
from realfake.pipelines.launder_dataset import laundered_split
from realfake.pipelines.loaders import get_loader, manifest_loader_options
from realfake.pipelines.manifest import manifest_sha256, read_manifest
from realfake.pipelines.provenance import sha256_file, versions
from realfake.pipelines.spec import CLASS_NAMES, MEAN, STD
from torch import nn

log = logging.getLogger(__name__)

# Largest allowed max |p_engine - p_eager fp32| on the validation images, per precision. fp32 on a
# GPU allows TF32 convolutions (cuDNN's default, and TensorRT's). bf16 keeps 8 bits of mantissa, so
# probabilities move by ~1e-2 on a trained model; fp16 keeps 11.
PARITY_TOLERANCE = {"fp32": 1e-4, "fp32-cuda": 2e-3, "fp16": 1e-2, "bf16": 5e-2}
# Smallest allowed share of validation images whose label (at the decision threshold) the engine
# and eager fp32 agree on. A label can flip only where p_eager is within the tolerance of the
# threshold, so this gate bites only when many images sit right at the threshold.
MIN_LABEL_AGREEMENT = {"fp32": 0.99, "fp16": 0.98, "bf16": 0.98}
THRESHOLD_OVER = ("as-saved", "with-laundered")
PARITY_MAX_IMAGES = 512  # validation images compared at build (the threshold uses the whole split)


def parity_tolerance(precision: str, device: str) -> float:
    if precision == "fp32" and str(device).startswith("cuda"):
        return PARITY_TOLERANCE["fp32-cuda"]
    return PARITY_TOLERANCE[precision]


@dataclass(frozen=True)
class BuildOptions:
    """How an engine is built: the options of `realfake engine build` (and of `build_engine`,
    `build_engine_from_model`), declared once. Each field's metadata holds its help text."""

    backend: str = field(default="auto", metadata={"choices": BACKEND_CHOICES, "help": (
        "auto = the best that runs on the device: tensorrt (CUDA + torch-tensorrt) > aot (AOTInductor package, "
        "no compile at load) > compile (torch.compile at every load) > eager; a backend whose compiler crashes "
        "is passed over, and engine.json says why.")})
    precision: str = field(default="fp32", metadata={"choices": PRECISION_CHOICES, "help": (
        "fp32; fp16 (CUDA only); bf16 (GPUs, and CPUs with AVX512-BF16/AMX: emulated and many times slower "
        "elsewhere); auto = bf16 where the device has bf16 units, else fp16 on a GPU, fp32 on a CPU. Parity "
        "against eager fp32 must stay within the precision's tolerance.")})
    batch: str = field(default="1:64:256", metadata={"help": (
        "MIN:OPT:MAX batch sizes one call accepts (TensorRT tunes for OPT); scoring splits or pads others.")})
    threshold: str = field(default="0.5", metadata={"help": (
        "p_fake at or above it is called fake; auto = the equal-error-rate point on the validation split (or "
        "see --target-fpr).")})
    target_fpr: float | None = field(default=None, metadata={"min": 0, "max": 1, "help": (
        "With --threshold auto: the lowest threshold whose false positive rate (real called fake) on the "
        "validation split stays at or below this.")})
    threshold_over: str = field(default="as-saved", metadata={"choices": THRESHOLD_OVER, "help": (
        "With --threshold auto, the validation files it is chosen on: as-saved, or with-laundered (the files "
        "as saved and laundered by each transform of the family, ghost engines), so that the false positive "
        "rate (--target-fpr) holds for re-saved, resized and cropped photos too.")})
    device: str = field(default="auto", metadata={"help": (
        "auto, cpu or cuda[:N]: the device the engine is built for and runs on.")})
    tta: str = field(default="none", metadata={"choices": ENGINE_TTA, "help": (
        "flip: the engine averages p_fake over each image and its mirror, as `evaluate --tta flip` does "
        "(twice the model compute; build with the TTA you evaluated the runs with).")})
    evidence: bool = field(default=True, metadata={"help": (
        "Ghost engines: fit the laundering gate (engines/evidence.py) on the run's validation files as saved "
        "and laundered by the default family of re-saves, resizes and crops, so that scoring decides "
        "`unknown` where such a change erased the evidence the engine reads. Off: every file is decided.")})

    def checked(self) -> BuildOptions:
        """The options with batch and threshold parsed and the device resolved; one-line errors for bad ones."""
        threshold = parse_threshold(self.threshold)
        if threshold != "auto" and self.target_fpr is not None:
            raise ValueError("--target-fpr applies to --threshold auto only: drop one of them")
        if self.threshold_over not in THRESHOLD_OVER:
            raise ValueError(f"unknown --threshold-over {self.threshold_over!r}: choose one of "
                             f"{', '.join(THRESHOLD_OVER)}")
        if threshold != "auto" and self.threshold_over != "as-saved":
            raise ValueError("--threshold-over applies to --threshold auto only: drop one of them")
        if self.tta not in ENGINE_TTA:
            raise ValueError(f"unknown --tta {self.tta!r} for an engine: choose one of {', '.join(ENGINE_TTA)}")
        return replace(self, batch=parse_batch(self.batch), threshold=threshold, device=resolve_device(self.device))


def build_options(options: Mapping[str, Any]) -> BuildOptions:
    unknown = sorted(set(options) - set(BuildOptions.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown engine build option {unknown[0]!r}: see `realfake engine build --help`")
    return BuildOptions(**options).checked()


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
                     num_workers: int = 2, input: str = "pixels", ghost_maps: str = "pil") -> Validation:
    """The files of `split` in DATA_DIR's manifest, through the torchvision loader (in order), or
    their JPEG ghost maps of kind `ghost_maps` (input="ghosts", read from the data set's map cache
    of that kind when there)."""
    rows = read_manifest(data_dir, split)
    if not rows:
        raise ValueError(f"the {split} split of {data_dir} is empty: an engine needs validation images for its "
                         "parity check and threshold; prepare the data with a non-zero valid fraction")

    extra = manifest_loader_options(input, data_dir, image_size, rows, ghost_maps)

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
    # exactly at it and any rounding moves it (on a small split, one flip is more than the allowed share).
    allowed_flips = max(1, int((1.0 - result["min_label_agreement"]) * result["n_images"]))
    result["passed"] = result["max_abs_diff_p"] <= tolerance and result["label_flips"] <= allowed_flips
    return result


def _laundered_outputs(engine: Engine, laundered: Mapping[str, Validation]) -> dict[str, tuple]:
    """Per transform of the family: (evidence features, labels, engine p_fake) of the laundered validation files."""
    measured = {}
    for spec, validation in laundered.items():
        feats, ys, ps = [], [], []
        for images, y in validation.batches():
            feats.append(evidence_features(images))
            ps.append(engine.predict(images).numpy())
            ys.append(y.numpy())
        measured[spec] = (np.concatenate(feats), np.concatenate(ys), np.concatenate(ps))
    return measured


def _laundering_gate(measured: Mapping[str, tuple], clean_features: np.ndarray, clean_labels: np.ndarray,
                     clean_p: np.ndarray, threshold: float) -> dict:
    """engine.json's `evidence`: the laundering gate fitted on the validation files as saved and laundered
    (see engines/evidence.py), or why the engine has none."""
    gate, record = fit_gate(clean_features, measured, clean_labels, clean_p, threshold)
    if gate is None:
        return {"kind": "none", "why": record["why_none"], "outcomes": record["outcomes"]}
    log.info("laundering gate: unknown where %s erased the evidence on validation", ", ".join(record["erased"]))
    return gate.to_meta()


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
    meta["versions"] = versions(*(["torch-tensorrt"] if chosen == "tensorrt" else []))
    return chosen, module, artifact


def build_engine_from_model(model: nn.Module, out: str | Path, *, architecture: str, image_size: int,
                            validation: Validation | None = None, dropout: float | None = None,
                            width: int | None = None, mean: Sequence[float] | None = None,
                            std: Sequence[float] | None = None, class_names: Sequence[str] | None = None,
                            source: Mapping[str, Any] | None = None, parity_images: int = PARITY_MAX_IMAGES,
                            laundered: Mapping[str, Validation] | None = None, ghost_maps: str | None = None,
                            **options) -> Path:
    """Build an engine directory from an in-memory model (what `build_engine` does after loading a
    run; benchmarks call it with random weights). `model` must be `build_model(architecture,
    image_size=..., dropout=..., width=...)` with trained weights, or an Ensemble of such models.
    `options` are the fields of `BuildOptions`; tta="flip" builds the model averaged with its run on the
    mirror image (twice the compute). `laundered`: the validation images laundered by each transform of
    the family (ghost engines), for the laundering gate. `ghost_maps`: the kind of ghost maps the model
    was trained on and `validation` holds (ghost architectures; default "pil"), recorded in engine.json
    so that every reader computes that kind. Returns `out`."""
    started = time.perf_counter()
    opts = build_options(options)
    backend, batch, threshold, target_fpr, device, tta = (opts.backend, opts.batch, opts.threshold, opts.target_fpr,
                                                          opts.device, opts.tta)
    requested_precision = opts.precision
    precision = opts.precision
    precision, precision_why = resolve_precision(precision, device)
    check_precision(precision, device)
    log.info("engine precision: %s (%s)", precision, precision_why)
    shape = input_shape(architecture, int(image_size))
    validation = validation or random_validation(shape)
    class_names = list(class_names or CLASS_NAMES)
    if "fake" not in class_names:
        raise ValueError(f"class names {class_names} have no 'fake' class: p_fake is undefined")
    model = model.eval().to(device)
    if model_input(architecture) == "ghosts":
        ghost_maps = check_kind(ghost_maps or "pil")
    elif ghost_maps is not None:
        raise ValueError(f"{architecture} reads pixels: ghost_maps={ghost_maps!r} applies to ghost-map models only")
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "engine_id": None,
        "architecture": architecture,
        "input": model_input(architecture),
        "ghost_maps": ghost_maps,
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
        "evidence": None,
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
        p_eager, p_engine, labels, features = [], [], [], []
        fake = class_names.index("fake")
        for images, y in validation.batches():
            p_eager.append(torch.softmax(reference(images), 1)[:, fake])
            p_engine.append(engine.predict(images))
            if laundered:
                features.append(evidence_features(images))
            if y is not None:
                labels.append(y.cpu())
        p_eager_all, p_engine_all = torch.cat(p_eager), torch.cat(p_engine)
        labels_all = torch.cat(labels) if labels else None

        measured = _laundered_outputs(engine, laundered) if laundered and labels_all is not None else {}
        pool_y, pool_p = labels_all, p_engine_all.numpy()
        if opts.threshold_over == "with-laundered":
            if not measured:
                raise ValueError("--threshold-over with-laundered needs the validation split laundered: build a "
                                 "ghost engine from its run directory")
            pool_y = np.concatenate([labels_all.numpy(), *(ys for _, ys, _ in measured.values())])
            pool_p = np.concatenate([pool_p, *(ps for _, _, ps in measured.values())])
        value, how = choose_threshold(threshold, target_fpr, pool_y, pool_p)
        if how["method"] != "fixed":
            how["over"] = opts.threshold_over
        meta["threshold"], meta["threshold_method"] = float(value), how
        if measured and opts.evidence:
            meta["evidence"] = _laundering_gate(measured, np.concatenate(features), labels_all.numpy(),
                                                p_engine_all.numpy(), float(value))
        engine.close()
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


def build_engine(run_dir: str | Path, out: str | Path, *, checkpoint: str = "best", num_workers: int = 2,
                 ensemble: Sequence[str | Path] = (), **options) -> Path:
    """Compile RUN_DIR's checkpoint into engine directory `out`, with parity and (for
    threshold="auto") the operating point measured on the run's validation split. Returns `out`.
    `ensemble`: other runs of the same model and data set; the engine averages p_fake over all.
    `options` are the fields of `BuildOptions`."""
    run_dir = Path(run_dir).resolve()
    build_options(options)  # bad options fail before the checkpoint loads
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
    kind = config["ghost_maps"]  # the maps the runs were trained on: parity, threshold and gate read them
    validation = split_validation(data_dir, int(config["image_size"]), num_workers=num_workers,
                                  input=config["input"], ghost_maps=kind or "pil")
    laundered = None
    if config["input"] == "ghosts" and (options.get("evidence", BuildOptions.evidence)
                                        or options.get("threshold_over") == "with-laundered"):
        laundered = {spec: split_validation(laundered_split(data_dir, spec, "valid", workers=max(1, num_workers)),
                                            int(config["image_size"]), num_workers=num_workers, input="ghosts",
                                            ghost_maps=kind)
                     for spec in FAMILY}
    return build_engine_from_model(
        model, out, architecture=config["model"], image_size=int(config["image_size"]), validation=validation,
        dropout=config["dropout"], width=config["width"], mean=config["mean"], std=config["std"],
        class_names=config["class_names"], source=source, laundered=laundered, ghost_maps=kind, **options)


