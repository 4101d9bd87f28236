"""`realfake sweep` and `realfake pretrain`: specs and presets, the commands in the table, aggregation over
seeds, resume, and a pretrained weights file that `--weights` loads."""
import json
import shlex

import pytest
import torch
from _train_helpers import make_prepared
from click.testing import CliRunner
from realfake.jobs.cli import main
from realfake.jobs.cli.train import train as train_cmd
from realfake.jobs.service.options import command_line, function_params
from realfake.jobs.tasks import sweep_presets
from realfake.jobs.tasks.pretrain import run_pretrain
from realfake.jobs.tasks.sweep import (
    aggregate,
    format_results_md,
    load_spec,
    normalize_spec,
    parse_set,
    run_sweep,
    summarize,
)
from realfake.jobs.tasks.train import run_train
from realfake.models import build_model

try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib

PRESETS = {name: sweep_presets.text(name) for name in sweep_presets.names()}


def render_command(name, function, arguments, options):
    return command_line(name, function_params(function), arguments, options, keep_in_shell="$SEED")

SPEC = """
description = "two tiny configurations"
seeds = [0, 1]
[train]
model = "simple_cnn"
image_size = 32
batch_size = 8
epochs = 1
loader = "torch"
num_workers = 0
[[configs]]
name = "plain"
label = "simple_cnn, no augmentation"
train = { augment = false }
[[configs]]
name = "plain-flip"
label = "simple_cnn, no augmentation, TTA flip"
train = { augment = false }
evaluate = { tta = "flip" }
[[configs]]
name = "sbi"
label = "simple_cnn + pseudo-fakes"
train = { pseudo_fakes = 0.5, blur = false, cache = "memory" }
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("sweep"), n_per_class=12, size=40)


def test_every_preset_is_a_valid_spec_and_round_trips_through_toml():
    assert {"report-baselines", "pseudo-fakes", "resolution", "cpu-short"} <= set(PRESETS)
    from realfake.jobs.cli.sweep import PRESET_NAMES

    assert sorted(PRESET_NAMES) == sorted(PRESETS)  # the CLI's choices (kept there to start fast)
    for name, preset in PRESETS.items():
        spec = load_spec(preset=name)
        assert spec["seeds"] == [0, 1, 2] and spec["configs"]
        again = normalize_spec(tomllib.loads(preset), name)
        assert again["configs"] == spec["configs"], name
    baselines = {c["name"]: c["train"] for c in load_spec(preset="report-baselines")["configs"]}
    assert baselines["model1"]["model"] == "simple_cnn" and baselines["model1"]["augment"] is False
    assert baselines["model2"]["optimizer"] == "adadelta" and baselines["model2"]["lr"] == 0.1
    short = load_spec(preset="cpu-short")["configs"]
    assert all(c["train"]["image_size"] <= 128 for c in short)


@pytest.mark.parametrize("spec, message", [
    ("seeds = [0]\n", "no [[configs]]"),
    ('[[configs]]\nname = "a"\ntrain = { modle = "resnet18" }\n', "did you mean 'model'"),
    ('[[configs]]\nname = "a"\ntrain = { epochs = "ten" }\n', "'epochs' = 'ten' has the wrong type"),
    ('[[configs]]\nname = "a"\n[[configs]]\nname = "a"\n', "must be unique"),
    ('[[configs]]\nname = "a"\nevaluate = { tta = 1 }\n', "'tta' = 1 has the wrong type"),
    ('[[configs]]\nname = "a"\npretrain = { epochs = 2 }\ntrain = { weights = "w.pt" }\n', "not both"),
    ('seeds = "0,1"\n[[configs]]\nname = "a"\n', "seeds must be a list"),
])
def test_bad_specs_name_the_problem(tmp_path, spec, message):
    path = tmp_path / "bad.toml"
    path.write_text(spec)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_spec(path)


def test_rendered_train_command_parses_back_to_the_same_options(tmp_path):
    data = tmp_path / "data dir"
    data.mkdir()
    options = {"model": "resnet18", "image_size": 224, "augment": False, "blur": False, "pseudo_fakes": 0.5,
               "schedule": "cosine", "ema": 0.999, "amp": True, "compile": False, "channels_last": False,
               "dropout": None, "seed": 3, "out": "/tmp/a b", "name": "x-seed3"}
    line = render_command("train", run_train, [str(data)], options)
    argv = shlex.split(line)
    assert argv[:3] == ["realfake", "train", str(data)]
    ctx = train_cmd.make_context("train", argv[2:])
    for key, value in options.items():
        got = ctx.params[key]
        assert (str(got) if key == "out" else got) == value, key
    assert "--no-compile" in argv and "--channels-last" not in argv
    assert render_command("train", run_train, ["d"], {"name": "r-seed$SEED"}).endswith("--name r-seed$SEED")


def test_summarize_and_parse_set():
    s = summarize([0.5, 0.7, None, 0.9])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(0.2)
    assert summarize([0.8]) == {"mean": 0.8, "std": 0.0, "n": 1}
    assert summarize([None]) == {"mean": None, "std": None, "n": 0}
    assert parse_set(["amp=true", "lr=0.5", "cache=gpu", 'loader="torch"']) == {
        "amp": True, "lr": 0.5, "cache": "gpu", "loader": "torch"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set(["amp"])


def test_table_adds_the_auc_on_fakes_encoded_like_reals_where_the_data_has_other_fakes():
    def config(name, cue_aucs):
        runs = [{"seed": seed, "roc_auc": 0.7, "accuracy": 0.6, "roc_auc_fakes_like_real": auc,
                 "recall_per_group": {"real": {"recall": 0.6, "n": 4}}, "best_epoch": 1, "train_seconds": 1.0}
                for seed, auc in enumerate(cue_aucs)]
        return {"name": name, "label": name, "evaluate": {}, "commands": {"train": "realfake train d"},
                "runs": runs, "summary": aggregate(runs)}

    results = {"name": "s", "data_dir": "d", "manifest_sha256": "0" * 64, "seeds": [0, 1], "device": "cpu",
               "configs": [config("a", [0.6, 0.64]), config("b", [None, None])], "best": "a"}
    table = format_results_md(results)
    assert "| configuration | test AUC | AUC, fakes encoded like reals | accuracy | recall real |" in table
    assert "| **a** (`a`) | 0.700 ± 0.000 | 0.620 ± 0.028 | 0.600 ± 0.000 |" in table
    assert "| b (`b`) | 0.700 ± 0.000 | n/a | 0.600 ± 0.000 |" in table
    results["configs"], results["best"] = [config("b", [None, None])], "b"
    assert "fakes encoded like reals" not in format_results_md(results)


def test_laundered_rows_are_aggregated_per_transform_over_seeds():
    def run(seed, auc_q85, fpr_q85):
        return {"seed": seed, "roc_auc": 0.9, "accuracy": 0.8, "real_called_fake": 0.1, "fakes_caught": 0.7,
                "recall_per_group": {}, "best_epoch": 1, "train_seconds": 1.0,
                "launder": {"jpeg:q=85": {"roc_auc": auc_q85, "accuracy": 0.5, "real_called_fake": fpr_q85,
                                          "fakes_caught": 1.0}}}

    runs = [run(0, 0.55, 0.9), run(1, 0.65, 0.7)]
    summary = aggregate(runs)
    assert summary["launder"]["jpeg:q=85"]["roc_auc"]["mean"] == pytest.approx(0.6)
    assert summary["launder"]["jpeg:q=85"]["real_called_fake"]["std"] == pytest.approx(0.1414, abs=1e-4)
    results = {"name": "s", "data_dir": "d", "manifest_sha256": "0" * 64, "seeds": [0, 1], "device": "cpu",
               "best": "a", "configs": [{"name": "a", "label": "a", "evaluate": {}, "runs": runs, "summary": summary,
                                          "commands": {"train": "realfake train d"}}]}
    table = format_results_md(results)
    assert "| `a` | none | 0.900 ± 0.000 | 0.800 ± 0.000 | 0.100 ± 0.000 | 0.700 ± 0.000 |" in table
    assert "| `a` | `jpeg:q=85` | 0.600 ± 0.071 | 0.500 ± 0.000 | 0.800 ± 0.141 | 1.000 ± 0.000 |" in table
    assert "Under laundering" not in format_results_md({**results, "configs": [
        {**results["configs"][0], "summary": aggregate([{**r, "launder": {}} for r in runs])}]})
    one_seed = {**results, "seeds": [0], "configs": [{**results["configs"][0], "summary": aggregate(runs[:1])}]}
    assert "| `a` | `jpeg:q=85` | 0.550 | 0.500 | 0.900 | 1.000 |" in format_results_md(one_seed)


def test_sweep_trains_each_configuration_per_seed_and_resumes(data_dir, tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    out = tmp_path / "sweep"
    summary = run_sweep(out, data_dir=data_dir, spec=spec, device="cpu", progress=False)
    results = json.loads((out / "results.json").read_text())
    assert summary["configs"] == 3 and results["seeds"] == [0, 1]
    by_name = {c["name"]: c for c in results["configs"]}
    # the TTA row shares the training runs of the plain row: only its evaluation differs
    assert by_name["plain-flip"]["run"] == "plain"
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["plain-seed0", "plain-seed1", "sbi-seed0",
                                                                 "sbi-seed1"]
    for config in results["configs"]:
        aucs = [r["roc_auc"] for r in config["runs"]]
        assert len(aucs) == 2
        assert config["summary"]["roc_auc"]["mean"] == pytest.approx(sum(aucs) / 2)
        assert set(config["summary"]["recall_per_group"]) == {"easy", "real"}
        assert config["runs"][0]["recall_per_group"]["easy"]["n"] == 2
    assert by_name["plain-flip"]["runs"][0]["evaluate"]["tta"] == "flip"
    assert json.loads((out / "runs" / "sbi-seed0" / "config.json").read_text())["args"]["pseudo_fakes"] == 0.5
    table = (out / "results.md").read_text()
    assert "| configuration | test AUC | accuracy | recall easy | recall real | threshold | seeds | command |" in table
    assert "--pseudo-fakes 0.5 --no-blur --cache memory --device cpu --seed $SEED" in table
    assert results["best"] in by_name and "for SEED in 0 1; do" in table
    # running it again trains nothing and evaluates nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    evals = {p: p.stat().st_mtime_ns for p in (out / "evals").iterdir()}
    run_sweep(out, data_dir=data_dir, spec=spec, device="cpu", progress=False)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    assert evals == {p: p.stat().st_mtime_ns for p in (out / "evals").iterdir()}


def test_seeds_trained_apart_then_finished_only_tabulates_without_training(data_dir, tmp_path):
    """What a parallel sweep does: one process per seed into the same folder, then one pass that
    tabulates what finished and trains nothing (seed 2 never ran: it is left out, not trained)."""
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    out = tmp_path / "sweep"
    for seed in ("0", "1"):
        run_sweep(out, data_dir=data_dir, spec=spec, only=["plain"], seeds=seed, device="cpu", progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    result = CliRunner().invoke(main, ["sweep", str(spec), "--data", str(data_dir), "--out", str(out), "--seeds",
                                       "0,1,2", "--only", "plain", "--only", "plain-flip", "--device", "cpu",
                                       "--finished-only"])
    assert result.exit_code == 0, result.output
    assert "plain seed 2: training not finished, left out" in result.output
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["plain-seed0", "plain-seed1"]
    results = json.loads((out / "results.json").read_text())
    for config in results["configs"]:  # the TTA row evaluated the finished runs of the plain row
        assert [r["seed"] for r in config["runs"]] == [0, 1] and config["summary"]["roc_auc"]["n"] == 2


def test_sweep_cli_dry_run_only_and_errors(data_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["sweep", "--preset", "pseudo-fakes", "--data", str(data_dir), "--out",
                                  str(tmp_path / "dry"), "--dry-run", "--only", "r18-224-sbi", "--cache", "gpu",
                                  "--set", "amp=true"])
    assert result.exit_code == 0, result.output
    assert "realfake train" in result.output and "--cache gpu" in result.output and "--amp" in result.output
    assert not (tmp_path / "dry" / "runs").exists()
    result = runner.invoke(main, ["sweep", "--data", str(data_dir)])
    assert result.exit_code == 2 and "SPEC.toml or --preset" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["sweep", "--preset", "cpu-short", "--data", str(data_dir), "--only", "nope",
                                  "--dry-run", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "not a configuration" in result.output
    result = runner.invoke(main, ["sweep", "--show-preset", "report-baselines"])
    assert result.exit_code == 0 and tomllib.loads(result.output)["configs"][0]["name"] == "model1"


def test_pretrain_writes_weights_that_build_model_and_train_load(data_dir, tmp_path):
    weights = tmp_path / "sbi.pt"
    summary = run_pretrain(data_dir, weights, model="simple_cnn", image_size=32, epochs=1, batch_size=8,
                           loader="torch", num_workers=0, device="cpu", progress=False)
    assert summary["weights"] == str(weights) and (tmp_path / "sbi.pt.run" / "pretrain.json").is_file()
    saved = torch.load(weights, weights_only=True)
    assert saved["args"]["real_only"] is True and saved["args"]["pseudo_fakes"] == 1.0
    model = build_model("simple_cnn", image_size=32, weights=weights)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved["model"][key]), key
    with pytest.raises(ValueError, match="already exists"):
        run_pretrain(data_dir, weights, model="simple_cnn", image_size=32, epochs=1)
    result = CliRunner().invoke(main, ["train", str(data_dir), "--model", "simple_cnn", "--image-size", "32",
                                       "--epochs", "1", "--batch-size", "8", "--loader", "torch", "--num-workers", "0",
                                       "--weights", str(weights), "--out", str(tmp_path / "runs"), "--name", "ft"])
    assert result.exit_code == 0, result.output
