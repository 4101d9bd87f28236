"""Self-blended pseudo-fakes and the batched per-image ops they (and the cache loader) are built on."""
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from realfake.pipelines import batch_ops
from realfake.pipelines.pseudo_fakes import (
    DEFAULT_SPEC,
    PseudoFakeSpec,
    add_pseudo_fakes,
    blend_pseudo_fakes,
    make_masks,
    train_batch_transform,
)
from realfake.pipelines.spec import MEAN, STD
from torchvision.transforms import InterpolationMode


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def faces(n=6, size=48, seed=0):
    """Smooth random images: a bright ellipse (a "face") on a darker background, plus texture."""
    g = gen(seed)
    coords = (torch.arange(size) + 0.5) / size
    y, x = coords.view(-1, 1), coords.view(1, -1)
    face = (((x - 0.5) / 0.3) ** 2 + ((y - 0.55) / 0.38) ** 2 <= 1).float()
    base = 0.2 + 0.5 * face + 0.1 * torch.rand(n, 3, size, size, generator=g)
    return base.clamp(0, 1)


# --- batched ops == torchvision v2, image by image -------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 3, 24, 24), (2, 3, 20, 36)])
def test_affine_matches_torchvision_per_image(shape):
    images = torch.rand(*shape, generator=gen(1))
    h, w = shape[-2:]
    angle = torch.tensor([12.0, -15.0, 5.0])[: shape[0]]
    scale = torch.tensor([1.1, 0.9, 1.0])[: shape[0]]
    shift = torch.tensor([[0.125, -0.25], [0.0, 0.25], [-0.125, 0.0]])[: shape[0]]
    ours = batch_ops.affine(images, angle_deg=angle, scale=scale, translate=shift)
    for i in range(shape[0]):
        # torchvision's affine turns clockwise, its rotate counter-clockwise: ours follows rotate
        ref = TF.affine(images[i], angle=-float(angle[i]), translate=[float(shift[i, 0]) * w, float(shift[i, 1]) * h],
                        scale=float(scale[i]), shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(ours[i], ref, atol=1e-4, rtol=0)
        rotated = TF.rotate(images[i], float(angle[i]), interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(batch_ops.affine(images[i:i + 1], angle_deg=angle[i:i + 1])[0], rotated,
                                   atol=1e-4, rtol=0)


def test_colour_blur_and_flip_match_torchvision_per_image():
    images = torch.rand(4, 3, 21, 17, generator=gen(2))
    factor = torch.tensor([0.8, 1.2, 1.0, 0.5])
    sigma = torch.tensor([6.0, 6.5, 7.0, 1.0])
    blurred = batch_ops.gaussian_blur(images, (7, 13), sigma)
    flip = torch.tensor([True, False, True, False])
    flipped = batch_ops.hflip(images, flip)
    for i in range(4):
        f = float(factor[i])
        torch.testing.assert_close(batch_ops.adjust_brightness(images, factor)[i], TF.adjust_brightness(images[i], f))
        torch.testing.assert_close(batch_ops.adjust_contrast(images, factor)[i], TF.adjust_contrast(images[i], f))
        torch.testing.assert_close(batch_ops.adjust_saturation(images, factor)[i], TF.adjust_saturation(images[i], f))
        ref = TF.gaussian_blur(images[i], [7, 13], [float(sigma[i])] * 2)
        torch.testing.assert_close(blurred[i], ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(flipped[i], images[i].flip(-1) if flip[i] else images[i])
    only_first = batch_ops.gaussian_blur_where(images, torch.tensor([True, False, False, False]), (7, 13), sigma)
    torch.testing.assert_close(only_first[0], blurred[0])
    assert torch.equal(only_first[1:], images[1:])


def test_kernel_scaling_and_random_crops():
    assert [batch_ops.odd_at_least_one(v) for v in (0.2, 1.49, 1.75, 2.0, 2.77, 7.0)] == [1, 1, 1, 3, 3, 7]
    images = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    crops = batch_ops.random_crops(images, 4, gen(0))
    assert crops.shape == (2, 3, 4, 4)
    for img, crop in zip(images, crops, strict=True):  # each crop is a contiguous window of its image
        top, left = divmod(int(crop[0, 0, 0].item()) % 100, 10)
        assert torch.equal(crop, img[:, top:top + 4, left:left + 4])
    with pytest.raises(ValueError, match="larger than the images"):
        batch_ops.random_crops(images, 11, gen(0))


# --- pseudo-fakes -------------------------------------------------------------------------------------

def test_masks_are_soft_non_empty_and_on_the_face():
    masks = make_masks(32, 64, 64, gen(3))
    assert masks.shape == (32, 1, 64, 64)
    assert masks.min() >= 0 and masks.max() <= 1
    assert (masks.flatten(1).amax(1) > 0.5).all(), "every pseudo-fake needs a blended region"
    soft = ((masks > 0.05) & (masks < 0.95)).flatten(1).float().mean(1)
    assert (soft > 0).all(), "mask edges must be blurred, not hard"
    # the regions are face priors: nearly all of the mask mass lies in the central face box
    inner = masks[..., 6:60, 10:54].sum() / masks.sum()
    assert inner > 0.95
    # only the facial-region kind: the mass centre is near the middle of the face
    regions_only = make_masks(32, 64, 64, gen(4), PseudoFakeSpec(mask_weights=(1.0, 0.0, 0.0, 0.0)))
    ys = (torch.arange(64) + 0.5) / 64
    centre_y = (regions_only.sum(dim=(0, 1, 3)) * ys).sum() / regions_only.sum()
    assert 0.45 < centre_y < 0.7


def test_blend_changes_only_the_masked_pixels():
    images = faces(8)
    fakes, alpha = blend_pseudo_fakes(images, gen(5), return_masks=True)
    assert fakes.shape == images.shape and alpha.shape == (8, 1, 48, 48)
    assert fakes.min() >= 0 and fakes.max() <= 1
    outside = (alpha == 0).expand_as(images)
    assert torch.equal(fakes[outside], images[outside])
    changed = (fakes - images).abs().flatten(1).amax(1)
    assert (changed > 0.01).all(), "every pseudo-fake must differ from its real image"
    # the change is bounded by the blend weight
    assert ((fakes - images).abs() <= alpha + 1e-6).all()


def test_pseudo_fakes_are_a_pure_function_of_the_generator():
    images = faces(6)
    a = blend_pseudo_fakes(images, gen(7))
    b = blend_pseudo_fakes(images, gen(7))
    c = blend_pseudo_fakes(images, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_add_pseudo_fakes_appends_fakes_of_the_real_images():
    images01 = faces(6)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images = (images01 - mean) / std
    labels = torch.tensor([0, 1, 0, 0, 1, 0])
    out, out_labels = add_pseudo_fakes(images, labels, 0.5, gen(9), mean=MEAN, std=STD)
    assert out.shape[0] == 8 and out_labels.tolist() == [0, 1, 0, 0, 1, 0, 1, 1]
    assert torch.equal(out[:6], images), "the original batch stays as it was"
    fakes01 = out[6:] * std + mean
    assert fakes01.min() > -1e-5 and fakes01.max() < 1 + 1e-5
    reals01 = images01[labels == 0]
    # each pseudo-fake is mostly one of the real images (outside its mask) but not equal to it
    for fake in fakes01:
        distance = (reals01 - fake).abs().mean(dim=(1, 2, 3))
        assert 0 < distance.min() < 0.1
    same, same_labels = add_pseudo_fakes(images, labels, 0.0, gen(9), mean=MEAN, std=STD)
    assert same is images and same_labels is labels
    with pytest.raises(ValueError, match="between 0 and 1"):
        add_pseudo_fakes(images, labels, 1.5, gen(9), mean=MEAN, std=STD)


def test_train_batch_transform_replays_by_seed_epoch_and_step():
    assert train_batch_transform(seed=0) is None
    images, labels = faces(4, size=40), torch.tensor([0, 0, 1, 0])
    transform = train_batch_transform(seed=3, pseudo_fakes=1.0, train_crop=32)
    x1, y1 = transform(images, labels, 2, 5)
    x2, y2 = transform(images, labels, 2, 5)
    x3, _ = transform(images, labels, 2, 6)
    assert x1.shape == (7, 3, 32, 32) and y1.tolist() == [0, 0, 1, 0, 1, 1, 1]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_default_spec_is_serialisable():
    spec = DEFAULT_SPEC.to_dict()
    assert spec["blend_ratios"] == (0.25, 0.5, 0.75, 1.0, 1.0, 1.0) and abs(sum(spec["mask_weights"]) - 1) < 1e-9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pseudo_fakes_on_the_gpu_match_the_cpu():
    images = faces(8, size=64)
    cpu = blend_pseudo_fakes(images, gen(11))
    gpu = blend_pseudo_fakes(images.cuda(), gen(11))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)
