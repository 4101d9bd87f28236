"""`realfake report SCORES --out report.html`."""
from __future__ import annotations

import json
from pathlib import Path

import click
from realfake.jobs.report import EMBED_MAX_ROWS, PAGE_SIZE, THUMB_SIZE, THUMBNAIL_MODES


@click.command(epilog="See docs/report.md for the page and the heat-map index format.")
@click.argument("scores", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path),
              help="The page (.html); a folder gets report.html.  [default: SCORES.report.html]")
@click.option("--thumbnails", type=click.Choice(THUMBNAIL_MODES), default="auto", show_default=True,
              help=f"auto: embedded in the page up to --embed-max-rows rows ({EMBED_MAX_ROWS:,} by default), "
                   "above that JPEG files in <report>_files/thumbs/ beside the page, linked (move the page "
                   "and that folder together); embed, link or none to choose.")
@click.option("--embed-max-rows", type=click.IntRange(min=0), default=EMBED_MAX_ROWS, show_default=True,
              help="With --thumbnails auto: the most rows whose thumbnails are embedded.")
@click.option("--heatmaps", type=click.Path(exists=True, path_type=Path),
              help="Heat maps: a CSV with columns path,heatmap (heat-map PNG/JPEG, relative to the CSV's "
                   "folder), or a folder holding index.csv.  [default: SCORES.heatmaps/ if it exists]")
@click.option("--thumb-size", type=click.IntRange(16, 512), default=THUMB_SIZE, show_default=True,
              help="Longer side of a thumbnail, in pixels.")
@click.option("--page-size", type=click.IntRange(min=1), default=PAGE_SIZE, show_default=True,
              help="Table rows a page shows at first (the page lets you change it).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Threads making thumbnails; 0: the usable cores.")
@click.option("--title", help="Page title.  [default: the scores file's name]")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def report(scores, as_json, **options):
    """Write one HTML page of a scoring run that works offline (no network, nothing to install):
    a summary (files, scored, errors, threshold, engine, when, files per decision), a histogram of
    p_fake with the threshold, a table of every file (thumbnail, path, p_fake, decision) that sorts by
    p_fake or path, filters by decision and by text in the path, and pages through 100,000 rows; heat
    maps in an overlay for the files that have one; the files that could not be scored, with the reason.

    SCORES is a `realfake score` output (.csv, .parquet, .jsonl, or a job's output folder); its errors
    file SCORES.errors.csv is read too. A file that cannot be thumbnailed (gone, corrupt) gets a
    placeholder. `realfake score ... --report` writes the same page after scoring.

    \b
      realfake report scores.csv                         (-> scores.csv.report.html)
      realfake report scores.parquet --out review/index.html --heatmaps explain/index.csv
    """
    from realfake.jobs.report import run_report

    summary = run_report(scores, **options)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    decisions = "  ".join(f"{name} {count:,}" for name, count in summary["decisions"].items()) or "-"
    click.echo(f"files {summary['files']:,}  scored {summary['scored']:,}  errors {summary['errors']:,}  "
               f"[{decisions}]  thumbnails {summary['thumbnails']} ({summary['placeholders']:,} placeholders)  "
               f"heat maps {summary['heatmaps']:,}  {summary['seconds']:.1f} s")
    for problem in summary["problems"]:
        click.echo(f"warning: heat maps: {problem}", err=True)
    extra = f" (and {summary['files_dir']}/ beside it)" if summary["files_dir"] else ""
    click.echo(f"report: {summary['report']}  {summary['bytes'] / 1e6:.1f} MB{extra}")
