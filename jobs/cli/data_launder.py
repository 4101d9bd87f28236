"""`realfake data launder`: a laundered copy of a data set (the work is in pipelines.launder_dataset)."""
from __future__ import annotations

from pathlib import Path

import click

_SHOW_REJECTED = 5  # rejected files listed on screen; OUT/rejected.csv has them all


@click.command("launder", short_help="Write a laundered copy (JPEG re-save, resize, crop) of a data set.")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the copy: OUT/<data set folder>/..., OUT/manifest.csv (DATA_DIR sources), "
                   "OUT/rejected.csv, OUT/launder.csv (source and transform of each file), OUT/launder.json. "
                   "A rerun into the same OUT with the same options resumes.")
@click.option("--transform", "transform", required=True, metavar="SPEC",
              help="What to do to every file, ending in a JPEG re-save: jpeg:q=85, jpeg:q=90,sub=444, "
                   "resize:scale=0.75,q=85[,filter=bicubic], crop:dx=3,dy=5,q=90 (prog=1, opt=1 for progressive "
                   "and optimized files); or random: one transform per file drawn from the family's ranges "
                   "with --seed. docs/robustness.md lists the default family.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the per-file draws of --transform random (a fixed SPEC does not use it).")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default=None,
              help="Only this split of a prepared DATA_DIR (OUT/manifest.csv then holds that split).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Processes laundering files in parallel.")
@click.option("--no-progress", is_flag=True, help="No progress bar (it is shown on a terminal only anyway).")
@click.pass_context
def launder_cmd(ctx, src: Path, out: Path, transform: str, seed: int, split: str | None, workers: int,
                no_progress: bool) -> None:
    """Launder every image of SRC into OUT with the same relative paths and file names.

    SRC is a prepared DATA_DIR (then OUT/manifest.csv keeps every file's label, group and split, so
    `realfake evaluate-scores` works on OUT) or an image folder in a layout `data prepare` takes.
    EXIF orientation is applied and EXIF dropped; a non-JPEG file comes out as NAME.jpg. Files that
    cannot be laundered are listed in OUT/rejected.csv with the reason; the exit code is then 1.

    \b
      realfake data launder data/ciplab --out laundered/q85 --transform jpeg:q=85 --split test
      realfake score laundered/q85/real_and_fake_face --engine ENGINE --out laundered/q85/scores.csv
      realfake evaluate-scores laundered/q85/scores.csv laundered/q85 --split test
    """
    from realfake.pipelines.launder_dataset import launder_dataset

    summary = launder_dataset(src, out, transform, seed=seed, split=split, workers=workers,
                              progress=not no_progress)
    click.echo(format_launder_summary(summary))
    ctx.exit(1 if summary.rejected else 0)


def format_launder_summary(summary) -> str:
    """What `data launder` prints: source, transform, counts, rejected files, outputs and the next step."""
    kind = "prepared data set" if summary.source_kind == "data_dir" else "image folder"
    lines = [f"source      {summary.source} ({kind}{f', split {summary.split}' if summary.split else ''}): "
             f"{summary.files} files",
             f"transform   {summary.transform}" + (f" (per file, seed {summary.seed})" if summary.transform == "random"
                                                     else ""),
             f"written     {summary.root}: {summary.laundered} laundered, {summary.kept} already there, "
             f"{len(summary.rejected)} rejected" + (f" (all listed in {summary.rejected_path})"
                                                     if summary.rejected else "")]
    for row in summary.rejected[:_SHOW_REJECTED]:
        lines.append(f"            {row['reason']}: {row['path']}")
    if len(summary.rejected) > _SHOW_REJECTED:
        lines.append(f"            ... {len(summary.rejected) - _SHOW_REJECTED} more")
    lines.append(f"record      {summary.record_path}")
    if summary.manifest_path:
        counts = ", ".join(f"{s} {n}" for s, n in sorted(summary.split_counts.items()))
        lines += [f"manifest    {summary.manifest_path} ({counts or 'empty'}; labels, groups and splits of the source)",
                  f"next        realfake score {summary.root} --engine ENGINE --out {summary.out}/scores.csv",
                  f"            realfake evaluate-scores {summary.out}/scores.csv {summary.out} "
                  f"--split {summary.split or 'test'}"]
    else:
        lines.append(f"next        realfake data prepare {summary.root} --out DATA_DIR")
    return "\n".join(lines)
