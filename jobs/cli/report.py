"""`realfake report SCORES`: the options are `run_report`'s."""
from __future__ import annotations

import json

import click
from realfake.jobs.cli.options import JobCommand, as_arguments


@click.command(cls=JobCommand, target="realfake.jobs.tasks.report:run_report", arguments=("scores",),
               epilog="See docs/report.md for the page and the heat-map index format.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def report(as_json, **options):
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
    from realfake.jobs.tasks.report import run_report  # thumbnails and the histogram load PIL and matplotlib

    summary = run_report(**as_arguments(options))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    decisions = "  ".join(f"{name} {count:,}" for name, count in summary["decisions"].items()) or "-"
    click.echo(f"files {summary['files']:,}  scored {summary['scored']:,}  errors {summary['errors']:,}  "
               f"[{decisions}]  thumbnails {summary['thumbnails']} ({summary['placeholders']:,} placeholders)  "
               f"heat maps {summary['heatmaps']:,}  {summary['seconds']:.1f} s")
    for problem in summary["problems"]:
        click.echo(f"warning: heat maps: {problem}", err=True)
    click.echo(f"report: {summary['report']}")
