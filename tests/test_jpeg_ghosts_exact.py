"""The reference ghost maps as libjpeg's integer arithmetic (pipelines/jpeg_ghosts_exact.py): equal to
jpeg_ghosts.raw_maps bit for bit, so an engine trained on the reference reads them unchanged."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from _ghost_helpers import CIPLAB, one_torch_thread, pasted, texture, write_corpus
from PIL import Image
from realfake.pipelines import jpeg_ghosts
from realfake.pipelines.images import InvalidImageError
from realfake.pipelines.jpeg_ghosts_exact import (
    load_exact_input,
    maps_of_inputs,
    pillow_ycbcr,
    raw_maps,
    resave,
)
from realfake.pipelines.jpeg_ghosts_torch import NeedsReference

SIZE = 96


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """The colour files of the ghost-map corpus (4:2:0, 4:2:2, 4:4:4, baseline and progressive, qualities
    60-95, odd sizes, every third with a pasted square from a quality-40 copy), and two more: coarse
    tables (quality 20) and a crop off the MCU grid."""
    folder = tmp_path_factory.mktemp("exact")
    files = [path for path, _ in write_corpus(folder) if Image.open(path).mode == "RGB"]
    pasted(texture((96, 80), 20), 90, (16, 16, 48, 48)).save(folder / "q20.jpg", quality=20)
    texture((150, 150), 21).crop((3, 5, 140, 131)).save(folder / "offgrid.jpg", quality=88, subsampling="4:2:0")
    return [*files, folder / "q20.jpg", folder / "offgrid.jpg"]


def _exact(path, image_size=SIZE) -> np.ndarray:
    item = load_exact_input(path, image_size)
    return raw_maps(item.rgb[None], item.keep_tables[None], [item.keep_subsampling])[0].numpy()


def test_maps_equal_the_reference_bit_for_bit(corpus):
    for path in corpus:
        reference = jpeg_ghosts.raw_maps(path, SIZE)
        ours = _exact(path)
        assert ours.shape == reference.shape, path.name
        assert np.array_equal(ours, reference), (path.name, np.abs(ours - reference).max())


def test_larger_files_are_cropped_as_the_reference_crops(corpus):
    large = next(p for p in corpus if Image.open(p).size == (200, 136))
    assert np.array_equal(_exact(large, 64), jpeg_ghosts.raw_maps(large, 64))


@pytest.mark.skipif(not CIPLAB.is_dir(), reason="the CIPLAB set is not at ../shared/data/real_and_fake_face")
def test_ciplab_maps_equal_the_reference():
    files = sorted(CIPLAB.glob("training_real/*.jpg"))[:1] + sorted(CIPLAB.glob("training_fake/*.jpg"))[:1]
    for path in files:
        assert np.array_equal(_exact(path, 600), jpeg_ghosts.raw_maps(path, 600)), path.name


def test_resave_is_what_pil_decodes(corpus):
    rgb = np.array(Image.open(corpus[0]).convert("RGB"))
    for options, factors in ((dict(quality=70), (2, 2)), (dict(quality=90, subsampling="4:2:2"), (1, 2)),
                             (dict(quality=95, subsampling="4:4:4"), (1, 1))):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", **options)
        with Image.open(io.BytesIO(buf.getvalue())) as saved:
            tables = torch.tensor([saved.quantization[0], saved.quantization[1], saved.quantization[1]])
            decoded = np.asarray(saved.convert("RGB"))
        ours = resave(torch.from_numpy(rgb).permute(2, 0, 1)[None], tables[None], *factors)[0]
        assert np.array_equal(ours.permute(1, 2, 0).numpy(), decoded), options


def test_colour_conversion_is_pillows():
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ours = pillow_ycbcr(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.array_equal(ours, np.asarray(Image.fromarray(rgb).convert("YCbCr")))


def test_model_input_is_the_references_with_its_exif_turn(tmp_path):
    path = tmp_path / "turned.jpg"
    image = texture((128, 64), 5)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, format="JPEG", quality=90, exif=exif.tobytes())
    assert load_exact_input(path, SIZE).orientation == 6
    ours = maps_of_inputs([load_exact_input(path, SIZE)], SIZE)[0].numpy()
    np.testing.assert_allclose(ours, jpeg_ghosts.ghost_maps(path, SIZE), atol=1e-5, rtol=0)


def test_a_batch_gives_each_images_maps(corpus):
    items = [load_exact_input(p, SIZE) for p in corpus if Image.open(p).size == (96, 96)]
    assert {i.keep_subsampling for i in items} == {0, 1, 2}
    rgb = torch.stack([i.rgb for i in items])
    tables = torch.stack([i.keep_tables for i in items])
    codes = [i.keep_subsampling for i in items]
    alone = torch.cat([raw_maps(rgb[i:i + 1], tables[i:i + 1], codes[i:i + 1]) for i in range(len(items))])
    for chunk in (None, SIZE * SIZE):  # one chunk of all, and one image a chunk
        assert torch.equal(raw_maps(rgb, tables, codes, chunk_pixels=chunk), alone)
    batch = maps_of_inputs(items, SIZE)
    assert torch.equal(batch[1], maps_of_inputs(items[1:2], SIZE)[0])


def test_files_only_the_reference_handles(tmp_path):
    Image.new("CMYK", (32, 32), (10, 20, 30, 40)).save(tmp_path / "cmyk.jpg")
    texture((32, 32), 1).convert("L").save(tmp_path / "gray.jpg")
    with pytest.raises(NeedsReference, match="CMYK components"):
        load_exact_input(tmp_path / "cmyk.jpg", SIZE)
    with pytest.raises(NeedsReference, match="gray components"):
        load_exact_input(tmp_path / "gray.jpg", SIZE)


def test_bad_files_get_the_references_reasons(tmp_path):
    texture((32, 32), 0).save(tmp_path / "a.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    texture((64, 64), 0).save(tmp_path / "whole.jpg", quality=80)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    texture((6, 6), 0).save(tmp_path / "tiny.jpg")
    for name in ("a.png", "empty.jpg", "cut.jpg", "tiny.jpg"):
        with pytest.raises(InvalidImageError) as reference:
            jpeg_ghosts.raw_maps(tmp_path / name, SIZE)
        with pytest.raises(InvalidImageError) as ours:
            load_exact_input(tmp_path / name, SIZE)
        assert str(ours.value) == str(reference.value), name


def test_bad_arguments_are_refused():
    rgb = torch.zeros((2, 3, 16, 16), dtype=torch.uint8)
    tables = torch.ones((2, 3, 64), dtype=torch.int64)
    with pytest.raises(ValueError, match="uint8"):
        raw_maps(rgb.float(), tables, [0, 0])
    with pytest.raises(ValueError, match="keep_tables"):
        raw_maps(rgb, tables[:1], [0, 0])
    with pytest.raises(ValueError, match="keep_subsampling"):
        raw_maps(rgb, tables, [0, 3])
    with pytest.raises(ValueError, match="8x8"):
        raw_maps(rgb[..., :4], tables, [0, 0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_maps_equal_the_cpu(corpus):
    items = [load_exact_input(p, SIZE) for p in corpus if Image.open(p).size == (96, 96)]
    rgb = torch.stack([i.rgb for i in items])
    tables = torch.stack([i.keep_tables for i in items])
    codes = [i.keep_subsampling for i in items]
    gpu = raw_maps(rgb.cuda(), tables.cuda(), codes)
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.cpu(), raw_maps(rgb, tables, codes))
