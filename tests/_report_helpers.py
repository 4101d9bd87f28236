"""Score outputs for the report tests, written with the score writers themselves (no engine needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from _score_helpers import save_image
from PIL import Image
from realfake.jobs.tasks.outputs.common import ERROR_COLUMNS, RESULT_COLUMNS, errors_path
from realfake.jobs.tasks.outputs.writers import open_writer

ENGINE_ID = "simple_cnn-test"
THRESHOLD = 0.5
UNKNOWN_REASON = "p_fake too close to the threshold"


def decision_for(p_fake: float) -> tuple[str, str]:
    """The decision column the tests use: unknown within 0.1 of the threshold."""
    if abs(p_fake - THRESHOLD) < 0.1:
        return "unknown", UNKNOWN_REASON
    return ("fake" if p_fake >= THRESHOLD else "real"), ""


def make_scores(root: Path, n: int = 30, *, fmt: str = "csv", decision: bool = False, seed: int = 0,
                errors: int = 2, image_size: int = 40) -> tuple[Path, list[dict]]:
    """n images in root/images/{A,b}/img_NNN.jpg and a score output root/scores.<fmt> of them (p_fake
    from a seeded generator, label by THRESHOLD; the decision is the label, or with `decision` unknown near
    the threshold, with its reason), plus an errors file with `errors` rows. Returns (the output, its rows)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        path = save_image(root / "images" / ("A" if i % 2 else "b") / f"img_{i:03d}.jpg", rng, size=image_size)
        p_fake = float(rng.random())
        row = {"path": str(path.absolute()), "size": path.stat().st_size, "mtime": f"2026-01-01T00:00:{i % 60:02d}",
               "p_fake": p_fake, "label": "fake" if p_fake >= THRESHOLD else "real", "threshold": THRESHOLD,
               "engine_id": ENGINE_ID}
        row["decision"], row["reason"] = decision_for(p_fake) if decision else (row["label"], "")
        rows.append(row)
    out = root / f"scores.{fmt}"
    with open_writer(out, RESULT_COLUMNS, resume=False) as writer:
        writer.write(rows)
    with open_writer(errors_path(out), ERROR_COLUMNS, resume=False) as writer:
        writer.write([{"path": str((root / "images" / f"bad_{k}.jpg").absolute()), "reason": "corrupt",
                       "engine_id": ENGINE_ID} for k in range(errors)])
    return out, rows


def write_heatmaps(folder: Path, paths: list[str], size: int = 48, seed: int = 5) -> Path:
    """A heat-map folder as `realfake report` reads it: one PNG per path and index.csv (path,heatmap)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,heatmap"]
    for k, path in enumerate(paths):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"heat_{k}.png")
        lines.append(f"{path},heat_{k}.png")
    (folder / "index.csv").write_text("\n".join(lines) + "\n")
    return folder


def expected_order(rows: list[dict]) -> list[str]:
    """The table's first order: p_fake highest first, equal p_fake by path."""
    return [r["path"] for r in sorted(rows, key=lambda r: (-r["p_fake"], r["path"]))]
