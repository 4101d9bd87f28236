"""The two kinds of JPEG ghost maps (pil, dct) in the product: recorded by runs and engines, computed by
every reader as recorded, cached apart; files the dct maps do not handle; the score-ghosts benchmark."""
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import make_ghost_image, make_ghost_prepared
from PIL import Image
from realfake.pipelines import jpeg_ghosts
from realfake.pipelines.ghost_inputs import file_maps, prepare_file
from realfake.pipelines.loaders import get_loader, manifest_loader_options
from realfake.pipelines.manifest import read_manifest

SIZE = 96


def _ghost_files(folder: Path, n: int, seed: int = 0, **save) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        path = folder / f"{'fake' if i % 2 else 'real'}_{i:02d}.jpg"
        make_ghost_image(path, i % 2, rng, SIZE)
        if save:  # re-saved with other settings (4:4:4, another quality)
            with Image.open(path) as image:
                image.convert("RGB").save(path, format="JPEG", **save)
        files.append(str(path))
    return files


def _cmyk_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).convert("CMYK").save(path, "JPEG",
                                                                                                 quality=90)
    return path


@pytest.fixture(scope="module")
def dct_run(tmp_path_factory):
    """ghost_cnn trained 2 epochs on dct maps, half of each epoch laundered (8 a class: 6 train, 1 valid, 1 test)."""
    from realfake.jobs.tasks.train import run_train

    root = tmp_path_factory.mktemp("dct")
    data_dir = make_ghost_prepared(root, n_per_class=8)
    summary = run_train(data_dir, model="ghost_cnn", image_size=SIZE, epochs=2, batch_size=4, ghost_maps="dct",
                        launder=0.5, out=root / "runs", name="dct", num_workers=0, progress=False)
    return Path(summary["run_dir"]), data_dir


@pytest.fixture(scope="module")
def dct_engine(dct_run, tmp_path_factory):
    from realfake.engines.build import build_engine

    run_dir, _ = dct_run
    return build_engine(run_dir, tmp_path_factory.mktemp("engines") / "dct", backend="eager", threshold="auto",
                        evidence=False, num_workers=0, batch=(1, 8, 64))


# --------------------------------------------------------------------------- recorded

def test_the_kind_and_the_laundering_are_recorded_with_the_run_and_the_engine(dct_run, dct_engine):
    from realfake.engines.runtime import load_engine

    run_dir, data_dir = dct_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["ghost_maps"] == config["args"]["ghost_maps"] == "dct"
    assert config["launder"] == config["args"]["launder"] == 0.5
    assert config["loader"] == "jpeg-ghosts-dct-memory"
    with load_engine(dct_engine) as engine:
        assert engine.meta["ghost_maps"] == engine.ghost_maps == "dct"
    # the run's maps went to the dct cache, not the pil one
    assert len(list(jpeg_ghosts.cache_folder(data_dir, SIZE, "dct").glob("*.npy"))) == 14  # train + valid
    assert not list(jpeg_ghosts.cache_folder(data_dir, SIZE, "pil").glob("*.npy"))


def test_engines_without_the_field_read_pil_maps_and_keep_their_id(dct_engine, tmp_path):
    import shutil

    from realfake.engines.schema import ENGINE_JSON, EngineError, compute_engine_id, read_engine_meta

    old = tmp_path / "old"
    shutil.copytree(dct_engine, old)
    meta = json.loads((old / ENGINE_JSON).read_text())
    del meta["ghost_maps"]  # an engine built before the field: its id hashed without it
    meta["engine_id"] = compute_engine_id(meta)
    (old / ENGINE_JSON).write_text(json.dumps(meta))
    from realfake.engines.runtime import load_engine

    with load_engine(old) as engine:
        assert engine.ghost_maps == "pil" and engine.engine_id == meta["engine_id"] != read_engine_meta(dct_engine)["engine_id"]
    meta["ghost_maps"] = "jpeg2000"
    meta["engine_id"] = compute_engine_id(meta)
    (old / ENGINE_JSON).write_text(json.dumps(meta))
    with pytest.raises(EngineError, match="unknown ghost maps 'jpeg2000'"):
        read_engine_meta(old)


# --------------------------------------------------------------------------- read as recorded

def test_a_dct_engine_scores_what_its_eager_model_gives_on_dct_maps(dct_run, dct_engine, tmp_path):
    from realfake.engines.trainer import load_run
    from realfake.jobs.tasks.score import run_score

    run_dir, _ = dct_run
    files = _ghost_files(tmp_path / "folder", 6, seed=3)
    summary = run_score([str(tmp_path / "folder")], tmp_path / "scores.csv", engine=dct_engine, loader="torch",
                        num_workers=1, progress=False)
    assert summary["ghost_maps"] == "dct" and summary["scored"] == 6 and summary["loader"] == "jpeg-ghosts-dct"
    scored = {Path(r["path"]).name: float(r["p_fake"]) for r in csv.DictReader(open(summary["out"]))}
    model = load_run(run_dir)[0]
    for kind in ("dct", "pil"):
        maps = torch.stack([torch.from_numpy(file_maps(f, SIZE, kind)) for f in files])
        with torch.no_grad():
            p = torch.softmax(model(maps), 1)[:, 1].tolist()
        diff = max(abs(scored[Path(f).name] - q) for f, q in zip(files, p, strict=True))
        if kind == "dct":
            assert diff < 1e-5
        else:  # the pil maps of the same files would score otherwise: the check above can fail
            assert diff > 1e-4


def test_a_pil_engine_reads_pil_maps_with_either_decoder(tmp_path):
    from realfake.engines.build import build_engine_from_model
    from realfake.jobs.tasks.score import run_score
    from realfake.models import build_model

    files = _ghost_files(tmp_path / "folder", 4, seed=4)
    torch.manual_seed(0)
    model = build_model("ghost_cnn", image_size=SIZE).eval()
    with torch.no_grad():
        model.fc.weight.mul_(50)  # a model whose p_fake moves with its input
    engine = build_engine_from_model(model, tmp_path / "pil", architecture="ghost_cnn", image_size=SIZE,
                                     backend="eager", batch=(1, 8, 64))
    assert json.loads((engine / "engine.json").read_text())["ghost_maps"] == "pil"
    summary = run_score([str(tmp_path / "folder")], tmp_path / "s.csv", engine=engine, num_workers=0, progress=False)
    assert summary["ghost_maps"] == "pil" and summary["loader"] == "jpeg-ghosts"
    scored = {Path(r["path"]).name: float(r["p_fake"]) for r in csv.DictReader(open(summary["out"]))}
    for kind, close in (("pil", True), ("dct", False)):
        maps = torch.stack([torch.from_numpy(file_maps(f, SIZE, kind)) for f in files])
        with torch.no_grad():
            p = torch.softmax(model(maps), 1)[:, 1].tolist()
        assert (max(abs(scored[Path(f).name] - q) for f, q in zip(files, p, strict=True)) < 1e-5) == close, kind
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'realfake[dali]')")
    # With DALI decoding, the pil maps are computed from its pixels (DALI's CPU decoder gives PIL's RGB): the same scores.
    dali = run_score([str(tmp_path / "folder")], tmp_path / "d.csv", engine=engine, loader="dali", num_workers=1,
                     progress=False)
    assert dali["loader"] == "dali-cpu-ghosts-pil" and dali["scored"] == len(files)
    by_dali = {Path(r["path"]).name: float(r["p_fake"]) for r in csv.DictReader(open(dali["out"]))}
    assert by_dali.keys() == scored.keys()
    assert max(abs(by_dali[k] - scored[k]) for k in scored) < 1e-6
    with pytest.raises(ValueError, match="ghost_maps='dct' applies to ghost-map models only"):
        build_engine_from_model(build_model("simple_cnn", image_size=32), tmp_path / "px", architecture="simple_cnn",
                                image_size=32, backend="eager", ghost_maps="dct")


def test_evaluate_and_explain_read_the_runs_kind(dct_run, dct_engine, tmp_path):
    from realfake.engines.explain import load_explainer
    from realfake.engines.trainer import load_run
    from realfake.jobs.tasks.evaluate import run_evaluate

    run_dir, data_dir = dct_run
    run_evaluate(run_dir, split="test", num_workers=0, progress=False)
    report = json.loads((run_dir / "report.json").read_text())
    model = load_run(run_dir)[0]
    for row in report["predictions"]:
        with torch.no_grad():
            p = torch.softmax(model(torch.from_numpy(file_maps(row["path"], SIZE, "dct"))[None]), 1)[0, 1]
        assert row["p_fake"] == pytest.approx(float(p), abs=2e-3)  # the cache keeps maps as float16
    explainer = load_explainer(dct_engine)
    assert explainer.ghost_maps == "dct"
    rows = read_manifest(data_dir, "test")
    batch = next(iter(explainer.loader([r.path for r in rows], num_workers=0)))
    expected = torch.stack([torch.from_numpy(file_maps(r.path, SIZE, "dct")) for r in rows])
    assert torch.allclose(batch.images, expected, atol=1e-5)


def test_caches_of_the_two_kinds_never_mix(tmp_path):
    data_dir = make_ghost_prepared(tmp_path, n_per_class=2)
    rows = read_manifest(data_dir, "train")
    paths = [r.path for r in rows]
    assert jpeg_ghosts.cache_folder(data_dir, SIZE, "pil") != jpeg_ghosts.cache_folder(data_dir, SIZE, "dct")
    assert jpeg_ghosts.cache_folder(data_dir, SIZE, "pil").name == "jpeg-ghosts-v1-96px"  # as before the kinds
    with pytest.raises(ValueError, match="unknown kind of ghost maps 'png'"):
        jpeg_ghosts.cache_folder(data_dir, SIZE, "png")
    for kind in ("dct", "pil", "dct", "pil"):  # the second round reads what the first wrote
        options = manifest_loader_options("ghosts", data_dir, SIZE, rows, kind)
        assert all(p.parent == jpeg_ghosts.cache_folder(data_dir, SIZE, kind) for p in options["cache_paths"])
        batch = next(iter(get_loader(paths, None, train=False, image_size=SIZE, batch_size=8, num_workers=0,
                                     **options)))
        expected = torch.stack([torch.from_numpy(file_maps(p, SIZE, kind)) for p in paths])
        assert torch.allclose(batch.images, expected, atol=2e-2), kind  # float16 in the cache
        assert all(p.is_file() for p in options["cache_paths"])


# --------------------------------------------------------------------------- files the dct maps do not take

def test_a_file_the_dct_maps_do_not_handle_gets_the_reference_counted(tmp_path, caplog):
    good = _ghost_files(tmp_path / "folder", 2, seed=6)
    cmyk = str(_cmyk_jpeg(tmp_path / "folder" / "cmyk.jpg"))
    prepared = prepare_file(cmyk, SIZE, "dct")
    assert prepared.item is None and prepared.fallback == "CMYK components"
    files = [*good, cmyk]
    with caplog.at_level("WARNING"):
        loader = get_loader(files, None, train=False, input="ghosts", ghost_maps="dct", image_size=SIZE, batch_size=8,
                            num_workers=0)
        (batch,) = list(loader)
    assert batch.fallbacks == ((2, "CMYK components"),) and loader.fallbacks == 1
    assert "cmyk.jpg: CMYK components: its dct ghost maps come from the PIL reference" in caplog.text
    assert torch.allclose(batch.images[2], torch.from_numpy(jpeg_ghosts.ghost_maps(cmyk, SIZE)), atol=1e-5)


def test_scoring_counts_the_files_given_reference_maps(dct_engine, tmp_path):
    from realfake.jobs.tasks.score import run_score

    _ghost_files(tmp_path / "folder", 2, seed=7)
    _cmyk_jpeg(tmp_path / "folder" / "cmyk.jpg")
    summary = run_score([str(tmp_path / "folder")], tmp_path / "s.csv", engine=dct_engine, loader="torch",
                        num_workers=0, progress=False)
    assert summary["scored"] == 3 and summary["reference_maps"] == 1


# --------------------------------------------------------------------------- the benchmark

def test_score_ghosts_suite_reports_both_kinds_and_their_ratio(tmp_path, monkeypatch):
    from realfake.benchmarks import suite_score_ghosts, suites

    assert suites.SUITE_MODULES["score-ghosts"] == "realfake.benchmarks.suite_score_ghosts"
    monkeypatch.setenv("REALFAKE_BENCH_CACHE", str(tmp_path / "engines"))
    files = _ghost_files(tmp_path / "files", 6, seed=8)
    figures = {f.name: f for f in suite_score_ghosts.run(quick=True, device="cpu", files=files, repeats=1,
                                                          image_size=SIZE, backend="eager")}
    prefix = f"score-ghosts/e2e@{SIZE}/ghost_cnn"
    assert figures[f"{prefix}/pil"].median > 0 and figures[f"{prefix}/dct"].median > 0
    ratio = figures[f"{prefix}/dct_vs_pil"]
    assert ratio.unit == "x" and ratio.median == pytest.approx(figures[f"{prefix}/dct"].median
                                                                / figures[f"{prefix}/pil"].median)
    assert {f"score-ghosts/parts@{SIZE}/{part}" for part in ("decode", "dct-maps", "pil-maps", "model")} <= set(figures)
    assert figures[f"{prefix}/dct"].params["ghost_maps"] == "dct"


def test_bytes_in_memory_give_the_maps_of_the_file(tmp_path):
    (path,) = _ghost_files(tmp_path / "f", 1, seed=9)
    data = Path(path).read_bytes()
    for kind in ("pil", "dct"):
        assert np.array_equal(file_maps("named-only.jpg", SIZE, kind, data=data), file_maps(path, SIZE, kind))
    with pytest.raises(Exception, match="named-only.jpg: truncated"):
        file_maps("named-only.jpg", SIZE, "dct", data=data[:len(data) // 2])
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "PNG")
    with pytest.raises(Exception, match="in-memory.png: not a JPEG"):
        file_maps("in-memory.png", SIZE, "dct", data=buf.getvalue())
