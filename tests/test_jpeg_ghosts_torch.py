"""Batched JPEG ghost maps (pipelines/jpeg_ghosts_torch.py) against the PIL reference (jpeg_ghosts.raw_maps).

The batched maps are a DCT-domain approximation, not the reference's numbers: the tests hold them to
floors of correlation per channel group (stated below and in docs/ghost-maps.md), and check exactly
what must be exact (colour conversions, crop, turn, normalize, the Parseval identity, batching)."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from _ghost_helpers import CIPLAB, one_torch_thread, pasted, texture, write_corpus
from PIL import Image
from realfake.pipelines import jpeg_ghosts, jpeg_ghosts_torch
from realfake.pipelines.images import InvalidImageError
from realfake.pipelines.jpeg_ghosts_torch import (
    NeedsReference,
    dct_basis,
    ghost_maps,
    load_ghost_input,
    maps_of_inputs,
    quality_tables,
    rgb_to_ycbcr_encoder,
    ycbcr_to_rgb,
)

SIZE = 96


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with one_torch_thread():
        yield


def _normalized(maps: np.ndarray) -> np.ndarray:
    logged = np.log(maps + jpeg_ghosts.LOG_EPS)
    return logged - logged.mean((-2, -1), keepdims=True)


def _correlations(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Pearson r of each channel's normalized maps (NaN where a map is flat)."""
    a, b = _normalized(ours), _normalized(reference)
    den = np.sqrt((a * a).sum((-2, -1)) * (b * b).sum((-2, -1)))
    return np.where(den > 1e-9, (a * b).sum((-2, -1)) / np.maximum(den, 1e-12), np.nan)


def _fast_raw(path, image_size=SIZE) -> np.ndarray:
    item = load_ghost_input(path, image_size)
    maps = ghost_maps(item.planes[None], item.keep_tables[None], [item.keep_subsampling])[0]
    return jpeg_ghosts_torch.orient(maps, item.orientation).numpy()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[tuple[Path, dict]]:
    return write_corpus(tmp_path_factory.mktemp("ghosts"))


@pytest.fixture(scope="module")
def correlations(corpus) -> np.ndarray:
    """(files, CHANNELS) correlations of the batched maps with the reference's."""
    return np.stack([_correlations(_fast_raw(path), jpeg_ghosts.raw_maps(path, SIZE)) for path, _ in corpus])


# Floors of the mean correlation over the corpus, per channel group (measured values in docs/ghost-maps.md).
# Qualities 50-80 on Y are the re-quantization the approximation models; at 85-95, and at a file's
# own quality, the reference's change is mostly pixel rounding, which it does not model.
Y_FLOORS = {50: 0.95, 55: 0.95, 60: 0.85, 65: 0.93, 70: 0.92, 75: 0.85, 80: 0.8, 85: 0.6, 90: 0.35, 95: 0.4}
CHROMA_FLOOR = 0.55
# Keep maps, on files with saturated colours: there the decoder's RGB clips and the re-save moves
# coefficients to other steps. (On smooth 4:4:4 files the reference's keep maps are all zero; on
# smooth 4:2:0 ones its luma is the rounding noise of the re-averaged chroma.)
KEEP_FLOORS = {"Y": 0.5, "chroma": 0.6}


def test_quality_maps_correlate_with_the_reference(correlations):
    by_quality = np.nanmean(correlations, 0)
    for q, quality in enumerate(jpeg_ghosts.QUALITIES[1:], start=1):
        assert by_quality[3 * q] >= Y_FLOORS[quality], f"Y at quality {quality}: r {by_quality[3 * q]:.3f}"
        chroma = by_quality[3 * q + 1:3 * q + 3].mean()
        assert chroma >= CHROMA_FLOOR, f"chroma at quality {quality}: r {chroma:.3f}"


@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:2", "4:2:0"])
def test_keep_maps_correlate_with_the_reference(tmp_path, subsampling):
    rows = []
    for seed, quality in enumerate((85, 90, 95)):
        rng = np.random.default_rng(seed)
        coarse = Image.fromarray(rng.choice([0, 255], size=(13, 13, 3)).astype(np.uint8))
        pixels = np.asarray(coarse.resize((96, 96), Image.BICUBIC), dtype=np.float32) + rng.normal(0, 20, (96, 96, 3))
        path = tmp_path / f"{seed}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=quality, subsampling=subsampling)
        rows.append(_correlations(_fast_raw(path), jpeg_ghosts.raw_maps(path, SIZE))[:3])
    keep = np.mean(rows, 0)
    assert keep[0] >= KEEP_FLOORS["Y"], f"keep Y: r {keep[0]:.3f}"
    assert keep[1:].mean() >= KEEP_FLOORS["chroma"], f"keep chroma: r {keep[1:].mean():.3f}"


@pytest.mark.skipif(not CIPLAB.is_dir(), reason="the CIPLAB set is not at ../shared/data/real_and_fake_face")
def test_ciplab_maps_correlate_with_the_reference():
    files = sorted(CIPLAB.rglob("*.jpg"))
    files = [files[i * len(files) // 6] for i in range(6)]
    r = np.nanmean([_correlations(_fast_raw(p, 600), jpeg_ghosts.raw_maps(p, 600)) for p in files], 0)
    assert r[0] >= 0.5 and r[1:3].mean() >= 0.35, f"keep: {r[:3]}"
    assert min(r[3:30:3]) >= 0.88 and r[30] >= 0.65, f"Y: {r[3::3]}"
    assert min((r[4::3] + r[5::3]) / 2) >= 0.62, f"chroma: {(r[4::3] + r[5::3]) / 2}"


def test_a_pasted_region_stands_out_in_the_maps(tmp_path):
    base = texture((96, 96), 3)
    base.save(tmp_path / "real.jpg", quality=90)
    pasted(base, 40, (32, 32, 64, 64)).save(tmp_path / "fake.jpg", quality=90)

    def square_minus_rest(name):  # luma at qualities 50, 60 and 70
        maps = maps_of_inputs([load_ghost_input(tmp_path / name, SIZE)], SIZE)[0, [3, 9, 15]].numpy()
        square = maps[:, 4:8, 4:8].mean()
        return square - (maps.sum() - maps[:, 4:8, 4:8].sum()) / (maps.size - maps[:, 4:8, 4:8].size)

    assert square_minus_rest("fake.jpg") < -0.5
    assert abs(square_minus_rest("real.jpg")) < 0.3


# --------------------------------------------------------------------------- exact parts

def test_requantization_error_is_the_pixel_error(monkeypatch):
    # Parseval: the mean squared change of a block's pixels equals that of its orthonormal DCT.
    basis = dct_basis()
    torch.testing.assert_close(basis @ basis.T, torch.eye(64), atol=1e-5, rtol=0)
    blocks = torch.randint(0, 256, (50, 64)).float()
    tables = quality_tables()[:, 0]
    coefs = (blocks - 128) @ basis.T
    requantized = torch.round(coefs / tables[:, None]) * tables[:, None]  # (10, 50, 64)
    pixel_error = ((coefs - requantized) @ basis).square().mean(-1).T
    torch.testing.assert_close(jpeg_ghosts_torch._requantize_energy(coefs, tables), pixel_error, rtol=1e-4, atol=1e-4)


def test_quality_tables_are_pils():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG", quality=75)
    tables = Image.open(buf).quantization
    assert quality_tables()[jpeg_ghosts.QUALITIES.index(75) - 1].tolist() == [tables[0], tables[1]]
    assert quality_tables()[5, 0, :4].tolist() == [8, 6, 5, 8]  # quality 75 luma, natural order


@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:0", "4:2:2"])
def test_colour_conversion_is_the_decoders(tmp_path, subsampling):
    path = tmp_path / "a.jpg"
    texture((64, 48), 1).save(path, quality=90, subsampling=subsampling)
    planes = load_ghost_input(path, 64).planes
    with Image.open(path) as img:
        rgb = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(ycbcr_to_rgb(planes), rgb.float())


def test_encoder_conversion_is_libjpegs_integer_arithmetic():
    values = torch.tensor([0, 1, 2, 63, 64, 127, 128, 129, 200, 254, 255])
    rgb = torch.stack(torch.meshgrid(values, values, values, indexing="ij")).reshape(3, 1, -1)
    r, g, b = (c.numpy().astype(np.int64) for c in rgb)

    def fix(x):
        return int(x * 65536 + 0.5)

    y = (fix(0.299) * r + fix(0.587) * g + fix(0.114) * b + 32768) >> 16
    cb = (-fix(0.16874) * r - fix(0.33126) * g + fix(0.5) * b + (128 << 16) + 32767) >> 16
    cr = (fix(0.5) * r - fix(0.41869) * g - fix(0.08131) * b + (128 << 16) + 32767) >> 16
    assert np.array_equal(rgb_to_ycbcr_encoder(rgb).numpy(), np.stack([y, cb, cr]).astype(np.float32))


def test_input_is_the_crop_raw_maps_resaves(tmp_path):
    path = tmp_path / "big.jpg"
    texture((200, 136), 2).save(path, quality=85)
    item = load_ghost_input(path, SIZE)
    with Image.open(path) as img:
        img.draft("YCbCr", img.size)
        # raw_maps: centre crop of SIZE a side, starting on the 16 px grid
        left, top = (200 - SIZE) // 2 // 16 * 16, (136 - SIZE) // 2 // 16 * 16
        expected = np.array(img.crop((left, top, left + SIZE, top + SIZE)))
    assert (left, top) == (48, 16)
    assert torch.equal(item.planes, torch.from_numpy(expected).permute(2, 0, 1))
    assert item.keep_subsampling == 2 and item.orientation == 1
    assert _fast_raw(path).shape == jpeg_ghosts.raw_maps(path, SIZE).shape == (33, 12, 12)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_maps_turn_like_the_reference(orientation):
    cells = np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 4)
    turned = jpeg_ghosts_torch.orient(torch.from_numpy(cells), orientation).numpy()
    np.testing.assert_array_equal(turned, jpeg_ghosts._orient(cells, orientation))


def test_exif_rotated_file_gives_maps_in_display_orientation(tmp_path):
    path = tmp_path / "rot.jpg"
    image = texture((128, 64), 5)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, format="JPEG", exif=exif.tobytes())
    assert load_ghost_input(path, 600).orientation == 6
    assert _fast_raw(path, 600).shape == jpeg_ghosts.raw_maps(path, 600).shape == (33, 16, 8)
    assert maps_of_inputs([load_ghost_input(path, 600)], 600).shape == (1, 33, 75, 75)


@pytest.mark.parametrize(("shape", "cells"), [((33, 5, 7), 12), ((33, 20, 15), 12), ((3, 12, 12), 12)])
def test_normalize_matches_the_reference(shape, cells):
    maps = np.random.default_rng(0).exponential(3.0, shape).astype(np.float32)
    maps[:, 0, 0] = 0
    ours = jpeg_ghosts_torch.normalize(torch.from_numpy(maps), cells).numpy()
    np.testing.assert_allclose(ours, jpeg_ghosts.normalize(maps, cells), atol=1e-5, rtol=0)
    batched = jpeg_ghosts_torch.normalize(torch.from_numpy(np.stack([maps, maps])), cells).numpy()
    np.testing.assert_allclose(batched[1], ours, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- batches and inputs

def test_batches_and_chunks_give_each_images_maps(corpus):
    items = [load_ghost_input(path, SIZE) for path, _ in corpus[:3] + corpus[6:8]]  # 4:2:0 and 4:4:4 files
    assert [i.keep_subsampling for i in items] == [2, 2, 2, 0, 0]
    planes = torch.stack([i.planes for i in items])
    tables = torch.stack([i.keep_tables for i in items])
    codes = [i.keep_subsampling for i in items]
    alone = torch.cat([ghost_maps(planes[i:i + 1], tables[i:i + 1], codes[i:i + 1]) for i in range(len(items))])
    for chunk in (None, SIZE * SIZE):  # one chunk of all, and one image a chunk
        torch.testing.assert_close(ghost_maps(planes, tables, codes, chunk_pixels=chunk), alone, atol=1e-4, rtol=1e-4)


def test_rgb_input_gives_the_same_quality_maps(corpus):
    item = load_ghost_input(corpus[6][0], SIZE)
    planes = item.planes[None]
    from_ycbcr = ghost_maps(planes, item.keep_tables[None], [0])
    from_rgb = ghost_maps(ycbcr_to_rgb(planes).to(torch.uint8), item.keep_tables[None], [0], color="rgb")
    torch.testing.assert_close(from_rgb[:, 3:], from_ycbcr[:, 3:], atol=1e-3, rtol=1e-4)
    assert not torch.allclose(from_rgb[:, :3], from_ycbcr[:, :3])  # keep reads the file's steps from YCbCr only


def test_grayscale_files_have_flat_chroma(corpus):
    path = corpus[-1][0]
    item = load_ghost_input(path, SIZE)
    assert torch.all(item.planes[1:] == 128)
    maps = _fast_raw(path)
    assert maps[1::3].max() < 1e-6 and maps[2::3].max() < 1e-6 and maps[3::3].min() > 0.01


def test_files_only_the_reference_handles(tmp_path):
    Image.new("CMYK", (32, 32), (10, 20, 30, 40)).save(tmp_path / "cmyk.jpg")
    with pytest.raises(NeedsReference, match="CMYK components") as caught:
        load_ghost_input(tmp_path / "cmyk.jpg", SIZE)
    assert caught.value.reason == "CMYK components"
    assert jpeg_ghosts.raw_maps(tmp_path / "cmyk.jpg", SIZE).shape == (33, 4, 4)  # where it goes instead


def test_bad_files_get_the_references_reasons(tmp_path):
    texture((32, 32), 0).save(tmp_path / "a.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    texture((64, 64), 0).save(tmp_path / "whole.jpg", quality=80)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    texture((6, 6), 0).save(tmp_path / "tiny.jpg")
    for name, reason in [("a.png", "not a JPEG"), ("empty.jpg", "empty file"), ("cut.jpg", "truncated"),
                         ("tiny.jpg", "too small"), ("missing.jpg", "unreadable")]:
        with pytest.raises(InvalidImageError, match=reason):
            load_ghost_input(tmp_path / name, SIZE)
        with pytest.raises(InvalidImageError, match=reason):
            jpeg_ghosts.raw_maps(tmp_path / name, SIZE)


def test_bad_arguments_are_refused():
    planes = torch.zeros((2, 3, 16, 16), dtype=torch.uint8)
    tables = torch.ones((2, 3, 64))
    with pytest.raises(ValueError, match="uint8"):
        ghost_maps(planes.float(), tables, [0, 0])
    with pytest.raises(ValueError, match="color"):
        ghost_maps(planes, tables, [0, 0], color="hsv")
    with pytest.raises(ValueError, match="keep_tables"):
        ghost_maps(planes, tables[:1], [0, 0])
    with pytest.raises(ValueError, match="keep_subsampling"):
        ghost_maps(planes, tables, [0, 3])
    with pytest.raises(ValueError, match="8x8"):
        ghost_maps(planes[..., :4], tables, [0, 0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_maps_match_the_cpu(corpus):
    items = [load_ghost_input(path, SIZE) for path, _ in corpus[:3]]
    planes = torch.stack([i.planes for i in items])
    tables = torch.stack([i.keep_tables for i in items])
    codes = [i.keep_subsampling for i in items]
    cpu = ghost_maps(planes, tables, codes)
    gpu = ghost_maps(planes.cuda(), tables.cuda(), codes)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)
    normalized = maps_of_inputs(items, SIZE, device="cuda")
    torch.testing.assert_close(normalized.cpu(), maps_of_inputs(items, SIZE), atol=1e-3, rtol=1e-3)


def test_ghosts_suite_reports_speed_ratio_and_correlation(corpus, tmp_path):
    from realfake.benchmarks import suite_ghosts, suites

    assert suites.SUITE_MODULES["ghosts"] == "realfake.benchmarks.suite_ghosts"
    Image.new("CMYK", (32, 32)).save(tmp_path / "cmyk.jpg")  # taken by the reference, counted
    paths = [str(corpus[0][0]), str(corpus[6][0]), str(tmp_path / "cmyk.jpg")]
    listed = suite_ghosts.run(quick=True, device="cpu", paths=paths, repeats=1)
    figures = {f.name: f for f in listed}
    assert len(figures) == len(listed)  # no figure listed twice
    for name in ("maps@600/reference-1t", "maps@600/torch-1t", "maps@600/torch-2t", "maps@600/torch-maps-1t",
                 "decode@600/torch-load-1t", "maps@600/torch-1t-retained"):
        assert figures[f"ghosts/{name}"].median > 0 and figures[f"ghosts/{name}"].unit == "files/s"
    assert figures["ghosts/maps@600/torch_vs_reference-1t"].unit == "x"
    assert figures["ghosts/maps@600/exact-1t"].median > 0 and figures["ghosts/maps@600/exact_vs_reference-1t"].unit == "x"
    assert figures["ghosts/cpu@600/exact-1t"].unit == "ms CPU/file"
    cpu = figures["ghosts/cpu@600/torch-maps-1t"]
    assert cpu.unit == "ms CPU/file" and not cpu.higher_is_better and cpu.median > 0
    assert figures["ghosts/maps@600/torch-1t"].params["fallbacks"] == 1
    assert {f"ghosts/corr@600/q{q}-{g}" for q in (50, 95) for g in ("Y", "chroma")} <= set(figures)
    assert figures["ghosts/corr@600/q50-Y"].repeats == 2 and figures["ghosts/corr@600/q50-Y"].median > 0.5
