"""Training-recipe options: schedules, EMA, label smoothing, TTA, pseudo-fakes in `realfake train`, and
an exact resume with all of them on."""
import json
import math

import numpy as np
import pytest
import torch
from _train_helpers import make_prepared
from click.testing import CliRunner
from realfake.engines import recipes
from realfake.engines.trainer import predict
from realfake.jobs.cli import main
from realfake.jobs.tasks.evaluate import run_evaluate
from realfake.jobs.tasks.train import run_train
from realfake.pipelines.spec import Batch

TINY = dict(model="simple_cnn", image_size=32, batch_size=8, num_workers=0, loader="torch", progress=False)
RECIPE = dict(pseudo_fakes=0.5, schedule="cosine", warmup_epochs=0.5, label_smoothing=0.1, ema=0.9, blur=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("recipes"), n_per_class=12, size=40)


# --- schedules --------------------------------------------------------------------------------------

def test_lr_factor_shapes():
    kw = dict(total_steps=100, warmup_steps=10, steps_per_epoch=10)
    warm = [recipes.lr_factor(s, schedule="cosine", **kw) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert recipes.lr_factor(10, schedule="cosine", **kw) == pytest.approx(1.0)
    assert recipes.lr_factor(55, schedule="cosine", **kw) == pytest.approx(0.5)
    assert recipes.lr_factor(100, schedule="cosine", **kw) == pytest.approx(0.0, abs=1e-12)
    assert recipes.lr_factor(50, schedule="constant", **kw) == 1.0
    assert recipes.lr_factor(35, schedule="step", step_size=2, gamma=0.5, **kw) == 0.5  # epoch 3
    with pytest.raises(ValueError, match="unknown schedule"):
        recipes.lr_factor(0, schedule="linear", **kw)


def _opt(name="adam"):
    params = [torch.nn.Parameter(torch.zeros(1))]
    return torch.optim.Adadelta(params, lr=0.1) if name == "adadelta" else torch.optim.Adam(params, lr=1e-3)


def test_make_scheduler_per_batch_and_legacy():
    opt = _opt()
    sched, per_batch = recipes.make_scheduler(opt, "constant", epochs=3, steps_per_epoch=5)
    assert not per_batch  # the report's constant LR, stepped per epoch as before
    sched, per_batch = recipes.make_scheduler(opt, "cosine", epochs=3, steps_per_epoch=5, warmup_epochs=1)
    assert per_batch
    lrs = []
    for _ in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-4) and lrs[4] == pytest.approx(1e-3) and lrs[-1] < 1e-4
    # onecycle works with an optimizer that has no momentum to cycle (Adadelta, the report's Model 2)
    opt = _opt("adadelta")
    sched, per_batch = recipes.make_scheduler(opt, "onecycle", epochs=2, steps_per_epoch=4, lr=0.1)
    for _ in range(8):
        opt.step()
        sched.step()
    assert per_batch and opt.param_groups[0]["lr"] < 0.01
    with pytest.raises(ValueError, match="--step-size"):
        recipes.make_scheduler(_opt(), "step", epochs=3, steps_per_epoch=5)


# --- EMA ----------------------------------------------------------------------------------------------

def test_ema_warms_up_then_averages_and_round_trips():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = recipes.make_ema(model, 0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    ema.update_parameters(model)  # first update copies
    assert torch.equal(ema.module[0].weight, model[0].weight)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ema.update_parameters(model)  # n=1: decay min(0.5, 2/11) = 2/11
    expected = 1.0 + (3.0 - 1.0) * (1 - 2 / 11)
    assert ema.module[0].weight[0, 0].item() == pytest.approx(expected)
    clone = recipes.make_ema(model, 0.5)
    clone.load_state_dict(ema.state_dict())
    assert torch.equal(clone.module[0].weight, ema.module[0].weight) and clone.n_averaged.item() == 2
    with pytest.raises(ValueError, match="between 0 and 1"):
        recipes.make_ema(model, 1.0)


# --- TTA ----------------------------------------------------------------------------------------------

def test_tta_views():
    images = torch.rand(2, 3, 16, 16)
    assert len(recipes.tta_views(images, "none")) == 1
    flip = recipes.tta_views(images, "flip")
    assert torch.equal(flip[1], images.flip(-1))
    crops = recipes.tta_views(images, "crops")
    assert len(crops) == 12 and all(v.shape == images.shape for v in crops)
    assert torch.equal(crops[6], images.flip(-1))
    with pytest.raises(ValueError, match="unknown test-time"):
        recipes.tta_views(images, "rotate")


class _LeftHalf(torch.nn.Module):
    """logit of fake = mean of the left half of the image: not mirror-invariant."""

    def forward(self, x):
        left = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(left), left], 1)


def test_predict_averages_probabilities_over_views():
    images = torch.rand(3, 3, 8, 8)
    loader = [Batch(images=images, labels=torch.tensor([0, 1, 0]), indices=torch.arange(3))]
    model = _LeftHalf()
    p_plain, *_ = predict(model, loader, torch.device("cpu"))
    p_flip, _, _, logits = predict(model, loader, torch.device("cpu"), tta="flip")
    expected = (torch.softmax(model(images), 1)[:, 1] + torch.softmax(model(images.flip(-1)), 1)[:, 1]) / 2
    torch.testing.assert_close(p_flip, expected)
    assert not torch.allclose(p_plain, p_flip)
    torch.testing.assert_close(torch.softmax(logits, 1)[:, 1], expected)


# --- in `realfake train` / `evaluate` -----------------------------------------------------------------

def _weights(path):
    return torch.load(path, weights_only=True)


class Interrupted(Exception):
    pass


def test_resume_is_exact_with_every_recipe_option(data_dir, tmp_path, monkeypatch):
    from realfake.engines import trainer

    common = dict(TINY, **RECIPE, cache="memory", out=tmp_path)
    run_train(data_dir, epochs=2, name="straight", **common)
    # The same run, killed during epoch 2 (a cosine schedule is fixed to the run's length, so the
    # interruption must come inside a 2-epoch run), then resumed.
    original = trainer.train_one_epoch

    def dies_in_epoch_2(*args, **kw):
        if args[5] == 2:
            raise Interrupted
        return original(*args, **kw)

    monkeypatch.setattr(trainer, "train_one_epoch", dies_in_epoch_2)
    with pytest.raises(Interrupted):
        run_train(data_dir, epochs=2, name="split", **common)
    monkeypatch.setattr(trainer, "train_one_epoch", original)
    assert _weights(tmp_path / "split" / "last.pt")["epoch"] == 1
    resumed = run_train(data_dir, epochs=2, resume=tmp_path / "split", progress=False)
    assert resumed["epochs_run"] == 2 and resumed["loader"] == "memory-cache"
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "split" / "last.pt")
    for part in ("model", "train_model", "ema", "scheduler"):
        assert a[part] is not None, part
    for part in ("model", "train_model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 2 * 2  # per batch: 2 batches/epoch
    h_a = json.loads((tmp_path / "straight" / "history.json").read_text())
    h_b = json.loads((tmp_path / "split" / "history.json").read_text())
    assert h_a == h_b
    # the EMA is what is saved as the model; the raw weights differ from it
    assert not all(torch.equal(a["model"][k], a["train_model"][k]) for k in a["model"])
    config = json.loads((tmp_path / "split" / "config.json").read_text())
    for key, value in RECIPE.items():
        assert config["args"][key] == value, key
    assert config["augment_spec"]["blur_p"] == 0.0 and config["schedule"] == "cosine"
    assert config["pseudo_fake_spec"]["blend_ratios"] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # a cosine schedule is tied to its length: a longer resume would silently change it
    with pytest.raises(ValueError, match="fixed to 2 epochs"):
        run_train(data_dir, epochs=3, resume=tmp_path / "split", progress=False)


def test_pseudo_fakes_grow_the_train_batches_and_real_only_trains_on_reals(data_dir, tmp_path):
    seen = []
    from realfake.engines import trainer

    original = trainer.train_one_epoch

    def spy(model, criterion, optimizer, loader, device, epoch, **kw):
        transform = kw["batch_transform"]
        for step, batch in enumerate(loader):
            seen.append(transform(batch.images, batch.labels, epoch, step)[1].tolist())
        return original(model, criterion, optimizer, loader, device, epoch, **kw)

    trainer.train_one_epoch = spy
    try:
        run_train(data_dir, epochs=1, out=tmp_path, name="real-only", real_only=True, pseudo_fakes=1.0, **TINY)
    finally:
        trainer.train_one_epoch = original
    assert seen and all(labels[: len(labels) // 2] == [0] * (len(labels) // 2) for labels in seen)
    assert all(labels[len(labels) // 2:] == [1] * (len(labels) // 2) for labels in seen)
    config = json.loads((tmp_path / "real-only" / "config.json").read_text())
    assert config["n_train"] == 8  # the 8 real train images; the 8 fakes are left out


@pytest.mark.slow  # resnet18 (crops need a model that takes any input size)
def test_train_crop_evaluates_the_full_image_and_tta_is_recorded(data_dir, tmp_path):
    run = run_train(data_dir, epochs=1, out=tmp_path, name="crop", **{**TINY, "model": "resnet18", "image_size": 40},
                    train_crop=32, schedule="onecycle")
    summary = run_evaluate(run["run_dir"], loader="torch", num_workers=0, progress=False, tta="crops")
    report = json.loads((tmp_path / "crop" / "report.json").read_text())
    assert summary["tta"] == report["tta"] == "crops" and report["metrics"]["n"] == 4
    assert "test-time augmentation: crops" in (tmp_path / "crop" / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--ema", "1.5"], "--ema 1.5 must be"),
    (["--real-only"], "--real-only trains on real images alone"),
    (["--train-crop", "16"], "built for one input size"),
    (["--cache", "gpu", "--device", "cpu"], "--cache gpu needs a CUDA device"),
    (["--label-smoothing", "1"], "--label-smoothing 1.0 must be"),
    (["--pseudo-fakes", "2"], "Invalid value for '--pseudo-fakes'"),
    (["--schedule", "step"], "--schedule step needs --step-size"),
])
def test_bad_recipe_options_are_one_line_errors(data_dir, tmp_path, args, message):
    base = ["train", str(data_dir), "--out", str(tmp_path), "--image-size", "32", "--loader", "torch",
            "--num-workers", "0", "--epochs", "1"]
    result = CliRunner().invoke(main, [*base, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_cli_records_new_options(data_dir, tmp_path):
    result = CliRunner().invoke(main, ["train", str(data_dir), "--out", str(tmp_path), "--name", "cli",
                                       "--image-size", "32", "--batch-size", "8", "--loader", "torch",
                                       "--num-workers", "0", "--epochs", "1", "--no-blur", "--pseudo-fakes", "0.25",
                                       "--schedule", "cosine", "--ema", "0.99"])
    assert result.exit_code == 0, result.output
    args = json.loads((tmp_path / "cli" / "config.json").read_text())["args"]
    assert args["blur"] is False and args["pseudo_fakes"] == 0.25 and args["ema"] == 0.99
    assert args["train_crop"] == 0 and args["cache"] == "none" and not math.isnan(args["warmup_epochs"])


def test_calibrate_takes_the_threshold_from_the_valid_split(data_dir, tmp_path):
    from realfake.engines.metrics import equal_error_rate

    run = run_train(data_dir, epochs=1, out=tmp_path, name="cal", **TINY)
    eval_kw = dict(loader="torch", num_workers=0, progress=False)
    valid = run_evaluate(run["run_dir"], split="valid", **eval_kw)
    report = json.loads((tmp_path / "cal" / "report_valid.json").read_text())
    labels = [p["label"] for p in report["predictions"]]
    expected = equal_error_rate(np.array(labels), np.array([p["p_fake"] for p in report["predictions"]]))[1]
    calibrated = run_evaluate(run["run_dir"], calibrate=True, **eval_kw)
    assert valid["threshold_source"] == "given" and calibrated["threshold_source"] == "valid EER"
    assert calibrated["threshold"] == pytest.approx(expected)
    test_report = json.loads((tmp_path / "cal" / "report.json").read_text())
    assert test_report["metrics"]["threshold"] == pytest.approx(expected)
    predicted = [p["p_fake"] >= expected for p in test_report["predictions"]]
    correct = [pred == bool(p["label"]) for pred, p in zip(predicted, test_report["predictions"], strict=True)]
    assert test_report["metrics"]["accuracy"] == pytest.approx(sum(correct) / len(correct))
    with pytest.raises(ValueError, match="picks the threshold on the valid split"):
        run_evaluate(run["run_dir"], split="valid", calibrate=True, **eval_kw)
