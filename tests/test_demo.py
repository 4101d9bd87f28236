"""`realfake demo`: ghost_cnn learns the synthetic set, and the demo's whole path runs and writes what it names."""
from __future__ import annotations

import csv
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from realfake.jobs.cli import main
from realfake.jobs.cli.score import score_folders
from realfake.jobs.tasks.demo import (
    DAMAGED_NAME,
    EXPLAIN_TOP,
    SCORE_N,
    real_data_commands,
    run_demo,
    summary_lines,
)
from realfake.jobs.tasks.evaluate import run_evaluate
from realfake.jobs.tasks.sweep import load_spec
from realfake.jobs.tasks.train import run_train
from realfake.pipelines.prepare import prepare
from realfake.pipelines.synth import synth


def test_ghost_cnn_learns_the_synthetic_set(tmp_path):
    # A small version of the demo's training: held-out images (the test split) well above chance.
    src = synth(tmp_path / "synthetic", n=200, size=128, seed=0)
    prepare(src, tmp_path / "data", split="0.6,0.1,0.3", seed=0, progress=False)
    trained = run_train(tmp_path / "data", model="ghost_cnn", image_size=128, epochs=8, optimizer="adamw", lr=2e-3,
                        weight_decay=1e-3, schedule="onecycle", batch_size=32, compile=False, device="cpu",
                        out=tmp_path / "runs", name="g", progress=False)
    evaluated = run_evaluate(trained["run_dir"], split="test", checkpoint="last", device="cpu", progress=False)
    assert evaluated["n"] == 60
    assert evaluated["roc_auc"] >= 0.8, evaluated


@pytest.fixture()
def no_compiled_backends(monkeypatch):
    """aot and compile unavailable here (each compiles for tens of seconds): auto gives eager."""
    from realfake.engines.backends import aot, compiled

    monkeypatch.setattr(aot, "unavailable_reason", lambda device: "no C++ compiler in this test")
    monkeypatch.setattr(compiled, "unavailable_reason", lambda device: "no C++ compiler in this test")


def test_the_demo_runs_the_whole_path_and_writes_every_output_it_names(tmp_path, no_compiled_backends):
    out = tmp_path / "demo"
    result = run_demo(out=out, n=24, epochs=1, image_size=64, seed=0, backend="aot", device="cpu", progress=False)

    for key in ("synthetic", "data_dir", "run_dir", "report", "curves", "roc", "engine_dir", "incoming", "scores",
                "errors_file", "heatmaps", "page"):
        assert Path(result[key]).exists(), key
    with open(Path(result["heatmaps"]) / "index.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == EXPLAIN_TOP
    assert (Path(result["data_dir"]) / "manifest.csv").is_file()
    assert (Path(result["engine_dir"]) / "engine.json").is_file()
    # aot cannot build here: the engine is what auto gives, and the summary says why
    assert result["backend"] == "eager" and "--backend aot could not build here" in result["backend_fallback"]

    with open(result["scores"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == SCORE_N == result["scored"]
    assert all(Path(r["path"]).is_relative_to(Path(result["incoming"])) for r in rows)
    assert {r["engine_id"] for r in rows} == {result["engine_id"]}
    new = result["new_images"]
    assert new["real"] + new["fake"] == SCORE_N
    assert new["real"] == sum(r["label"] == "real" for r in rows)
    assert 0.0 <= new["auc"] <= 1.0
    # the damaged file is not lost: it is the one row of the errors file, with its reason
    with open(result["errors_file"], newline="") as f:
        errors = list(csv.DictReader(f))
    assert [(Path(e["path"]).name, e["reason"]) for e in errors] == [(DAMAGED_NAME, "truncated")]

    text = "\n".join(summary_lines(result))
    for key in ("synthetic", "data_dir", "run_dir", "report", "engine_dir", "incoming", "scores", "errors_file",
                "heatmaps", "page"):
        assert result[key] in text, key
    assert f"ROC AUC {result['test']['roc_auc']:.3f}" in text and f"{DAMAGED_NAME}: truncated" in text
    decided = result["decisions"]
    assert sum(decided.values()) == SCORE_N
    assert (f"decided {decided.get('real', 0)} real, {decided.get('fake', 0)} fake, {decided.get('unknown', 0)} "
            "unknown") in text
    times = next(line for line in text.splitlines() if line.startswith("Time: "))
    assert all(f"{step} " in times for step in ("synth", "prepare", "train", "evaluate", "engine", "score"))
    assert all(command in text for command in result["real_data_commands"])

    # a rerun replaces the demo's outputs instead of mixing two runs
    (Path(result["incoming"]) / "stale.jpg").write_bytes(b"")
    again = run_demo(out=out, n=24, epochs=1, image_size=64, seed=0, backend="eager", device="cpu", progress=False)
    assert not (Path(again["incoming"]) / "stale.jpg").exists() and again["scored"] == SCORE_N


def test_the_demo_refuses_a_folder_that_is_not_its_own_and_bad_options(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["demo", "--out", str(mine)])
    assert result.exit_code == 2 and result.output.startswith("error: --out") and "not a demo folder" in result.output
    assert (mine / "notes.txt").read_text() == "keep me"
    for option, value in (("--n", "4"), ("--image-size", "72")):
        result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "d"), option, value])
        assert result.exit_code == 2 and result.output.startswith(f"error: {option}"), result.output
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "d"), "--epochs", "0"])  # a declared range
    assert result.exit_code == 2 and "Invalid value for '--epochs': 0 is not in the range x>=1" in result.output
    with pytest.raises(ValueError, match="^--epochs 0 must be at least 1$"):
        run_demo(out=tmp_path / "d", epochs=0)


def _parse(words: list[str]) -> tuple[str, dict]:
    """(command path, parameters) as the realfake CLI parses `words` (nothing runs)."""
    if words[:2] == ["realfake", "score"]:  # the score group hands anything but `merge` to its scoring command
        return "score", score_folders.make_context("score", words[2:]).params
    command, names, rest = main, [], words[1:]
    while isinstance(command, click.Group):
        name, command, rest = command.resolve_command(click.Context(command), rest)
        names.append(name)
    return " ".join(names), command.make_context(names[-1], rest).params


def test_the_real_data_commands_parse_and_train_the_preset_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("data/ciplab", "runs/ghosts-regions-s0", "engines_out/ghosts-regions-s0", "FOLDER"):
        (tmp_path / folder).mkdir(parents=True)
    parsed = dict(_parse(shlex.split(command)) for command in real_data_commands())
    assert list(parsed) == ["data prepare", "train", "evaluate", "engine build", "score"]
    recipe = next(c for c in load_spec(preset="jpeg-ghosts")["configs"] if c["name"] == "ghosts-regions")["train"]
    train = parsed["train"]
    for key, value in recipe.items():
        assert train[key] == value, key
    assert parsed["evaluate"]["checkpoint"] == parsed["engine build"]["checkpoint"] == "last"
    assert parsed["engine build"]["backend"] == "aot" and parsed["engine build"]["threshold"] == "auto"
    assert parsed["score"]["engine"] == parsed["engine build"]["out"]
    assert parsed["score"]["report"] is True and parsed["score"]["explain_top"] > 0
