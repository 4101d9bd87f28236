"""`realfake engine build`: compile a training run's checkpoint into an inference engine directory."""
from __future__ import annotations

from typing import Literal

from realfake.engines.backends import BACKEND_CHOICES
from realfake.engines.build import build_engine
from realfake.engines.devices import PRECISION_CHOICES, resolve_device
from realfake.engines.schema import ENGINE_TTA, read_engine_meta
from realfake.engines.trainer import CHECKPOINTS
from realfake.jobs.service.params import InputPath, OutputPath


def run_engine_build(
    run_dir: InputPath,
    out: OutputPath,
    backend: Literal[BACKEND_CHOICES] = "auto",
    precision: Literal[PRECISION_CHOICES] = "fp32",
    batch: str = "1:64:256",
    threshold: str = "0.5",
    target_fpr: float | None = None,
    device: str = "auto",
    checkpoint: Literal[CHECKPOINTS] = "best",
    ensemble: list[InputPath] | None = None,
    tta: Literal[ENGINE_TTA] = "none",
) -> dict:
    """Build an engine from RUN_DIR's checkpoint into OUT; parity against eager fp32 and (threshold
    "auto") the operating point are measured on the run's validation split. Returns a summary.

    Args:
        run_dir: A run directory of `realfake train`.
        out: Engine directory to create (must not exist, or be empty).
        backend: auto = the best that runs on the device: tensorrt (CUDA + torch-tensorrt) > aot (AOTInductor package, no compile at load) > compile (torch.compile at every load) > eager; a backend whose compiler crashes is passed over, and engine.json says why.
        precision: fp32; fp16 (CUDA only); bf16 (GPUs, and CPUs with AVX512-BF16/AMX: emulated and many times slower elsewhere); auto = bf16 where the device has bf16 units, else fp16 on a GPU, fp32 on a CPU. Parity against eager fp32 must stay within the precision's tolerance.
        batch: MIN:OPT:MAX batch sizes one call accepts (TensorRT tunes for OPT); scoring splits or pads others.
        threshold: p_fake at or above it is called fake; auto = the equal-error-rate point on the validation split (or see --target-fpr).
        target_fpr: With --threshold auto: the lowest threshold whose false positive rate (real called fake) on the validation split stays at or below this.
        device: auto, cpu or cuda[:N]: the device the engine is built for and runs on.
        checkpoint: best (lowest valid loss) or last (the last epoch).
        ensemble: Another run of the same model and data set (repeatable, e.g. other seeds): the engine averages p_fake over RUN_DIR and these.
        tta: flip: the engine averages p_fake over each image and its mirror, as `evaluate --tta flip` does (twice the model compute; build with the TTA you evaluated the runs with).
    """
    engine_dir = build_engine(run_dir, out, backend=backend, precision=precision, batch=batch,
                              threshold=threshold, target_fpr=target_fpr, device=resolve_device(device),
                              checkpoint=checkpoint, ensemble=ensemble or (), tta=tta)
    meta = read_engine_meta(engine_dir, verify_artifact=False)
    parity = meta["parity"]
    return {"engine_dir": str(engine_dir), "engine_id": meta["engine_id"], "backend": meta["backend"],
            "backend_reason": meta["backend_choice"]["reason"], "precision": meta["precision"],
            "model": meta["architecture"], "members": meta["members"], "tta": meta.get("tta", "none"),
            "image_size": meta["image_size"], "batch": meta["batch"], "device": meta["device"],
            "threshold": meta["threshold"], "threshold_method": meta["threshold_method"]["method"],
            "threshold_detail": meta["threshold_method"],
            "parity": {key: parity[key] for key in ("n_images", "max_abs_diff_p", "mean_abs_diff_p",
                                                     "label_agreement", "tolerance")},
            "build_s": meta["build_s"]}
