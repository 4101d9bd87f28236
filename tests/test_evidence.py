"""The laundering gate of ghost engines: fitted on what erases the evidence, recorded in engine.json,
and `unknown` decisions in score outputs (never counted as fake)."""
import json
import shutil

import numpy as np
import pytest
import torch
from _train_helpers import make_ghost_image, make_ghost_prepared
from realfake.engines.evidence import CLEAN_COVERAGE, Gate, evidence_features, fit_gate, transform_outcome
from realfake.engines.schema import ENGINE_JSON, compute_engine_id


def test_a_transform_erases_the_evidence_when_auc_or_real_called_fake_goes_past_the_bounds():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert not transform_outcome(y, np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]), 0.5)["erased"]
    flipped = transform_outcome(y, np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.4]), 0.5)
    assert flipped["erased"] and flipped["roc_auc"] == 0.0
    accusing = transform_outcome(y, np.array([0.55, 0.6, 0.7, 0.8, 0.9, 0.91, 0.95, 0.99]), 0.5)
    assert accusing["roc_auc"] == 1.0 and accusing["real_called_fake"] == 1.0 and accusing["erased"]


def test_the_gate_flags_what_erases_the_evidence_and_keeps_the_clean_files_decided():
    rng = np.random.default_rng(0)
    n, f = 200, 6
    labels = np.repeat([0, 1], n // 2)
    good_p = np.where(labels == 1, 0.8, 0.2) + rng.normal(0, 0.05, n)
    clean = rng.normal(0, 1, (n, f))
    kept = (rng.normal(0.3, 1, (n, f)), labels, good_p)  # the engine still works on these
    erased = (rng.normal(0, 1, (n, f)) + 4.0, labels, np.full(n, 0.9))  # every real called fake
    gate, record = fit_gate(clean, {"jpeg:q=95": kept, "resize:scale=0.5,q=85": erased}, labels, good_p, 0.5)
    assert record["erased"] == ["resize:scale=0.5,q=85"] and gate is not None
    p_clean = 1 / (1 + np.exp(-(((clean - gate.mean) / gate.scale) @ gate.coef + gate.intercept)))
    assert np.mean(p_clean < gate.threshold) >= CLEAN_COVERAGE - 0.01  # clean files stay decided
    p_erased = 1 / (1 + np.exp(-(((erased[0] - gate.mean) / gate.scale) @ gate.coef + gate.intercept)))
    assert np.mean(p_erased >= gate.threshold) > 0.95
    assert Gate.from_meta(json.loads(json.dumps(gate.to_meta()))) == gate  # engine.json round trip
    none, why = fit_gate(clean, {"jpeg:q=95": kept}, labels, good_p, 0.5)
    assert none is None and "no transform" in why["why_none"]


def test_the_build_summary_names_the_transforms_the_gate_decides_unknown_on_or_why_it_has_none():
    from realfake.jobs.cli.engine import describe_gate

    outcome = {"n": 174, "roc_auc": 0.6, "real_called_fake": 0.8}
    gate = {"kind": "laundering-gate", "clean_coverage": 0.95,
            "outcomes": {"jpeg:q=95": {**outcome, "erased": True}, "jpeg:q=70": {**outcome, "erased": False},
                         "crop:dx=1,q=90": {**outcome, "erased": True}}}
    line = describe_gate(gate)
    assert "2 of 3 transforms" in line and "95%" in line and "AUC < 0.75" in line
    assert "all 3 transforms" in describe_gate({**gate, "outcomes": {k: {**outcome, "erased": True} for k in "abc"}})
    assert describe_gate({"kind": "none", "why": "too few validation files", "outcomes": {}}) == (
        "none: every file is decided (too few validation files)")


def test_the_build_summary_says_which_validation_files_chose_the_threshold():
    from realfake.jobs.cli.engine import describe_threshold

    assert describe_threshold({"method": "fixed"}) == "fixed"
    assert describe_threshold({"method": "eer", "eer": 0.2, "n_images": 174, "over": "as-saved"}) == (
        "eer: equal error rate 0.200 on 174 validation images")
    pooled = {"method": "target_fpr", "target_fpr": 0.1, "fpr": 0.1, "tpr": 0.415, "n_images": 2610,
              "over": "with-laundered"}
    assert describe_threshold(pooled).endswith("fakes caught 0.415 on 2610 validation images as saved and laundered")


def test_features_are_per_map_statistics():
    maps = torch.zeros(2, 33, 8, 8)
    maps[1, :, :4] = -2.0
    features = evidence_features(maps)
    assert features.shape == (2, 99)
    assert np.all(features[0] == 0) and np.all(features[1, 66:] == 0.5)  # half the cells far below the mean


@pytest.fixture(scope="module")
def ghost_engine(tmp_path_factory):
    from realfake.engines.build import build_engine
    from realfake.jobs.tasks.train import run_train

    root = tmp_path_factory.mktemp("gate")
    data_dir = make_ghost_prepared(root, n_per_class=16)
    run = run_train(data_dir, model="ghost_cnn", image_size=96, epochs=2, batch_size=8, out=root / "runs", name="g",
                    num_workers=0, progress=False)
    engine = build_engine(run["run_dir"], root / "engine", backend="eager", device="cpu", num_workers=0)
    return engine, root


def test_a_ghost_engine_records_why_it_has_no_gate_on_a_tiny_validation_split(ghost_engine):
    engine, root = ghost_engine
    evidence = json.loads((engine / ENGINE_JSON).read_text())["evidence"]
    assert evidence["kind"] == "none" and evidence["why"]
    assert len(evidence["outcomes"]) == 14  # one measurement per family transform
    assert (root / "data" / "laundered" / "valid" / "jpeg_q85" / "manifest.csv").is_file()  # the valid split, laundered


def test_files_the_gate_flags_are_unknown_with_the_reason_and_never_fake(ghost_engine, tmp_path):
    from realfake.jobs.tasks.score import run_score

    engine, root = ghost_engine
    flagging = tmp_path / "flagging"
    shutil.copytree(engine, flagging)
    meta = json.loads((flagging / ENGINE_JSON).read_text())
    gate = Gate(mean=[0.0] * 99, scale=[1.0] * 99, coef=[0.0] * 99, intercept=5.0, threshold=0.5)  # flags all
    meta["evidence"] = gate.to_meta()
    meta["engine_id"] = compute_engine_id(meta)
    (flagging / ENGINE_JSON).write_text(json.dumps(meta))
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        make_ghost_image(folder / f"x{i}.jpg", i % 2, rng)
    summary = run_score([folder], tmp_path / "s.csv", engine=flagging, num_workers=0, progress=False)
    assert summary["decisions"] == {"real": 0, "fake": 0, "unknown": 6}
    plain = run_score([folder], tmp_path / "plain.csv", engine=engine, num_workers=0, progress=False)
    assert plain["decisions"]["unknown"] == 0 and plain["decisions"]["real"] + plain["decisions"]["fake"] == 6
    from realfake.jobs.tasks.outputs.writers import read_rows

    for row in read_rows(tmp_path / "s.csv"):
        assert row["decision"] == "unknown" and "compression history this engine reads is gone" in row["reason"]


def test_a_threshold_chosen_with_the_laundered_copies_pools_them_with_the_files_as_saved(ghost_engine, tmp_path):
    from realfake.engines.build import build_engine

    _, root = ghost_engine
    run = root / "runs" / "g"
    common = dict(backend="eager", device="cpu", num_workers=0, threshold="auto", evidence=False)
    as_saved = build_engine(run, tmp_path / "as-saved", **common)
    pooled = build_engine(run, tmp_path / "pooled", threshold_over="with-laundered", target_fpr=0.5, **common)
    how_saved = json.loads((as_saved / ENGINE_JSON).read_text())["threshold_method"]
    how_pooled = json.loads((pooled / ENGINE_JSON).read_text())["threshold_method"]
    assert how_saved["over"] == "as-saved" and how_pooled["over"] == "with-laundered"
    assert how_pooled["method"] == "target_fpr" and how_pooled["fpr"] <= 0.5
    assert how_pooled["n_images"] == how_saved["n_images"] * 15  # the 4 files as saved + 14 laundered copies each
    from realfake.jobs.tasks.engine import run_engine_build

    summary = run_engine_build(run, tmp_path / "summary", backend="eager", device="cpu", num_workers=0)
    assert summary["evidence"]["kind"] == "none" and len(summary["evidence"]["outcomes"]) == 14  # what the CLI prints
    with pytest.raises(ValueError, match="--threshold-over applies to --threshold auto only"):
        build_engine(run, tmp_path / "fixed", threshold="0.5", threshold_over="with-laundered", backend="eager")
