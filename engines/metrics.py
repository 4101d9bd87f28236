"""Evaluation metrics (scikit-learn) and their pictures (matplotlib). Positive class = fake (label 1)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from realfake.pipelines.plotting import pyplot
from realfake.pipelines.spec import CLASS_NAMES
from sklearn import metrics as skm


def equal_error_rate(labels: np.ndarray, p_fake: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): the ROC point where the false positive rate equals the false negative rate,
    interpolated between the two ROC points that bracket it."""
    fpr, tpr, thresholds = skm.roc_curve(labels, p_fake)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf: interpolate from 1
    fnr = 1.0 - tpr
    diff = fpr - fnr  # increasing along the curve, from <= 0 to >= 0
    i = int(np.argmax(diff >= 0))
    if i == 0 or diff[i] == 0:
        return float(fpr[i]), float(thresholds[i])
    w = -diff[i - 1] / (diff[i] - diff[i - 1])
    eer = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    threshold = thresholds[i - 1] + w * (thresholds[i] - thresholds[i - 1])
    return float(eer), float(threshold)


def threshold_at_fpr(labels: np.ndarray, p_fake: np.ndarray, target_fpr: float) -> float:
    """Lowest threshold whose false positive rate stays at or below `target_fpr`."""
    fpr, _, thresholds = skm.roc_curve(labels, p_fake)
    ok = np.flatnonzero(fpr <= target_fpr)
    return float(min(thresholds[ok[-1]], 1.0))


def fakes_by_encoding(labels: Sequence[int], p_fake: Sequence[float], encodings: Sequence[str], *,
                      threshold: float) -> dict | None:
    """Recall and ROC AUC (against every real image) of the fakes encoded like some real image of the
    same set and of the fakes encoded like none (see `images.encoding_of`), or None when every fake
    shares an encoding with the reals. A model that only learned the encoding scores 0.5 AUC on the
    first subset: the two together say how much of a result the compression cue can explain."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(p_fake, dtype=np.float64)
    enc = np.asarray(encodings, dtype=object)
    real_encodings = set(enc[y == 0].tolist())
    like_real = np.array([e in real_encodings for e in enc])
    subsets = {"encoded like a real image": (y == 1) & like_real, "encoded like no real image": (y == 1) & ~like_real}
    if not subsets["encoded like no real image"].any() or not (y == 0).any():
        return None
    result = {}
    for name, fakes in subsets.items():
        n = int(fakes.sum())
        keep = fakes | (y == 0)
        result[name] = {"n": n, "recall": float(np.mean(p[fakes] >= threshold)) if n else None,
                        "roc_auc": float(skm.roc_auc_score(y[keep], p[keep])) if n else None}
    return result


def decision_coverage(labels: Sequence[int], decisions: Sequence[str]) -> dict:
    """What a service that may answer `unknown` does over ALL the files: the share it decided, and the
    share of real photos it called fake and of fakes it caught (unknown counts as not fake)."""
    y = np.asarray(labels, dtype=np.int64)
    d = np.asarray(decisions, dtype=object)
    return {"n": int(y.size), "decided": float(np.mean(d != "unknown")) if y.size else None,
            "unknown": int(np.sum(d == "unknown")),
            "real_called_fake": float(np.mean(d[y == 0] == "fake")) if (y == 0).any() else None,
            "fakes_caught": float(np.mean(d[y == 1] == "fake")) if (y == 1).any() else None}


def classification_metrics(labels: Sequence[int], p_fake: Sequence[float], *, threshold: float = 0.5,
                           groups: Sequence[str] | None = None, encodings: Sequence[str] | None = None) -> dict:
    """Everything the report's evaluation shows, and what it lacked: accuracy, per-class precision /
    recall / F1 / support, confusion matrix, ROC AUC, average precision, EER, recall per group, and
    the fakes split by whether their encoding gives them away (`fakes_by_encoding`)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(p_fake, dtype=np.float64)
    if y.size == 0:
        raise ValueError("nothing to evaluate: the split is empty")
    pred = (p >= threshold).astype(np.int64)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    both_classes = len(np.unique(y)) == 2
    result = {
        "n": int(y.size),
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)) if both_classes else None,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(CLASS_NAMES)
        },
        "macro_f1": float(np.mean(f1)),
        "f1_fake": float(f1[1]),
        # rows = true class, columns = predicted class, in CLASS_NAMES order
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=[0, 1]).tolist(),
        # What a user of the decisions meets: real photos called fake, and fakes caught.
        "real_called_fake": float(np.mean(pred[y == 0] == 1)) if (y == 0).any() else None,
        "fakes_caught": float(np.mean(pred[y == 1] == 1)) if (y == 1).any() else None,
        "roc_auc": float(skm.roc_auc_score(y, p)) if both_classes else None,
        "average_precision": float(skm.average_precision_score(y, p)) if both_classes else None,
        "eer": None,
        "eer_threshold": None,
    }
    if both_classes:
        result["eer"], result["eer_threshold"] = equal_error_rate(y, p)
    if groups is not None and any(groups):
        g = np.asarray(groups)
        result["recall_per_group"] = {
            str(name): {"recall": float(np.mean(pred[g == name] == y[g == name])), "n": int(np.sum(g == name))}
            for name in sorted(set(groups)) if name
        }
    if encodings is not None:
        by_encoding = fakes_by_encoding(y, p, encodings, threshold=threshold)
        if by_encoding is not None:
            result["fakes_by_encoding"] = by_encoding
    return result


def save_confusion_png(metrics: dict, path: Path, title: str = "") -> Path:
    plt = pyplot()

    display = skm.ConfusionMatrixDisplay(np.asarray(metrics["confusion_matrix"]), display_labels=list(CLASS_NAMES))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    display.plot(ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title(title or f"Confusion matrix (threshold {metrics['threshold']:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def save_roc_png(labels, p_fake, path: Path, title: str = "") -> Path:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.5, 4))
    skm.RocCurveDisplay.from_predictions(labels, p_fake, ax=ax, name="fake vs real", plot_chance_level=True)
    ax.set_title(title or "ROC curve (positive class = fake)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def save_curves_png(history: list[dict], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train vs valid."""
    plt = pyplot()

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    for key, label in (("train", "train"), ("valid", "valid")):
        ax_loss.plot(epochs, [h[f"{key}_loss"] for h in history], marker="o", label=label)
        ax_acc.plot(epochs, [h[f"{key}_acc"] for h in history], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _fmt(value, spec=".4f"):
    return "n/a" if value is None else format(value, spec)


def format_coverage(c: dict) -> str:
    """One sentence of `decision_coverage`'s figures: how many files were decided, and over all of them the
    real photos called fake and the fakes caught."""
    return (f"Decided {c['n'] - c['unknown']} of {c['n']} files (coverage {c['decided']:.3f}; {c['unknown']} "
            f"unknown, never counted as fake); over all {c['n']}: real called fake "
            f"{_fmt(c['real_called_fake'], '.3f')}, fakes caught {_fmt(c['fakes_caught'], '.3f')}.")


def format_report_md(metrics: dict, *, title: str) -> str:
    """The report's classification table, plus the figures it lacked."""
    lines = [f"# {title}", "", f"Files: {metrics['n']}, threshold: {metrics['threshold']:.4f}", ""]
    if metrics.get("coverage"):
        lines += [f"{format_coverage(metrics['coverage'])} The figures below are those of the decided files.", ""]
    lines += ["| class | precision | recall | f1-score | support |", "|---|---|---|---|---|"]
    for name, row in metrics["per_class"].items():
        lines.append(f"| {name} | {row['precision']:.2f} | {row['recall']:.2f} | {row['f1']:.2f} | {row['support']} |")
    cm = metrics["confusion_matrix"]
    lines += ["", "| metric | value |", "|---|---|",
              f"| accuracy | {_fmt(metrics['accuracy'])} |",
              f"| balanced accuracy | {_fmt(metrics['balanced_accuracy'])} |",
              f"| macro F1 | {_fmt(metrics['macro_f1'])} |",
              f"| ROC AUC | {_fmt(metrics['roc_auc'])} |",
              f"| average precision | {_fmt(metrics['average_precision'])} |",
              f"| EER | {_fmt(metrics['eer'])} (threshold {_fmt(metrics['eer_threshold'])}) |",
              "", "Confusion matrix (rows = true, columns = predicted):", "",
              "| | pred real | pred fake |", "|---|---|---|",
              f"| real | {cm[0][0]} | {cm[0][1]} |", f"| fake | {cm[1][0]} | {cm[1][1]} |"]
    if metrics.get("recall_per_group"):
        lines += ["", "| group | n | recall (correct rate) |", "|---|---|---|"]
        for name, row in metrics["recall_per_group"].items():
            lines.append(f"| {name} | {row['n']} | {row['recall']:.3f} |")
    if metrics.get("launder"):
        lines += ["", "Under laundering (the split's files re-saved, resized or cropped, then scored at the same "
                      "threshold; docs/robustness.md):", "",
                  "| transform | ROC AUC | accuracy | real called fake | fakes caught |", "|---|---|---|---|---|",
                  f"| none | {_fmt(metrics['roc_auc'], '.3f')} | {metrics['accuracy']:.3f} | "
                  f"{_fmt(metrics['real_called_fake'], '.3f')} | {_fmt(metrics['fakes_caught'], '.3f')} |"]
        for spec, row in metrics["launder"].items():
            lines.append(f"| `{spec}` | {_fmt(row['roc_auc'], '.3f')} | {row['accuracy']:.3f} | "
                         f"{_fmt(row['real_called_fake'], '.3f')} | {_fmt(row['fakes_caught'], '.3f')} |")
    if metrics.get("fakes_by_encoding"):
        lines += ["", "Fakes by encoding (JPEG quantization tables or format; see docs/quality.md):", "",
                  "| fakes | n | recall | ROC AUC vs all real images |", "|---|---|---|---|"]
        for name, row in metrics["fakes_by_encoding"].items():
            lines.append(f"| {name} | {row['n']} | {_fmt(row['recall'], '.3f')} | {_fmt(row['roc_auc'], '.3f')} |")
    return "\n".join(lines) + "\n"
