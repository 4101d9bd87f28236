"""History plots: one PNG per figure, its median per run over time with the recorded spread (IQR) as
error bars, one series per environment and mode (absolute figures from different machines are not one
line)."""
from __future__ import annotations

import datetime as dt
import fnmatch
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from realfake.benchmarks.history import group_runs
from realfake.pipelines.plotting import pyplot

PLOTS_DIR = "plots"


def plot_file_name(figure_name: str) -> str:
    """"train/simple_cnn@128/compiled" -> "train__simple_cnn@128__compiled.png"."""
    return re.sub(r"[^A-Za-z0-9@._-]", "_", figure_name.replace("/", "__")) + ".png"


def plot_history(records: Iterable[Mapping[str, Any]], out_dir: Path | str, *, pattern: str = "*") -> list[Path]:
    """Write `<out_dir>/<figure>.png` for every figure whose name matches the glob `pattern`."""
    plt = pyplot()
    import matplotlib.dates as mdates  # after pyplot(): matplotlib is imported on first use

    runs = group_runs(records)
    # figure name -> (env key, mode) -> [(date, median, spread)]
    series: dict[str, dict[tuple[str, str], list[tuple[dt.datetime, float, float]]]] = {}
    units: dict[str, tuple[str, bool]] = {}
    for run in runs:
        for name, record in run.figures.items():
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            when = dt.datetime.fromisoformat(record["date"])
            series.setdefault(name, {}).setdefault((run.env_key, run.mode), []).append(
                (when, float(record["median"]), float(record["spread"])))
            units[name] = (record["unit"], bool(record["higher_is_better"]))
    if not series:
        raise ValueError(f"no figure in the history matches {pattern!r}: run `realfake bench run` or widen --figure")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(series):
        unit, better_up = units[name]
        fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
        for (key, mode), points in sorted(series[name].items()):
            dates, medians, spreads = zip(*sorted(points), strict=True)
            # Error bars span the IQR, centred on the median.
            ax.errorbar(dates, medians, yerr=[s / 2 for s in spreads], marker="o", capsize=3,
                        label=f"{key} ({mode})")
        if unit == "x":  # a ratio: mark parity (compiled as fast as eager, DALI as fast as torchvision)
            ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
        ax.set_title(name)
        ax.set_ylabel(f"{unit} ({'higher' if better_up else 'lower'} is better)")
        ax.set_xlabel("run date (UTC)")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="lower left")
        path = out_dir / plot_file_name(name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
