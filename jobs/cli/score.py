"""`realfake score FOLDER... --out OUT` and `realfake score merge OUT SHARD_OUTPUT...`.

`score` is a click group with one subcommand, `merge`; any other first argument is scoring's
(a folder, or an option), so the common case stays `realfake score FOLDER --out results.csv`.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click
from realfake.jobs.cli.options import JobCommand, as_arguments
from realfake.pipelines.walk import IMAGE_EXTENSIONS

EXIT_OK, EXIT_ERRORS, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130
_SCORE_FOLDERS = "folders"  # the scoring command's internal name: never typed, chosen by ScoreGroup

EXIT_CODES_HELP = (
    "\b\nExit codes:\n"
    "  0    every file scored\n"
    "  1    finished, but some files are in the errors file\n"
    "  2    bad usage or failure (rows written so far are kept: fix and rerun to resume)\n"
    "  130  interrupted (Ctrl-C): rerun the same command to resume"
)


def _summary_lines(summary: dict) -> str:
    rate = summary["img_per_s"]
    decided = "  ".join(f"{name} {count}" for name, count in summary["decisions"].items())
    return (f"files {summary['files']}  scored {summary['scored']} ({decided})  skipped {summary['skipped']} "
            f"(already in OUT)  errors {summary['errors']}  {summary['seconds']:.1f} s  "
            f"{rate if rate is not None else '-'} img/s  [{summary['loader'] or '-'}, engine {summary['engine_id']}]\n"
            f"results: {summary['out']}\nerrors:  {summary['errors_file']}"
            + (f"\nray:     {summary['ray_shards']} shards on {len(summary['nodes'])} node(s), Ray start-up "
               f"{summary['startup_s']:.1f} s, merge {summary['merge_s']:.1f} s, parts: {summary['shards_dir']}"
               if summary.get("ray") else "")
            + (f"\nreport:  {summary['report']}" if summary.get("report") else ""))


class _FoldersContext(click.Context):
    @property
    def command_path(self) -> str:
        # The command is reached without a name of its own: usage lines and "Try ... --help" hints say
        # `realfake score`, which is what the user typed.
        return super().command_path.removesuffix(f" {_SCORE_FOLDERS}")


class _FoldersCommand(JobCommand):
    context_class = _FoldersContext


@click.command(_SCORE_FOLDERS, cls=_FoldersCommand, target="realfake.jobs.tasks.score:run_score",
               arguments=("folders",), epilog=EXIT_CODES_HELP,
               settings={"ray": dict(is_flag=False, flag_value="local", metavar="[ADDRESS]")})
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of text.")
@click.pass_context
def score_folders(ctx, as_json, **options):
    """Score every image under FOLDER... (jpg, jpeg, png, bmp, webp, any letter case) with an engine.

    One row per file: path, size, mtime, p_fake, label, threshold, engine_id. Files that cannot be
    scored (empty, truncated, corrupt, not an image, unsupported format, unreadable, too large) get one
    row each in OUT.errors.csv with the reason, and the run goes on.

    Rows are written (and fsynced) batch by batch: after a crash, run the same command again and only
    the missing files are scored -- none lost, none twice. An OUT written by another engine is refused.
    Symlinks are followed, each folder once (loops are detected).

    \b
      realfake score incoming/ --out scores.csv
      realfake score a/ b/ --engine engines_out/m1 --out scores.parquet
      realfake score incoming/ --shard 0/2 --out s0.csv   (and 1/2 -> s1.csv elsewhere)
      realfake score merge scores.csv s0.csv s1.csv
      realfake score /shared/incoming --out /shared/scores.csv --ray auto   (on a Ray cluster)
    """
    from realfake.jobs.tasks.score import run_score  # torch loads when a command runs, not for --help

    try:
        summary = run_score(**as_arguments(options))
    except (ValueError, OSError):
        raise  # the root command prints `error: <message>` and exits 2
    except KeyboardInterrupt:
        click.echo("interrupted: the rows written so far are kept; rerun the same command to resume", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    except Exception:
        traceback.print_exc()
        click.echo("error: scoring failed (see above); the rows written so far are kept: fix and rerun to resume",
                   err=True)
        ctx.exit(EXIT_FAILED)
    click.echo(json.dumps(summary, indent=2) if as_json else _summary_lines(summary))
    sys.stdout.flush()
    if not summary["files"]:  # a mistyped folder, or images of a kind not scored, would pass unnoticed
        click.echo(f"warning: no image files ({', '.join(IMAGE_EXTENSIONS)}, any letter case) under "
                   f"{', '.join(summary['folders'])}: nothing was scored", err=True)
    ctx.exit(EXIT_ERRORS if summary["errors"] else EXIT_OK)


@click.command("merge")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("shard_outputs", nargs=-1, required=True, metavar="SHARD_OUTPUT...",
                type=click.Path(exists=True, path_type=Path))
def merge(out, shard_outputs):
    """Join the outputs of `realfake score --shard I/N` runs into OUT (and their errors files into
    OUT.errors.csv).

    Formats may differ (OUT's suffix decides). All shards must come from one engine, and no file may
    appear in two of them. OUT is written aside and renamed into place, replacing any old OUT.
    """
    from realfake.jobs.tasks.score import merge_outputs

    summary = merge_outputs(out, [str(s) for s in shard_outputs])
    click.echo(f"{summary['rows']} rows from {len(summary['inputs'])} outputs -> {summary['out']}; "
               f"{summary['errors']} errors -> {summary['errors_file']}")


class ScoreGroup(click.Group):
    """`score merge ...` runs `merge`; anything else runs the scoring command (see the module docstring)."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [_SCORE_FOLDERS, *args]
        return super().parse_args(ctx, args)

    def get_command(self, ctx, cmd_name):
        if cmd_name == _SCORE_FOLDERS:
            return score_folders
        return super().get_command(ctx, cmd_name)

    def format_help(self, ctx, formatter):
        # The scoring command's help (it is what `score` does), then the one subcommand.
        formatter.write_usage(ctx.command_path, "[OPTIONS] FOLDER...")
        formatter.write_usage(ctx.command_path, "merge OUT SHARD_OUTPUT...", prefix="   or: ")
        score_folders.format_help_text(ctx, formatter)
        score_folders.format_options(click.Context(score_folders, info_name=ctx.info_name, parent=ctx.parent),
                                     formatter)
        self.format_commands(ctx, formatter)
        score_folders.format_epilog(ctx, formatter)


@click.group(cls=ScoreGroup, short_help="Score image folders with an engine (resumable).")
def score():
    """Score image folders with an engine (see `realfake score --help`)."""


score.add_command(merge)
