"""`run_score`, the job function behind `realfake score`: on this machine (`scorer.py`), or on a Ray
cluster one task per shard (`cluster.py`); then, if asked, the report page of the whole output.

Scoring here, heat maps and the report are imported when a run uses them: a `--ray` driver loads
neither torch nor matplotlib (its tasks do the scoring)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from realfake.jobs.service.options import Bounds, check_arguments
from realfake.jobs.service.params import InputPath, OutputPath
from realfake.jobs.tasks.score.cluster import run_score_ray
from realfake.pipelines.pixel_loaders import LOADER_CHOICES


def run_score(
    folders: list[InputPath],
    out: OutputPath,
    engine: InputPath | None = None,
    recursive: bool = True,
    batch_size: Annotated[int, Bounds(min=1)] = 64,
    loader: Literal[LOADER_CHOICES] = "auto",
    resume: bool = True,
    shard: str | None = None,
    num_workers: Annotated[int, Bounds(min=0)] = 2,
    engine_threads: Annotated[int, Bounds(min=0)] = 0,
    device: str = "auto",
    progress: bool = True,
    report: bool = False,
    ray: str | None = None,
    ray_shards: Annotated[int, Bounds(min=0)] = 0,
    explain_top: Annotated[int, Bounds(min=0)] = 0,
) -> dict:
    """Score every image under FOLDERS with an engine; one row per file in OUT, errors beside it.

    Args:
        folders: Folders to score (files named directly are scored too).
        out: Results: .csv, .parquet or .jsonl (a folder, or a path without suffix, gets scores.csv inside). Errors go to OUT.errors.csv.
        engine: Engine directory from `realfake engine build`; default: the promoted engine.
        recursive: Score the folders' subfolders too.
        batch_size: Images per batch through the loader and the engine.
        loader: Decoder. auto: DALI on a GPU (when installed); on the CPU torchvision with PIL draft mode, the cheaper CPU decoder for scoring. Ghost engines: dct maps follow the decoder; pil maps are PIL's re-saves in the workers unless dali, where they are computed bit for bit from DALI's pixels on the engine's device.
        resume: Skip files OUT already holds (and retry those of its errors file); false (--no-resume) replaces OUT.
        shard: I/N: score only shard I of N (a fixed 1/N of the files, by a hash of their relative path); join the N outputs with `realfake score merge`.
        num_workers: Decoding processes (torchvision) or threads (DALI).
        engine_threads: torch threads for the engine on a CPU. 0: the cores the decode workers leave free (at least 1), best when decoding costs more than the model; raise it for heavy models that keep the decoders waiting.
        device: cpu or cuda[:N] for the engine and DALI decoding; auto: where the engine was built for.
        progress: Show a progress bar (img/s) on stderr.
        report: Then write OUT.report.html, the HTML page of the whole output (see `realfake report --help`).
        ray: Score on Ray, one task per shard, parts in OUT.shards/ merged into OUT: without an ADDRESS (or "local") Ray starts on this machine; "auto", ray://HOST:PORT or HOST:PORT joins a running cluster. Every node must see the folders, the engine and OUT at the same paths (a shared filesystem). Needs `pip install 'realfake[cluster]'`; see docs/cluster.md.
        ray_shards: With --ray: shards (tasks). 0: those of an earlier run of OUT, else one per task slot of the cluster. Fixed for an OUT.
        explain_top: Then heat maps (`realfake explain`) of the K files with the highest p_fake, in OUT.heatmaps/ (PNG + evidence JSON per file, index.csv), which --report shows. 0: none.

    Returns a summary: files (found in this shard), scored (new rows), skipped (already in OUT), errors,
    seconds (walking, decoding and scoring: not loading the engine), img_per_s (scored / seconds), and
    where everything went.
    """
    check_arguments(run_score, locals())
    options = dict(engine=engine, recursive=recursive, batch_size=batch_size, loader=loader, resume=resume,
                   shard=shard, num_workers=num_workers, engine_threads=engine_threads, device=device,
                   progress=progress)
    if ray is not None:
        summary = run_score_ray(folders, out, address=ray, num_shards=ray_shards, **options)
    elif ray_shards:
        raise ValueError(f"--ray-shards {ray_shards} needs --ray: pass --ray [ADDRESS], or drop --ray-shards")
    else:
        from realfake.jobs.tasks.score.scorer import score_here

        summary = score_here(folders, out, **options)
    if explain_top:
        summary["heatmaps"] = explain_highest(Path(summary["out"]), explain_top, engine=Path(summary["engine"]),
                                              device=device, num_workers=num_workers, progress=progress)
    if report:
        from realfake.jobs.tasks.report import run_report

        summary["report"] = run_report(Path(summary["out"]), progress=progress)["report"]
    return summary


def explain_highest(scores_file: Path, count: int, *, engine: Path, device: str, num_workers: int,
                    progress: bool) -> dict:
    """Heat maps of the `count` files of a score output with the highest p_fake, in OUT.heatmaps/
    (where `realfake report` finds them). Rows of other engines (an OUT resumed after a rebuild) are
    left out: their heat maps would explain a score the file does not hold."""
    from realfake.jobs.tasks.explain import run_explain
    from realfake.jobs.tasks.report.heatmaps import default_heatmaps
    from realfake.jobs.tasks.report.scores import read_scores

    rows = read_scores(scores_file).rows
    engine_id = rows[-1]["engine_id"] if rows else None
    ranked = sorted((r for r in rows if r["engine_id"] == engine_id and r["p_fake"] is not None),
                    key=lambda r: -float(r["p_fake"]))
    top = [r["path"] for r in ranked[:count]]
    out = default_heatmaps(scores_file)
    if not top:
        return {"out": str(out), "explained": 0, "errors": 0}
    summary = run_explain(top, out, engine=engine, recursive=False, num_workers=min(num_workers, len(top)),
                          device="cpu" if device == "auto" else device, progress=progress)
    return {key: summary[key] for key in ("out", "index", "explained", "errors", "errors_file")}
