"""check_image / load_rgb / sha256_file on small generated files of every kind prepare meets."""
from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image
from realfake.pipelines.images import InvalidImageError, check_image, load_rgb
from realfake.pipelines.provenance import sha256_file


def _pixels(size=(24, 16), seed=0) -> np.ndarray:
    w, h = size
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _save(path, mode="RGB", fmt=None, size=(24, 16), **kw):
    img = Image.fromarray(_pixels(size))
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, fmt, **kw)
    return path


def _jpeg_bytes(size=(64, 64), **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pixels(size)).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, mode, fmt, kw",
    [
        ("rgb.jpg", "RGB", "JPEG", {}),
        ("progressive.jpg", "RGB", "JPEG", {"progressive": True}),
        ("grey.jpg", "L", "JPEG", {}),
        ("cmyk.jpg", "CMYK", "JPEG", {}),
        ("rgb.png", "RGB", "PNG", {}),
        ("rgba.png", "RGBA", "PNG", {}),
        ("palette.png", "P", "PNG", {}),
        ("grey.png", "L", "PNG", {}),
        ("rgb.bmp", "RGB", "BMP", {}),
        ("rgb.webp", "RGB", "WEBP", {}),
    ],
)
def test_valid_images_of_every_mode_load_as_rgb(tmp_path, name, mode, fmt, kw):
    path = _save(tmp_path / name, mode, fmt, **kw)
    info = check_image(path)
    assert (info.width, info.height, info.mode) == (24, 16, mode)
    assert info.format == fmt
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (24, 16)


def test_format_comes_from_content_not_name(tmp_path):
    path = _save(tmp_path / "really_a_png.jpg", fmt="PNG")
    assert check_image(path).format == "PNG"


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert check_image(path).mode.startswith("I")
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (8, 8, 3) and abs(int(rgb[0, 0, 0]) - 128) <= 1  # PIL's convert() would give 255


def test_exif_orientation_is_applied_like_dali(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 24x16, displayed 16x24
    path = tmp_path / "rotated.jpg"
    Image.fromarray(_pixels((24, 16))).save(path, exif=exif.tobytes())
    info = check_image(path)
    assert (info.width, info.height) == (16, 24)
    assert load_rgb(path).size == (16, 24)


def test_draft_decodes_jpeg_at_a_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg_bytes((256, 256)))
    assert load_rgb(path).size == (256, 256)
    assert load_rgb(path, draft_size=(64, 64)).size == (64, 64)  # 1/4 DCT scale still covers 64x64
    assert load_rgb(path, draft_size=(100, 100)).size == (128, 128)  # never below the target
    png = _save(tmp_path / "big.png", fmt="PNG", size=(64, 64))
    assert load_rgb(png, draft_size=(16, 16)).size == (64, 64)  # draft is a JPEG-only shortcut


def _reason(path, **kw) -> str:
    with pytest.raises(InvalidImageError) as info:
        check_image(path, **kw)
    err = info.value
    assert isinstance(err, ValueError) and err.path == str(path) and str(err) == f"{path}: {err.reason}"
    return err.reason


def test_reasons_for_bad_files(tmp_path):
    data = _jpeg_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    dht = data.index(b"\xff\xc4")  # garble a Huffman table: libjpeg cannot decode the scan
    corrupt[dht + 5: dht + 25] = b"\xff" * 20
    (tmp_path / "corrupt.jpg").write_bytes(bytes(corrupt))
    buf = io.BytesIO()
    Image.fromarray(_pixels((64, 64))).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    idat = png.index(b"IDAT")  # garble the compressed pixels
    png[idat + 20: idat + 60] = b"\xff" * 40
    (tmp_path / "corrupt.png").write_bytes(bytes(png))
    (tmp_path / "header_only.jpg").write_bytes(data[:20] + b"\0" * 200 + b"\xff\xd9")  # JPEG magic, junk, EOI
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 100)

    assert _reason(tmp_path / "empty.jpg") == "empty file"
    assert _reason(tmp_path / "truncated.jpg") == "truncated"
    assert _reason(tmp_path / "corrupt.jpg") == "corrupt"
    assert _reason(tmp_path / "corrupt.png") == "corrupt"
    assert _reason(tmp_path / "header_only.jpg") == "corrupt"
    assert _reason(tmp_path / "notes.jpg") == "not an image"
    assert _reason(tmp_path / ".DS_Store") == "not an image"


@pytest.mark.parametrize("fmt, name", [("GIF", "anim.gif"), ("TIFF", "scan.tif")])
def test_formats_outside_every_backend_are_unsupported(tmp_path, fmt, name):
    assert _reason(_save(tmp_path / name, fmt=fmt)) == "unsupported format"


def test_pixel_limit_guards_against_decompression_bombs(tmp_path):
    path = _save(tmp_path / "wide.png", fmt="PNG", size=(40, 30))
    assert check_image(path).width == 40  # default limit: PIL's ~89.5 megapixels
    assert _reason(path, max_pixels=40 * 30 - 1) == "too large"
    assert check_image(path, max_pixels=None).height == 30
    with pytest.raises(InvalidImageError, match="too large"):
        load_rgb(path, max_pixels=100)


def test_unreadable_paths_say_why(tmp_path):
    assert _reason(tmp_path / "missing.jpg").startswith("unreadable: ")
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    assert _reason(folder).startswith("unreadable: ")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files without permission")
def test_permission_denied_is_unreadable(tmp_path):
    path = tmp_path / "secret.jpg"
    path.write_bytes(_jpeg_bytes())
    path.chmod(0)
    try:
        assert _reason(path) == "unreadable: Permission denied"
    finally:
        path.chmod(0o644)


def test_load_rgb_raises_the_same_errors(tmp_path):
    data = _jpeg_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError, match="truncated"):
        load_rgb(tmp_path / "t.jpg")


def test_sha256_file_streams_the_whole_file(tmp_path):
    payload = os.urandom(10_000)
    path = tmp_path / "blob.bin"
    path.write_bytes(payload)
    expected = hashlib.sha256(payload).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk_size=7) == expected  # chunk boundaries do not matter


def test_header_problem_reads_headers_only(tmp_path):
    from realfake.pipelines.images import header_problem

    good = tmp_path / "good.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good)
    gif = tmp_path / "anim.jpg"
    Image.new("P", (8, 8)).save(gif, format="GIF")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, not a picture")
    assert header_problem(good) is None
    assert header_problem(good, max_pixels=100) == "too large"
    assert header_problem(gif) == "unsupported format"
    assert header_problem(tmp_path / "empty.jpg") == "empty file"
    assert header_problem(tmp_path / "text.jpg") == "not an image"
    assert header_problem(tmp_path / "missing.jpg").startswith("unreadable")
    # a JPEG cut off inside its headers: the same reason as a full decode gives
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InvalidImageError) as decoded:
        check_image(cut)
    assert header_problem(cut) == decoded.value.reason == "truncated"


def test_sniff_passes_accepted_formats_on_their_first_bytes_and_names_the_rest(tmp_path, monkeypatch):
    from realfake.pipelines import images

    accepted = []
    for fmt in ("JPEG", "PNG", "BMP", "WEBP"):
        path = tmp_path / f"ok.{fmt.lower()}"
        Image.new("RGB", (40, 30), (200, 10, 10)).save(path, format=fmt)
        accepted.append(path)
    bad = {"anim.jpg": "unsupported format", "empty.jpg": "empty file", "text.jpg": "not an image"}
    Image.new("P", (8, 8)).save(tmp_path / "anim.jpg", format="GIF")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, not a picture")
    for name, reason in bad.items():  # the same reasons as the full header check
        assert images.sniff_problem(tmp_path / name) == images.header_problem(tmp_path / name) == reason
    assert images.sniff_problem(tmp_path / "missing.jpg").startswith("unreadable")

    def no_pil(*args, **kwargs):
        raise AssertionError("PIL parsed a header that its first bytes vouch for")

    monkeypatch.setattr(images.Image, "open", no_pil)
    assert [images.sniff_problem(path) for path in accepted] == [None] * 4


def test_too_large_follows_max_pixels_and_pils_own_limit(monkeypatch):
    from realfake.pipelines.images import DEFAULT_MAX_PIXELS, too_large

    assert not too_large(600, 600) and too_large(DEFAULT_MAX_PIXELS + 1, 1)
    assert too_large(11, 10, max_pixels=100) and not too_large(10, 10, max_pixels=100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # PIL opens up to twice its limit
    assert too_large(101, 100, max_pixels=None) and not too_large(100, 100, max_pixels=None)
