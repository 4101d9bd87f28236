"""`realfake engine build|list|show|promote`. The engines modules import torch, so they load inside the
commands, not for `realfake --help`."""
from __future__ import annotations

import json
from pathlib import Path

import click
from realfake.jobs.cli.options import JobCommand, as_arguments
from realfake.jobs.service.store import realfake_home
from realfake.jobs.service.tables import format_table


@click.group()
def engine():
    """Build inference engines from training runs, list and inspect them, and promote the one that
    `realfake score` uses when no --engine is given."""


@engine.command(cls=JobCommand, target="realfake.jobs.tasks.engine:run_engine_build", arguments=("run_dir",))
def build(**options):
    """Compile RUN_DIR's checkpoint into an engine directory: the artifact plus engine.json
    (architecture, image size, mean/std, threshold, backend, precision, batch range, versions, and
    parity against eager fp32 on the run's validation images). A build whose parity is worse than the
    precision's tolerance fails and writes nothing.

    \b
    Examples:
      realfake engine build runs/simple_cnn-1 --out engines_out/m1 --backend aot --threshold auto
      realfake engine build runs/resnet18-1 --out engines_out/r18-trt --backend tensorrt --precision fp16
    """
    from realfake.engines.backends.common import BackendCrash
    from realfake.jobs.tasks.engine import run_engine_build

    try:
        s = run_engine_build(**as_arguments(options))
    except BackendCrash as exc:  # the compiler's process died: its message says what to use instead
        raise click.ClickException(str(exc)) from exc
    parity = s["parity"]
    batch = s["batch"]
    click.echo(f"Engine {s['engine_id']} written to {s['engine_dir']} in {s['build_s']:.1f} s")
    click.echo(f"  backend    {s['backend']} ({s['backend_reason']}), {s['precision']}, {s['device']}, "
               f"batch {batch['min']}:{batch['opt']}:{batch['max']}")
    members = f", ensemble of {s['members']} runs" if s["members"] > 1 else ""
    members += ", flip TTA" if s["tta"] == "flip" else ""
    click.echo(f"  model      {s['model']} @ {s['image_size']} px{members}")
    click.echo(f"  threshold  {s['threshold']:.4f} ({describe_threshold(s['threshold_detail'])})")
    click.echo(f"  parity     max |dp| {parity['max_abs_diff_p']:.2e} (tolerance {parity['tolerance']:.0e}), "
               f"mean {parity['mean_abs_diff_p']:.2e}, label agreement {parity['label_agreement']:.4f} "
               f"on {parity['n_images']} validation images")
    if s.get("evidence"):
        click.echo(f"  gate       {describe_gate(s['evidence'])}")
    click.echo(f"Use it with: realfake score FOLDER --engine {s['engine_dir']}  "
               f"(or make it the default: realfake engine promote {s['engine_dir']})")


COLUMNS = ("promoted", "engine_id", "backend", "precision", "model", "image_size", "batch", "device", "threshold",
           "max_abs_diff_p", "label_agreement", "engine_dir")


def describe_threshold(how: dict) -> str:
    """How the threshold was chosen, with what it reached on the validation split."""
    if how["method"] not in ("eer", "target_fpr"):  # fixed: nothing was measured to choose it
        return how["method"]
    images = (f"{how['n_images']} validation images as saved and laundered" if how.get("over") == "with-laundered"
              else f"{how['n_images']} validation images")
    if how["method"] == "eer":
        return f"eer: equal error rate {how['eer']:.3f} on {images}"
    return (f"target_fpr {how['target_fpr']:g}: false positive rate {how['fpr']:.3f}, fakes caught "
            f"{how['tpr']:.3f} on {images}")


def describe_gate(evidence: dict) -> str:
    """The laundering gate in one line: which transforms of the family it decides `unknown` on, or why none."""
    from realfake.engines.evidence import MAX_REAL_CALLED_FAKE, MIN_AUC

    outcomes = evidence.get("outcomes") or {}
    erased = [spec for spec, outcome in outcomes.items() if outcome.get("erased")]
    if evidence.get("kind") != "laundering-gate":
        return f"none: every file is decided ({evidence.get('why', 'no gate fitted')})"
    share = f"{len(erased)} of {len(outcomes)}" if len(erased) < len(outcomes) else f"all {len(outcomes)}"
    return (f"`unknown` for files like those laundered by {share} transforms of the family, where the "
            f"engine's evidence was gone on validation (AUC < {MIN_AUC} or over {MAX_REAL_CALLED_FAKE:.0%} of "
            f"reals called fake); keeps {evidence['clean_coverage']:.0%} of the files as saved decided")


def _cell(key: str, value) -> str:
    if key == "promoted":
        return "*" if value else ""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2e}" if key == "max_abs_diff_p" else f"{value:.4f}"
    return str(value)


@engine.command("list")
@click.argument("engines_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
def list_(engines_dir, as_json):
    """Engine directories at or up to three levels below ENGINES_DIR (default: here), one row each;
    `*` marks the promoted engine, damaged ones show why."""
    from realfake.engines.registry import engine_rows

    rows = engine_rows(engines_dir, realfake_home())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no engines under {engines_dir}")
        return
    good = [r for r in rows if r["status"] == "ok"]
    if good:
        headers = ["", "id", "backend", "precision", "model", "px", "batch", "device", "threshold", "max |dp|",
                   "agreement", "directory"]
        click.echo(format_table(headers, [[_cell(k, r.get(k)) for k in COLUMNS] for r in good],
                                align_right=(5, 8, 9, 10)))
    for r in rows:
        if r["status"] != "ok":
            click.echo(f"damaged: {r['status']}")


@engine.command()
@click.argument("engine_dir", type=click.Path(file_okay=False, path_type=Path), required=False)
def show(engine_dir):
    """engine.json of ENGINE_DIR (default: the promoted engine), after checking the directory."""
    from realfake.engines.registry import promoted_engine
    from realfake.engines.schema import read_engine_meta

    meta = read_engine_meta(engine_dir if engine_dir is not None else promoted_engine(realfake_home()))
    click.echo(json.dumps(meta, indent=2))


@engine.command()
@click.argument("engine_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def promote(engine_dir):
    """Make ENGINE_DIR the engine `realfake score` uses when no --engine is given (recorded in
    $REALFAKE_HOME/promoted_engine.json; REALFAKE_HOME defaults to ~/.realfake)."""
    from realfake.engines.registry import promote_engine

    record = promote_engine(engine_dir, realfake_home())
    click.echo(f"Promoted engine {record['engine_id']} ({record['engine_dir']})")
