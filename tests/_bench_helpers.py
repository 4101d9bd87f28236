"""A trivially cheap benchmark suite and synthetic histories for tests/test_bench.py.

`run` follows the suite interface (`run(quick, device) -> list[Figure]`), so the tests can register
this module in the suite registry and drive `realfake bench run` end to end in well under a second.
"""
from __future__ import annotations

from realfake.benchmarks.harness import Figure, measure_throughput, ratio_figure

ENV = {"cpu": "Test CPU", "cores": 2, "gpu": None, "device": "cpu", "torch": "2.0.0", "torchvision": "0.1",
       "dali": None, "python": "3.11.0", "torch_threads": 2, "git_commit": None, "git_dirty": None,
       "hostname": "test"}


def run(quick: bool, device: str) -> list[Figure]:
    data = list(range(2000))

    def small():
        sorted(data[:200], reverse=True)

    def large():
        sorted(data, reverse=True)

    figures = []
    for name, step in (("small", small), ("large", large)):
        m = measure_throughput(step, items_per_step=1, repeats=3, warmup=1, min_repeat_s=0.005)
        figures.append(Figure.from_samples("tiny", f"tiny/sort_{name}", m.samples, unit="call/s",
                                           params={"steps_per_repeat": m.steps_per_repeat}))
    figures.append(ratio_figure(figures[0], figures[1], "tiny/small_vs_large"))
    return figures


def record(run_id: str, date: str, name: str, median: float, spread: float = 0.0, *, unit: str = "img/s",
           higher_is_better: bool = True, env: dict | None = None, quick: bool = True,
           params: dict | None = None) -> dict:
    """One history line as `Figure.to_record` writes it."""
    fig = Figure(suite=name.split("/")[0], name=name, unit=unit, higher_is_better=higher_is_better,
                 median=median, spread=spread, repeats=5, samples=[], params=params or {})
    return fig.to_record(run_id=run_id, env=env or ENV, date=date, quick=quick)


def history(values: list[float], *, name: str = "train/m@128/eager", spread: float = 2.0, **kwargs) -> list[dict]:
    """One run per value, a day apart, all on ENV: the last is the run a compare judges."""
    return [record(f"run{i}", f"2025-01-{i + 1:02d}T00:00:00+00:00", name, v, spread, **kwargs)
            for i, v in enumerate(values)]
