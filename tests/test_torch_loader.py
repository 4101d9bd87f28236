"""The torchvision backend: preprocessing, exactly-once, shards, bad files, augmentation on train only."""
import numpy as np
import pytest
import torch
from _train_helpers import make_image, make_images
from PIL import Image
from realfake.pipelines.loaders import get_loader
from realfake.pipelines.pixel_loaders import resolve_backend
from realfake.pipelines.spec import MEAN, STD, AugmentSpec


@pytest.fixture()
def files(tmp_path):
    return make_images(tmp_path, 23)


def load(files, **kw):
    kw = {"train": False, "backend": "torch", "image_size": 32, "batch_size": 8, "num_workers": 0, **kw}
    return get_loader(files, [i % 2 for i in range(len(files))], **kw)


def test_eval_sees_every_file_once_in_order(files):
    loader = load(files)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(23))
    assert batches[0].images.shape == (8, 3, 32, 32) and batches[-1].images.shape[0] == 7
    assert torch.cat([b.labels for b in batches]).tolist() == [i % 2 for i in range(23)]


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_cover_every_file_once(files, num_shards):
    seen = []
    for shard in range(num_shards):
        seen += [i for b in load(files, shard_id=shard, num_shards=num_shards) for i in b.indices.tolist()]
    assert sorted(seen) == list(range(23))


def test_preprocessing_is_resize_then_normalize(files):
    batch = next(iter(load(files[:1])))
    image = Image.open(files[0]).convert("RGB").resize((32, 32), Image.BILINEAR)
    expected = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
                - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.allclose(batch.images[0], expected, atol=1e-5)


@pytest.mark.parametrize("draft", [False, True])
def test_cpu_eval_batches_travel_as_uint8_and_come_out_bit_identical(files, draft):
    from realfake.pipelines.images import load_rgb
    from realfake.pipelines.torch_loader import build_transform

    loader = load(files, draft=draft, num_workers=1)
    assert loader.uint8 and not load(files, train=True).uint8 and not load(files, device="cuda").uint8
    images = torch.cat([b.images for b in loader])
    draft_size = (32, 32) if draft else None
    expected = torch.stack([build_transform(32, None)(load_rgb(f, draft_size=draft_size)) for f in files])
    assert images.dtype == torch.float32 and torch.equal(images, expected)


def test_bad_file_is_recorded_and_the_rest_delivered(files, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(Image.open(files[0]).tobytes()[:100])
    batch = next(iter(load([files[0], str(bad), files[1]])))
    assert batch.indices.tolist() == [0, 2]
    assert len(batch.errors) == 1 and batch.errors[0][0] == 1
    only_bad = next(iter(load([str(bad)])))  # no image: an empty batch, not a broadcast of the mean
    assert only_bad.images.numel() == 0 and len(only_bad.errors) == 1


@pytest.mark.parametrize("mode", ["L", "CMYK", "P"])
def test_any_mode_comes_out_rgb(tmp_path, mode):
    path = tmp_path / ("x.png" if mode == "P" else "x.jpg")
    make_image(path, 0, np.random.default_rng(1), size=40, mode=mode)
    assert next(iter(load([str(path)]))).images.shape == (1, 3, 32, 32)


def test_augmentation_only_in_train_and_reproducible_per_epoch(files):
    plain = torch.cat([b.images for b in load(files)])
    again = torch.cat([b.images for b in load(files)])
    assert torch.equal(plain, again)  # eval: no randomness at all

    def epoch_images(epoch):
        loader = load(files, train=True, augment=AugmentSpec(), batch_size=23)
        loader.set_epoch(epoch)
        batch = next(iter(loader))
        return batch.images[batch.indices.argsort()]

    aug1, aug1_again, aug2 = epoch_images(1), epoch_images(1), epoch_images(2)
    assert torch.equal(aug1, aug1_again)  # a pure function of (seed, epoch)
    assert not torch.allclose(aug1, plain, atol=1e-3)
    assert not torch.allclose(aug1, aug2, atol=1e-3)


def test_augmentation_is_the_same_with_any_worker_count_and_leaves_the_caller_rng_alone(files):
    def augmented(num_workers):
        loader = load(files, train=True, augment=AugmentSpec(), batch_size=23, num_workers=num_workers)
        loader.set_epoch(3)
        batch = next(iter(loader))
        return batch.images[batch.indices.argsort()]

    torch.manual_seed(123)
    state = torch.get_rng_state()
    in_process = augmented(0)
    assert torch.equal(torch.get_rng_state(), state)  # per-file seeds live inside fork_rng
    assert torch.equal(in_process, augmented(2))


def test_train_shuffles_and_drops_ragged_batch(files):
    loader = load(files, train=True)
    loader.set_epoch(1)
    order = torch.cat([b.indices for b in loader]).tolist()
    assert len(loader) == 2 and len(order) == 16 and order != sorted(order)


def test_unknown_loader_and_bad_sizes_are_clear_errors(files):
    with pytest.raises(ValueError, match="unknown loader"):
        resolve_backend("pil")
    with pytest.raises(ValueError, match="batch size"):
        load(files, batch_size=0)
    with pytest.raises(ValueError, match="shard"):
        load(files, shard_id=3, num_shards=3)


def test_preview_draws_a_labelled_batch(tmp_path):
    from _train_helpers import make_prepared
    from click.testing import CliRunner
    from realfake.jobs.cli import main

    data_dir = make_prepared(tmp_path, n_per_class=6, size=40)
    result = CliRunner().invoke(main, ["data", "preview", str(data_dir), "--out", str(tmp_path / "grid.png"),
                                       "--n", "6", "--image-size", "32", "--loader", "torch"])
    assert result.exit_code == 0, result.output
    assert "6 images" in result.output and "loader torch" in result.output
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
