"""engine.json: the record an engine directory carries beside its artifact, its checks and its id.

Fields: architecture, input, ghost_maps (the kind of JPEG ghost maps a ghost engine reads: "pil" or
"dct"; engines that predate it read "pil"), members, tta, image_size, num_classes, dropout, width,
mean/std, class names, decision threshold and how it was chosen, backend (and why), precision (and
why), batch range, channels_last, device, versions, source run and checkpoint hashes, parity against
eager fp32, the artifact's file and sha256, build time. `read_engine_meta` checks a directory before
anything loads it.
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from realfake.engines.backends import BACKENDS, COMPILED_ARTIFACT_BACKENDS
from realfake.pipelines.jpeg_ghosts import GHOST_MAPS
from realfake.pipelines.provenance import sha256_file

FORMAT_VERSION = 1
ENGINE_JSON = "engine.json"
PRECISIONS = ("fp32", "fp16", "bf16")
ENGINE_TTA = ("none", "flip")  # test-time views an engine can average (crops resize: not for ghost maps)

# The fields that change what an engine computes: its id is a hash of these and of the artifact.
CORE_FIELDS = ("format_version", "architecture", "input", "members", "tta", "width", "image_size", "num_classes",
               "mean", "std", "class_names", "threshold", "evidence", "backend", "precision", "batch", "channels_last",
               "device")
# Core fields an engine carries only where they apply (ghost engines): hashed when present, so the ids
# of engines built before them stay what they were.
OPTIONAL_CORE_FIELDS = ("ghost_maps",)
REQUIRED_FIELDS = (*CORE_FIELDS, "engine_id", "artifact", "versions")


class EngineError(ValueError):
    """A damaged or mismatched engine directory; the message names the file and the fix."""


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


def compute_engine_id(meta: Mapping[str, Any]) -> str:
    """First 12 hex digits of sha256 over the artifact's hash and the fields that change what the
    engine computes: the same engine always gets the same id, any other engine another."""
    core = {key: meta.get(key) for key in CORE_FIELDS}
    core.update({key: meta[key] for key in OPTIONAL_CORE_FIELDS if meta.get(key) is not None})
    core["artifact_sha256"] = meta["artifact"]["sha256"]
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:12]


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _base_version(version: str | None) -> str:
    return (version or "").split("+", 1)[0]


def _torch_version() -> str:
    """This environment's torch version, read from its package metadata where torch is not loaded yet:
    checking an engine directory must not cost a torch import (a `score --ray` driver never needs one)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:  # a torch built from source, not installed as a package
        import torch

        return torch.__version__


def engine_ghost_maps(meta: dict) -> str | None:
    """The kind of ghost maps an engine reads ("pil" for ghost engines built before the field), or None
    for a pixel engine."""
    if meta.get("input") != "ghosts":
        return None
    return meta.get("ghost_maps") or "pil"


def read_engine_meta(path: str | Path, *, expected_image_size: int | None = None,
                     verify_artifact: bool = True) -> dict:
    """engine.json of engine directory `path`, checked: present and readable, known format and
    backend, all fields, a known kind of ghost maps, the artifact present with the recorded sha256, the engine id matching the
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
        raise EngineError(f"{meta_file} is damaged (not valid JSON: {one_line(exc)}): {rebuild}") from None
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
        here = _base_version(_torch_version())
        if built != here:
            raise EngineError(f"{path} holds a compiled ({meta['backend']}) engine built with torch {built}, "
                              f"this is torch {here}: compiled artifacts run only on "
                              f"the torch that built them: {rebuild} (or use an eager/compile engine)")
    if meta["input"] == "ghosts" and meta.get("ghost_maps", "pil") not in GHOST_MAPS:
        raise EngineError(f"{meta_file} names unknown ghost maps {meta['ghost_maps']!r} (this realfake computes "
                          f"{', '.join(GHOST_MAPS)}): {rebuild}")
    if expected_image_size is not None and int(meta["image_size"]) != int(expected_image_size):
        raise EngineError(f"{path} was built for {meta['image_size']} px images, not {expected_image_size}: use an "
                          f"engine built at {expected_image_size} px, or load the images at {meta['image_size']} px")
    return meta
