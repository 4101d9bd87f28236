"""`realfake demo`: the whole experiment in a few minutes on a CPU, on synthetic faces."""
from __future__ import annotations

import shutil
from pathlib import Path

from realfake.jobs.service.params import OutputPath


def run_demo(out: OutputPath = Path("demo"), n: int = 400, epochs: int = 8, model: str = "simple_cnn",
             image_size: int = 128, seed: int = 0, loader: str = "auto") -> dict:
    """synth -> prepare -> train -> evaluate under OUT; returns where the report and pictures are."""
    from realfake.jobs.tasks.evaluate import run_evaluate
    from realfake.jobs.tasks.train import run_train
    from realfake.pipelines.prepare import prepare
    from realfake.pipelines.synth import synth

    out = Path(out)
    for sub in ("synthetic", "data", "runs"):  # a rerun starts clean instead of mixing runs
        shutil.rmtree(out / sub, ignore_errors=True)
    print(f"[1/4] generating {n} synthetic faces (half with a pasted-and-blended edit) in {out / 'synthetic'}",
          flush=True)
    src = synth(out / "synthetic", n=n, size=256, seed=seed)
    print(f"[2/4] preparing {src} -> {out / 'data'}", flush=True)
    summary = prepare(src, out / "data", seed=seed)
    print(f"      {summary}", flush=True)
    print(f"[3/4] training {model} for {epochs} epochs at {image_size}px", flush=True)
    trained = run_train(out / "data", model=model, epochs=epochs, image_size=image_size, seed=seed,
                        out=out / "runs", name=model, loader=loader)
    print("[4/4] evaluating on the test split", flush=True)
    evaluated = run_evaluate(trained["run_dir"], split="test", loader=loader)
    run_dir = Path(trained["run_dir"])
    return {**evaluated, "curves": str(run_dir / "curves.png"), "confusion": str(run_dir / "confusion.png"),
            "roc": str(run_dir / "roc.png")}
