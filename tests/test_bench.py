"""The benchmark harness: statistics, history, compare on synthetic histories, plots, the suite
registry, and a smoke run of `realfake bench` on a trivially cheap suite. No timing assertions."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import _bench_helpers as helpers
import pytest
from click.testing import CliRunner
from realfake.benchmarks import suites
from realfake.benchmarks.compare import (
    IMPROVEMENT,
    MISSING,
    NEW,
    NOISE,
    OK,
    REGRESSION,
    compare_history,
    format_comparison,
    judge,
    parse_baseline,
    parse_threshold,
)
from realfake.benchmarks.harness import (
    Figure,
    capture_env,
    env_key,
    figures_table,
    measure_throughput,
    median_and_spread,
    ratio_figure,
)
from realfake.benchmarks.history import append_records, group_runs, history_path, load_records
from realfake.benchmarks.plot import plot_history
from realfake.benchmarks.suites import run_bench
from realfake.jobs.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- harness -------------------------------------------------------------------------------------

def test_median_and_spread_is_robust_to_one_outlier():
    assert median_and_spread([1, 2, 3, 4, 100]) == (3, 2.0)  # IQR = Q3 (4) - Q1 (2)
    assert median_and_spread([7.5]) == (7.5, 0.0)
    with pytest.raises(ValueError, match="empty"):
        median_and_spread([])


def test_ratio_figure_divides_medians_and_propagates_spread():
    num = Figure.from_samples("s", "s/a", [190, 200, 210])
    den = Figure.from_samples("s", "s/b", [95, 100, 105])
    ratio = ratio_figure(num, den, "s/a_vs_b")
    assert ratio.median == pytest.approx(2.0)
    assert ratio.spread == pytest.approx(2.0 * (0.05 ** 2 + 0.05 ** 2) ** 0.5)  # IQRs 10 and 5: 5% each
    assert (ratio.unit, ratio.ratio_to, ratio.params["numerator"]) == ("x", "s/b", "s/a")


def test_measure_throughput_warms_up_then_repeats_equal_rounds():
    calls = []
    m = measure_throughput(lambda: calls.append(1), items_per_step=4, repeats=3, warmup=2, min_repeat_s=0.0)
    assert m.steps_per_repeat == 1
    assert len(calls) == 2 + 3 * 1
    assert len(m.samples) == 3 and all(s > 0 for s in m.samples)
    with pytest.raises(ValueError):
        measure_throughput(lambda: None, items_per_step=1, repeats=0)


def test_capture_env_names_the_machine_and_libraries():
    env = capture_env("cpu")
    for key in ("cpu", "cores", "gpu", "device", "torch", "torchvision", "dali", "python", "git_commit"):
        assert key in env
    assert env["device"] == "cpu" and env["cores"] >= 1
    json.dumps(env)
    # The key separates devices and torch versions, not commits.
    assert env_key(env) != env_key({**env, "device": "cuda"})
    assert env_key(env) != env_key({**env, "torch": "0.0"})
    assert env_key(env) == env_key({**env, "git_commit": "abc", "hostname": "other"})


def test_figures_table_lists_every_figure():
    figs = helpers.run(quick=True, device="cpu")
    table = figures_table(figs)
    for fig in figs:
        assert fig.name in table
    assert "IQR" in table.splitlines()[0]


# --- history -------------------------------------------------------------------------------------

def test_history_round_trip_and_grouping(tmp_path):
    path = history_path(tmp_path)
    records = helpers.history([100, 90]) + [helpers.record("run0", "2025-01-01T00:00:05+00:00", "train/x", 3.0)]
    assert append_records(path, records) == 3
    loaded = load_records(path)
    assert loaded == json.loads(json.dumps(records))
    runs = group_runs(loaded)
    assert [r.run_id for r in runs] == ["run0", "run1"]
    assert set(runs[0].figures) == {"train/m@128/eager", "train/x"}


def test_history_names_bad_lines_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="realfake bench run"):
        load_records(tmp_path / "history.jsonl")
    path = tmp_path / "history.jsonl"
    append_records(path, helpers.history([100]))
    with path.open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(ValueError, match=r"history.jsonl:2 is not valid JSON"):
        load_records(path)
    path.write_text('{"run_id": "x"}\n')
    with pytest.raises(ValueError, match=r":1 is not a benchmark record \(missing name"):
        load_records(path)


# --- compare -------------------------------------------------------------------------------------

def _verdict(records, **kwargs):
    result = compare_history(records, **kwargs)
    return result, {row.name: row.verdict for row in result.rows}


def test_compare_flags_a_regression_past_threshold_and_noise():
    result, verdicts = _verdict(helpers.history([100, 101, 99, 70]))
    assert verdicts == {"train/m@128/eager": REGRESSION}
    assert result.status == REGRESSION
    assert result.rows[0].ratio == pytest.approx(0.70)
    text = format_comparison(result)
    assert "FAIL" in text and "train/m@128/eager" in text and "0.700" in text


def test_compare_passes_an_improvement_and_a_change_within_threshold():
    result, verdicts = _verdict(helpers.history([100, 101, 99, 130]))
    assert verdicts == {"train/m@128/eager": IMPROVEMENT} and result.status == OK
    result, verdicts = _verdict(helpers.history([100, 101, 99, 95]))
    assert verdicts == {"train/m@128/eager": OK} and result.status == OK
    assert "OK: no figure regressed" in format_comparison(result)


def test_compare_does_not_flag_a_change_inside_the_noise_band():
    # 15% worse is past a 10% threshold, but the runs' own IQR is 30% of the value.
    result, verdicts = _verdict(helpers.history([100, 100, 85], spread=30.0))
    assert verdicts == {"train/m@128/eager": NOISE} and result.status == OK
    # The same change with tight spreads is a regression.
    _, verdicts = _verdict(helpers.history([100, 100, 85], spread=1.0))
    assert verdicts == {"train/m@128/eager": REGRESSION}


def test_compare_counts_run_to_run_drift_as_noise():
    # Each run reports a tiny IQR, but the run medians themselves scatter by +-20%.
    result, verdicts = _verdict(helpers.history([120, 80, 120, 80, 100, 85], spread=0.5))
    assert verdicts == {"train/m@128/eager": NOISE}


def test_compare_respects_lower_is_better_units():
    kw = {"name": "train/m@128/compile_s", "unit": "s", "higher_is_better": False, "spread": 0.1}
    _, verdicts = _verdict(helpers.history([10, 10, 13], **kw))
    assert verdicts == {"train/m@128/compile_s": REGRESSION}
    _, verdicts = _verdict(helpers.history([10, 10, 7], **kw))
    assert verdicts == {"train/m@128/compile_s": IMPROVEMENT}


def test_compare_threshold_is_configurable():
    _, verdicts = _verdict(helpers.history([100, 100, 85], spread=1.0), threshold=0.2)
    assert verdicts == {"train/m@128/eager": OK}


def test_compare_without_baseline_says_so():
    result = compare_history(helpers.history([100]))
    assert result.status == "no-baseline" and not result.regressions
    assert "no baseline yet" in format_comparison(result)
    # Runs on another machine or in another mode are no baseline either.
    other_env = helpers.history([100], env={**helpers.ENV, "cpu": "Other CPU"})
    new = [helpers.record("new", "2025-02-01T00:00:00+00:00", "train/m@128/eager", 50)]
    assert compare_history(other_env + new).status == "no-baseline"
    full = helpers.history([100], quick=False)
    assert compare_history(full + new).status == "no-baseline"


def test_compare_last_k_takes_the_median_of_recent_runs():
    values = [40, 40, 40, 100, 100, 40, 100, 95]
    # last-3 -> runs 100, 40, 100 -> median 100: 95 is within 10%.
    result, verdicts = _verdict(helpers.history(values, spread=1.0), baseline=3)
    assert verdicts == {"train/m@128/eager": OK}
    assert result.rows[0].baseline.runs == 3 and result.rows[0].baseline.median == 100
    # last-1 -> only the run at 40 just before it.
    _, verdicts = _verdict(helpers.history(values[:-2] + [95], spread=1.0), baseline=1)
    assert verdicts == {"train/m@128/eager": IMPROVEMENT}


def test_compare_reports_new_and_missing_figures_without_failing():
    old = helpers.history([100, 100], name="train/a")
    new = [helpers.record("run9", "2025-02-01T00:00:00+00:00", "train/b", 5.0)]
    result, verdicts = _verdict(old + new)
    assert verdicts == {"train/b": NEW, "train/a": MISSING}
    assert result.status == "no-baseline"
    both = old + [helpers.record("run9", "2025-02-01T00:00:00+00:00", n, 100.0) for n in ("train/a", "train/b")]
    result, verdicts = _verdict(both)
    assert verdicts == {"train/a": OK, "train/b": NEW} and result.status == OK


def test_compare_can_keep_only_matching_figures():
    records = helpers.history([100, 100, 60], spread=1.0) + helpers.history(
        [2.0, 2.0, 2.0], name="train/m@128/compiled_vs_eager", unit="x", spread=0.01)
    assert compare_history(records).status == REGRESSION
    result, verdicts = _verdict(records, pattern="*_vs_*")
    assert verdicts == {"train/m@128/compiled_vs_eager": OK} and result.status == OK
    with pytest.raises(ValueError, match="no figure in the history matches"):
        compare_history(records, pattern="pipelines/*")


def test_compare_notes_changed_params():
    records = helpers.history([100, 100], params={"batch_size": 8, "steps_per_repeat": 3})
    records.append(helpers.record("run9", "2025-02-01T00:00:00+00:00", "train/m@128/eager", 100,
                                  params={"batch_size": 16, "steps_per_repeat": 7}))
    result = compare_history(records)
    assert result.rows[0].note == "params differ: batch_size"


def test_compare_against_a_baseline_file(tmp_path):
    baseline_file = tmp_path / "baseline.jsonl"
    append_records(baseline_file, [helpers.record("base", "2024-12-01T00:00:00+00:00", "train/m@128/eager", 100, 1)])
    history = helpers.history([50, 71], spread=1.0)  # the history's own runs are ignored
    result, verdicts = _verdict(history, baseline=baseline_file)
    assert verdicts == {"train/m@128/eager": REGRESSION}
    assert "run base of" in result.baseline_desc
    assert len(result.warnings) == 1 and "holds 1 run(s)" in result.warnings[0]
    # A baseline from another machine is used, with a warning.
    append_records(other := tmp_path / "other.jsonl", [helpers.record(
        "base2", "2024-12-01T00:00:00+00:00", "train/m@128/eager", 70, 1, env={**helpers.ENV, "cores": 16})])
    result, verdicts = _verdict(history, baseline=other)
    assert verdicts == {"train/m@128/eager": OK} and "another environment" in result.warnings[0]


def test_compare_warns_while_the_baseline_is_short():
    assert any("holds 2 run(s)" in w for w in compare_history(helpers.history([100, 100, 100])).warnings)
    assert compare_history(helpers.history([100, 100, 100, 100])).warnings == []


def test_judge_and_parsers():
    assert judge(100, 0, 89, 0, higher_is_better=True, threshold=0.1) == REGRESSION
    assert judge(100, 0, 91, 0, higher_is_better=True, threshold=0.1) == OK
    assert parse_threshold("10%") == pytest.approx(0.10)
    assert parse_threshold("0.05") == pytest.approx(0.05)
    for bad in ("abc", "150%", "0", "-5%"):
        with pytest.raises(ValueError, match="threshold"):
            parse_threshold(bad)
    assert parse_baseline("last-3") == 3
    with pytest.raises(ValueError, match="last-1"):
        parse_baseline("last-0")
    with pytest.raises(FileNotFoundError, match="baseline file"):
        parse_baseline("no/such/file.jsonl")


def _write_history(tmp_path, records):
    append_records(history_path(tmp_path), records)
    return tmp_path


def test_cli_compare_exit_codes(tmp_path):
    runner = CliRunner()
    regressed = _write_history(tmp_path / "a", helpers.history([100, 100, 100, 70], spread=1.0))
    res = runner.invoke(main, ["bench", "compare", "--out", str(regressed)])
    assert res.exit_code == 1, res.output
    assert "REGRESSION" in res.output and "FAIL" in res.output

    fine = _write_history(tmp_path / "b", helpers.history([100, 100, 100, 98], spread=1.0))
    res = runner.invoke(main, ["bench", "compare", "--out", str(fine), "--threshold", "5%"])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output
    # The same history fails at a 1% threshold.
    res = runner.invoke(main, ["bench", "compare", "--out", str(fine), "--threshold", "1%", "--json"])
    assert res.exit_code == 1 and json.loads(res.output)["status"] == REGRESSION

    first = _write_history(tmp_path / "c", helpers.history([100]))
    res = runner.invoke(main, ["bench", "compare", "--out", str(first)])
    assert res.exit_code == 0 and "no baseline yet" in res.output

    res = runner.invoke(main, ["bench", "compare", "--out", str(fine), "--threshold", "lots"])
    assert res.exit_code == 2 and res.output.startswith("error: threshold 'lots'")
    res = runner.invoke(main, ["bench", "compare", "--out", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no benchmark history" in res.output


# --- plot ----------------------------------------------------------------------------------------

def test_plot_writes_one_png_per_figure(tmp_path):
    records = helpers.history([100, 90, 95]) + helpers.history([5, 6, 5.5], name="train/m@128/compile_s", unit="s",
                                                               higher_is_better=False)
    records += helpers.history([80, 82], env={**helpers.ENV, "cpu": "Other CPU"})  # a second series
    paths = plot_history(records, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["train__m@128__compile_s.png", "train__m@128__eager.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert len(plot_history(records, tmp_path / "only", pattern="*/compile_s")) == 1
    with pytest.raises(ValueError, match="no figure"):
        plot_history(records, tmp_path / "none", pattern="pipelines/*")


# --- registry and smoke run ----------------------------------------------------------------------

@pytest.fixture
def tiny_registry(monkeypatch):
    monkeypatch.setattr(suites, "SUITE_MODULES", {
        "tiny": "_bench_helpers",
        "ghost": "realfake.benchmarks.suite_that_does_not_exist",
    })


def test_registry_skips_missing_suites_in_all_but_not_when_named(tiny_registry, caplog):
    with caplog.at_level(logging.WARNING):
        selected, skipped = suites.select_suites(["all"])
    assert list(selected) == ["tiny"]
    assert skipped["ghost"].startswith("suite ghost not available: No module named")
    assert "suite ghost not available" in caplog.text
    with pytest.raises(suites.SuiteUnavailable, match="suite ghost not available"):
        suites.select_suites(["ghost"])
    with pytest.raises(ValueError, match="unknown benchmark suite 'nope'"):
        suites.select_suites(["tiny,nope"])
    assert suites.parse_suite_names(["tiny,ghost", "tiny"]) == ["tiny", "ghost"]


def test_smoke_bench_run_compare_plot(tiny_registry, tmp_path):
    runner = CliRunner()
    out = tmp_path / "results"
    for _ in range(2):
        res = runner.invoke(main, ["bench", "run", "--suite", "all", "--out", str(out), "--device", "cpu"])
        assert res.exit_code == 0, res.output
    assert "tiny/sort_small" in res.output and "tiny/small_vs_large" in res.output

    records = load_records(history_path(out))
    assert len(records) == 2 * 3
    assert len({r["run_id"] for r in records}) == 2
    for r in records:
        assert r["suite"] == "tiny" and r["quick"] is True and r["median"] > 0
        assert r["env"]["device"] == "cpu" and "torch" in r["env"] and r["date"].endswith("+00:00")
    ratio = next(r for r in records if r["name"] == "tiny/small_vs_large")
    assert ratio["unit"] == "x" and ratio["ratio_to"] == "tiny/sort_large"

    res = runner.invoke(main, ["bench", "compare", "--out", str(out)])
    assert res.exit_code in (0, 1), res.output  # real timings: a regression is possible, a crash is not
    assert "median of the last 1 quick run(s)" in res.output and "tiny/sort_large" in res.output

    res = runner.invoke(main, ["bench", "plot", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(list((out / "plots").glob("*.png"))) == 3


def test_run_bench_job_function_returns_json(tiny_registry, tmp_path):
    summary = run_bench(suites=["tiny"], quick=False, out=tmp_path, device="cpu")
    json.dumps(summary)
    assert summary["suites"] == ["tiny"] and summary["skipped"] == {} and summary["quick"] is False
    assert [f["name"] for f in summary["figures"]] == ["tiny/sort_small", "tiny/sort_large", "tiny/small_vs_large"]
    assert load_records(summary["history"])[0]["quick"] is False
    with pytest.raises(ValueError, match="suite ghost not available"):
        run_bench(suites=["ghost"], out=tmp_path, device="cpu")


def test_bench_command_module_does_not_import_torch():
    code = "import sys, realfake.jobs.cli.bench; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_train_suite_smoke_eager_tiny():
    pytest.importorskip("realfake.models", reason="the model zoo (realfake.models) is not written yet")
    from realfake.benchmarks import suite_train

    figures = suite_train.run(quick=True, device="cpu", models=["simple_cnn"], image_size=32, batch_size=2,
                              repeats=2, modes=("eager",))
    assert [f.name for f in figures] == ["train/simple_cnn@32/eager"]
    fig = figures[0]
    assert fig.unit == "img/s" and fig.repeats == 2 and fig.median > 0
    assert fig.params["batch_size"] == 2 and fig.params["image_size"] == 32
    with pytest.raises(ValueError, match="unknown train-suite mode"):
        suite_train.run(quick=True, device="cpu", modes=("turbo",))
