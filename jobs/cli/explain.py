"""`realfake explain FILE_OR_FOLDER... --engine E --out DIR` and `realfake explain --evaluate DATA_DIR ...`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from realfake.jobs.cli.options import JobCommand

EXIT_OK, EXIT_ERRORS = 0, 1


# recursive, batch size, workers, device, dpi and progress are run_explain's own options (run_explain_evaluate
# takes the same); the files, the engines and --evaluate's are this command's, since it serves both functions.
@click.command(cls=JobCommand, target="realfake.jobs.tasks.explain:run_explain", skip=("inputs", "engine", "out"),
               epilog="\b\nExit codes: 0 every file explained, 1 some files are in DIR/errors.csv, 2 bad usage or "
                      "failure.")
@click.argument("inputs", nargs=-1, metavar="[FILE_OR_FOLDER]...", type=click.Path(exists=True, path_type=Path))
@click.option("--engine", "engines", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Engine directory from `realfake engine build` (repeatable with --evaluate, to compare "
                   "engines).  [default: the promoted engine]")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: NAME.png and NAME.json per image, index.csv, errors.csv; with --evaluate "
                   "pointing.json, pointing.md and examples/.")
@click.option("--evaluate", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Instead of files: play the pointing game on a split of this prepared data set (CIPLAB file "
                   "names say which regions were edited).")
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default="test", show_default=True,
              help="Split of --evaluate's data set.")
@click.option("--examples", type=click.IntRange(min=0), default=3, show_default=True,
              help="With --evaluate: PNG + evidence of this many fakes of each difficulty group and reals.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def explain(ctx, inputs, engines, out, data_dir, split, examples, recursive, as_json, **common):
    """Show where an engine's model found the edit: per image, a PNG of the evidence over the photo
    (p_fake and the decision in the title) and a JSON file of the evidence per cell and per face region.

    ghost_cnn engines: the class activation map of the last feature map on the JPEG block grid (plus the
    region head's outputs where the run was trained with --region-loss); pixel models: Grad-CAM on the
    last convolution stage. Files that cannot be explained get one row each in DIR/errors.csv with the
    reason, and the run goes on.

    With --evaluate DATA_DIR: the pointing game on a split (how often the hottest of the eye, nose and
    mouth regions is one the fake's file name says was edited, against a random region), per difficulty
    group, for each --engine.

    \b
      realfake explain incoming/ --engine engines_out/ghosts --out explained/
      realfake explain --evaluate data/ciplab --split test --engine engines_out/ghosts \\
          --engine engines_out/resnet18 --out pointing/
    """
    if data_dir is not None:
        if inputs:
            raise click.UsageError("--evaluate plays the pointing game on a data set's split: drop FILE_OR_FOLDER "
                                   "(or drop --evaluate to explain those files)")
        if not engines:
            raise click.UsageError("--evaluate needs --engine (once per engine to compare)")
        from realfake.jobs.tasks.explain import run_explain_evaluate

        summary = run_explain_evaluate(data_dir, list(engines), out, split=split, examples=examples, **common)
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        else:
            click.echo(Path(summary["table"]).read_text())
            click.echo(f"Tables: {summary['table']} and {summary['results']}; examples in {Path(out) / 'examples'}")
        return
    if not inputs:
        raise click.UsageError("pass image files or folders to explain (or --evaluate DATA_DIR)")
    if len(engines) > 1:
        raise click.UsageError("explain files with one --engine at a time (several are for --evaluate)")
    from realfake.jobs.tasks.explain import run_explain

    summary = run_explain([str(p) for p in inputs], out, engine=engines[0] if engines else None,
                          recursive=recursive, **common)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"files {summary['files']}  explained {summary['explained']}  errors {summary['errors']}  "
                   f"{summary['seconds']:.1f} s  [{summary['method']}, engine {summary['engine_id']}]\n"
                   f"images:  {summary['out']} (index: {summary['index']})\nerrors:  {summary['errors_file']}")
    sys.stdout.flush()
    ctx.exit(EXIT_ERRORS if summary["errors"] else EXIT_OK)
