"""`realfake sweep`: train and evaluate configurations over several seeds; mean +- std of the test metrics.

A sweep spec (TOML, or a preset by name; `realfake sweep --show-preset NAME` prints one to start from):

    description = "what the sweep asks"
    seeds = [0, 1, 2]                      # --seeds overrides
    [train]                                # `realfake train` options shared by every configuration
    image_size = 128
    [evaluate]                             # `realfake evaluate` options shared by every configuration
    tta = "none"
    [[configs]]
    name = "model1"                        # run directories are NAME-seedS
    label = "Report Model 1 (simple_cnn)"  # the table's row title
    train = { model = "simple_cnn", augment = false }
    evaluate = { tta = "flip" }            # optional
    pretrain = { epochs = 10 }             # optional: `realfake pretrain` first, then train with --weights

Keys are the Python names of the options (`batch_size`, not `--batch-size`). For every configuration
and seed the sweep runs exactly what the printed commands run (`run_pretrain`, `run_train`,
`run_evaluate` are the functions behind those commands), so each row of the table can be reproduced
by hand. Configurations whose training options are identical share their runs (e.g. the same model
evaluated with and without test-time augmentation).

OUT/ holds runs/NAME-seedS (run directories), pretrain/NAME-seedS.pt, evals/NAME-seedS.json (the
evaluation of each row and seed), results.json and results.md. Rerunning the same command resumes: finished
evaluations are kept, unfinished runs continue from their last checkpoint.

One module, though long: loading a spec, running its rows over seeds and writing the results table
share the row and seed naming that makes a rerun resume.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import statistics
import time
from pathlib import Path

from realfake.jobs.service.options import command_line, function_params
from realfake.jobs.service.params import InputPath, OutputPath
from realfake.jobs.service.spec import check_options
from realfake.jobs.tasks import sweep_presets
from realfake.jobs.tasks.evaluate import run_evaluate
from realfake.jobs.tasks.pretrain import run_pretrain
from realfake.jobs.tasks.train import run_train
from realfake.pipelines.manifest import manifest_sha256

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

# Options the sweep sets itself for each run.
_TRAIN_FIXED = ("data_dir", "seed", "out", "name", "resume", "progress")
_EVAL_FIXED = ("run_dir", "split", "progress")
_PRETRAIN_FIXED = ("data_dir", "out", "seed", "run_dir", "progress")
_EVAL_FROM_TRAIN = ("loader", "num_workers", "device")
GROUP_ORDER = ("easy", "mid", "hard", "real")
# What a sweep keeps of each laundered evaluation (evaluate --launder): one table row per transform.
LAUNDER_KEYS = ("roc_auc", "accuracy", "real_called_fake", "fakes_caught")
DONE_NAME = "sweep_done.json"


# ---------------------------------------------------------------------------------------------------
# Spec loading and checking


def load_spec(spec: Path | None = None, preset: str | None = None) -> dict:
    """The spec of a TOML file or a preset (exactly one), checked and normalized."""
    if (spec is None) == (preset is None):
        raise ValueError("give a sweep SPEC.toml or --preset NAME (one of them): presets are "
                         + ", ".join(sweep_presets.names()))
    if preset is not None:
        text, source, name = sweep_presets.text(preset), f"preset {preset}", preset
    else:
        path = Path(spec)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"sweep spec {path} not found: check the path") from None
        source, name = str(path), path.stem
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: invalid TOML ({exc}): fix the syntax") from None
    raw.setdefault("name", name)
    return normalize_spec(raw, source, base_dir=Path(spec).resolve().parent if spec is not None else None)


def normalize_spec(raw: dict, source: str = "spec", base_dir: Path | None = None) -> dict:
    """A raw sweep spec checked: its tables of train/evaluate/pretrain options are checked as job specs of
    those kinds are (`spec.check_options`); relative paths in them are relative to `base_dir`."""
    known = {"name", "description", "seeds", "train", "evaluate", "configs"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{source}: unknown key {sorted(unknown)[0]!r}: a sweep spec has {', '.join(sorted(known))}")
    configs = raw.get("configs")
    if not isinstance(configs, list) or not configs:
        raise ValueError(f"{source}: no [[configs]]: add at least one configuration table")
    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise ValueError(f"{source}: seeds must be a list of integers such as [0, 1, 2]")

    def check(kind, options, fixed, where):
        return check_options(kind, options, fixed=fixed, source=where, base_dir=base_dir)

    train_defaults = check("train", raw.get("train", {}), _TRAIN_FIXED, f"{source} [train]")
    eval_defaults = check("evaluate", raw.get("evaluate", {}), _EVAL_FIXED, f"{source} [evaluate]")
    out_configs, names = [], set()
    for i, config in enumerate(configs):
        where = f"{source} configs[{i}]"
        if not isinstance(config, dict) or not isinstance(config.get("name"), str) or not config["name"]:
            raise ValueError(f"{where}: every configuration needs a name = \"...\"")
        name = config["name"]
        if name in names or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"{where}: name {name!r} must be unique and use only letters, digits, '-', '_', '.'")
        names.add(name)
        extra = set(config) - {"name", "label", "train", "evaluate", "pretrain"}
        if extra:
            raise ValueError(f"{where}: unknown key {sorted(extra)[0]!r}: use name, label, train, evaluate, pretrain")
        if config.get("pretrain") is not None and "weights" in {**raw.get("train", {}), **config.get("train", {})}:
            raise ValueError(f"{where}: give either pretrain or train.weights, not both")
        train = {**train_defaults, **check("train", config.get("train", {}), _TRAIN_FIXED, f"{where}.train")}
        evaluate = {**eval_defaults, **check("evaluate", config.get("evaluate", {}), _EVAL_FIXED, f"{where}.evaluate")}
        # Evaluate with the loader and device the run trained with, unless told otherwise.
        for key in _EVAL_FROM_TRAIN:
            if key in train and key not in evaluate:
                evaluate[key] = train[key]
        pretrain = config.get("pretrain")
        if pretrain is not None:
            pretrain = check("pretrain", pretrain, _PRETRAIN_FIXED, f"{where}.pretrain")
        out_configs.append({"name": name, "label": config.get("label", name), "train": train,
                            "evaluate": evaluate, "pretrain": pretrain})
    return {"name": raw.get("name", "sweep"), "description": raw.get("description", ""), "seeds": seeds,
            "configs": out_configs}


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ValueError(f"--seeds {text!r} must be comma-separated integers such as 0,1,2") from None
    if not seeds:
        raise ValueError("--seeds is empty: give e.g. 0,1,2")
    return seeds


def parse_set(items: list[str] | None) -> dict:
    """--set KEY=VALUE overrides of train options; VALUE is read as TOML (true, 0.5, "gpu"), else a string."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r} must be KEY=VALUE, e.g. --set amp=true")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------------------------------------------
# Commands: the exact CLI line behind each run

SEED_VAR = "$SEED"


def _run_name(config: dict, seed: int | str) -> str:
    return f"{config['run']}-seed{seed}"


def config_commands(config: dict, data_dir: Path, out: Path, seed: int | str = SEED_VAR) -> dict:
    """The commands that reproduce one configuration at one seed (default: with a $SEED variable)."""
    name = _run_name(config, seed)
    commands = {}
    train = dict(config["train"])

    def line(command, function, arguments, values):
        return command_line(command, function_params(function), arguments, values, keep_in_shell=SEED_VAR)

    if config["pretrain"] is not None:
        weights = out / "pretrain" / f"{name}.pt"
        commands["pretrain"] = line("pretrain", run_pretrain, [str(data_dir)],
                                    {**config["pretrain"], "seed": seed, "out": str(weights)})
        train["weights"] = str(weights)
    commands["train"] = line("train", run_train, [str(data_dir)],
                             {**train, "seed": seed, "out": str(out / "runs"), "name": name})
    commands["evaluate"] = line("evaluate", run_evaluate, [str(out / "runs" / name)], config["evaluate"])
    return commands


# ---------------------------------------------------------------------------------------------------
# Aggregation and the table


def summarize(values: list[float | None]) -> dict:
    """mean, sample std (n - 1; 0 for one value), n, over the values that are not None."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def aggregate(runs: list[dict]) -> dict:
    groups = sorted({g for r in runs for g in (r.get("recall_per_group") or {})},
                    key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER), g))
    return {
        "roc_auc": summarize([r["roc_auc"] for r in runs]),
        "roc_auc_fakes_like_real": summarize([r.get("roc_auc_fakes_like_real") for r in runs]),
        "accuracy": summarize([r["accuracy"] for r in runs]),
        "balanced_accuracy": summarize([r.get("balanced_accuracy") for r in runs]),
        "eer": summarize([r.get("eer") for r in runs]),
        "threshold": summarize([r.get("threshold") for r in runs]),
        "recall_per_group": {g: summarize([(r.get("recall_per_group") or {}).get(g, {}).get("recall") for r in runs])
                             for g in groups},
        "train_seconds": summarize([r.get("train_seconds") for r in runs]),
        "real_called_fake": summarize([r.get("real_called_fake") for r in runs]),
        "fakes_caught": summarize([r.get("fakes_caught") for r in runs]),
        "launder": {spec: {key: summarize([(r.get("launder") or {}).get(spec, {}).get(key) for r in runs])
                           for key in LAUNDER_KEYS}
                    for spec in dict.fromkeys(s for r in runs for s in (r.get("launder") or {}))},
    }


def _pm(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "n/a"
    if stat["n"] == 1:  # one seed measures no spread: "± 0.000" would claim one
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _threshold_cell(config: dict) -> str:
    stat = config["summary"].get("threshold") or {"mean": None}
    if config["evaluate"].get("calibrate"):
        return "valid EER" + ("" if stat["mean"] is None else f" ({stat['mean']:.2f})")
    return f"{config['evaluate'].get('threshold', 0.5):.2f}"


def format_results_md(results: dict) -> str:
    configs = results["configs"]
    groups = []
    for c in configs:
        groups += [g for g in c["summary"]["recall_per_group"] if g not in groups]
    seeds = ",".join(str(s) for s in results["seeds"])
    lines = [f"# Sweep {results['name']}", ""]
    if results.get("description"):
        lines += [results["description"], ""]
    lines += [f"Data: `{results['data_dir']}` (manifest sha256 `{results['manifest_sha256'][:12]}`), test split, "
              f"seeds {seeds}; mean ± sample std over seeds. Recall per group = share of that group's test "
              f"images called correctly (fakes: caught; real: kept). Device: {results['device']}.", "",
              "Each row's command runs once per seed: `for SEED in " + " ".join(str(s) for s in results["seeds"])
              + "; do ...; done`.", ""]
    # AUC on the fakes encoded like some real image only (engines.metrics.fakes_by_encoding), where the
    # data has fakes that are not: what is left once the compression cue cannot help.
    cue = any(c["summary"].get("roc_auc_fakes_like_real", {}).get("n") for c in configs)
    header = ["configuration", "test AUC", *(["AUC, fakes encoded like reals"] if cue else []), "accuracy",
              *[f"recall {g}" for g in groups], "threshold", "seeds", "command"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = results.get("best")
    for c in configs:
        s = c["summary"]
        title = f"**{c['label']}**" if c["name"] == best else c["label"]
        command = " && ".join(c["commands"][k] for k in ("pretrain", "train", "evaluate") if k in c["commands"])
        row = [f"{title} (`{c['name']}`)", _pm(s["roc_auc"]),
               *([_pm(s.get("roc_auc_fakes_like_real") or {"mean": None})] if cue else []), _pm(s["accuracy"]),
               *[_pm(s["recall_per_group"][g]) if g in s["recall_per_group"] else "n/a" for g in groups],
               _threshold_cell(c), str(s["roc_auc"]["n"]), f"`{command}`"]
        lines.append("| " + " | ".join(row) + " |")
    if best:
        c = next(c for c in configs if c["name"] == best)
        lines += ["", f"Best by mean test AUC: **{c['label']}** (`{best}`), "
                      f"AUC {_pm(c['summary']['roc_auc'])}, accuracy {_pm(c['summary']['accuracy'])}:", "",
                  "```sh", "for SEED in " + " ".join(str(s) for s in results["seeds"]) + "; do"]
        lines += [f"  {c['commands'][k]}" for k in ("pretrain", "train", "evaluate") if k in c["commands"]]
        lines += ["done", "```"]
    laundered = [c for c in configs if c["summary"].get("launder")]
    if laundered:
        lines += ["", "Under laundering (evaluate --launder: the test split re-saved, resized or cropped, scored at "
                      "the same threshold; docs/robustness.md):", "",
                  "| configuration | transform | test AUC | accuracy | real called fake | fakes caught |",
                  "|---|---|---|---|---|---|"]
        for c in laundered:
            s = c["summary"]
            lines.append(f"| `{c['name']}` | none | {_pm(s['roc_auc'])} | {_pm(s['accuracy'])} | "
                         f"{_pm(s['real_called_fake'])} | {_pm(s['fakes_caught'])} |")
            for spec, row in s["launder"].items():
                lines.append(f"| `{c['name']}` | `{spec}` | {_pm(row['roc_auc'])} | {_pm(row['accuracy'])} | "
                             f"{_pm(row['real_called_fake'])} | {_pm(row['fakes_caught'])} |")
    lines += ["", "Per seed:", "", "| configuration | seed | test AUC | accuracy | best epoch | train s |",
              "|---|---|---|---|---|---|"]
    for c in configs:
        for r in c["runs"]:
            auc = "n/a" if r["roc_auc"] is None else f"{r['roc_auc']:.4f}"
            lines.append(f"| {c['name']} | {r['seed']} | {auc} | {r['accuracy']:.4f} | {r.get('best_epoch')} | "
                         f"{r.get('train_seconds', 0):.0f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Running


def _train_key(config: dict) -> str:
    blob = json.dumps({"train": config["train"], "pretrain": config["pretrain"]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _train_one(config: dict, seed: int, data_dir: Path, out: Path, progress: bool) -> dict:
    """Pretrain (if asked) and train one configuration at one seed, resuming what a previous sweep left."""
    name = _run_name(config, seed)
    run_dir = out / "runs" / name
    done = run_dir / DONE_NAME
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("train_key") == config["key"]:
            return record
        raise ValueError(f"{run_dir} was trained with other options than configuration {config['name']!r} now "
                         f"has: use another --out, or delete {run_dir}")
    start = time.perf_counter()
    train = dict(config["train"])
    if config["pretrain"] is not None:
        weights = out / "pretrain" / f"{name}.pt"
        if not weights.is_file():
            pre_run = out / "pretrain" / f"{name}.pt.run"
            if pre_run.exists():  # an interrupted pretraining: start it again
                shutil.rmtree(pre_run)
            run_pretrain(data_dir, weights, seed=seed, progress=progress, **config["pretrain"])
        train["weights"] = weights
    if (run_dir / "last.pt").is_file():
        summary = run_train(data_dir, resume=run_dir, epochs=train.get("epochs", 10), nproc=train.get("nproc", 1),
                            progress=progress)
    else:
        if run_dir.exists():  # died before its first checkpoint
            shutil.rmtree(run_dir)
        summary = run_train(data_dir, seed=seed, out=out / "runs", name=name, progress=progress, **train)
    record = {"train_key": config["key"], "run_dir": str(run_dir), "best_epoch": summary["best_epoch"],
              "epochs_run": summary["epochs_run"], "loader": summary["loader"], "device": summary["device"],
              "train_seconds": time.perf_counter() - start}
    done.write_text(json.dumps(record, indent=2) + "\n")
    return record


def _write_results(out: Path, results: dict) -> None:
    scored = [c for c in results["configs"] if c["summary"]["roc_auc"]["mean"] is not None]
    results["best"] = max(scored, key=lambda c: c["summary"]["roc_auc"]["mean"])["name"] if scored else None
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(format_results_md(results))


def run_sweep(
    out: OutputPath,
    data_dir: InputPath | None = None,
    spec: InputPath | None = None,
    preset: str | None = None,
    seeds: str | None = None,
    only: list[str] | None = None,
    device: str | None = None,
    cache: str | None = None,
    set_options: list[str] | None = None,
    dry_run: bool = False,
    finished_only: bool = False,
    progress: bool = True,
) -> dict:
    """Train and evaluate every configuration of a sweep spec over seeds; write results.json and results.md.

    Args:
        out: Sweep folder (runs/, pretrain/, evals/, results.json, results.md); rerunning resumes it.
        data_dir: Prepared data directory (from `realfake data prepare`) every configuration trains on.
        spec: Sweep spec TOML (see `realfake sweep --help`); or give preset.
        preset: A built-in spec (realfake.jobs.tasks.sweep_presets): cpu-short, jpeg-ghosts, pseudo-fakes,
            report-baselines, resolution.
        seeds: Comma-separated seeds, overriding the spec's (e.g. "0,1,2").
        only: Run only these configurations (names).
        device: Train and evaluate on this device (auto, cpu, cuda[:N]) in every configuration.
        cache: Decode cache of every configuration: none, memory or gpu.
        set_options: KEY=VALUE train options applied to every configuration (VALUE as TOML: true, 0.5, "x").
        dry_run: Only check the spec and write the commands (results.md lists them), train nothing.
        finished_only: Train nothing: tabulate the runs whose training finished (evaluating them if
            needed) and leave the others out, e.g. for a sweep stopped at a time limit.
    """
    if data_dir is None:
        raise ValueError("give the prepared data directory: realfake sweep --data DATA_DIR ...")
    data_dir, out = Path(data_dir).resolve(), Path(out).resolve()
    sweep = load_spec(Path(spec) if spec is not None else None, preset)
    seed_list = parse_seeds(seeds) if seeds else sweep["seeds"]
    overrides = parse_set(set_options)
    if device is not None:
        overrides["device"] = device
    if cache is not None:
        overrides["cache"] = cache
    configs = sweep["configs"]
    if only:
        missing = [n for n in only if n not in {c["name"] for c in configs}]
        if missing:
            raise ValueError(f"--only {missing[0]!r} is not a configuration of this sweep: choose from "
                             + ", ".join(c["name"] for c in configs))
        configs = [c for c in configs if c["name"] in only]
    overrides = check_options("train", overrides, fixed=_TRAIN_FIXED, source="--set/--device/--cache")
    sha = manifest_sha256(data_dir)  # also checks that DATA_DIR is prepared
    # Configurations with identical training share runs (named after the first of them).
    first_of: dict[str, str] = {}
    for config in configs:
        config["train"] = {**config["train"], **overrides}
        for key in _EVAL_FROM_TRAIN:
            if key in overrides:
                config["evaluate"][key] = overrides[key]
        if config["pretrain"] is not None:
            for key in ("device", "cache"):
                if key in overrides:
                    config["pretrain"][key] = overrides[key]
        config["key"] = _train_key(config)
        config["run"] = first_of.setdefault(config["key"], config["name"])
        config["commands"] = config_commands(config, data_dir, out)

    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({**sweep, "configs": configs, "seeds": seed_list,
                                                "data_dir": str(data_dir)}, indent=2, default=str) + "\n")
    results = {"name": sweep["name"], "description": sweep["description"], "data_dir": str(data_dir),
               "manifest_sha256": sha, "seeds": seed_list, "device": device or "auto", "dry_run": dry_run,
               "configs": []}
    total, finished = len(configs) * len(seed_list), 0
    for config in configs:
        runs = []
        for seed in seed_list:
            if dry_run:
                continue
            if finished_only and not (out / "runs" / _run_name(config, seed) / DONE_NAME).is_file():
                print(f"{config['name']} seed {seed}: training not finished, left out", flush=True)
                continue
            eval_path = out / "evals" / f"{config['name']}-seed{seed}.json"
            record = _train_one(config, seed, data_dir, out, progress)
            saved = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
            if saved.get("train_key") == config["key"] and saved.get("evaluate") == config["evaluate"]:
                row = saved
            else:
                start = time.perf_counter()
                summary = run_evaluate(record["run_dir"], split="test", progress=progress, **config["evaluate"])
                report = json.loads(Path(summary["report"]).with_suffix(".json").read_text())
                m = report["metrics"]
                row = {"config": config["name"], "seed": seed, "train_key": config["key"],
                       "run_dir": record["run_dir"], "device": record["device"], "threshold": m["threshold"],
                       "threshold_source": report.get("threshold_source", "given"),
                       "roc_auc": m["roc_auc"], "accuracy": m["accuracy"],
                       "roc_auc_fakes_like_real": (m.get("fakes_by_encoding") or {}).get(
                           "encoded like a real image", {}).get("roc_auc"),
                       "balanced_accuracy": m["balanced_accuracy"], "eer": m["eer"], "f1_fake": m["f1_fake"],
                       "recall_per_group": m.get("recall_per_group", {}), "n": m["n"],
                       "real_called_fake": m.get("real_called_fake"), "fakes_caught": m.get("fakes_caught"),
                       "launder": {spec: {key: row.get(key) for key in LAUNDER_KEYS}
                                   for spec, row in (m.get("launder") or {}).items()},
                       "best_epoch": record["best_epoch"], "train_seconds": record["train_seconds"],
                       "eval_seconds": time.perf_counter() - start, "evaluate": config["evaluate"]}
                eval_path.parent.mkdir(parents=True, exist_ok=True)
                eval_path.write_text(json.dumps(row, indent=2) + "\n")
            runs.append(row)
            finished += 1
            auc = "n/a" if row["roc_auc"] is None else f"{row['roc_auc']:.4f}"
            print(f"[{finished}/{total}] {config['name']} seed {seed}: test AUC {auc}, "
                  f"accuracy {row['accuracy']:.4f}", flush=True)
        results["configs"].append({
            "name": config["name"], "label": config["label"], "train": config["train"],
            "evaluate": config["evaluate"], "pretrain": config["pretrain"], "run": config["run"],
            "commands": config["commands"], "runs": runs, "summary": aggregate(runs)})
        devices = {r.get("device") for c in results["configs"] for r in c["runs"]} - {None}
        if devices:
            results["device"] = ", ".join(sorted(devices))
        _write_results(out, results)  # after every configuration: a long sweep stopped midway keeps its rows
    _write_results(out, results)
    return {"out": str(out), "results": str(out / "results.json"), "table": str(out / "results.md"),
            "best": results["best"], "configs": len(configs), "seeds": seed_list, "dry_run": dry_run}
