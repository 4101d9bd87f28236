"""Inference engines: every backend that runs here builds, loads again in a fresh process and matches
eager fp32; engine.json validation; the threshold; list/show/promote; TensorRT's pure parts."""
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _train_helpers import make_prepared
from click.testing import CliRunner
from realfake.engines import backends, devices, registry
from realfake.engines import build as build_module
from realfake.engines.backends import tensorrt as trt_backend
from realfake.engines.backends.common import BackendCrash
from realfake.engines.build import build_engine
from realfake.engines.runtime import load_engine
from realfake.engines.schema import BatchRange, EngineError, parse_batch, parse_threshold, read_engine_meta
from realfake.engines.trainer import load_run
from realfake.jobs.cli import main
from realfake.jobs.service.store import HOME_ENV, realfake_home
from realfake.jobs.tasks.train import run_train
from realfake.pipelines.provenance import sha256_file

IMAGE_SIZE = 32
BATCH = "1:4:16"  # small enough that the fresh-process check crosses max (20 images)
SIZES = (1, 3, 20)  # min, below opt, above max (split into 16 + 4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    data_dir = make_prepared(root, n_per_class=12, size=40)
    summary = run_train(data_dir, epochs=1, out=root / "runs", name="r", model="simple_cnn", image_size=IMAGE_SIZE,
                        batch_size=8, num_workers=0, loader="torch", progress=False)
    return Path(summary["run_dir"])


@pytest.fixture(scope="module")
def engines_root(tmp_path_factory):
    return tmp_path_factory.mktemp("built")


@pytest.fixture(scope="module")
def images():
    return torch.randn(max(SIZES), 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))


def p_eager(run_dir, images):
    model, _, _ = load_run(run_dir)
    with torch.inference_mode():
        return torch.softmax(model(images), 1)[:, 1]


_built = {}


def built(run_dir, engines_root, backend, precision, threshold="auto"):
    """Each (backend, precision) is built once per module: AOT builds cost ~20 s each on 2 cores."""
    key = (backend, precision, threshold)
    if key not in _built:
        out = engines_root / f"{backend}-{precision}-{threshold}"
        _built[key] = build_engine(run_dir, out, backend=backend, precision=precision, batch=BATCH,
                                   threshold=threshold, num_workers=0)
    return _built[key]


FRESH_PROCESS = textwrap.dedent("""
    import json, sys, torch
    from realfake.engines.runtime import load_engine
    images = torch.load(sys.argv[1])
    result = {}
    for path in sys.argv[2:]:
        engine = load_engine(path)
        result[path] = {"engine_id": engine.engine_id,
                        "p": {str(n): engine.predict(images[:n]).tolist() for n in (1, 3, 20)}}
    print(json.dumps(result))
""")


def predict_in_fresh_process(engine_dirs, images, tmp_path):
    images_file = tmp_path / "images.pt"
    torch.save(images, images_file)
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(images_file), *map(str, engine_dirs)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- options ---------------------------------------------------------------------------------------

def test_parse_batch_and_threshold():
    assert parse_batch("1:64:256") == BatchRange(1, 64, 256)
    assert parse_batch({"min": 2, "opt": 2, "max": 8}) == BatchRange(2, 2, 8)
    assert str(parse_batch((1, 4, 16))) == "1:4:16"
    for bad in ("64", "1:64", "0:1:2", "4:2:8", "1:a:8", "1:16:8"):
        with pytest.raises(ValueError, match="MIN"):
            parse_batch(bad)
    assert parse_threshold("auto") == "auto" and parse_threshold("0.3") == 0.3
    for bad in ("1.5", "-0.1", "half"):
        with pytest.raises(ValueError, match="threshold"):
            parse_threshold(bad)


def test_auto_backend_and_precision_rules():
    backend, why = backends.resolve_backend("auto", "cpu")
    best = next(name for name in ("aot", "compile", "eager")
                if backends.backend_module(name).unavailable_reason("cpu") is None)
    assert backend == best and "tensorrt" in why  # TensorRT passed over on a CPU, with the reason
    with pytest.raises(ValueError, match="tensorrt"):
        backends.resolve_backend("tensorrt", "cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        backends.resolve_backend("onnx", "cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        devices.check_precision("fp16", "cpu")


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch):
    assert devices.resolve_precision("fp32", "cpu") == ("fp32", "asked for")
    monkeypatch.setattr(devices, "cpu_has_bf16_units", lambda: True)
    assert devices.resolve_precision("auto", "cpu")[0] == "bf16"
    monkeypatch.setattr(devices, "cpu_has_bf16_units", lambda: False)
    precision, why = devices.resolve_precision("auto", "cpu")
    assert precision == "fp32" and "no bf16 units" in why


def test_engine_build_precision_auto_records_what_it_chose(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["engine", "build", str(run_dir), "--out", str(tmp_path / "e"), "--backend",
                                       "eager", "--precision", "auto", "--batch", "1:4:16", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "e" / "engine.json").read_text())
    expected = "bf16" if devices.cpu_has_bf16_units() else "fp32"
    assert meta["precision"] == expected and f", {expected}, cpu" in result.output
    assert meta["precision_choice"]["requested"] == "auto" and "auto:" in meta["precision_choice"]["reason"]


# --- build, load in a fresh process, parity --------------------------------------------------------

def test_eager_engine_json_and_threshold_auto_is_the_eer(run_dir, engines_root):
    from realfake.engines.metrics import equal_error_rate
    from realfake.pipelines.loaders import get_loader
    from realfake.pipelines.manifest import read_manifest

    engine_dir = built(run_dir, engines_root, "eager", "fp32")
    meta = json.loads((engine_dir / "engine.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert meta["architecture"] == "simple_cnn" and meta["image_size"] == IMAGE_SIZE
    assert meta["backend"] == "eager" and meta["precision"] == "fp32" and meta["channels_last"] is True
    assert meta["batch"] == {"min": 1, "opt": 4, "max": 16} and meta["device"] == "cpu"
    assert meta["mean"] == config["mean"] and meta["class_names"] == ["real", "fake"]
    assert meta["source"]["manifest_sha256"] == config["manifest_sha256"]
    assert meta["source"]["checkpoint_sha256"] == sha256_file(run_dir / "best.pt")
    assert meta["artifact"] == {"file": "model.pt", "sha256": sha256_file(engine_dir / "model.pt")}
    assert meta["versions"]["torch"] == torch.__version__ and len(meta["engine_id"]) == 12
    assert meta["parity"]["n_images"] == 4 and meta["parity"]["max_abs_diff_p"] <= 1e-4
    # the artifact is a plain state dict
    assert "fc2.weight" in torch.load(engine_dir / "model.pt", weights_only=True)["model"]

    # threshold auto = the EER threshold of the engine's own predictions on the valid split
    rows = read_manifest(Path(config["data_dir"]), "valid")
    engine = load_engine(engine_dir)
    p, y = [], []
    for batch in get_loader([r.path for r in rows], [r.label for r in rows], train=False, backend="torch",
                            image_size=IMAGE_SIZE, batch_size=3, num_workers=0):
        p.append(engine.predict(batch.images))
        y.append(batch.labels)
    eer, threshold = equal_error_rate(torch.cat(y).numpy(), torch.cat(p).numpy())
    assert meta["threshold_method"]["method"] == "eer"
    assert meta["threshold"] == pytest.approx(threshold) and meta["threshold_method"]["eer"] == pytest.approx(eer)
    assert engine.threshold == meta["threshold"] and engine.engine_id == meta["engine_id"]


@pytest.mark.slow
def test_every_cpu_backend_builds_reloads_in_a_fresh_process_and_matches_eager(run_dir, engines_root, images,
                                                                            tmp_path):
    # two AOT builds (fp32, bf16) in the whole file: each costs ~20 s on 2 cores
    cases = [("eager", "fp32"), ("eager", "bf16"), ("compile", "fp32"), ("aot", "fp32"), ("aot", "bf16")]
    dirs = {case: built(run_dir, engines_root, *case) for case in cases}
    reference = p_eager(run_dir, images)
    fresh = predict_in_fresh_process(list(dirs.values()), images, tmp_path)
    for (backend, precision), engine_dir in dirs.items():
        meta = read_engine_meta(engine_dir)
        assert meta["backend"] == backend and meta["precision"] == precision
        assert meta["parity"]["passed"] and meta["parity"]["max_abs_diff_p"] <= meta["parity"]["tolerance"]
        result = fresh[str(engine_dir)]
        assert result["engine_id"] == meta["engine_id"]
        tolerance = meta["parity"]["tolerance"]
        for n in SIZES:
            p = torch.tensor(result["p"][str(n)])
            assert p.shape == (n,), (backend, precision, n)
            assert torch.allclose(p, reference[:n], atol=tolerance, rtol=0), (backend, precision, n)
    # bf16 really runs in bf16: it differs from fp32, within its tolerance
    p_bf16 = torch.tensor(fresh[str(dirs["aot", "bf16"])]["p"]["20"])
    assert not torch.equal(p_bf16, reference)


def _child_that(monkeypatch, code: str) -> None:
    """The AOT build's child process replaced by `code` (to see what the parent makes of a crash)."""
    from realfake.engines.backends import aot

    monkeypatch.setattr(aot, "child_command", lambda program, package, *rest: [sys.executable, "-c", code, package])


def test_an_aot_build_that_crashes_or_fails_is_a_clear_error_and_leaves_nothing(run_dir, tmp_path, monkeypatch):
    model = load_run(run_dir)[0]
    build = dict(architecture="simple_cnn", image_size=IMAGE_SIZE, backend="aot", batch="1:4:8")
    _child_that(monkeypatch, "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(BackendCrash, match=r"AOTInductor crashed \(SIGSEGV\).*--backend compile"):
        build_module.build_engine_from_model(model, tmp_path / "crashed", **build)
    assert not (tmp_path / "crashed").exists()
    result = CliRunner().invoke(main, ["engine", "build", str(run_dir), "--out", str(tmp_path / "cli"), "--backend",
                                       "aot", "--batch", "1:4:8", "--device", "cpu"])
    assert result.exit_code == 1 and "Error: AOTInductor crashed (SIGSEGV)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    _child_that(monkeypatch, "import sys; print('inductor: no kernel for this op', file=sys.stderr); sys.exit(3)")
    with pytest.raises(RuntimeError, match="(?s)could not compile.*exit 3.*no kernel for this op"):
        build_module.build_engine_from_model(model, tmp_path / "failed", **build)
    assert not (tmp_path / "failed").exists()


def test_auto_moves_on_when_a_backend_build_crashes_and_says_why(run_dir, tmp_path, monkeypatch):
    from realfake.engines.backends import compiled

    # the package is half written when the child dies: it must not end up in the engine directory
    _child_that(monkeypatch, "import os, signal, sys; open(sys.argv[1], 'w').write('partial'); "
                             "os.kill(os.getpid(), signal.SIGSEGV)")
    monkeypatch.setattr(compiled, "unavailable_reason", lambda device: "skipped in this test (compiles for 20 s)")
    out = build_module.build_engine_from_model(load_run(run_dir)[0], tmp_path / "e", architecture="simple_cnn",
                                            image_size=IMAGE_SIZE, backend="auto", batch="1:4:8")
    meta = read_engine_meta(out)
    assert meta["backend"] == "eager" and meta["parity"]["passed"]
    reason = meta["backend_choice"]["reason"]
    assert "aot: its fp32 build crashed: AOTInductor crashed (SIGSEGV)" in reason and "compile: skipped" in reason
    assert sorted(p.name for p in out.iterdir()) == ["engine.json", "model.pt"]


def test_predict_pads_splits_and_checks_shapes(run_dir, engines_root, images):
    engine_dir = build_module.build_engine_from_model(
        load_run(run_dir)[0], engines_root / "eager-min2", architecture="simple_cnn", image_size=IMAGE_SIZE,
        backend="eager", batch="2:2:4")
    reference = p_eager(run_dir, images)
    with load_engine(engine_dir) as engine:
        assert engine.meta["parity"]["images"] == "64 random images"  # no run: parity on random images
        for n in (1, 3, 9):  # below min (padded), between, above max (split 4+4+1)
            assert torch.allclose(engine.predict(images[:n]), reference[:n], atol=1e-5)
        # smaller chunks (3+3+3), and a chunk size above max is held to max
        for chunk_size in (3, 100):
            assert torch.allclose(engine.predict(images[:9], chunk_size=chunk_size), reference[:9], atol=1e-5)
        assert engine.predict(images[:0]).shape == (0,)
        with pytest.raises(ValueError, match="built for 32x32"):
            engine.predict(torch.zeros(2, 3, 64, 64))
        with pytest.raises(ValueError, match="shape"):
            engine.predict(torch.zeros(3, 32, 32))


def test_parity_failure_writes_nothing(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(build_module.PARITY_TOLERANCE, "bf16", 0.0)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="fails parity against eager fp32"):
        build_engine(run_dir, out, backend="eager", precision="bf16", num_workers=0)
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_threshold_target_fpr_and_conflicts(run_dir, tmp_path, caplog):
    from realfake.engines.metrics import threshold_at_fpr

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.35, 0.8, 0.3, 0.6, 0.7, 0.9])
    value, how = build_module.choose_threshold("auto", 0.25, labels, p)
    assert value == threshold_at_fpr(labels, p, 0.25) and how["method"] == "target_fpr" and how["fpr"] <= 0.25
    assert how["tpr"] == np.mean(p[labels == 1] >= value) > 0
    # The top score shared by a real and a fake: under FPR 0.1 only "nothing is fake" is left, and it says so.
    tied = np.array([0.1, 0.2, 0.3, 0.9, 0.9, 0.9, 0.2, 0.3])
    with caplog.at_level(logging.WARNING, logger="realfake.engines.build"):
        value, how = build_module.choose_threshold("auto", 0.1, labels, tied)
    assert how["fpr"] == how["tpr"] == 0.0 and value > 0.9 and "calls nothing fake" in caplog.text
    with pytest.raises(ValueError, match="target-fpr"):
        build_engine(run_dir, tmp_path / "x", backend="eager", threshold="0.5", target_fpr=0.1)
    with pytest.raises(ValueError, match="both real and fake"):
        build_module.choose_threshold("auto", None, np.zeros(4), p[:4])


# --- damaged or mismatched engine directories ------------------------------------------------------

def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit(engine_dir, **changes):
    meta_file = engine_dir / "engine.json"
    meta = json.loads(meta_file.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            meta[key].update(value)
        else:
            meta[key] = value
    meta_file.write_text(json.dumps(meta))


def test_damaged_or_mismatched_engine_dirs_are_refused(run_dir, engines_root, tmp_path):
    eager = built(run_dir, engines_root, "eager", "fp32")

    missing = _copy(eager, tmp_path / "missing")
    (missing / "model.pt").unlink()
    with pytest.raises(EngineError, match=r"model.pt is missing: rebuild"):
        load_engine(missing)

    tampered = _copy(eager, tmp_path / "tampered")
    with open(tampered / "model.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(EngineError, match="damaged .*sha256"):
        load_engine(tampered)

    no_json = _copy(eager, tmp_path / "no_json")
    (no_json / "engine.json").unlink()
    with pytest.raises(EngineError, match="engine.json is missing"):
        load_engine(no_json)

    bad_json = _copy(eager, tmp_path / "bad_json")
    (bad_json / "engine.json").write_text("{not json")
    with pytest.raises(EngineError, match="not valid JSON"):
        load_engine(bad_json)

    unknown = _copy(eager, tmp_path / "unknown")
    _edit(unknown, backend="onnxruntime")
    with pytest.raises(EngineError, match="unknown backend 'onnxruntime'"):
        load_engine(unknown)

    future = _copy(eager, tmp_path / "future")
    _edit(future, format_version=99)
    with pytest.raises(EngineError, match="format version 99"):
        load_engine(future)

    edited = _copy(eager, tmp_path / "edited")
    _edit(edited, threshold=0.1)
    with pytest.raises(EngineError, match="edited after the build"):
        load_engine(edited)

    with pytest.raises(EngineError, match="built for 32 px images, not 128"):
        load_engine(eager, expected_image_size=128)
    with pytest.raises(EngineError, match="does not exist"):
        load_engine(tmp_path / "nowhere")

    # eager artifacts are plain weights: another torch version is fine
    other_torch = _copy(eager, tmp_path / "other_torch")
    _edit(other_torch, versions={"torch": "1.13.0"})
    assert load_engine(other_torch).engine_id == read_engine_meta(eager)["engine_id"]
    # each message is one line naming the file and the fix
    with pytest.raises(EngineError) as info:
        load_engine(missing)
    assert "\n" not in str(info.value) and str(missing) in str(info.value)


@pytest.mark.slow
def test_compiled_artifacts_refuse_another_torch_version(run_dir, engines_root, tmp_path):
    aot = _copy(built(run_dir, engines_root, "aot", "fp32"), tmp_path / "aot")
    assert load_engine(aot).backend == "aot"
    _edit(aot, versions={"torch": "2.3.0"})
    with pytest.raises(EngineError, match="built with torch 2.3.0.*rebuild"):
        load_engine(aot)


# --- CLI: build, promote, list, show ---------------------------------------------------------------

def test_cli_build_promote_list_show(run_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "engines" / "m1"
    result = runner.invoke(main, ["engine", "build", str(run_dir), "--out", str(out), "--backend", "eager",
                                  "--threshold", "0.4", "--batch", "1:8:32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "parity" in result.output and "threshold  0.4000 (fixed)" in result.output
    meta = read_engine_meta(out)
    assert meta["threshold"] == 0.4 and meta["batch"] == {"min": 1, "opt": 8, "max": 32}

    again = runner.invoke(main, ["engine", "build", str(run_dir), "--out", str(out), "--backend", "eager"])
    assert again.exit_code == 2 and "already exists" in again.output

    none = runner.invoke(main, ["engine", "show"])
    assert none.exit_code == 2 and "no engine promoted" in none.output
    with pytest.raises(ValueError, match="no engine promoted"):
        registry.promoted_engine(realfake_home())

    promoted = runner.invoke(main, ["engine", "promote", str(out)])
    assert promoted.exit_code == 0 and meta["engine_id"] in promoted.output
    assert registry.promoted_engine(realfake_home()) == out.resolve()
    shown = runner.invoke(main, ["engine", "show"])
    assert shown.exit_code == 0 and json.loads(shown.output)["engine_id"] == meta["engine_id"]

    broken = _copy(out, tmp_path / "engines" / "broken")
    (broken / "model.pt").unlink()
    listed = runner.invoke(main, ["engine", "list", str(tmp_path / "engines")])
    assert listed.exit_code == 0, listed.output
    line = next(row for row in listed.output.splitlines() if meta["engine_id"] in row)
    assert line.startswith("*") and "eager" in line and "simple_cnn" in line
    assert "damaged:" in listed.output and "model.pt is missing" in listed.output
    rows = json.loads(runner.invoke(main, ["engine", "list", str(tmp_path / "engines"), "--json"]).output)
    assert sorted(r["status"] == "ok" for r in rows) == [False, True]

    bad = runner.invoke(main, ["engine", "build", str(run_dir), "--out", str(tmp_path / "b"), "--batch", "8:1:2"])
    assert bad.exit_code == 2 and "MIN <= OPT <= MAX" in bad.output


# --- TensorRT: input and precision handling without TensorRT ---------------------------------------

def test_tensorrt_input_spec_and_precisions():
    batch = BatchRange(1, 64, 256)
    spec = trt_backend.input_spec(batch, (3, 128, 128), "fp16")
    assert spec == {"min_shape": (1, 3, 128, 128), "opt_shape": (64, 3, 128, 128), "max_shape": (256, 3, 128, 128),
                    "dtype": torch.float16}
    assert trt_backend.input_spec(batch, (3, 224, 224), "fp32")["dtype"] == torch.float32
    assert trt_backend.enabled_precisions("fp32") == {torch.float32}
    assert trt_backend.enabled_precisions("fp16") == {torch.float16}
    assert trt_backend.enabled_precisions("bf16") == {torch.bfloat16}
    with pytest.raises(ValueError, match="unknown precision"):
        trt_backend.enabled_precisions("int8")

    fake_trt = SimpleNamespace(Input=lambda **kw: ("Input", kw))
    kwargs = trt_backend.compile_kwargs(fake_trt, batch, (3, 128, 128), "bf16")
    assert kwargs["ir"] == "dynamo" and kwargs["enabled_precisions"] == {torch.bfloat16}
    assert kwargs["inputs"] == [("Input", trt_backend.input_spec(batch, (3, 128, 128), "bf16"))]


def test_tensorrt_save_arguments_follow_the_installed_release():
    example = torch.zeros(64, 3, 8, 8)

    def save_current(module, file_path="", *, output_format="exported_program", inputs=None, arg_inputs=None,
                     retrace=True, dynamic_shapes=None, **kwargs):
        pass

    def save_2_4(module, file_path="", *, output_format="exported_program", inputs=None, retrace=False):
        pass

    current = trt_backend.save_kwargs(save_current, example, BatchRange(1, 64, 256))
    assert current["output_format"] == "exported_program" and current["retrace"] is True
    assert current["arg_inputs"] == [example] and "inputs" not in current
    dim = current["dynamic_shapes"]["x"][0]
    assert (dim.min, dim.max) == (1, 256)
    old = trt_backend.save_kwargs(save_2_4, example, BatchRange(1, 64, 256))
    assert old == {"output_format": "exported_program", "inputs": [example], "retrace": False}
    static = trt_backend.save_kwargs(save_current, example, BatchRange(64, 64, 64))
    assert "dynamic_shapes" not in static


@pytest.mark.skipif(trt_backend.unavailable_reason("cpu") != trt_backend.INSTALL_HINT,
                    reason="torch_tensorrt is installed here")
def test_tensorrt_absent_says_how_to_install():
    with pytest.raises(ValueError, match=r"pip install 'realfake\[tensorrt\]'"):
        trt_backend.import_torch_tensorrt()


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_builds_reloads_and_matches_eager(run_dir, tmp_path, images):
    pytest.importorskip("torch_tensorrt", reason="Torch-TensorRT is not installed (NVIDIA's index only)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA device")
    dirs = [build_engine(run_dir, tmp_path / f"trt-{p}", backend="tensorrt", precision=p, batch=BATCH,
                         device="cuda", num_workers=0) for p in ("fp32", "fp16")]
    reference = p_eager(run_dir, images)
    fresh = predict_in_fresh_process(dirs, images, tmp_path)
    for engine_dir in dirs:
        tolerance = read_engine_meta(engine_dir)["parity"]["tolerance"]
        for n in SIZES:
            assert torch.allclose(torch.tensor(fresh[str(engine_dir)]["p"][str(n)]), reference[:n], atol=tolerance)


@pytest.mark.gpu
def test_fp16_engines_on_the_gpu_reload_in_a_fresh_process(run_dir, tmp_path, images):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    dirs = [build_engine(run_dir, tmp_path / f"{backend}-fp16", backend=backend, precision="fp16", batch=BATCH,
                         device="cuda", num_workers=0) for backend in ("eager", "compile", "aot")]
    reference = p_eager(run_dir, images)
    fresh = predict_in_fresh_process(dirs, images, tmp_path)
    for engine_dir in dirs:
        meta = read_engine_meta(engine_dir)
        assert meta["device"] == "cuda" and meta["parity"]["tolerance"] == build_module.PARITY_TOLERANCE["fp16"]
        for n in SIZES:
            p = torch.tensor(fresh[str(engine_dir)]["p"][str(n)])
            assert torch.allclose(p, reference[:n], atol=meta["parity"]["tolerance"]), (meta["backend"], n)
    with load_engine(dirs[0]) as engine:
        assert engine.device.type == "cuda" and engine.predict(images.cuda()).device.type == "cpu"


def test_parity_allows_the_one_flip_at_an_auto_threshold():
    # An auto threshold is a validation score: that image flips on any rounding, even on 6 images.
    p_eager = torch.tensor([0.1, 0.2, 0.6055, 0.7, 0.8, 0.9])
    p_engine = p_eager.clone()
    p_engine[2] += 5e-7
    threshold = float(p_engine[2])
    parity = build_module.measure_parity(p_eager, p_engine, threshold, "fp32", "cpu")
    assert parity["label_flips"] == 1 and parity["passed"]
    p_engine[3] = 0.4  # a second flip (and a real difference) fails
    assert not build_module.measure_parity(p_eager, p_engine, threshold, "fp32", "cpu")["passed"]
    p_engine[3] = 0.7
    p_eager[1], p_engine[1] = threshold - 1e-6, threshold + 1e-6  # a second flip, within the tolerance
    parity = build_module.measure_parity(p_eager, p_engine, threshold, "fp32", "cpu")
    assert parity["max_abs_diff_p"] < 1e-4 and parity["label_flips"] == 2 and not parity["passed"]
