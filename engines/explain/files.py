"""What `realfake explain` writes per image: the evidence as JSON, and a PNG of it over the photo."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle
from realfake.engines.explain.explainer import Explainer
from realfake.engines.explain.methods import UNITS, Evidence
from realfake.pipelines.plotting import pyplot
from realfake.pipelines.prepare import EDIT_REGIONS

EVIDENCE_FORMAT = 1


def plain_json(value):
    """`value` with NaN and infinities as null, numpy scalars as Python ones and tuples as lists: strict JSON."""
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evidence_document(evidence: Evidence, record: Mapping[str, Any], explainer: Explainer,
                      content_box: Sequence[int]) -> dict:
    """The machine-readable evidence of one image (see docs/explain.md for the fields)."""
    rows, cols = evidence.values.shape
    values = np.round(evidence.values.astype(np.float64), 5).tolist()
    return plain_json({
        "format": EVIDENCE_FORMAT, "path": record["path"], "engine_id": explainer.engine_id,
        "engine_dir": str(explainer.engine_dir), "architecture": explainer.architecture,
        "method": explainer.method, "units": UNITS[explainer.method],
        "members": len(explainer.members), "views": list(explainer.views),
        "p_fake": evidence.p_fake, "threshold": explainer.threshold,
        "label": "fake" if evidence.p_fake >= explainer.threshold else "real",
        "grid": {"rows": rows, "cols": cols, "cell_px": evidence.cell_px, "canvas_px": explainer.canvas_px,
                 "content_box_px": list(content_box), "values": values},
        "regions": record["regions"], "hottest_by_max": record["hottest_by_max"], "hottest_by_mean": record["hottest_by_mean"],
        "edited_regions": record["code"], "region_head": evidence.region_head,
        "spread": {"entropy": record["entropy"], "top_share": record["top_share"]},
    })


def write_evidence_json(document: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return path


def render(evidence: Evidence, record: Mapping[str, Any], explainer: Explainer, photo: np.ndarray,
           out: str | Path, *, dpi: int = 100) -> Path:
    """One PNG: the photo as the model saw it, the evidence over it (colour bar with its units), the
    region boxes (solid where the file name says the region was edited), p_fake and the decision in the
    title, the region head's probabilities (where there is one) below."""
    plt = pyplot()
    canvas = explainer.canvas_px
    values = evidence.values
    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=dpi)
    ax.imshow(photo, extent=(0, canvas, canvas, 0), interpolation="bilinear")
    extent = (0, values.shape[1] * evidence.cell_px, values.shape[0] * evidence.cell_px, 0)
    if explainer.method == "cam":
        bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        bound = bound or 1.0
        cmap = matplotlib.colormaps["RdBu_r"].copy()
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
        label = "logit per cell: + fake / − real"
    else:
        cmap = matplotlib.colormaps["inferno"].copy()
        norm = matplotlib.colors.Normalize(0.0, 1.0)
        label = "Grad-CAM of fake − real, 0–1"
    cmap = cmap.with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    heat = ax.imshow(np.ma.masked_invalid(values), extent=extent, cmap=cmap, norm=norm, alpha=0.55,
                     interpolation="nearest")
    bar = fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label(label, fontsize=7, labelpad=2)
    bar.ax.tick_params(labelsize=7)
    code = record.get("code")
    for i, name in enumerate(EDIT_REGIONS):
        x0, y0, x1, y1 = record["regions"][name]["box_px"]
        edited = bool(code and code[i])
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.4 if edited else 0.8,
                               ls="-" if edited else "--", ec="#39ff14" if edited else "white"))
    ax.set_xlim(0, canvas)
    ax.set_ylim(canvas, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    decision = "fake" if evidence.p_fake >= explainer.threshold else "real"
    name = Path(record["path"]).name
    ax.set_title(f"{name}\np_fake {evidence.p_fake:.3f} → {decision} (threshold {explainer.threshold:.3f})\n"
                 f"hottest: {', '.join(record['hottest_by_max'])}", fontsize=8)
    notes = [f"{explainer.architecture} {explainer.method}, engine {explainer.engine_id}; boxes: region priors"
             + ("" if code is None else " (green: edited per file name)")]
    if evidence.region_head:
        notes.append("region head: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in evidence.region_head.items()))
    fig.text(0.02, 0.015, "\n".join(notes), fontsize=6.5, va="bottom")
    fig.subplots_adjust(left=0.02, right=0.86, top=0.86, bottom=0.1)
    out = Path(out)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(out)
    return out
