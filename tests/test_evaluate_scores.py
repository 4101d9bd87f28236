"""`realfake evaluate-scores`: a score output joined with a prepared split's labels."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from realfake.jobs.cli import main
from realfake.jobs.tasks.evaluate import run_evaluate_scores
from realfake.jobs.tasks.outputs.common import RESULT_COLUMNS, errors_path
from realfake.jobs.tasks.outputs.writers import open_writer
from realfake.pipelines.manifest import read_manifest
from sklearn.metrics import roc_auc_score


def _write_scores(path, items, *, threshold=0.4, engine_id="e1", unknown=()):
    """items: (path, p_fake) pairs, written the way `realfake score` writes its rows; the paths in
    `unknown` are decided unknown."""
    writer = open_writer(path, RESULT_COLUMNS, resume=False)
    rows = []
    for p, v in items:
        label = "fake" if v >= threshold else "real"
        decision = "unknown" if p in unknown else label
        rows.append({"path": p, "size": 1, "mtime": "2026-12-06T00:00:00+00:00", "p_fake": float(v), "label": label,
                     "decision": decision, "reason": "laundered" if decision == "unknown" else "",
                     "threshold": threshold, "engine_id": engine_id})
    writer.write(rows)
    writer.close()
    return path


def _split_scores(prepared, split, seed=0):
    rows = read_manifest(prepared, split)
    rng = np.random.default_rng(seed)
    # informative but imperfect: fakes lean high
    p = np.clip(0.3 * np.array([r.label for r in rows]) + rng.uniform(0, 0.7, len(rows)), 0, 1)
    return rows, p


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_metrics_are_the_engines_own_on_the_split(prepared, tmp_path, suffix):
    rows, p = _split_scores(prepared, "test")
    train = read_manifest(prepared, "train")
    # other files' scores (here the train split, all called fake) must not count
    items = [(r.path, v) for r, v in zip(rows, p, strict=True)] + [(r.path, 1.0) for r in train]
    scores = _write_scores(tmp_path / f"scores{suffix}", items)

    summary = run_evaluate_scores(scores, prepared, "test")

    y = np.array([r.label for r in rows])
    assert summary["n"] == len(rows)
    assert summary["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert summary["accuracy"] == pytest.approx(np.mean((p >= 0.4) == y))
    assert summary["threshold"] == pytest.approx(0.4)
    report = json.loads((tmp_path / f"scores{suffix}.test-report.json").read_text())
    assert report["engine_id"] == "e1"
    assert set(report["metrics"]["recall_per_group"]) == {r.group for r in rows}
    assert (tmp_path / f"scores{suffix}.test-roc.png").stat().st_size > 0
    assert (tmp_path / f"scores{suffix}.test-confusion.png").stat().st_size > 0


def test_paths_are_matched_resolved(prepared, tmp_path):
    rows, p = _split_scores(prepared, "valid")
    # the same files named through a relative path
    items = [(os.path.relpath(r.path), v) for r, v in zip(rows, p, strict=True)]
    scores = _write_scores(tmp_path / "scores.csv", items)
    assert run_evaluate_scores(scores, prepared, "valid")["n"] == len(rows)


def test_a_missing_file_is_an_error_naming_it(prepared, tmp_path):
    rows, p = _split_scores(prepared, "test")
    scores = _write_scores(tmp_path / "scores.csv", [(r.path, v) for r, v in zip(rows[1:], p[1:], strict=True)])
    errors_path(scores).write_text(f"path,reason,engine_id\n{rows[0].path},truncated JPEG,e1\n")
    with pytest.raises(ValueError, match=f"1 of the {len(rows)} test files") as excinfo:
        run_evaluate_scores(scores, prepared, "test")
    assert rows[0].path in str(excinfo.value)
    assert str(errors_path(scores)) in str(excinfo.value)


def test_scores_of_two_engines_are_refused(prepared, tmp_path):
    rows, p = _split_scores(prepared, "test")
    scores = tmp_path / "scores.jsonl"
    writer = open_writer(scores, RESULT_COLUMNS, resume=False)
    for k, (r, v) in enumerate(zip(rows, p, strict=True)):
        writer.write([{"path": r.path, "size": 1, "mtime": "m", "p_fake": float(v), "label": "real",
                       "decision": "real", "reason": "", "threshold": 0.5, "engine_id": f"e{k % 2}"}])
    writer.close()
    with pytest.raises(ValueError, match="2 engines"):
        run_evaluate_scores(scores, prepared, "test")


def test_a_file_that_is_not_a_score_output_is_refused_as_an_input(prepared, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("name,value\na,1\n")
    with pytest.raises(ValueError, match="not those of a score output .*: pass the --out of a `realfake score` run$"):
        run_evaluate_scores(other, prepared, "test")


def test_cli_prints_the_report_and_fails_clearly(prepared, tmp_path):
    rows, p = _split_scores(prepared, "test")
    scores = _write_scores(tmp_path / "scores.csv", [(r.path, v) for r, v in zip(rows, p, strict=True)])
    res = CliRunner().invoke(main, ["evaluate-scores", str(scores), str(prepared)])
    assert res.exit_code == 0, res.output
    assert "ROC AUC" in res.output and "scores.csv.test-report.md" in res.output

    res = CliRunner().invoke(main, ["evaluate-scores", str(scores), str(prepared), "--split", "valid"])
    assert res.exit_code != 0
    assert "valid files" in res.output and "realfake score" in res.output


def test_unknown_files_are_never_fake_and_the_metrics_are_those_of_the_decided_ones(prepared, tmp_path):
    rows, p = _split_scores(prepared, "test")
    # Every real scored confidently fake, but half of them unknown: those must not count as fake.
    p = np.where(np.array([r.label for r in rows]) == 0, 0.99, p)
    reals = [r.path for r in rows if r.label == 0]
    unknown = set(reals[: len(reals) // 2])
    scores = _write_scores(tmp_path / "scores.csv", [(r.path, v) for r, v in zip(rows, p, strict=True)],
                           unknown=unknown)
    summary = run_evaluate_scores(scores, prepared, "test")
    coverage = json.loads(Path(f"{scores}.test-report.json").read_text())["metrics"]["coverage"]
    assert coverage["unknown"] == len(unknown) and summary["n"] == len(rows) - len(unknown)
    assert summary["coverage"] == pytest.approx((len(rows) - len(unknown)) / len(rows))
    assert summary["real_called_fake"] == pytest.approx((len(reals) - len(unknown)) / len(reals))
    decided = [i for i, r in enumerate(rows) if r.path not in unknown]
    y = np.array([rows[i].label for i in decided])
    assert summary["roc_auc"] == pytest.approx(roc_auc_score(y, p[decided]))
    assert "coverage" in Path(summary["report"]).read_text()
    everything = _write_scores(tmp_path / "all_unknown.csv", [(r.path, v) for r, v in zip(rows, p, strict=True)],
                               unknown={r.path for r in rows})
    nothing = run_evaluate_scores(everything, prepared, "test")  # coverage 0 is a result: no metric to report
    assert nothing["coverage"] == 0.0 and nothing["n"] == 0 and nothing["roc_auc"] is None
    assert nothing["real_called_fake"] == 0.0
    assert json.loads(Path(f"{everything}.test-report.json").read_text())["metrics"]["coverage"]["unknown"] == len(rows)
    assert "Decided 0 of" in Path(nothing["report"]).read_text()
