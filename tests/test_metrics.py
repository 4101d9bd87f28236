"""Evaluation metrics checked against scikit-learn (and hand-computed values) on known predictions."""
import numpy as np
import pytest
from realfake.engines.metrics import (
    classification_metrics,
    equal_error_rate,
    fakes_by_encoding,
    format_report_md,
    save_confusion_png,
    save_curves_png,
    save_roc_png,
    threshold_at_fpr,
)
from sklearn import metrics as skm

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
P_FAKE = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.65, 0.2, 0.7, 0.55, 0.05])
GROUPS = ["real"] * 4 + ["easy", "easy", "hard", "mid", "hard"] + ["real"]


def test_metrics_match_sklearn_on_known_predictions():
    m = classification_metrics(LABELS, P_FAKE, threshold=0.5, groups=GROUPS)
    pred = (P_FAKE >= 0.5).astype(int)
    # hand count: real predicted fake = 1 (0.8); fake predicted real = 1 (0.2)
    assert m["confusion_matrix"] == [[4, 1], [1, 4]]
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(LABELS, P_FAKE))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(LABELS, P_FAKE))
    p, r, f, s = skm.precision_recall_fscore_support(LABELS, pred)
    assert m["per_class"]["real"] == pytest.approx({"precision": p[0], "recall": r[0], "f1": f[0], "support": 5})
    assert m["per_class"]["fake"]["f1"] == pytest.approx(f[1])
    assert m["f1_fake"] == pytest.approx(0.8)
    # groups: hard = [0.2 -> wrong, 0.55 -> right]
    assert m["recall_per_group"]["hard"] == {"recall": 0.5, "n": 2}
    assert m["recall_per_group"]["easy"] == {"recall": 1.0, "n": 2}
    assert m["recall_per_group"]["real"]["n"] == 5


def test_fakes_split_by_whether_a_real_image_shares_their_encoding():
    # fakes 4, 5 (0.9, 0.65) saved like no real image; fakes 6, 7, 8 (0.2, 0.7, 0.55) like the reals
    encodings = ["q1"] * 4 + ["q2", "q2", "q1", "q1", "q1"] + ["q1"]
    m = classification_metrics(LABELS, P_FAKE, threshold=0.5, encodings=encodings)
    odd, like = m["fakes_by_encoding"]["encoded like no real image"], m["fakes_by_encoding"]["encoded like a real image"]
    reals = LABELS == 0
    assert odd["n"] == 2 and odd["recall"] == 1.0
    assert odd["roc_auc"] == pytest.approx(skm.roc_auc_score([0] * 5 + [1, 1], [*P_FAKE[reals], 0.9, 0.65]))
    assert like["n"] == 3 and like["recall"] == pytest.approx(2 / 3)
    assert like["roc_auc"] == pytest.approx(skm.roc_auc_score([0] * 5 + [1] * 3, [*P_FAKE[reals], 0.2, 0.7, 0.55]))
    assert "| encoded like no real image | 2 | 1.000 |" in format_report_md(m, title="t")
    # every fake encoded like some real image: nothing to tell apart, no block
    assert fakes_by_encoding(LABELS, P_FAKE, ["q1"] * 10, threshold=0.5) is None
    assert "fakes_by_encoding" not in classification_metrics(LABELS, P_FAKE, encodings=["q1"] * 10)


def test_threshold_moves_the_confusion_matrix():
    m = classification_metrics(LABELS, P_FAKE, threshold=0.9)
    assert m["confusion_matrix"] == [[5, 0], [4, 1]]


def test_eer_where_fpr_equals_fnr():
    # perfectly separable: EER 0
    eer, _ = equal_error_rate(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert eer == pytest.approx(0.0)
    eer, thr = equal_error_rate(LABELS, P_FAKE)
    fpr, tpr, thresholds = skm.roc_curve(LABELS, P_FAKE)
    # the EER lies between the closest ROC points on either side of fpr == fnr
    assert 0.0 < eer < 0.5
    assert min(fpr[fpr - (1 - tpr) >= 0][0], (1 - tpr)[fpr - (1 - tpr) <= 0][-1]) - 1e-9 <= eer
    assert 0.0 <= thr <= 1.0


def test_eer_threshold_is_finite_when_scores_are_tied():
    # a collapsed model (every score tied): the ROC curve jumps from (0, 0) to (1, 1), and the EER
    # lies between sklearn's +inf threshold and the tie
    eer, thr = equal_error_rate(np.array([0, 0, 1, 1]), np.array([0.5, 0.5, 0.5, 0.5]))
    assert eer == pytest.approx(0.5)
    assert np.isfinite(thr) and 0.5 <= thr <= 1.0


def test_threshold_at_fpr_respects_target():
    thr = threshold_at_fpr(LABELS, P_FAKE, 0.0)
    pred = P_FAKE >= thr
    assert not np.any(pred & (LABELS == 0))
    assert np.any(pred & (LABELS == 1))


def test_single_class_has_no_auc_and_empty_is_an_error():
    m = classification_metrics([1, 1, 1], [0.9, 0.2, 0.8])
    assert m["roc_auc"] is None and m["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [])


def test_pictures_and_markdown(tmp_path):
    m = classification_metrics(LABELS, P_FAKE, groups=GROUPS)
    for path in (save_confusion_png(m, tmp_path / "c.png"), save_roc_png(LABELS, P_FAKE, tmp_path / "r.png"),
                 save_curves_png([{"epoch": 1, "train_loss": 0.7, "train_acc": 0.5, "valid_loss": 0.69,
                                   "valid_acc": 0.52}], tmp_path / "h.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = format_report_md(m, title="t")
    assert "| fake | 0.80 | 0.80 | 0.80 | 5 |" in md and "ROC AUC" in md and "| hard | 2 | 0.500 |" in md


def test_real_called_fake_and_fakes_caught_are_the_rates_at_the_threshold():
    m = classification_metrics([0, 0, 0, 0, 1, 1], [0.9, 0.2, 0.1, 0.7, 0.8, 0.3], threshold=0.5)
    assert m["real_called_fake"] == pytest.approx(2 / 4) and m["fakes_caught"] == pytest.approx(1 / 2)
    only_fakes = classification_metrics([1, 1], [0.9, 0.1], threshold=0.5)
    assert only_fakes["real_called_fake"] is None and only_fakes["fakes_caught"] == 0.5
