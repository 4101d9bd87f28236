"""The decode-once cache loader (`--cache memory|gpu`): same tensors as the file loader, the Loader
protocol, augmentation as a pure function of (seed, epoch), undecodable files reported."""
import pytest
import torch
from _train_helpers import make_images
from realfake.pipelines.gpu_cache import CachedLoader, augment_batch, decode_all
from realfake.pipelines.spec import AugmentSpec
from realfake.pipelines.torch_loader import make_torch_loader


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("cache"), 10)


def loader(files, **kw):
    options = dict(train=False, image_size=32, batch_size=4, decode_backend="torch", num_workers=0, progress=False)
    return CachedLoader(files, [i % 2 for i in range(len(files))], **{**options, **kw})


def test_eval_batches_equal_the_file_loader(files):
    cached = loader(files)
    reference = make_torch_loader(files, [i % 2 for i in range(len(files))], train=False, image_size=32,
                                  batch_size=4, augment=None, num_workers=0, seed=0, shard_id=0, num_shards=1,
                                  device="cpu")
    assert cached.backend == "memory-cache" and len(cached) == len(reference) == 3
    ours, theirs = list(cached), list(reference)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.images, b.images, atol=1e-5, rtol=0)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.indices, b.indices)
    assert torch.cat([b.indices for b in ours]).tolist() == list(range(10))


def test_train_order_and_augmentation_are_a_pure_function_of_seed_and_epoch(files):
    spec = AugmentSpec()
    a, b = loader(files, train=True, augment=spec, seed=1), loader(files, train=True, augment=spec, seed=1)
    assert len(a) == 2  # 10 files, batch 4: the ragged batch is dropped for BatchNorm's sake
    a.set_epoch(3)
    b.set_epoch(3)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.images, y.images) and torch.equal(x.indices, y.indices)
    first = torch.cat([x.indices for x in a])
    a.set_epoch(4)
    assert not torch.equal(first, torch.cat([x.indices for x in a]))
    # labels follow their files through the shuffle
    for batch in a:
        assert batch.labels.tolist() == [i % 2 for i in batch.indices.tolist()]


def test_augment_batch_is_identity_when_every_range_is_zero():
    images = torch.rand(3, 3, 16, 16)
    none = AugmentSpec(rotation_deg=0.0, hflip_p=0.0, brightness=0.0, contrast=0.0, blur_p=0.0)
    torch.testing.assert_close(augment_batch(images, none, torch.Generator().manual_seed(0)), images,
                               atol=1e-5, rtol=0)
    full = augment_batch(images, AugmentSpec(blur_p=1.0), torch.Generator().manual_seed(0), scale=16 / 600)
    assert full.shape == images.shape and not torch.allclose(full, images)


def test_blur_is_scaled_to_the_cache_resolution():
    """At native resolution the spec's 7x13 kernel is used; at 1/4 the size it shrinks to 1x3 (sigma /4)."""
    images = torch.zeros(1, 3, 32, 32)
    images[..., 16, 16] = 1.0  # an impulse: the output is the kernel
    blur_only = AugmentSpec(rotation_deg=0.0, hflip_p=0.0, brightness=0.0, contrast=0.0, blur_p=1.0)
    native = augment_batch(images, blur_only, torch.Generator().manual_seed(0), scale=1.0)[0, 0]
    rows, cols = torch.nonzero(native > 1e-6, as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (13, 7)
    small = augment_batch(images, blur_only, torch.Generator().manual_seed(0), scale=0.25)[0, 0]
    rows, cols = torch.nonzero(small > 1e-6, as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (3, 1)


def test_undecodable_files_are_reported_not_dropped(files, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    cached = loader([*files[:3], str(broken), *files[3:5]])
    batches = list(cached)
    errors = [e for b in batches for e in b.errors]
    assert [index for index, _ in errors] == [3]
    delivered = torch.cat([b.indices for b in batches]).tolist()
    assert delivered == [0, 1, 2, 4, 5]
    assert sum(b.images.shape[0] for b in batches) == 5


def test_decoded_sets_are_reused_within_a_process(files):
    first = decode_all(files[:4], image_size=24, device="cpu", backend="torch", num_workers=0, progress=False)
    again = decode_all(files[:4], image_size=24, device="cpu", backend="torch", num_workers=0, progress=False)
    assert first[0] is again[0] and first[0].dtype == torch.uint8 and first[0].shape == (4, 3, 24, 24)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_cache_matches_the_memory_cache(files):
    cpu = loader(files, train=True, augment=AugmentSpec(), seed=2)
    gpu = loader(files, train=True, augment=AugmentSpec(), seed=2, device="cuda")
    assert gpu.backend == "gpu-cache" and gpu.images.device.type == "cuda"
    for a, b in zip(cpu, gpu, strict=True):
        assert b.images.device.type == "cuda"
        torch.testing.assert_close(b.images.cpu(), a.images, atol=2e-3, rtol=0)
        assert torch.equal(a.indices, b.indices.cpu())
