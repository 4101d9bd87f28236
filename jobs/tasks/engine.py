"""`realfake engine build`: compile a training run's checkpoint into an inference engine directory."""
from __future__ import annotations

from typing import Literal

from realfake.engines.build import BuildOptions, build_engine
from realfake.engines.schema import read_engine_meta
from realfake.engines.trainer import CHECKPOINTS
from realfake.jobs.service.params import InputPath, OutputPath


def run_engine_build(run_dir: InputPath, out: OutputPath, checkpoint: Literal[CHECKPOINTS] = "best",
                     ensemble: list[InputPath] | None = None, **options) -> dict:
    """Build an engine from RUN_DIR's checkpoint into OUT; parity against eager fp32 and (threshold
    "auto") the operating point are measured on the run's validation split. Returns a summary.

    Args:
        run_dir: A run directory of `realfake train`.
        out: Engine directory to create (must not exist, or be empty).
        checkpoint: best (lowest valid loss) or last (the last epoch).
        ensemble: Another run of the same model and data set (repeatable, e.g. other seeds): the engine averages p_fake over RUN_DIR and these.

    The options are the fields of `engines.build.BuildOptions` (`realfake engine build --help`).
    """
    engine_dir = build_engine(run_dir, out, checkpoint=checkpoint, ensemble=ensemble or (), **options)
    meta = read_engine_meta(engine_dir, verify_artifact=False)
    parity = meta["parity"]
    return {"engine_dir": str(engine_dir), "engine_id": meta["engine_id"], "backend": meta["backend"],
            "backend_reason": meta["backend_choice"]["reason"], "precision": meta["precision"],
            "model": meta["architecture"], "members": meta["members"], "tta": meta["tta"],
            "image_size": meta["image_size"], "batch": meta["batch"], "device": meta["device"],
            "threshold": meta["threshold"], "threshold_method": meta["threshold_method"]["method"],
            "threshold_detail": meta["threshold_method"],
            "parity": {key: parity[key] for key in ("n_images", "max_abs_diff_p", "mean_abs_diff_p",
                                                     "label_agreement", "tolerance")},
            "evidence": _gate_summary(meta.get("evidence")), "build_s": meta["build_s"]}


def _gate_summary(evidence: dict | None) -> dict | None:
    """What the laundering gate decided, without its fitted coefficients (those stay in engine.json)."""
    if evidence is None:
        return None
    return {key: evidence[key] for key in ("kind", "why", "outcomes", "clean_coverage") if key in evidence}


run_engine_build.options = BuildOptions
