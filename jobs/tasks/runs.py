"""`realfake runs list|compare`: the report's comparison of configurations, as a table over run directories."""
from __future__ import annotations

import json
from pathlib import Path

COLUMNS = ("run", "model", "optimizer", "lr", "augment", "epochs", "image_size", "loader",
           "test_accuracy", "test_f1_fake", "test_auc")


def collect_runs(runs_dir: Path) -> list[dict]:
    """One row per run directory under RUNS_DIR (those with a config.json); test metrics when evaluated."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir} is not a directory: pass the --out folder given to `realfake train`")
    rows = []
    for config_path in sorted(runs_dir.glob("*/config.json")):
        config = json.loads(config_path.read_text())
        args = config.get("args", {})
        history_path = config_path.parent / "history.json"
        history = json.loads(history_path.read_text()) if history_path.is_file() else []
        report_path = config_path.parent / "report.json"
        metrics = json.loads(report_path.read_text())["metrics"] if report_path.is_file() else {}
        rows.append({
            "run": config_path.parent.name, "model": config["model"], "optimizer": args.get("optimizer"),
            "lr": args.get("lr"), "augment": args.get("augment"), "epochs": len(history),
            "image_size": config["image_size"], "loader": config.get("loader"),
            "test_accuracy": metrics.get("accuracy"), "test_f1_fake": metrics.get("f1_fake"),
            "test_auc": metrics.get("roc_auc"),
        })
    return rows


def rank_runs(rows: list[dict], by: str = "test_auc") -> list[dict]:
    """Best first by `by`; unevaluated runs last; adds the gap to the best."""
    if by not in COLUMNS:
        raise ValueError(f"cannot sort by {by!r}: choose one of {', '.join(COLUMNS)}")
    scored = sorted((r for r in rows if r[by] is not None), key=lambda r: r[by], reverse=True)
    best = scored[0][by] if scored else None
    ranked = [{**r, f"{by}_gap": r[by] - best} for r in scored]
    return ranked + [{**r, f"{by}_gap": None} for r in rows if r[by] is None]
