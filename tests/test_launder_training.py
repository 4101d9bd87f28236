"""Training-time laundering (--launder P): each epoch a share P of the training images, real and fake,
replaced by a fresh laundered copy drawn per (seed, epoch, index); and the --cache gpu ghost loader,
whose code the CPU runs here."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import make_ghost_image, make_ghost_prepared, make_prepared
from realfake.pipelines import launder
from realfake.pipelines.ghost_inputs import file_maps
from realfake.pipelines.loaders import get_loader

SIZE = 96


def _ghost_files(folder: Path, n: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        path = folder / f"{i:02d}.jpg"
        make_ghost_image(path, i % 2, rng, SIZE)
        files.append(str(path))
    return files


def test_the_draw_is_a_pure_function_of_seed_epoch_and_index():
    drawn = [launder.drawn(3, 2, i, 0.5) for i in range(50)]
    assert drawn == [launder.drawn(3, 2, i, 0.5) for i in range(50)]
    assert drawn != [launder.drawn(3, 1, i, 0.5) for i in range(50)]  # another epoch, other items
    assert drawn != [launder.drawn(4, 2, i, 0.5) for i in range(50)]
    # the coin does not move the transform: a chosen item gets draw's own
    assert all(t == launder.draw(3, 2, i) for i, t in enumerate(drawn) if t is not None)
    assert launder.drawn(3, 2, 7, 0.0) is None and launder.drawn(3, 2, 7, 1.0) == launder.draw(3, 2, 7)
    with pytest.raises(ValueError, match="between 0 and 1"):
        launder.drawn(0, 0, 0, 1.5)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_the_share_laundered_is_p_over_many_items(p):
    n = 4000
    share = np.mean([launder.drawn(0, 1, i, p) is not None for i in range(n)])
    assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / n)  # 4 standard errors


def test_ghost_training_batches_launder_their_share_with_labels_unchanged(tmp_path):
    files = _ghost_files(tmp_path / "f", 12)
    labels = [i % 2 for i in range(12)]

    def epoch(p, n):
        loader = get_loader(files, labels, train=True, input="ghosts", ghost_maps="dct", image_size=SIZE,
                            batch_size=4, seed=2, num_workers=0, progress=False, launder=p)
        loader.set_epoch(n)
        return list(loader), loader

    clean, _ = epoch(0.0, 1)
    laundered, loader = epoch(0.5, 1)
    again, _ = epoch(0.5, 1)
    chosen = {i for i in range(12) if launder.drawn(2, 1, i, 0.5) is not None}
    assert loader.laundered == len(chosen) and 0 < len(chosen) < 12
    for a, b, c in zip(clean, laundered, again, strict=True):
        assert torch.equal(a.indices, b.indices) and torch.equal(b.labels, torch.tensor(labels)[b.indices])
        assert torch.equal(b.images, c.images)  # the same epoch draws the same
        for row, index in enumerate(b.indices.tolist()):
            if index in chosen:  # the laundered copy's own maps
                data = launder.launder_file(files[index], launder.drawn(2, 1, index, 0.5))
                assert torch.allclose(b.images[row], torch.from_numpy(file_maps(files[index], SIZE, "dct", data=data)))
            else:
                assert torch.equal(a.images[row], b.images[row])
    other, _ = epoch(0.5, 2)
    assert {i for i in range(12) if launder.drawn(2, 2, i, 0.5) is not None} != chosen


def test_sharded_ghost_training_launders_each_process_share_as_one_process_would(tmp_path):
    from realfake.pipelines.spec import AugmentSpec

    files = _ghost_files(tmp_path / "f", 12)
    labels = [i % 2 for i in range(12)]

    def shard(shard_id, num_shards, p):
        loader = get_loader(files, labels, train=True, input="ghosts", ghost_maps="dct", image_size=SIZE,
                            batch_size=2, seed=2, num_workers=0, progress=False, launder=p,
                            augment=AugmentSpec() if p else None, shard_id=shard_id, num_shards=num_shards)
        loader.set_epoch(1)
        return [(index, images, label) for batch in loader
                for index, images, label in zip(batch.indices.tolist(), batch.images, batch.labels.tolist(), strict=True)]

    clean = {index: images for index, images, _ in shard(0, 1, 0.0)}  # no flips, no laundering
    parts = [shard(0, 2, 0.5), shard(1, 2, 0.5)]
    seen = [index for part in parts for index, _, _ in part]
    assert len(seen) == len(set(seen)) == 12  # disjoint shares that cover the epoch
    chosen = {i for i in range(12) if launder.drawn(2, 1, i, 0.5) is not None}
    assert 0 < len(chosen) < 12
    flipped = 0
    for index, images, label in (item for part in parts for item in part):
        assert label == labels[index]
        expected = clean[index]
        if index in chosen:  # the laundered copy drawn for (seed, epoch, index), whichever process reads it
            data = launder.launder_file(files[index], launder.drawn(2, 1, index, 0.5))
            expected = torch.from_numpy(file_maps(files[index], SIZE, "dct", data=data))
        assert torch.allclose(images, expected) or torch.allclose(images, expected.flip(-1)), index
        flipped += not torch.allclose(images, expected)
    assert 0 < flipped < 12


def test_ghost_runs_resume_exactly_with_laundering(tmp_path):
    from realfake.jobs.tasks.train import run_train

    data_dir = make_ghost_prepared(tmp_path / "data", n_per_class=8)
    options = dict(model="ghost_cnn", image_size=SIZE, batch_size=4, ghost_maps="dct", launder=0.5, ghost_shift=1,
                   num_workers=0, progress=False)
    run_train(data_dir, epochs=2, out=tmp_path, name="straight", **options)
    run_train(data_dir, epochs=1, out=tmp_path, name="split", **options)
    run_train(data_dir, epochs=2, resume=tmp_path / "split", progress=False)
    a, b = (torch.load(tmp_path / name / "last.pt", weights_only=True)["model"] for name in ("straight", "split"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    config = json.loads((tmp_path / "split" / "config.json").read_text())
    assert config["args"]["launder"] == 0.5 and config["ghost_maps"] == "dct"


def test_pixel_models_launder_the_bytes_before_the_torchvision_loader_decodes_them(tmp_path):
    data_dir = make_prepared(tmp_path / "data", n_per_class=6, size=48)
    from realfake.pipelines.manifest import read_manifest

    rows = read_manifest(data_dir, "train")
    files, labels = [r.path for r in rows], [r.label for r in rows]

    def images(p):
        loader = get_loader(files, labels, train=True, image_size=32, batch_size=len(files), seed=1, num_workers=0,
                            launder=p, backend="auto" if p else "torch")  # auto with --launder: torchvision
        loader.set_epoch(3)
        (batch,) = list(loader)
        assert loader.backend == "torch"
        return batch

    clean, laundered, again = images(0.0), images(0.5), images(0.5)
    assert torch.equal(laundered.images, again.images) and torch.equal(clean.indices, laundered.indices)
    chosen = {i for i in range(len(files)) if launder.drawn(1, 3, i, 0.5) is not None}
    assert 0 < len(chosen) < len(files)
    for row, index in enumerate(clean.indices.tolist()):
        assert torch.equal(clean.images[row], laundered.images[row]) == (index not in chosen), index
    for refused in (dict(backend="dali"), dict(cache="memory")):
        with pytest.raises(ValueError, match="--launder on pixel models"):
            get_loader(files, labels, train=True, image_size=32, batch_size=4, launder=0.5, **refused)
    with pytest.raises(ValueError, match="training loaders only"):
        get_loader(files, labels, train=False, image_size=32, launder=0.5)


@pytest.mark.parametrize(("options", "message"), [
    (dict(model="ghost_cnn", launder=1.5), "--launder 1.5 must be between 0 and 1"),
    (dict(model="simple_cnn", launder=0.5, loader="dali"), "--launder on pixel models"),
    (dict(model="simple_cnn", launder=0.5, cache="memory"), "--launder on pixel models"),
])
def test_bad_launder_options_are_refused_before_any_data_is_read(tmp_path, options, message):
    from realfake.jobs.tasks.train import run_train

    with pytest.raises(ValueError, match=message):
        run_train(tmp_path / "nowhere", out=tmp_path, progress=False, **options)


# --------------------------------------------------------------------------- --cache gpu (run on the CPU)

@pytest.mark.parametrize("kind", ["dct", "pil"])
def test_the_device_ghost_loader_serves_the_in_memory_loaders_batches(tmp_path, kind):
    from realfake.pipelines.ghost_device import DeviceGhostLoader

    files = _ghost_files(tmp_path / "f", 10, seed=1)
    labels = [i % 2 for i in range(10)]
    regions = [(1, 0, 0, 1) if i % 2 else None for i in range(10)]
    common = dict(train=True, image_size=SIZE, batch_size=4, seed=5, flip=True, shift=2, num_workers=0,
                  regions=regions, launder=0.5, kind=kind)
    memory = get_loader(files, labels, input="ghosts", ghost_maps=kind, augment=object(), ghost_shift=2, seed=5,
                        train=True, image_size=SIZE, batch_size=4, num_workers=0, progress=False, regions=regions,
                        launder=0.5)
    device = DeviceGhostLoader(files, labels, device="cpu", progress=False, **common)
    assert len(device) == len(memory) == 2 and device.backend == f"jpeg-ghosts-{kind}-device"
    for epoch in (0, 1):
        memory.set_epoch(epoch)
        device.set_epoch(epoch)
        for a, b in zip(memory, device, strict=True):
            assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.regions.nan_to_num(-1), b.regions.nan_to_num(-1))  # eyes swapped alike
            assert torch.allclose(a.images, b.images, atol=2e-2)  # the in-memory maps are float16
        assert device.laundered == memory.laundered > 0


@pytest.mark.parametrize(("kind", "fallbacks"), [("dct", 1), ("pil", 0)])
def test_the_device_ghost_loader_counts_only_dct_files_given_reference_maps(tmp_path, kind, fallbacks):
    from PIL import Image
    from realfake.pipelines import jpeg_ghosts
    from realfake.pipelines.ghost_device import DeviceGhostLoader

    files = _ghost_files(tmp_path / "f", 3, seed=2)
    Image.new("CMYK", (SIZE, SIZE), (10, 200, 30, 0)).save(tmp_path / "cmyk.jpg")  # the device maps leave it alone
    files.append(str(tmp_path / "cmyk.jpg"))
    loader = DeviceGhostLoader(files, [0, 1, 0, 1], train=False, image_size=SIZE, batch_size=4, num_workers=0,
                               device="cpu", progress=False, kind=kind)
    assert len(loader.reference) == 1 and loader.fallbacks == fallbacks  # a pil file's reference maps are its own
    batch = next(iter(loader))
    torch.testing.assert_close(batch.images[3], torch.from_numpy(jpeg_ghosts.ghost_maps(files[3], SIZE)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: --cache gpu computes the maps there")
@pytest.mark.parametrize("kind", ["dct", "pil"])
def test_ghost_training_with_cache_gpu_runs_on_the_gpu(tmp_path, kind):
    from realfake.jobs.tasks.train import run_train

    data_dir = make_ghost_prepared(tmp_path / "data", n_per_class=8)
    summary = run_train(data_dir, model="ghost_cnn", image_size=SIZE, epochs=2, batch_size=4, ghost_maps=kind,
                        cache="gpu", launder=0.5, device="cuda", num_workers=2, out=tmp_path, progress=False)
    assert summary["loader"] == f"jpeg-ghosts-{kind}-gpu" and summary["epochs_run"] == 2
