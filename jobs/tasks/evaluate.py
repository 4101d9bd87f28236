"""`realfake evaluate`: score a run's checkpoint on a split and write the evaluation report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import torch
from realfake.engines.devices import resolve_device
from realfake.engines.metrics import (
    classification_metrics,
    decision_coverage,
    equal_error_rate,
    format_coverage,
    format_report_md,
    save_confusion_png,
    save_roc_png,
)
from realfake.engines.recipes import TTA_MODES
from realfake.engines.trainer import CHECKPOINTS, load_runs, predict
from realfake.jobs.service.options import Bounds, check_arguments
from realfake.jobs.service.params import InputPath
from realfake.jobs.tasks.outputs.common import PASS_A_SCORE_OUTPUT, errors_path, resolve_output
from realfake.jobs.tasks.outputs.writers import read_rows
from realfake.pipelines.images import file_encoding
from realfake.pipelines.launder_dataset import laundered_split, laundering_specs
from realfake.pipelines.loaders import get_loader, manifest_loader_options
from realfake.pipelines.manifest import SPLITS, manifest_sha256, read_manifest
from realfake.pipelines.pixel_loaders import LOADER_CHOICES


def _write_report(report: dict, labels, p_fake, title: str, path_of) -> Path:
    """report .json and .md, confusion and ROC .png, at path_of(kind, suffix); returns the .md path."""
    metrics = report["metrics"]
    path_of("report", ".json").write_text(json.dumps(report, indent=2) + "\n")
    path_of("report", ".md").write_text(format_report_md(metrics, title=title))
    save_confusion_png(metrics, path_of("confusion", ".png"))
    if metrics["roc_auc"] is not None:
        save_roc_png(labels, p_fake, path_of("roc", ".png"))
    return path_of("report", ".md")


def _write_undecided_report(scores_file: Path, data_dir, split: str, engine_id: str, threshold: float,
                            coverage: dict, title: str) -> dict:
    """The report of a split the engine decided none of: its coverage (0) and nothing else to measure."""
    report_md = Path(f"{scores_file}.{split}-report.md")
    report = {"scores": str(scores_file), "data_dir": str(data_dir), "split": split, "engine_id": engine_id,
              "metrics": {"n": 0, "threshold": threshold, "coverage": coverage}}
    Path(f"{scores_file}.{split}-report.json").write_text(json.dumps(report, indent=2) + "\n")
    report_md.write_text(f"# {title}\n\n{format_coverage(coverage)} The engine found the evidence it reads gone "
                         "from every file, so there are no accuracy or AUC figures to report.\n")
    return {"scores": str(scores_file), "split": split, "n": 0, "accuracy": None, "roc_auc": None,
            "threshold": threshold, "engine_id": engine_id, "coverage": 0.0,
            "real_called_fake": coverage["real_called_fake"], "report": str(report_md)}


def run_evaluate(
    run_dir: InputPath,
    split: Literal[SPLITS] = "test",
    checkpoint: Literal[CHECKPOINTS] = "best",
    threshold: Annotated[float, Bounds(min=0, max=1)] = 0.5,
    loader: Literal[LOADER_CHOICES] = "auto",
    batch_size: Annotated[int, Bounds(min=1)] = 64,
    num_workers: Annotated[int, Bounds(min=0)] = 2,
    device: str = "auto",
    progress: bool = True,
    tta: Literal[TTA_MODES] = "none",
    calibrate: bool = False,
    ensemble: list[InputPath] | None = None,
    launder: list[str] | None = None,
) -> dict:
    """Evaluate RUN_DIR's checkpoint on a split of the data it was trained on; writes report.json,
    report.md, confusion.png and roc.png into the run directory (suffixed by split when not test).

    Args:
        run_dir: A run directory of `realfake train`.
        split: The split of the run's data set to evaluate on.
        checkpoint: best (lowest valid loss) or last (the last epoch).
        threshold: p_fake at or above it is called fake.
        loader: Decoder: auto, dali or torch.
        batch_size: Images per batch.
        num_workers: Loader worker threads/processes.
        device: auto, cpu or cuda[:N].
        progress: Show a progress bar.
        tta: Test-time augmentation, p_fake averaged over views: none, flip (image + mirror) or crops (the image and its 4 corner + centre crops of 7/8 side resized back, each also mirrored: 12 views).
        calibrate: Use the valid split's equal-error-rate threshold instead of --threshold (same checkpoint and TTA): a decision point chosen without the evaluated split (training with pseudo-fakes shifts the class prior, so 0.5 is no longer the balanced point).
        ensemble: Another run of the same model and data set (repeatable, e.g. other seeds): p_fake is the mean over RUN_DIR and these, same checkpoint and TTA; the report files get an "_ensemble" suffix.
        launder: Also evaluate the split laundered by this transform (repeatable; a `realfake data launder` spec such as jpeg:q=85, resize:scale=0.75,q=85, crop:dx=3,dy=5,q=90, or `family` for the default family of docs/robustness.md), at the same threshold: one row each in the report. Laundered copies are kept in DATA_DIR/laundered/SPLIT/ and reused.
    """
    check_arguments(run_evaluate, locals())
    run_dir = Path(run_dir)
    if calibrate and split == "valid":
        raise ValueError("--calibrate picks the threshold on the valid split: evaluate --split test (or train)")
    members = [run_dir, *(Path(p) for p in ensemble or ())]
    model, config, state = load_runs(members, checkpoint)
    data_dir = Path(config["data_dir"])
    rows = read_manifest(data_dir, split)
    if not rows:
        raise ValueError(f"split {split!r} of {data_dir} is empty: evaluate another --split")
    if manifest_sha256(data_dir) != config["manifest_sha256"]:
        raise ValueError(f"the manifest in {data_dir} changed since {run_dir} was trained: "
                         "its splits may overlap the training data; train again on the new data")
    run_device = resolve_device(device)
    model = model.to(run_device)
    input_kind = config["input"]
    if input_kind == "ghosts" and tta == "crops":
        raise ValueError(f"{config['model']} reads JPEG ghost maps, which resized crops would blur: use --tta flip")

    def scores(split_rows, name, rows_dir=data_dir):
        data = get_loader([r.path for r in split_rows], [r.label for r in split_rows], train=False, backend=loader,
                          image_size=config["image_size"], batch_size=batch_size, num_workers=num_workers,
                          device=run_device,
                          **manifest_loader_options(input_kind, rows_dir, config["image_size"], split_rows,
                                                    config["ghost_maps"] or "pil"))
        p, y, indices, _ = predict(model, data, torch.device(run_device), progress=progress,
                                   desc=f"evaluate {name}", tta=tta)
        if len(indices) != len(split_rows) or sorted(indices.tolist()) != list(range(len(split_rows))):
            raise RuntimeError(f"loader {data.backend} delivered {len(indices)} of {len(split_rows)} files")
        order = indices.argsort()
        return p[order].numpy(), y[order].numpy(), data.backend

    threshold_source = "given"
    if calibrate:
        valid_rows = read_manifest(data_dir, "valid")
        p_valid, y_valid, _ = scores(valid_rows, "valid (calibration)")
        if len(set(y_valid.tolist())) < 2:
            raise ValueError(f"--calibrate needs both classes in the valid split of {data_dir}")
        _, threshold = equal_error_rate(y_valid, p_valid)
        threshold_source = "valid EER"
    specs = laundering_specs(launder)
    p_fake, labels, backend = scores(rows, split)
    metrics = classification_metrics(labels, p_fake, threshold=threshold, groups=[r.group for r in rows],
                                     encodings=[file_encoding(r.path) for r in rows])
    if specs:
        metrics["launder"] = {}
        for spec in specs:
            laundered_dir = laundered_split(data_dir, spec, split, workers=max(1, num_workers), progress=progress)
            laundered_rows = read_manifest(laundered_dir, split)
            p_l, y_l, _ = scores(laundered_rows, f"{split} {spec}", laundered_dir)
            metrics["launder"][spec] = classification_metrics(y_l, p_l, threshold=threshold,
                                                              groups=[r.group for r in laundered_rows])
    suffix = ("" if split == "test" else f"_{split}") + ("_ensemble" if len(members) > 1 else "")
    title = f"{config['model']} @ {config['image_size']}px — {split} split ({checkpoint} checkpoint, epoch {state['epoch']})"
    if tta != "none":
        title += f", test-time augmentation: {tta}"
    if calibrate:
        title += ", threshold from the valid split's EER"
    if len(members) > 1:
        title += f", ensemble of {len(members)} runs"
    report = {"run_dir": str(run_dir), "split": split, "checkpoint": checkpoint, "epoch": state["epoch"],
              "model": config["model"], "loader": backend, "tta": tta, "threshold_source": threshold_source,
              "ensemble": [str(p) for p in members] if len(members) > 1 else None,
              "metrics": metrics,
              "predictions": [{"path": r.path, "label": r.label, "group": r.group, "p_fake": float(p)}
                              for r, p in zip(rows, p_fake, strict=True)]}
    report_md = _write_report(report, labels, p_fake, title, lambda kind, ext: run_dir / f"{kind}{suffix}{ext}")
    return {"run_dir": str(run_dir), "split": split, "n": metrics["n"], "accuracy": metrics["accuracy"],
            "f1_fake": metrics["f1_fake"], "roc_auc": metrics["roc_auc"], "eer": metrics["eer"],
            "report": str(report_md), "loader": backend, "tta": tta,
            "threshold": metrics["threshold"], "threshold_source": threshold_source,
            "ensemble": report["ensemble"], "launder": list(specs)}


def run_evaluate_scores(scores: InputPath, data_dir: InputPath, split: Literal[SPLITS] = "test") -> dict:
    """Metrics of a `realfake score` output against the labels of DATA_DIR's split: the engine's own
    p_fake and threshold, the same report as `evaluate` (how a built engine does on images it never saw).

    Every file of the split must have been scored (a missing one would flatter or hurt the figures
    silently); scores of other files are ignored. Writes SCORES.<split>-report.md/.json,
    .<split>-confusion.png and .<split>-roc.png beside the scores.

    Args:
        scores: A `realfake score` output (.csv, .jsonl, .parquet, or a job's output folder).
        data_dir: The prepared data set whose split is evaluated (`realfake data prepare`).
        split: The split whose files are joined with the scores.
    """
    scores_file = resolve_output(scores)
    if not scores_file.exists():
        raise FileNotFoundError(f"{scores_file} does not exist: {PASS_A_SCORE_OUTPUT}")
    rows = read_manifest(Path(data_dir), split)
    if not rows:
        raise ValueError(f"split {split!r} of {data_dir} is empty: evaluate another --split")
    scored = {str(Path(r["path"]).resolve()): r for r in read_rows(scores_file, fix=PASS_A_SCORE_OUTPUT)}
    picked = [scored.get(str(Path(r.path).resolve())) for r in rows]
    missing = [r.path for r, s in zip(rows, picked, strict=True) if s is None]
    if missing:
        errors = errors_path(scores_file)
        why = f" ({errors} lists the files that could not be scored, with the reason)" if errors.exists() else ""
        raise ValueError(f"{len(missing)} of the {len(rows)} {split} files of {data_dir} are not in {scores_file}, "
                         f"e.g. {missing[0]}{why}: score the folders the data set was prepared from into it "
                         "(`realfake score SRC --engine ENGINE --out SCORES` resumes and adds them)")
    engine_ids = sorted({s["engine_id"] for s in picked})
    thresholds = sorted({s["threshold"] for s in picked})
    if len(engine_ids) > 1 or len(thresholds) > 1:
        raise ValueError(f"{scores_file} holds the {split} files' scores of {len(engine_ids)} engines "
                         f"({', '.join(engine_ids)}): score them again with one engine into a new file")
    # The engine's decisions: the metrics are those of the files it decided; unknown is never fake.
    decided = [i for i, s in enumerate(picked) if s["decision"] != "unknown"]
    coverage = decision_coverage([r.label for r in rows], [s["decision"] for s in picked])
    title = f"engine {engine_ids[0]} — {split} split of {data_dir} ({scores_file.name}, the engine's threshold)"
    if not decided:  # a result, not an error: the engine said the evidence is gone from every file
        return _write_undecided_report(scores_file, data_dir, split, engine_ids[0], thresholds[0], coverage, title)
    labels, p_fake = [rows[i].label for i in decided], [picked[i]["p_fake"] for i in decided]
    metrics = classification_metrics(labels, p_fake, threshold=thresholds[0], groups=[rows[i].group for i in decided],
                                     encodings=[file_encoding(rows[i].path) for i in decided])
    metrics["coverage"] = coverage
    report = {"scores": str(scores_file), "data_dir": str(data_dir), "split": split, "engine_id": engine_ids[0],
              "metrics": metrics}
    report_md = _write_report(report, labels, p_fake, title, lambda kind, ext: Path(f"{scores_file}.{split}-{kind}{ext}"))
    return {"scores": str(scores_file), "split": split, "n": metrics["n"], "accuracy": metrics["accuracy"],
            "roc_auc": metrics["roc_auc"], "threshold": metrics["threshold"], "engine_id": engine_ids[0],
            "coverage": metrics["coverage"]["decided"], "real_called_fake": metrics["coverage"]["real_called_fake"],
            "report": str(report_md)}
