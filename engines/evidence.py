"""Whether a file still carries the evidence an engine reads: the laundering gate of ghost engines.

A ghost engine reads a file's compression history. A re-save, a resize or a crop off the 8x8 grid (an
upload, a messenger, an image editor) writes a new history over the whole file, and after some of them
the engine can no longer tell an edit from that new history: its p_fake then means nothing, and read as
a decision it would accuse real photos. The gate says so instead.

It is a logistic regression (scikit-learn) over summary statistics of the engine's own input, the maps
(per map: the spread of its centred log values over the cells, their mean absolute value, and the share
of cells far below the map's mean), fitted when the engine is built, on the run's validation files: as
they were saved, and laundered by each transform of `pipelines.launder.FAMILY`. A transform "erases the
evidence" when, on those validation files, the engine's AUC falls below MIN_AUC or it calls more than
MAX_REAL_CALLED_FAKE of the real photos fake at its threshold; the gate learns to flag files laundered
by those transforms against files as saved and files laundered by the others. Its own threshold keeps
CLEAN_COVERAGE of the clean validation files decided. Where no transform erases the evidence, or the
validation split is too small to fit anything, the engine has no gate and decides every file.

Everything chosen here is chosen on the validation split; the test split is never read.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

# scikit-learn is imported inside the functions that fit and measure the gate: scoring only applies a
# fitted gate's coefficients, and every scoring process (each Ray task among them) would pay for its import.

MIN_AUC = 0.75
MAX_REAL_CALLED_FAKE = 0.10
CLEAN_COVERAGE = 0.95
FAR_BELOW = -1.0  # a cell this far below its map's mean (log units) re-saves almost exactly
# Fewer validation files than this measure nothing about a transform: no gate is fitted on them.
MIN_VALIDATION_FILES = 20


def evidence_features(maps: torch.Tensor) -> np.ndarray:
    """(N, 3 * C) float64 statistics of ghost maps (N, C, H, W), as the module docstring lists them."""
    x = maps.detach().float().cpu()
    spread = x.std(dim=(2, 3))
    magnitude = x.abs().mean(dim=(2, 3))
    far_below = (x < FAR_BELOW).float().mean(dim=(2, 3))
    return torch.cat([spread, magnitude, far_below], dim=1).double().numpy()


def transform_outcome(labels: np.ndarray, p_fake: np.ndarray, threshold: float) -> dict:
    """How the engine does on one transform's laundered validation files, and whether that erases the evidence."""
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(labels), np.asarray(p_fake)
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None
    real_called_fake = float(np.mean(p[y == 0] >= threshold)) if (y == 0).any() else None
    erased = (auc is not None and auc < MIN_AUC) or (real_called_fake is not None
                                                       and real_called_fake > MAX_REAL_CALLED_FAKE)
    return {"n": int(y.size), "roc_auc": auc, "real_called_fake": real_called_fake, "erased": bool(erased)}


@dataclass
class Gate:
    """A fitted gate: p_laundered = sigmoid(coef . (features - mean) / scale + intercept); flagged at or
    above `threshold`. `outcomes` holds what was measured per transform on the validation files."""

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    threshold: float
    outcomes: dict[str, dict] = field(default_factory=dict)
    clean_coverage: float = CLEAN_COVERAGE

    def p_laundered(self, maps: torch.Tensor) -> np.ndarray:
        z = (evidence_features(maps) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def to_meta(self) -> dict[str, Any]:
        return {"kind": "laundering-gate", **asdict(self)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> Gate | None:
        """The gate an engine.json records, or None (an engine that decides every file)."""
        if not meta or meta.get("kind") != "laundering-gate":
            return None
        return cls(**{key: meta[key] for key in ("mean", "scale", "coef", "intercept", "threshold", "outcomes",
                                                 "clean_coverage")})


def fit_gate(clean: np.ndarray, laundered: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
             clean_labels: np.ndarray, clean_p: np.ndarray, threshold: float) -> tuple[Gate | None, dict]:
    """The gate for an engine (or None), and why. `clean`: evidence features of the validation files as
    saved; `laundered`: per transform spec, (features, labels, engine p_fake) of the same files laundered;
    `threshold`: the engine's decision threshold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    outcomes = {spec: transform_outcome(labels, p, threshold) for spec, (_, labels, p) in laundered.items()}
    erased = [spec for spec, outcome in outcomes.items() if outcome["erased"]]
    record = {"outcomes": outcomes, "erased": erased, "clean": transform_outcome(clean_labels, clean_p, threshold)}
    if not erased:
        return None, {**record, "why_none": "no transform of the family erases the evidence on the validation files"}
    x = np.concatenate([clean, *(features for features, _, _ in laundered.values())])
    target = np.concatenate([np.zeros(len(clean))] + [np.full(len(features), float(spec in erased))
                                                      for spec, (features, _, _) in laundered.items()])
    if len(clean) < MIN_VALIDATION_FILES or target.min() == target.max():
        return None, {**record, "why_none": f"fewer than {MIN_VALIDATION_FILES} validation files: too few to fit a gate"}
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(max_iter=5000, class_weight="balanced").fit(scaler.transform(x), target)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    gate = Gate(mean=scaler.mean_.tolist(), scale=scale.tolist(), coef=model.coef_[0].tolist(),
                intercept=float(model.intercept_[0]), threshold=1.0, outcomes=outcomes)
    clean_scores = 1.0 / (1.0 + np.exp(-(((clean - scaler.mean_) / scale) @ model.coef_[0] + model.intercept_[0])))
    # The smallest p_laundered above the clean files' CLEAN_COVERAGE quantile: those files stay decided.
    gate.threshold = float(np.nextafter(np.quantile(clean_scores, CLEAN_COVERAGE), np.inf))
    return gate, record
