"""Training: one epoch then an exact resume, compiled == eager, evaluate's outputs, runs table, bad input."""
import json

import pytest
import torch
from _train_helpers import make_prepared
from click.testing import CliRunner
from realfake.jobs.cli import main
from realfake.jobs.tasks.evaluate import run_evaluate
from realfake.jobs.tasks.runs import collect_runs, rank_runs
from realfake.jobs.tasks.train import run_train

TINY = dict(model="simple_cnn", image_size=32, batch_size=8, num_workers=0, loader="torch", progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("train"), n_per_class=12, size=40)


def weights(run_dir, name="last.pt"):
    return torch.load(run_dir / name, weights_only=True)["model"]


def test_resume_continues_exactly(data_dir, tmp_path):
    straight = run_train(data_dir, epochs=2, out=tmp_path, name="straight", **TINY)
    first = run_train(data_dir, epochs=1, out=tmp_path, name="split", **TINY)
    resumed = run_train(data_dir, epochs=2, resume=tmp_path / "split", progress=False)
    assert resumed["run_dir"] == first["run_dir"] and resumed["epochs_run"] == 2
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    h_straight = json.loads((tmp_path / "straight" / "history.json").read_text())
    h_split = json.loads((tmp_path / "split" / "history.json").read_text())
    assert h_straight == h_split and len(h_split) == 2
    assert (tmp_path / "split" / "history.csv").read_text().count("\n") == 3
    assert (tmp_path / "split" / "curves.png").stat().st_size > 0
    assert straight["best_epoch"] in (1, 2)


def test_checkpoints_load_with_weights_only(data_dir, tmp_path):
    run_train(data_dir, epochs=1, out=tmp_path, name="r", **TINY)
    for name in ("best.pt", "last.pt"):
        checkpoint = torch.load(tmp_path / "r" / name, weights_only=True)
        assert "model" in checkpoint and checkpoint["args"]["model"] == "simple_cnn"
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["loader"] == "torch" and config["image_size"] == 32 and len(config["manifest_sha256"]) == 64


@pytest.mark.slow
def test_compiled_and_eager_give_the_same_results(data_dir, tmp_path):
    # dropout 0: inductor draws dropout masks from its own RNG stream, so only the math is comparable.
    # SGD, not Adam: conv2's bias feeds BatchNorm, so its true gradient is 0 and Adam would blow the
    # float rounding noise up to full-size steps.
    same = dict(epochs=1, out=tmp_path, augment=False, dropout=0.0, optimizer="sgd", lr=0.01, **TINY)
    eager = run_train(data_dir, name="eager", compile=False, **same)
    compiled = run_train(data_dir, name="compiled", compile=True, **same)
    assert compiled["compiled"] and not eager["compiled"]
    assert compiled["best_valid_loss"] == pytest.approx(eager["best_valid_loss"], rel=1e-3, abs=1e-4)
    a, b = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-4), key


def test_evaluate_writes_report_and_runs_table(data_dir, tmp_path):
    run = run_train(data_dir, epochs=1, out=tmp_path, name="e", **TINY)
    summary = run_evaluate(run["run_dir"], loader="torch", num_workers=0, progress=False)
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["metrics"]["n"] == summary["n"] == 4  # 2 of each class in test
    assert len(report["predictions"]) == 4
    for name in ("report.md", "confusion.png", "roc.png"):
        assert (tmp_path / "e" / name).stat().st_size > 0
    rows = collect_runs(tmp_path)
    assert rows[0]["run"] == "e" and rows[0]["test_auc"] == report["metrics"]["roc_auc"]
    assert rank_runs(rows)[0]["test_auc_gap"] == 0


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet19"], "unknown model"),
    (["--optimizer", "lion"], "Invalid value for '--optimizer'"),
    (["--model", "deep_cnn", "--image-size", "2"], "too small"),
])
def test_bad_options_are_one_line_errors(data_dir, tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", str(data_dir), "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_missing_data_dir_and_unprepared_dir(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["train", str(tmp_path)])
    assert result.exit_code == 2 and "data prepare" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("native", [True, False])
def test_amp_on_a_cpu_is_bf16_only_where_the_cpu_computes_it(data_dir, tmp_path, monkeypatch, caplog, native):
    import realfake.jobs.tasks.train as train_module

    monkeypatch.setattr(train_module, "native_bf16", lambda device: native)
    run = run_train(data_dir, epochs=1, out=tmp_path, name="amp", amp=True, device="cpu", **TINY)
    config = json.loads((tmp_path / "amp" / "config.json").read_text())
    assert config["mixed_precision"] is native and config["args"]["amp"] is True
    assert ("training in fp32" in caplog.text) is not native
    assert run["epochs_run"] == 1


def test_an_unknown_training_option_is_a_one_line_error(data_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown training option 'epocs'"):
        run_train(data_dir, epocs=1, out=tmp_path, **TINY)
