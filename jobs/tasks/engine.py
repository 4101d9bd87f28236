"""`realfake engine build`: compile a training run's checkpoint into an inference engine directory."""
from __future__ import annotations

from pathlib import Path

from realfake.jobs.service.params import InputPath, OutputPath


def run_engine_build(
    run_dir: InputPath,
    out: OutputPath,
    backend: str = "auto",
    precision: str = "fp32",
    batch: str = "1:64:256",
    threshold: str = "0.5",
    target_fpr: float | None = None,
    device: str = "auto",
    checkpoint: str = "best",
    ensemble: list[InputPath] | None = None,
    tta: str = "none",
) -> dict:
    """Build an engine from RUN_DIR's checkpoint into OUT; parity against eager fp32 and (threshold
    "auto") the operating point are measured on the run's validation split. Returns a summary.

    Args:
        ensemble: Other runs of the same model and data set (e.g. other seeds): the engine averages p_fake over RUN_DIR and these.
        tta: none, or flip: the engine averages p_fake over each image and its mirror, as `evaluate --tta flip` (twice the model compute).
    """
    import json

    from realfake.engines.build import build_engine
    from realfake.engines.devices import resolve_device

    engine_dir = build_engine(run_dir, out, backend=backend, precision=precision, batch=batch,
                              threshold=threshold, target_fpr=target_fpr, device=resolve_device(device),
                              checkpoint=checkpoint, ensemble=ensemble or (), tta=tta)
    meta = json.loads((Path(engine_dir) / "engine.json").read_text())
    parity = meta["parity"]
    return {"engine_dir": str(engine_dir), "engine_id": meta["engine_id"], "backend": meta["backend"],
            "backend_reason": meta["backend_choice"]["reason"], "precision": meta["precision"],
            "model": meta["architecture"], "members": meta["members"], "tta": meta.get("tta", "none"),
            "image_size": meta["image_size"],
            "batch": meta["batch"],
            "device": meta["device"], "threshold": meta["threshold"],
            "threshold_method": meta["threshold_method"]["method"], "threshold_detail": meta["threshold_method"],
            "parity": {key: parity[key] for key in ("n_images", "max_abs_diff_p", "mean_abs_diff_p",
                                                     "label_agreement", "tolerance")},
            "build_s": meta["build_s"]}
