"""The DALI backend on the CPU (`device_id=None`): exactly-once, shards, parity with the torchvision
backend, each augmentation applied on train only, 3-channel output for any input, undecodable files.

Images are tiny (64x64) and batches small so that the file runs in well under a minute on 2 cores.
"""
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'realfake[dali]')")

from realfake.pipelines.dali_loader import (  # noqa: E402
    DEFAULT_HW_DECODER_LOAD,
    cuda_available_for_dali,
    dali_available,
    make_dali_loader,
    pass_batches,
    screen_headers,
)
from realfake.pipelines.spec import MEAN, STD, AugmentSpec, shard_range, train_shard  # noqa: E402

pytestmark = pytest.mark.dali

SIZE = 64
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_and_fake_face"
NO_AUGMENT = dict(rotation_deg=0.0, hflip_p=0.0, brightness=0.0, contrast=0.0, blur_p=0.0)
# How images.check_image may name a JPEG signature followed by garbage (PIL reads past the end).
BAD_DATA = ("corrupt", "truncated")
# Parity tolerance with the torchvision loader, in normalized units (one uint8 level is ~0.017):
# decoding is bit-exact (both libjpeg-turbo) and the resize filters agree to a level inside the image;
# on the outermost pixel ring PIL renormalizes its filter where DALI repeats the edge pixel.
PARITY_MEAN_ABS = 0.005
PARITY_INTERIOR_MAX = 0.03


def textured(rng, size=(SIZE, SIZE), low=0.0, high=1.0):
    """Smooth colour gradients plus noise: asymmetric (flip shows), with fine detail (blur shows)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    phase = rng.uniform(0, 6)
    base = np.stack([np.sin(6 * xx + phase), np.cos(5 * yy + phase), np.sin(4 * (xx + 2 * yy))], -1) * 0.35 + 0.5
    pixels = np.clip(base + rng.normal(0, 0.08, (h, w, 3)), 0, 1)
    return (255 * (low + (high - low) * pixels)).astype(np.uint8)


def write_jpegs(folder, n, seed=0, **kw):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:02d}.jpg"
        Image.fromarray(textured(rng, **kw)).save(path, quality=92)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_jpegs(tmp_path_factory.mktemp("jpegs"), 23)


def dali(files, *, train=False, augment=None, labels="alternate", **kw):
    kw = {"image_size": SIZE, "batch_size": 8, "num_workers": 2, "seed": 0, "shard_id": 0, "num_shards": 1,
          "device": "cpu", **kw}
    if labels == "alternate":
        labels = [i % 2 for i in range(len(files))]
    return make_dali_loader(files, labels, train=train, augment=augment, **kw)


def by_index(loader):
    """{file position: image} over one pass, checking no position comes twice."""
    images = {}
    for batch in loader:
        for index, image in zip(batch.indices.tolist(), batch.images, strict=True):
            assert index not in images
            images[index] = image
    return images


def to_pixels(image):
    """Normalized CHW -> [0, 1] pixel values."""
    return image * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]


def test_helpers_report_dali():
    assert dali_available()
    assert isinstance(cuda_available_for_dali(), bool)
    assert 0.0 <= DEFAULT_HW_DECODER_LOAD <= 1.0


def test_eval_sees_every_file_once_in_order(files):
    loader = dali(files)
    batches = list(loader)
    assert loader.backend == "dali-cpu"
    assert len(batches) == len(loader) == 3
    assert [b.images.shape[0] for b in batches] == [8, 8, 7]
    assert batches[0].images.shape[1:] == (3, SIZE, SIZE) and batches[0].images.dtype == torch.float32
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(23))
    assert torch.cat([b.labels for b in batches]).tolist() == [i % 2 for i in range(23)]
    assert all(b.errors == () for b in batches)


def test_every_pass_is_complete(files):
    loader = dali(files, batch_size=5)
    for epoch in range(2):
        loader.set_epoch(epoch)
        assert sorted(by_index(loader)) == list(range(23))


class CountingPipeline:
    """Stands in for a built DALI pipeline of batch 4 whose reader holds 10 samples (padded to 12):
    counts the runs scheduled; outputs are real DALI TensorLists (images = sample numbers, index)."""

    max_batch_size = 4

    def __init__(self, prefetch_queue_depth, exec_dynamic):
        self.prefetch_queue_depth, self.exec_dynamic = prefetch_queue_depth, exec_dynamic
        self.scheduled = self.taken = 0

    def schedule_run(self):
        # DALI's first schedule_run queues prefetch_queue_depth runs.
        self.scheduled += self.prefetch_queue_depth if self.scheduled == 0 else 1

    def share_outputs(self):
        from nvidia.dali.backend import TensorListCPU

        assert self.taken < self.scheduled, "a batch taken that was never scheduled"
        first = self.taken * self.max_batch_size
        samples = np.minimum(np.arange(first, first + self.max_batch_size), 9)  # pad_last_batch repeats
        self.taken += 1
        return (TensorListCPU(np.repeat(samples, 3).reshape(-1, 3).astype(np.float32)),
                TensorListCPU(samples.reshape(-1, 1).astype(np.int32)))

    def release_outputs(self):
        pass


@pytest.mark.parametrize("exec_dynamic", [True, False])  # shared through DLPack / copied
def test_a_pass_schedules_exactly_its_batches(exec_dynamic):
    pipe = CountingPipeline(prefetch_queue_depth=2, exec_dynamic=exec_dynamic)
    batches = list(pass_batches(pipe, n_batches=3, n_samples=10))
    assert pipe.scheduled == 3  # DALIGenericIterator would have run 5: two into the next epoch
    assert [len(index) for _, index in batches] == [4, 4, 2]  # the padding is cut off
    assert torch.cat([index.reshape(-1) for _, index in batches]).tolist() == list(range(10))
    assert torch.cat([images[:, 0] for images, _ in batches]).tolist() == [float(i) for i in range(10)]


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_cover_every_file_once(files, num_shards):
    seen = []
    for shard in range(num_shards):
        indices = [i for b in dali(files, shard_id=shard, num_shards=num_shards) for i in b.indices.tolist()]
        assert indices == list(shard_range(len(files), shard, num_shards))  # the reader's own sharding
        seen += indices
    assert sorted(seen) == list(range(23))


def test_train_shuffles_reproducibly_per_epoch(files):
    loader = dali(files, train=True)

    def order(epoch):
        loader.set_epoch(epoch)
        return [i for b in loader for i in b.indices.tolist()]

    first = order(0)
    assert len(loader) == 2 and len(first) == 16 == len(set(first))  # ragged last batch dropped
    assert first != sorted(first)
    assert order(0) == first
    assert order(1) != first


def test_augmentation_is_reproducible_per_epoch(files):
    loader = dali(files[:8], train=True, augment=AugmentSpec())
    loader.set_epoch(3)
    first = by_index(loader)
    again = by_index(loader)
    assert all(torch.equal(first[i], again[i]) for i in first)


def test_a_prepared_pass_is_the_same_pass(files, tmp_path):
    """prepare() (header screen, pipeline built and decoding) changes when the work is done, not what
    comes out: same images and order, also with augmentation, for the epoch it was prepared for."""
    loader = dali(files[:12], train=True, augment=AugmentSpec())
    loader.set_epoch(2)
    plain = [(b.indices.tolist(), b.images) for b in loader]
    built = []
    build = loader._pipeline
    loader._pipeline = lambda *args: built.append(args) or build(*args)
    loader.prepare()
    assert len(built) == 1  # the pipeline is built by prepare() ...
    prepared = [(b.indices.tolist(), b.images) for b in loader]
    assert len(built) == 1  # ... and used by the pass
    assert [i for i, _ in prepared] == [i for i, _ in plain]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(plain, prepared, strict=True))
    loader.prepare()
    loader.set_epoch(3)  # a pass prepared for another epoch is not used
    epoch3 = by_index(loader)
    assert not all(torch.equal(epoch3[i], image) for i, image in by_index_of(plain).items())

    # a file that fails mid-decode in a prepared pipeline is found as in any pass
    truncated = tmp_path / "truncated.jpg"
    data = open(files[0], "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    loader = dali(files[:6] + [str(truncated)] + files[6:12], batch_size=4)
    loader.prepare()
    batches = list(loader)
    assert [e for b in batches for e in b.errors] == [(6, "truncated")]
    assert sorted(torch.cat([b.indices for b in batches]).tolist()) == [i for i in range(13) if i != 6]


def by_index_of(batches):
    return {i: image for indices, images in batches for i, image in zip(indices, images, strict=True)}


def test_parity_with_torch_loader(files, tmp_path):
    """Same files -> the same tensors (within the tolerance above), at 1:1, shrinking and enlarging."""
    make_torch_loader = pytest.importorskip("realfake.pipelines.torch_loader").make_torch_loader
    odd = write_jpegs(tmp_path, 6, seed=5, size=(100, 75))
    for paths, image_size in ((files, SIZE), (files, 32), (odd, 48), (odd, 128)):
        kw = dict(train=False, image_size=image_size, batch_size=8, augment=None, num_workers=0, seed=0,
                  shard_id=0, num_shards=1, device="cpu")
        ours = torch.cat([b.images for b in make_dali_loader(paths, None, **kw)])
        theirs = torch.cat([b.images for b in make_torch_loader(paths, None, **kw)])
        diff = (ours - theirs).abs()
        assert diff.mean() < PARITY_MEAN_ABS, (image_size, diff.mean())
        assert diff[..., 1:-1, 1:-1].max() < PARITY_INTERIOR_MAX, (image_size, diff[..., 1:-1, 1:-1].max())


def test_same_predictions_through_both_loaders(tmp_path):
    """A small simple_cnn trained on one loader's tensors predicts the same through the other."""
    make_torch_loader = pytest.importorskip("realfake.pipelines.torch_loader").make_torch_loader
    build_model = pytest.importorskip("realfake.models").build_model
    rng = np.random.default_rng(1)
    paths, labels = [], []
    for i in range(40):  # class 1 is darker and noisier: learnable in a few steps
        label = i % 2
        pixels = textured(rng, low=0.0 if label else 0.3, high=0.7 if label else 1.0)
        if label:
            pixels = np.clip(pixels + rng.normal(0, 25, pixels.shape), 0, 255).astype(np.uint8)
        path = tmp_path / f"p_{i:02d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
        labels.append(label)
    kw = dict(train=False, image_size=SIZE, batch_size=20, augment=None, num_workers=0, seed=0, shard_id=0,
              num_shards=1, device="cpu")
    through_torch = torch.cat([b.images for b in make_torch_loader(paths, labels, **kw)])
    through_dali = torch.cat([b.images for b in make_dali_loader(paths, labels, **kw)])

    torch.manual_seed(0)
    model = build_model("simple_cnn", image_size=SIZE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = torch.tensor(labels)
    for _ in range(15):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(through_torch), target).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        p_torch = model(through_torch).softmax(1)[:, 1]
        p_dali = model(through_dali).softmax(1)[:, 1]
    assert ((p_torch > 0.5) == (target == 1)).float().mean() >= 0.9  # the model did learn something
    assert ((p_torch > 0.5) == (p_dali > 0.5)).float().mean() >= 0.98
    assert (p_torch - p_dali).abs().max() < 0.02


# ------------------------------------------------------------------ augmentation: each one applied, train only

def test_no_augmentation_on_eval(files):
    plain = by_index(dali(files[:8]))
    with_spec = by_index(dali(files[:8], augment=AugmentSpec()))  # eval ignores the spec
    assert all(torch.equal(plain[i], with_spec[i]) for i in plain)
    augmented = by_index(dali(files[:8], train=True, augment=AugmentSpec()))
    assert all(not torch.allclose(plain[i], augmented[i], atol=0.05) for i in augmented)


def test_flip_mirrors_the_image(files):
    plain = by_index(dali(files[:8]))
    flipped = by_index(dali(files[:8], train=True, augment=AugmentSpec(**{**NO_AUGMENT, "hflip_p": 1.0})))
    assert all(torch.allclose(flipped[i], plain[i].flip(-1), atol=1e-5) for i in flipped)
    assert all(not torch.allclose(flipped[i], plain[i], atol=0.05) for i in flipped)


def test_flip_half_of_the_time(files):
    plain = by_index(dali(files))
    flipped = by_index(dali(files, train=True, batch_size=23, augment=AugmentSpec(**{**NO_AUGMENT, "hflip_p": 0.5})))
    mirrored = [torch.allclose(flipped[i], plain[i].flip(-1), atol=1e-5) for i in flipped]
    kept = [torch.equal(flipped[i], plain[i]) for i in flipped]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 5 <= sum(mirrored) <= 18


def test_rotation_fills_the_corners_with_black(tmp_path):
    bright = write_jpegs(tmp_path, 16, low=0.5, high=1.0)  # no black pixel anywhere before rotating
    fill = torch.tensor([-m / s for m, s in zip(MEAN, STD, strict=True)])  # black after normalization
    rotated = by_index(dali(bright, train=True, batch_size=16, augment=AugmentSpec(**{**NO_AUGMENT, "rotation_deg": 15.0})))
    plain = by_index(dali(bright))

    def corners_black(image):
        return all(torch.allclose(image[:, y, x], fill, atol=1e-4) for y in (0, -1) for x in (0, -1))

    assert not any(corners_black(image) for image in plain.values())
    # |angle| below ~0.7 degrees leaves a corner pixel in place: a few percent of the draws.
    assert sum(corners_black(image) for image in rotated.values()) >= 13
    # The centre stays where it was (rotation about the centre, canvas kept).
    assert all(rotated[i].shape == plain[i].shape for i in plain)


def test_brightness_and_contrast_spread_across_a_batch(tmp_path):
    # One dark image many times: every difference comes from the augmentation, and its mean grey
    # (~64) is far from mid-grey, where ColorJitter's contrast centre would not show.
    same = write_jpegs(tmp_path, 1, low=0.0, high=0.5) * 24
    plain = to_pixels(by_index(dali(same, batch_size=24))[0])
    for kind in ("brightness", "contrast"):
        spec = AugmentSpec(**{**NO_AUGMENT, kind: 0.2})
        images = [to_pixels(im) for im in by_index(dali(same, train=True, batch_size=24, augment=spec)).values()]
        mean_ratio = torch.tensor([im.mean() / plain.mean() for im in images])
        std_ratio = torch.tensor([im.std() / plain.std() for im in images])
        if kind == "brightness":  # scales every pixel: mean and std by the same factor in [0.8, 1.2]
            factor = mean_ratio
            assert torch.allclose(std_ratio, mean_ratio, atol=0.02)
        else:  # around the mean grey level (ColorJitter): the mean stays, the std scales
            factor = std_ratio
            assert torch.allclose(mean_ratio, torch.ones(24), atol=0.03)
        assert factor.min() > 0.78 and factor.max() < 1.22, kind
        assert factor.std() > 0.05, kind  # uniform on [0.8, 1.2] has std 0.115


def detail(image, axis=-1):
    """Mean absolute difference between neighbouring pixels along `axis` (-1: W, -2: H)."""
    return image.diff(dim=axis).abs().mean().item()


def test_blur_removes_fine_detail(files):
    plain = by_index(dali(files))
    always = by_index(dali(files[:16], train=True, batch_size=16, augment=AugmentSpec(**{**NO_AUGMENT, "blur_p": 1.0})))
    assert all(detail(always[i]) < 0.5 * detail(plain[i]) for i in always)
    half = by_index(dali(files, train=True, batch_size=23, augment=AugmentSpec(**{**NO_AUGMENT, "blur_p": 0.5})))
    blurred = sum(detail(half[i]) < 0.5 * detail(plain[i]) for i in half)
    unchanged = sum(torch.equal(half[i], plain[i]) for i in half)
    assert blurred + unchanged == 23 and 5 <= blurred <= 18


def test_blur_kernel_is_7_wide_and_13_tall(tmp_path):
    """The report's GaussianBlur(kernel_size=(7, 13)) is (width, height): on white noise the blurred
    image keeps less detail along H (13 taps) than along W (7 taps)."""
    rng = np.random.default_rng(0)
    noise = []
    for i in range(4):
        path = tmp_path / f"noise_{i}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        noise.append(str(path))
    plain = by_index(dali(noise))
    blurred = by_index(dali(noise, train=True, augment=AugmentSpec(**{**NO_AUGMENT, "blur_p": 1.0})))
    for i in plain:
        kept_h = detail(blurred[i], -2) / detail(plain[i], -2)
        kept_w = detail(blurred[i], -1) / detail(plain[i], -1)
        assert kept_h < 0.75 * kept_w, (kept_h, kept_w)


# ------------------------------------------------------------------ any input -> 3-channel RGB

@pytest.mark.parametrize("kind", ["grey-jpeg", "cmyk-jpeg", "rgb-png", "rgba-png", "grey-png", "palette-png"])
def test_three_channels_for_every_kind_of_image(tmp_path, kind):
    rgb = Image.fromarray(textured(np.random.default_rng(3)))
    mode, ext = {"grey-jpeg": ("L", "jpg"), "cmyk-jpeg": ("CMYK", "jpg"), "rgb-png": ("RGB", "png"),
                 "rgba-png": ("RGBA", "png"), "grey-png": ("L", "png"), "palette-png": ("P", "png")}[kind]
    path = tmp_path / f"image.{ext}"
    (rgb.convert(mode) if mode != "RGBA" else rgb.convert("RGBA")).save(path)
    batch = next(iter(dali([str(path)], labels=None)))
    assert batch.images.shape == (1, 3, SIZE, SIZE) and batch.errors == ()
    assert batch.labels.tolist() == [-1]
    if mode == "L":  # grey in, equal channels out
        pixels = to_pixels(batch.images[0])
        assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[1], pixels[2], atol=1e-5)
    make_torch_loader = pytest.importorskip("realfake.pipelines.torch_loader").make_torch_loader
    theirs = next(iter(make_torch_loader([str(path)], None, train=False, image_size=SIZE, batch_size=1,
                                         augment=None, num_workers=0, seed=0, shard_id=0, num_shards=1,
                                         device="cpu")))
    assert theirs.images.shape == batch.images.shape
    # The two decoders convert CMYK differently (Adobe inversion, colour management): only the shape
    # is held to the other backend's there.
    if kind != "cmyk-jpeg":
        assert (batch.images - theirs.images).abs().mean() < PARITY_MEAN_ABS


# ------------------------------------------------------------------ undecodable files

@pytest.fixture()
def with_bad_file(files, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG" * 8)
    return files[:10] + [str(bad)] + files[10:]  # position 10, in the second batch of 8


def test_bad_file_is_recorded_and_the_rest_delivered(with_bad_file):
    loader = dali(with_bad_file)
    batches = list(loader)
    delivered = torch.cat([b.indices for b in batches]).tolist()
    assert sorted(delivered) == [i for i in range(24) if i != 10]
    assert len(set(delivered)) == 23
    errors = [e for b in batches for e in b.errors]
    assert [i for i, _ in errors] == [10] and errors[0][1] in BAD_DATA and loader.errors == errors
    labels = torch.cat([b.labels for b in batches]).tolist()
    assert labels == [i % 2 for i in delivered]
    loader.set_epoch(1)  # the next pass finds it again (nothing is remembered between passes)
    assert [e for b in loader for e in b.errors] == errors


def test_a_file_that_fails_while_decoding_is_found_and_skipped(files, tmp_path):
    """A truncated JPEG passes the header screen and makes the decoder raise mid-pass: the loader finds
    it, records it and rebuilds over the files not delivered yet."""
    truncated = tmp_path / "truncated.jpg"
    data = open(files[0], "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    paths = files[:12] + [str(truncated)] + files[12:]
    loader = dali(paths, batch_size=4)
    batches = list(loader)
    delivered = torch.cat([b.indices for b in batches]).tolist()
    assert loader.screened == []  # not the screen's doing
    assert [e for b in batches for e in b.errors] == [(12, "truncated")]
    assert sorted(delivered) == [i for i in range(24) if i != 12] and len(set(delivered)) == 23
    assert delivered[:12] == list(range(12))  # batches before the bad one came out before it was met


def test_screen_finds_every_unparsable_header(files, tmp_path):
    bad = {
        "text.jpg": b"this is a text file, not a JPEG" * 4,
        "jpeg-garbage.jpg": b"\xff\xd8\xff\xe0 this is no JPEG" * 8,
        "png-garbage.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
        "empty.jpg": b"",
    }
    paths = list(files[:6])
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        paths.insert(2 * len(paths) // 3, str(tmp_path / name))
    found = dict(screen_headers(paths, batch_size=4))
    expected = {paths.index(str(tmp_path / name)) for name in bad}
    assert set(found) == expected
    assert found[paths.index(str(tmp_path / "empty.jpg"))] == "empty file"
    assert found[paths.index(str(tmp_path / "text.jpg"))] == "not an image"


def test_screen_finds_what_is_too_large_by_its_header(files, tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.fromarray(textured(np.random.default_rng(1), size=(120, 150))).save(big)
    paths = files[:5] + [str(big)] + files[5:7]  # in the second batch of 4, the last one padded
    assert screen_headers(paths, batch_size=4) == []
    assert screen_headers(paths, batch_size=4, max_pixels=120 * 150 - 1) == [(5, "too large")]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 120 * 150 // 2 - 1)  # as the torchvision path: PIL's limit
    assert screen_headers(paths, batch_size=4) == [(5, "too large")]


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"{REAL_DATA} not present")
def test_garbage_among_real_progressive_jpegs_does_not_crash():
    """On the CIPLAB files (progressive JPEGs), a JPEG signature followed by garbage in a batch of 32
    made DALI 2.4's decoder segfault most of the time; the header screen keeps it out."""
    real = sorted(str(p) for p in REAL_DATA.glob("training_real/*.jpg"))[:48]
    bad = Path(tempfile.mkdtemp()) / "garbage.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG" * 8)
    loader = dali(real[:40] + [str(bad)] + real[40:], batch_size=32, image_size=32, labels=None)
    for _ in range(2):
        assert sum(len(b.indices) for b in loader) == 48
        assert [i for i, _ in loader.errors] == [40] and loader.errors[0][1] in BAD_DATA


def test_bad_file_in_a_train_shard(with_bad_file):
    # A train shard is its share of the epoch's permutation (spec.train_shard), so each loader screens
    # every file and reports a bad one in the epoch that gives it that file: over the shards, once.
    errors, delivered = [], []
    for shard in (0, 1):
        loader = dali(with_bad_file, train=True, augment=AugmentSpec(), shard_id=shard, num_shards=2)
        share = train_shard(24, 0, 0, shard, 2)
        batches = list(loader)
        mine = torch.cat([b.indices for b in batches]).tolist()
        found = [e for b in batches for e in b.errors]
        assert [i for i, _ in found] == ([10] if 10 in share else [])
        assert len(mine) == len(set(mine)) == 8 and set(mine) <= set(share) - {10}  # one batch of 8, ragged dropped
        errors, delivered = errors + found, delivered + mine
    assert [i for i, _ in errors] == [10] and errors[0][1] in BAD_DATA
    assert not set(delivered[:8]) & set(delivered[8:])


def test_only_bad_files_give_an_empty_batch_with_the_errors(tmp_path):
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    batches = list(dali([str(bad)]))
    assert len(batches) == 1
    assert batches[0].images.shape == (0, 3, SIZE, SIZE) and batches[0].errors == ((0, "empty file"),)


# ------------------------------------------------------------------ arguments

def test_factory_builds_the_dali_backend(files):
    get_loader = pytest.importorskip("realfake.pipelines.loaders").get_loader
    loader = get_loader(files, None, train=False, backend="dali", image_size=32, batch_size=8)
    assert loader.backend == "dali-cpu"
    assert torch.cat([b.indices for b in loader]).tolist() == list(range(23))


def test_bad_arguments_say_what_to_fix(files):
    with pytest.raises(ValueError, match="labels"):
        dali(files, labels=[0, 1])
    with pytest.raises(ValueError, match="hw_decoder_load"):
        dali(files, hw_decoder_load=1.5)
    with pytest.raises(ValueError, match="shard"):
        dali(files, shard_id=3, num_shards=3)
    with pytest.raises(ValueError, match="device"):
        dali(files, device="tpu")


@pytest.mark.skipif(cuda_available_for_dali(), reason="a CUDA device is present")
def test_gpu_without_a_gpu_says_so(files):
    with pytest.raises(ValueError, match="no CUDA device"):
        dali(files, device="cuda")



@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available_for_dali(), reason="no CUDA device for DALI's mixed decoder")
def test_gpu_decode_with_fancy_upsampling_keeps_the_cpu_parity(files):
    """On an H200, nvJPEG's default chroma upsampling put baseline JPEGs 0.12 (interior max) from the
    torchvision tensor; with fancy_upsampling the CPU tolerance holds (mean within it in both cases)."""
    make_torch_loader = pytest.importorskip("realfake.pipelines.torch_loader").make_torch_loader
    kw = dict(train=False, image_size=SIZE, batch_size=8, augment=None, num_workers=2, seed=0, shard_id=0,
              num_shards=1)
    theirs = torch.cat([b.images for b in make_torch_loader(files, None, device="cpu", **kw)])
    default = torch.cat([b.images.cpu() for b in make_dali_loader(files, None, device="cuda", **kw)])
    fancy = torch.cat([b.images.cpu() for b in make_dali_loader(files, None, device="cuda", fancy_upsampling=True,
                                                                **kw)])
    assert (default - theirs).abs().mean() < PARITY_MEAN_ABS
    diff = (fancy - theirs).abs()
    assert diff.mean() < PARITY_MEAN_ABS and diff[..., 1:-1, 1:-1].max() < PARITY_INTERIOR_MAX

# ------------------------------------------------------------------ the benchmark suite runs (no timing asserted)

def test_pipelines_suite_reports_dali_torch_and_ratio(files, monkeypatch):
    suite = pytest.importorskip("realfake.benchmarks.suite_pipelines")
    monkeypatch.setenv(suite.DATA_ENV, str(Path(files[0]).parent))
    figures = suite.run(quick=True, device="cpu", n_files=8, repeats=1)
    names = [f.name for f in figures]
    for what in ("decode_resize", "train_augment"):
        for variant in ("dali-cpu", "torch", "dali_vs_torch"):
            assert f"pipelines/{what}@128/{variant}" in names
    assert all(f.median > 0 for f in figures)
    ratio = figures[names.index("pipelines/decode_resize@128/dali_vs_torch")]
    assert ratio.unit == "x" and ratio.ratio_to == "pipelines/decode_resize@128/torch"
