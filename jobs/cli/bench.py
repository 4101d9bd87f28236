"""`realfake bench run | compare | plot | list`."""
from __future__ import annotations

import json
from pathlib import Path

import click

DEFAULT_RESULTS = Path("benchmarks/results")
SUITE_HELP = ("Suite(s) to run, repeatable or comma-separated: pipelines, train, engines, score, or all "
              "(every suite that is installed; the others are skipped with the reason).")

out_option = click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RESULTS, show_default=True,
    help="Results folder: its history.jsonl holds one JSON line per figure of every run.")


@click.group()
def bench():
    """Throughput benchmarks: run suites, compare the newest run with a baseline, plot the history.

    \b
    Typical use:
      realfake bench run --suite train --quick     # measure, print a table, append to the history
      realfake bench compare --threshold 10%       # exit 1 if a figure regressed
      realfake bench plot                          # one PNG per figure under OUT/plots/
    """


@bench.command("run")
@click.option("--suite", "suites", multiple=True, default=("all",), show_default=True, help=SUITE_HELP)
@click.option("--quick/--full", default=True, show_default=True,
              help="Quick: a few models and repeats, under 2 minutes per suite on 2 CPU cores. Full: every model, "
                   "size and backend, more repeats (for GPUs and nightly jobs).")
@out_option
@click.option("--device", default="auto", show_default=True, help="auto (the GPU when torch sees one), cpu or cuda[:N].")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON instead of a table.")
def run_cmd(suites, quick, out, device, as_json):
    """Run benchmark suites and append their figures to OUT/history.jsonl.

    Each figure is the median of several timed repeats after a warm-up, with its spread (IQR). Ratio
    figures (compiled / eager, DALI / torchvision, ...) are measured in the same run, so they compare
    across machines where absolute images/s do not.
    """
    from realfake.benchmarks.harness import figures_table
    from realfake.benchmarks.suites import run_bench

    summary = run_bench(suites=list(suites), quick=quick, out=out, device=device)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"run {summary['run_id']} ({'quick' if quick else 'full'}) on {summary['env_key']}")
    click.echo(figures_table(summary["figures"]))
    click.echo(f"appended {len(summary['figures'])} figures to {summary['history']}")


@bench.command("compare")
@out_option
@click.option("--baseline", default="last-5", show_default=True, metavar="FILE|last-K",
              help="last-K: the median of the K latest earlier runs on the same environment and mode; "
                   "FILE: the newest such run in that JSONL file.")
@click.option("--threshold", default="10%", show_default=True,
              help="A figure regresses when it is this much worse than the baseline AND outside the noise band "
                   "(the baseline's and the new run's spreads combined).")
@click.option("--run", "run_id", default=None, help="Run id to judge (default: the newest run in the history).")
@click.option("--figure", "pattern", default="*", show_default=True,
              help="Only figures whose name matches this glob; '*_vs_*' keeps the ratio figures, which carry "
                   "over between machines and busy runs better than absolute img/s.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.pass_context
def compare_cmd(ctx, out, baseline, threshold, run_id, pattern, as_json):
    """Compare the newest run in OUT/history.jsonl against a baseline on the same environment.

    Prints per figure the baseline, the new value, their ratio, the noise band and a verdict
    (regression, improvement, noise, ok, new, missing). Exit status: 1 when a figure regressed,
    0 otherwise (also when there is no baseline yet), 2 on bad input.
    """
    from realfake.benchmarks.compare import (
        compare_history,
        format_comparison,
        parse_baseline,
        parse_threshold,
    )
    from realfake.benchmarks.history import history_path, load_records

    result = compare_history(load_records(history_path(out)), baseline=parse_baseline(baseline),
                             threshold=parse_threshold(threshold), run_id=run_id, pattern=pattern)
    if as_json:
        click.echo(json.dumps({
            "run_id": result.new_run.run_id, "status": result.status, "baseline": result.baseline_desc,
            "threshold": result.threshold, "warnings": result.warnings,
            "figures": [{"name": r.name, "unit": r.unit, "baseline": r.baseline.median if r.baseline else None,
                         "new": r.new, "ratio": r.ratio, "noise": r.noise, "verdict": r.verdict, "note": r.note}
                        for r in result.rows],
        }, indent=2))
    else:
        click.echo(format_comparison(result))
    if result.regressions:
        ctx.exit(1)


@bench.command("plot")
@out_option
@click.option("--figure", "pattern", default="*", show_default=True,
              help="Only figures whose name matches this glob, e.g. 'train/*/compiled'.")
def plot_cmd(out, pattern):
    """Write one PNG per figure of OUT/history.jsonl to OUT/plots/: median per run over time, IQR as error bars."""
    from realfake.benchmarks.history import history_path, load_records
    from realfake.benchmarks.plot import PLOTS_DIR, plot_history

    paths = plot_history(load_records(history_path(out)), out / PLOTS_DIR, pattern=pattern)
    for path in paths:
        click.echo(str(path))
    click.echo(f"wrote {len(paths)} plot(s) to {out / PLOTS_DIR}")


@bench.command("list")
def list_cmd():
    """List the suites and whether each can run here (and why not)."""
    from realfake.benchmarks.suites import SUITE_MODULES, SuiteUnavailable, load_suite

    for name in SUITE_MODULES:
        try:
            load_suite(name)
            click.echo(f"{name:<10} available")
        except SuiteUnavailable as exc:
            click.echo(f"{name:<10} {exc}")
