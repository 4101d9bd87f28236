"""`realfake data ...`: prepare a data set (validate, de-duplicate, split) and make a synthetic one.

Only click is imported here; the work happens in realfake.pipelines.prepare / .synth, imported when a
command runs, so that `realfake --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path

import click
from realfake.jobs.cli.data_launder import launder_cmd

_SHOW_REJECTED = 5  # rejected files listed on screen; rejected.csv has them all


@click.group()
def data() -> None:
    """Prepare image data sets for training and make a synthetic one.

    \b
    realfake data synth demo_src                     # 400 synthetic faces, archive layout
    realfake data prepare demo_src --out demo_data   # validate, de-duplicate, split
    """


data.add_command(launder_cmd)  # `data launder` (data_launder.py)


@data.command("prepare", short_help="Validate, de-duplicate and split images into a manifest.")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Data directory to write manifest.csv, prepare.json and rejected.csv into "
                   "(a .zip SRC is extracted into OUT/images).")
@click.option("--split", "split", default="0.8,0.1,0.1", show_default=True,
              help="Train,valid,test fractions (sum 1; valid and test may be 0). Drawn per class, by "
                   "difficulty group where file names carry one, over unique file contents.")
@click.option("--seed", default=0, show_default=True, help="Seed of the split: same seed, same manifest.")
@click.option("--no-progress", is_flag=True, help="No progress bar (it is shown on a terminal only anyway).")
def prepare_cmd(src: Path, out: Path, split: str, seed: int, no_progress: bool) -> None:
    """Validate every image of SRC, de-duplicate and split it into OUT/manifest.csv.

    SRC is the public archive's folder (real_and_fake_face/training_real + training_fake, wrapped in
    any folders), any folder with real/ and fake/ sub-folders, or a .zip of either. Every file is
    decoded; unusable ones are listed in OUT/rejected.csv with a reason and the rest are kept.
    Identical files never end up in two splits; identical files under both labels are rejected.
    """
    from realfake.pipelines.prepare import prepare

    summary = prepare(src, out, split=split, seed=seed, progress=not no_progress)
    click.echo(format_summary(summary))


def format_summary(summary) -> str:
    """The short table `data prepare` prints (files, rejections, duplicates, split sizes, manifest)."""
    classes = list(summary.accepted)
    lines = [f"source      {summary.source} ({summary.source_kind}); data set in {summary.data_root}"]
    for path in summary.skipped_copies:
        lines.append(f"note        another copy of the data set was not used: {path}")
    for path in summary.ignored_dirs:
        lines.append(f"note        not a class folder, not read: {path}")
    lines.append("files       " + ", ".join(f"{c} {summary.files.get(c, 0)}" for c in classes)
                 + f"  (accepted: {', '.join(f'{c} {summary.accepted[c]}' for c in classes)})")
    lines.append(f"rejected    {summary.rejected_count}" + (f"  (all listed in {summary.rejected_path})"
                                                            if summary.rejected_count else ""))
    for row in summary.rejected[:_SHOW_REJECTED]:
        lines.append(f"            {row['reason']}: {row['path']}")
    if summary.rejected_count > _SHOW_REJECTED:
        lines.append(f"            ... {summary.rejected_count - _SHOW_REJECTED} more")
    lines.append(f"duplicates  {len(summary.duplicate_groups)} groups of identical files "
                 f"({summary.duplicate_files} extra copies, kept in one split each; see prepare.json)")
    for c in classes:
        n = summary.class_only_encodings.get(c, 0)
        if n:  # e.g. CIPLAB: a quarter of the fakes were saved with JPEG tables no real photo has
            lines.append(f"audit       {c}: {n} of {summary.accepted[c]} files ({n / summary.accepted[c]:.1%}) use an "
                         "encoding (JPEG quantization tables or format) that no file of the other class uses: a "
                         "model can learn that instead of the content; see prepare.json encodings")
    width = max(5, *(len(c) for c in classes))
    header = f"{'split':<10}  {'fraction':>8}  " + "  ".join(f"{c:>{width}}" for c in classes) + f"  {'total':>{width}}"
    lines += ["", header]
    for split_name, fraction in summary.split.items():
        row = summary.counts[split_name]
        lines.append(f"{split_name:<10}  {fraction:>8g}  " + "  ".join(f"{row[c]:>{width}}" for c in classes)
                     + f"  {row['total']:>{width}}")
    strat = ", ".join(f"{c} by {how}" for c, how in summary.stratified_by.items())
    lines += ["", f"stratified  per class ({strat}); seed {summary.seed}",
              f"manifest    {summary.manifest_path}",
              f"summary     {summary.summary_path}"]
    return "\n".join(lines)


@data.command("synth", short_help="Write a synthetic real/fake face set (archive layout).")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", default=400, show_default=True, help="Images in all: half real, half fake.")
@click.option("--size", default=256, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--baseline", is_flag=True,
              help="Write baseline JPEGs (GPU hardware decoders take only these) instead of progressive "
                   "ones like the CIPLAB archive.")
def synth_cmd(out: Path, n: int, size: int, seed: int, baseline: bool) -> None:
    """Write a synthetic real/fake face set into OUT/real_and_fake_face (the archive's layout).

    Fakes carry a local retouch (an eye, the nose or the mouth pasted from another face or from a
    colour/scale-jittered copy, blended with a soft mask), named {easy,mid,hard}_NNN_CCCC.jpg like
    the archive's. Every face starts as a camera JPEG and is saved again; a fake's pasted material
    has a JPEG history of its own (what `--model ghost_cnn` reads). For demos and tests: it says
    nothing about accuracy on real photos.
    """
    from realfake.pipelines.synth import synth

    root = synth(out, n=n, size=size, seed=seed, progressive=not baseline, progress=True)
    n_fake = n // 2
    click.echo(f"wrote {n - n_fake} real + {n_fake} fake {size}x{size} JPEGs to {root}")
    click.echo(f"next: realfake data prepare {root} --out DATA_DIR")


@data.command("preview", short_help="Draw one augmented training batch with its labels.")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write.")
@click.option("--n", "n", default=16, show_default=True, help="Images in the grid.")
@click.option("--image-size", default=128, show_default=True)
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="train", show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Apply the training augmentation (what the model sees) or only the preprocessing.")
@click.option("--loader", type=click.Choice(["auto", "dali", "torch"]), default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--epoch", default=1, show_default=True, help="The augmentation of this epoch.")
def preview_cmd(data_dir: Path, out: Path, **options) -> None:
    """Write a grid of one training batch of DATA_DIR, as the loader delivers it, titled with labels.

    \b
    Example:
      realfake data preview data/ciplab --out grid.png --loader dali
    """
    from realfake.pipelines.preview import save_preview

    result = save_preview(data_dir, out, **options)
    click.echo(f"{result['out']}: {result['images']} images ({result['labels']['real']} real, "
               f"{result['labels']['fake']} fake), loader {result['loader']}")
