"""`realfake demo`: the whole product path in a few minutes on a CPU, on synthetic faces.

    synth  -> prepare -> train ghost_cnn -> evaluate on the test split -> engine build (aot,
    threshold from the valid split) -> score a folder of new synthetic faces that also holds a
    damaged file -> summary, and the commands that do the same on the real data set

The synthetic fakes carry a compression history like CIPLAB's (`pipelines/synth.py`): the model
that reads JPEG ghost maps, the product's best, has something to find. Every step is the job
function the CLI runs, called with keyword arguments, so the demo exercises what a user runs.
"""
from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path
from typing import Annotated, Literal

from realfake.engines.backends import BACKEND_CHOICES
from realfake.jobs.service.options import Bounds, check_arguments, command_line, function_params
from realfake.jobs.service.params import OutputPath
from realfake.jobs.tasks.engine import run_engine_build
from realfake.jobs.tasks.evaluate import run_evaluate
from realfake.jobs.tasks.outputs.common import ERROR_COLUMNS, errors_path
from realfake.jobs.tasks.outputs.writers import read_rows
from realfake.jobs.tasks.score import run_score
from realfake.jobs.tasks.sweep import load_spec
from realfake.jobs.tasks.train import run_train
from realfake.pipelines.prepare import prepare
from realfake.pipelines.synth import FAKE_DIR, REAL_DIR, synth
from sklearn.metrics import roc_auc_score

MARKER_NAME = "demo.json"  # marks OUT as the demo's own, so that a rerun may clear it
# What OUT holds (the summary names each); a rerun removes these first so that nothing stale remains.
OUTPUTS = ("synthetic", "data", "runs", "engine", "incoming", "scores.csv", "scores.csv.heatmaps",
           "scores.csv.report.html", "scores.csv.report_files")  # and the errors file beside scores.csv
SCORE_N = 60  # new images in the folder that is scored
SCORE_SEED_OFFSET = 1  # the scored images come from seed + this: faces the model never saw
EXPLAIN_TOP = 5  # heat maps of the files with the highest p_fake, shown on the report page
DAMAGED_NAME = "damaged.jpg"  # a JPEG cut short, put among the new images
RUN_NAME = "ghost_cnn"
# The demo's training recipe: the jpeg-ghosts sweep preset's optimizer and schedule (jobs/tasks/sweep_presets/),
# on maps a few times smaller and a set a few times smaller than CIPLAB's.
TRAIN_RECIPE = dict(optimizer="adamw", lr=2e-3, weight_decay=1e-3, schedule="onecycle", batch_size=32, compile=False)
# The real-data commands print the preset's best width-32 row (README "Model quality").
REAL_PRESET, REAL_CONFIG = "jpeg-ghosts", "ghosts-regions"


def _prepare_out(out: Path) -> None:
    """Create OUT, or clear the outputs of an earlier demo in it; never touch a folder that is not a demo's."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: choose a folder for the demo's outputs")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER_NAME).is_file():
        raise ValueError(f"--out {out} already holds files and is not a demo folder (no {MARKER_NAME}): "
                         "choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for path in [out / name for name in OUTPUTS] + [errors_path(out / "scores.csv")]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _cut_short(src: Path, dst: Path) -> None:
    """Write the first half of `src` to `dst`: a JPEG whose end is missing, as an interrupted copy leaves it."""
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])


def _scored_new_images(scores_file: Path, threshold: float) -> dict:
    """Counts of the labels the engine gave, and how well it did: the scored files' true class is the
    synthetic set's folder (training_real / training_fake)."""
    rows = [r for r in read_rows(scores_file) if Path(r["path"]).parent.name in (REAL_DIR, FAKE_DIR)]
    truth = [int(Path(r["path"]).parent.name == FAKE_DIR) for r in rows]
    p_fake = [r["p_fake"] for r in rows]
    labels = [r["label"] for r in rows]
    result = {"real": labels.count("real"), "fake": labels.count("fake"), "auc": None, "accuracy": None}
    if len(set(truth)) == 2:
        result["auc"] = float(roc_auc_score(truth, p_fake))
        result["accuracy"] = sum((p >= threshold) == bool(t) for p, t in zip(p_fake, truth, strict=True)) / len(truth)
    return result


def real_data_commands(data_source: str = "../shared/data/real_and_fake_face", data_dir: str = "data/ciplab",
                       seed: int = 0) -> list[str]:
    """The commands that run the demo's path on the CIPLAB set with the best measured single-run recipe
    (the jpeg-ghosts sweep preset's ghosts-regions row: its train options, its evaluate options)."""
    config = next(c for c in load_spec(preset=REAL_PRESET)["configs"] if c["name"] == REAL_CONFIG)
    run_dir, engine_dir = f"runs/{REAL_CONFIG}-s{seed}", f"engines_out/{REAL_CONFIG}-s{seed}"

    def line(command, function, arguments, values):
        return command_line(command, function_params(function), arguments, values)

    return [
        shlex.join(["realfake", "data", "prepare", data_source, "--out", data_dir, "--seed", str(seed)]),
        line("train", run_train, [data_dir], {**config["train"], "seed": seed, "out": "runs",
                                              "name": f"{REAL_CONFIG}-s{seed}"}),
        line("evaluate", run_evaluate, [run_dir], config["evaluate"]),
        line("engine build", run_engine_build, [run_dir], {"checkpoint": config["evaluate"]["checkpoint"],
                                                           "backend": "aot", "threshold": "auto", "out": engine_dir}),
        line("score", run_score, ["FOLDER"], {"engine": engine_dir, "out": "scores.csv", "explain_top": EXPLAIN_TOP,
                                             "report": True}),
    ]


def run_demo(out: OutputPath = Path("demo"), n: int = 400, epochs: Annotated[int, Bounds(min=1)] = 12,
             image_size: int = 128, seed: int = 0, backend: Literal[BACKEND_CHOICES] = "aot", device: str = "auto",
             progress: bool = True) -> dict:
    """synth -> prepare -> train ghost_cnn -> evaluate -> engine build -> score new images under OUT,
    with heat maps of the highest scores and the report page.

    Args:
        out: Working folder (synthetic images, prepared data, the run, the engine, the scores); a rerun replaces the demo's own outputs in it.
        n: Synthetic images to train and test on (half fake).
        epochs: Epochs to train.
        image_size: Side of the synthetic faces in pixels (the ghost maps have one cell per 8x8 block).
        seed: Seed of the synthetic set, the split and the training; the scored new images use seed + 1.
        backend: Engine backend; where it cannot build here, what auto gives.
        device: cpu or cuda[:N]; auto: the GPU when there is one.
        progress: Show progress bars.

    Returns a summary: every output's path, the test split's metrics, the engine, the scoring counts
    (and how the engine did on the new images, whose class the folder names), the seconds each step
    took, and the commands for the real data set. `backend` is the engine's; where it cannot build
    here, the engine is what `--backend auto` gives (the summary says so).
    """
    check_arguments(run_demo, locals())
    if n < 20:
        raise ValueError(f"--n {n} is too small for a demo: each split needs both classes; use at least 20")
    if image_size < 64 or image_size % 16:
        raise ValueError(f"--image-size {image_size}: ghost_cnn needs a multiple of 16, at least 64")
    out = Path(out).absolute()
    _prepare_out(out)
    (out / MARKER_NAME).write_text(json.dumps({"n": n, "epochs": epochs, "image_size": image_size, "seed": seed,
                                               "backend": backend}, indent=2) + "\n")
    seconds: dict[str, float] = {}
    started = last = time.perf_counter()

    def step(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        seconds[name], last = round(now - last, 1), now

    print(f"[1/6] synth: {n} faces at {image_size} px (half fakes whose edits carry another JPEG history) "
          f"-> {out / 'synthetic'}", flush=True)
    src = synth(out / "synthetic", n=n, size=image_size, seed=seed, progress=progress)
    step("synth")

    print(f"[2/6] prepare: validate, split -> {out / 'data'}", flush=True)
    prepared = prepare(src, out / "data", seed=seed, progress=progress)
    print(f"      {prepared}", flush=True)
    step("prepare")

    print(f"[3/6] train: ghost_cnn on JPEG ghost maps, {epochs} epochs -> {out / 'runs' / RUN_NAME}", flush=True)
    trained = run_train(out / "data", model="ghost_cnn", epochs=epochs, image_size=image_size, seed=seed,
                        out=out / "runs", name=RUN_NAME, device=device, progress=progress, **TRAIN_RECIPE)
    step("train")

    print("[4/6] evaluate: the last checkpoint on the test split", flush=True)
    evaluated = run_evaluate(trained["run_dir"], split="test", checkpoint="last", device=device, progress=progress)
    step("evaluate")

    print(f"[5/6] engine build: --backend {backend}, threshold from the valid split -> {out / 'engine'}", flush=True)
    build = dict(run_dir=trained["run_dir"], out=out / "engine", threshold="auto", checkpoint="last", device=device)
    fallback = None
    try:
        engine = run_engine_build(backend=backend, **build)
    except (ValueError, RuntimeError) as exc:  # not available here, or its compiler failed or crashed
        if backend == "auto":
            raise
        fallback = f"--backend {backend} could not build here ({str(exc).splitlines()[0]})"
        print(f"      {fallback}; building what --backend auto gives", flush=True)
        shutil.rmtree(out / "engine", ignore_errors=True)
        engine = run_engine_build(backend="auto", **build)
    step("engine")

    incoming = out / "incoming"
    print(f"[6/6] score: {SCORE_N} new faces (seed {seed + SCORE_SEED_OFFSET}) and one damaged file in {incoming}",
          flush=True)
    new_root = synth(incoming, n=SCORE_N, size=image_size, seed=seed + SCORE_SEED_OFFSET, progress=progress)
    _cut_short(sorted((new_root / REAL_DIR).iterdir())[0], incoming / DAMAGED_NAME)
    scored = run_score(folders=[incoming], out=out / "scores.csv", engine=engine["engine_dir"], resume=False,
                       device=device, progress=progress, explain_top=EXPLAIN_TOP, report=True)
    step("score")

    errors = list(read_rows(scored["errors_file"], ERROR_COLUMNS))
    return {
        "out": str(out), "synthetic": str(src), "data_dir": str(prepared.data_dir),
        "run_dir": trained["run_dir"], "report": evaluated["report"],
        "curves": str(Path(trained["run_dir"]) / "curves.png"), "roc": str(Path(trained["run_dir"]) / "roc.png"),
        "test": {key: evaluated[key] for key in ("n", "accuracy", "roc_auc", "eer", "threshold")},
        "engine_dir": engine["engine_dir"], "engine_id": engine["engine_id"], "backend": engine["backend"],
        "backend_fallback": fallback, "threshold": engine["threshold"], "incoming": str(incoming),
        "scores": scored["out"], "errors_file": scored["errors_file"], "heatmaps": scored["heatmaps"]["out"],
        "page": scored["report"], "decisions": scored.get("decisions", {}),
        "errors": [{"path": e["path"], "reason": e["reason"]} for e in errors],
        "scored": scored["scored"], "new_images": _scored_new_images(Path(scored["out"]), engine["threshold"]),
        "seconds": {**seconds, "total": round(time.perf_counter() - started, 1)},
        "real_data_commands": real_data_commands(seed=0),
    }


def summary_lines(result: dict) -> list[str]:
    """The demo's closing summary: what it reached, where every output is, and the real-data commands."""
    test, new = result["test"], result["new_images"]
    engine = f"{result['backend']} engine {result['engine_id']}, threshold {result['threshold']:.3f} (valid split)"
    if result["backend_fallback"]:
        engine += f"; {result['backend_fallback']}"
    decisions = result["decisions"]
    new_line = (f"{result['scored']} scored: decided {decisions.get('real', 0)} real, {decisions.get('fake', 0)} "
                f"fake, {decisions.get('unknown', 0)} unknown (the laundering gate found too little JPEG history "
                f"to decide); p_fake at the threshold alone: {new['real']} real, {new['fake']} fake")
    if new["auc"] is not None:
        new_line += f" (ROC AUC {new['auc']:.3f}, accuracy {new['accuracy']:.3f} against the folders' classes)"
    errors = "; ".join(f"{Path(e['path']).name}: {e['reason']}" for e in result["errors"]) or "none"
    steps = ", ".join(f"{name} {sec:.0f} s" for name, sec in result["seconds"].items() if name != "total")
    lines = [
        f"Test split: ROC AUC {test['roc_auc']:.3f}, accuracy {test['accuracy']:.3f} on {test['n']} held-out images "
        f"(ghost_cnn, last checkpoint).",
        f"New images: {new_line}; {len(result['errors'])} error(s): {errors}.",
        f"Time: {steps}; {result['seconds']['total']:.0f} s in all.",
        "",
        f"Synthetic set:  {result['synthetic']}",
        f"Data dir:       {result['data_dir']}",
        f"Run dir:        {result['run_dir']}",
        f"Report:         {result['report']}",
        f"Engine dir:     {result['engine_dir']}  ({engine})",
        f"Scored folder:  {result['incoming']}",
        f"Scores:         {result['scores']}",
        f"Errors:         {result['errors_file']}",
        f"Heat maps:      {result['heatmaps']}  (the {EXPLAIN_TOP} highest p_fake)",
        f"Report page:    {result['page']}  (open in a browser)",
        "",
        "The same on the real data set (CIPLAB; the prepare step also takes the public archive's .zip; "
        "about 3 min of ghost maps, then 7-14 min of training on 2 CPU cores):",
        *(f"  {command}" for command in result["real_data_commands"]),
    ]
    return lines
