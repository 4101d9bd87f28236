"""The JPEG header reader (pipelines/jpeg_headers.py): tables as PIL reads them, frames, components,
and the reasons a file goes to the reference ghost maps."""
import io
import struct

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin
from realfake.pipelines import jpeg_headers
from realfake.pipelines.jpeg_headers import (
    JpegHeaderError,
    fast_maps_problem,
    fast_maps_problem_of,
    keep_tables,
    read_header,
)


def _image(size=(40, 32), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1] // 4 + 1, size[0] // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize(size, Image.BICUBIC).convert(mode)


def _jpeg(image=None, **save) -> bytes:
    buf = io.BytesIO()
    (image or _image()).save(buf, format="JPEG", **save)
    return buf.getvalue()


def _segment(data: bytes, marker: int) -> int:
    """Offset of the first marker segment `marker` (0xC0, 0xDB, ...) before the scan."""
    pos = 2
    while data[pos + 1] != 0xDA:
        if data[pos + 1] == marker:
            return pos
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    raise AssertionError(f"no marker 0xff{marker:02x}")


def _sof(data: bytes) -> int:
    return next(pos for pos in (_find(data, m) for m in (0xC0, 0xC1, 0xC2)) if pos is not None)


def _find(data: bytes, marker: int) -> int | None:
    try:
        return _segment(data, marker)
    except AssertionError:
        return None


def _patched(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1:]


CUSTOM = [[(i * 7) % 50 + 1 for i in range(64)], [(i * 3) % 90 + 2 for i in range(64)],
          [(i * 5) % 70 + 3 for i in range(64)]]

ENCODINGS = [
    pytest.param(dict(quality=q, subsampling=s), id=f"q{q}-{s}") for q in (10, 50, 75, 95, 100)
    for s in ("4:4:4", "4:2:2", "4:2:0")
] + [
    pytest.param(dict(quality=80, progressive=True), id="progressive"),
    pytest.param(dict(quality=80, optimize=True), id="optimize"),
    pytest.param(dict(quality=80, progressive=True, optimize=True), id="progressive-optimize"),
    pytest.param(dict(qtables=CUSTOM[:2]), id="custom-tables"),
    pytest.param(dict(qtables=CUSTOM), id="three-tables"),
    pytest.param(dict(qtables=CUSTOM[:1]), id="one-table"),
    pytest.param(dict(qtables=[[300 + i for i in range(64)], CUSTOM[1]]), id="16-bit-table"),
    pytest.param(dict(quality=70, mode="L"), id="grayscale"),
    pytest.param(dict(quality=70, mode="L", progressive=True), id="grayscale-progressive"),
]


@pytest.mark.parametrize("save", ENCODINGS)
def test_header_matches_what_pil_reads(save):
    save = dict(save)
    data = _jpeg(_image(mode=save.pop("mode", "RGB")), **save)
    header = read_header(data)
    with Image.open(io.BytesIO(data)) as img:
        assert header.quantization == img.quantization  # natural order, ids as keys
        assert header.pil_subsampling == JpegImagePlugin.get_sampling(img)
        assert (header.width, header.height) == img.size
        assert len(header.components) == len(img.layer)
        assert header.process == ("progressive" if img.info.get("progressive") else header.process)
    assert header.precision == 8 and not header.arithmetic and not header.differential
    assert header.sof in (0xC0, 0xC1, 0xC2)
    assert fast_maps_problem(header) is None


def test_table_order_is_natural_not_zigzag():
    # PIL's qtables and Image.quantization are row-major; the file stores zig-zag order.
    table = list(range(1, 65))
    data = _jpeg(qtables=[table, table])
    assert read_header(data).quantization[0] == table
    stored = data[_segment(data, 0xDB) + 5:_segment(data, 0xDB) + 5 + 64]
    assert list(stored[:4]) == [1, 2, 9, 17]  # zig-zag: (0,0), (0,1), (1,0), (2,0)


def test_frame_and_components():
    header = read_header(_jpeg(_image((48, 24)), quality=90, subsampling="4:2:0", progressive=True))
    assert (header.width, header.height, header.process, header.sof) == (48, 24, "progressive", 0xC2)
    assert [(c.h, c.v, c.table) for c in header.components] == [(2, 2, 0), (1, 1, 1), (1, 1, 1)]
    assert header.sampling == "4:2:0" and header.color == "ycbcr" and header.jfif
    assert read_header(_jpeg(quality=90, subsampling="4:2:2")).sampling == "4:2:2"
    assert read_header(_jpeg(_image(mode="L"))).sampling == "gray"
    assert read_header(_jpeg(quality=90, progressive=False)).process == "baseline"


def test_path_and_bytes_agree(tmp_path):
    data = _jpeg(quality=60)
    (tmp_path / "a.jpg").write_bytes(data)
    assert read_header(tmp_path / "a.jpg") == read_header(data) == read_header(memoryview(data))


def test_restart_interval_and_exif_orientation():
    image = _image()
    exif = image.getexif()
    exif[0x0112] = 6
    data = _jpeg(image, exif=exif.tobytes())
    # A DRI marker (restart every 4 MCUs) before the frame.
    with_dri = data[:2] + b"\xff\xdd\x00\x04\x00\x04" + data[2:]
    header = read_header(with_dri)
    assert header.restart_interval == 4 and header.orientation == 6
    with Image.open(io.BytesIO(data)) as img:
        assert img.getexif().get(0x0112) == header.orientation
    assert read_header(_jpeg()).orientation == 1


def test_big_endian_exif_orientation():
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + struct.pack(">HHIHH", 0x0112, 3, 1, 8, 0) + b"\x00" * 4
    app1 = b"Exif\x00\x00" + tiff
    data = _jpeg()
    data = data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]
    assert read_header(data).orientation == 8
    with Image.open(io.BytesIO(data)) as img:
        assert img.getexif().get(0x0112) == 8


@pytest.mark.parametrize("save", [
    dict(quality=80, subsampling="4:4:4"), dict(quality=80, subsampling="4:2:0"), dict(quality=80, subsampling="4:2:2"),
    dict(qtables=CUSTOM), dict(qtables=CUSTOM[:1]), dict(qtables=CUSTOM[:2]), dict(quality=70, mode="L"),
])
def test_keep_tables_are_what_a_keep_resave_writes(save):
    save = dict(save)
    data = _jpeg(_image(mode=save.pop("mode", "RGB")), **save)
    with Image.open(io.BytesIO(data)) as img:
        resaved = _jpeg(img, quality="keep")
    again = read_header(resaved)
    used = [again.quantization[c.table] for c in again.components]
    expected = keep_tables(read_header(data))
    assert used == expected[:len(used)]


def test_keep_tables_keep_values_within_what_libjpeg_writes():
    data = _jpeg(qtables=[[300] + [5] * 63, [5] * 64])  # table 0 is stored with 16-bit steps
    dqt = _segment(data, 0xDB)
    zero_dc = data[:dqt + 5] + b"\x00\x00" + data[dqt + 7:]  # table 0's DC step 0
    data = data[:dqt + 5] + struct.pack(">H", 40000) + data[dqt + 7:]  # more than libjpeg writes
    assert read_header(data).quantization[0][0] == 40000 and read_header(zero_dc).quantization[0][0] == 0
    assert keep_tables(read_header(data))[0][0] == 32767
    assert keep_tables(read_header(zero_dc))[0][0] == 1


# --------------------------------------------------------------------------- reasons to fall back

def test_supported_files_have_no_problem():
    for data in (_jpeg(subsampling="4:4:4"), _jpeg(subsampling="4:2:0"), _jpeg(subsampling="4:2:2"),
                 _jpeg(_image(mode="L")), _jpeg(progressive=True)):
        assert fast_maps_problem_of(data) is None


def test_cmyk_and_ycck_are_refused():
    cmyk = _jpeg(_image(mode="CMYK"))
    header = read_header(cmyk)
    assert header.color == "cmyk" and fast_maps_problem(header) == "CMYK components"
    adobe = _find(cmyk, 0xEE)
    assert adobe is not None
    ycck = _patched(cmyk, adobe + 4 + 11, 2)
    assert fast_maps_problem_of(ycck) == "YCCK components"


def test_rgb_coded_files_are_refused():
    app14 = b"Adobe" + b"\x00\x64\x00\x00\x00\x00" + b"\x00"  # transform 0: components stored as R, G, B
    data = _jpeg()
    data = data[:2] + b"\xff\xee" + struct.pack(">H", len(app14) + 2) + app14 + data[2:]
    assert read_header(data).color == "rgb"
    assert "RGB-coded" in fast_maps_problem_of(data)


@pytest.mark.parametrize(("marker", "reason"), [
    (0xC9, "arithmetic coding"), (0xCA, "arithmetic coding"), (0xC3, "lossless JPEG (no quantization)"),
    (0xC5, "hierarchical (differential) JPEG"),
])
def test_other_processes_are_refused(marker, reason):
    data = _jpeg(progressive=True)
    sof = _sof(data)
    patched = _patched(data, sof + 1, marker)
    assert fast_maps_problem_of(patched) == reason


def test_12_bit_samples_are_refused():
    data = _jpeg()
    patched = _patched(data, _sof(data) + 4, 12)
    header = read_header(patched)
    assert header.precision == 12 and fast_maps_problem(header) == "12-bit samples (8-bit only)"


def test_unusual_sampling_and_missing_tables_are_refused():
    data = _jpeg(subsampling="4:2:0")
    sof = _sof(data)
    cb_factors = sof + 4 + 6 + 3 + 1  # second component's sampling byte
    assert fast_maps_problem_of(_patched(data, cb_factors, 0x22)) == "sampling 2x2,2x2,1x1"
    assert fast_maps_problem_of(_patched(data, sof + 4 + 6 + 1, 0x12)) == "sampling 4:4:0"  # luma 1x2
    assert fast_maps_problem_of(_patched(data, sof + 4 + 6 + 1, 0x41)) == "sampling 4:1:1"
    cr_table = sof + 4 + 6 + 6 + 2
    assert fast_maps_problem_of(_patched(data, cr_table, 3)) == "quantization table 3 not defined before the first scan"


def test_not_a_jpeg_truncated_and_corrupt_headers(tmp_path):
    png = io.BytesIO()
    _image().save(png, format="PNG")
    with pytest.raises(JpegHeaderError, match="not a JPEG"):
        read_header(png.getvalue())
    assert fast_maps_problem_of(b"") .startswith("not a JPEG")
    data = _jpeg()
    for cut in (3, 20, _sof(data) + 5):
        with pytest.raises(JpegHeaderError, match="truncated header"):
            read_header(data[:cut])
    assert fast_maps_problem_of(data[:_segment(data, 0xDB) + 10]).startswith("truncated header")
    with pytest.raises(JpegHeaderError, match="corrupt header"):
        read_header(data[:2] + b"\x00garbage" + data[2:])
    with pytest.raises(JpegHeaderError, match="corrupt header"):
        read_header(_patched(data, _segment(data, 0xDB) + 4, 0x20))  # precision 2
    with pytest.raises(JpegHeaderError, match="corrupt header"):
        read_header(_patched(data, _segment(data, 0xDB) + 4, 0x05))  # table id 5
    with pytest.raises(OSError):
        read_header(tmp_path / "missing.jpg")


def test_zigzag_is_a_permutation_of_the_block():
    assert sorted(jpeg_headers.ZIGZAG) == list(range(64))
    assert jpeg_headers.ZIGZAG[:6] == (0, 1, 8, 16, 9, 2)
