"""Read a JPEG's header (its markers up to the first scan) without decoding it.

The batched ghost maps (`pipelines.jpeg_ghosts_torch`) need what a re-save "with the file's own
tables" would use: the quantization tables, the components' sampling factors and table ids, and
whether the file is a kind those maps handle at all. PIL only gives the tables after opening the file
as an image; this reads the marker segments directly (tens of microseconds a file, from bytes or a
path) and gives the tables in PIL's layout: `JpegHeader.quantization` equals PIL's
`Image.quantization`, a dict table id -> 64 values in natural (row-major) order. The file stores
them in zig-zag order.

`fast_maps_problem(header)` says why the fast maps cannot handle a file (None when they can); the
caller falls back to the PIL reference (`jpeg_ghosts.raw_maps`) for such files, so no file becomes
wrong maps silently. Marker layout: ITU-T T.81 (JPEG), Annex B; JFIF (APP0); Adobe's APP14 (colour
transform); EXIF (APP1, TIFF IFD0 for the orientation).
"""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field

# Natural (row-major) index of each zig-zag position: the order the file stores a table in.
ZIGZAG = (
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
)

# Start-of-frame markers: marker byte -> (process, arithmetic coding, differential/hierarchical).
SOF_KINDS = {
    0xC0: ("baseline", False, False),
    0xC1: ("extended", False, False),
    0xC2: ("progressive", False, False),
    0xC3: ("lossless", False, False),
    0xC5: ("extended", False, True),
    0xC6: ("progressive", False, True),
    0xC7: ("lossless", False, True),
    0xC9: ("extended", True, False),
    0xCA: ("progressive", True, False),
    0xCB: ("lossless", True, False),
    0xCD: ("extended", True, True),
    0xCE: ("progressive", True, True),
    0xCF: ("lossless", True, True),
}
SOI, EOI, SOS, DQT, DRI = 0xD8, 0xD9, 0xDA, 0xDB, 0xDD
APP0, APP1, APP14 = 0xE0, 0xE1, 0xEE
STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length


class JpegHeaderError(ValueError):
    """A header that cannot be read: not a JPEG, cut short, or with malformed marker segments."""


@dataclass(frozen=True)
class Component:
    id: int
    h: int  # horizontal sampling factor
    v: int  # vertical sampling factor
    table: int  # quantization table id


@dataclass(frozen=True)
class JpegHeader:
    sof: int  # the start-of-frame marker byte (0xC0 baseline, 0xC2 progressive, ...)
    process: str  # baseline | extended | progressive | lossless
    arithmetic: bool  # arithmetic entropy coding (else Huffman)
    differential: bool  # hierarchical (differential) frame
    precision: int  # bits per sample
    width: int
    height: int  # 0 when the height follows in a DNL marker
    components: tuple[Component, ...]
    quantization: dict[int, list[int]] = field(default_factory=dict)  # as PIL's Image.quantization
    restart_interval: int = 0
    adobe_transform: int | None = None  # APP14: 0 RGB/CMYK as stored, 1 YCbCr, 2 YCCK
    jfif: bool = False
    orientation: int = 1  # EXIF orientation, 1 when absent

    @property
    def sampling(self) -> str:
        """"gray", "4:4:4", "4:2:2", "4:2:0", "4:4:0", "4:1:1", or the factors ("2x2,1x1,1x1")."""
        if len(self.components) == 1:
            return "gray"
        factors = tuple((c.h, c.v) for c in self.components)
        if len(factors) == 3 and factors[1] == factors[2] == (1, 1):
            named = {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0", (1, 2): "4:4:0", (4, 1): "4:1:1"}
            if factors[0] in named:
                return named[factors[0]]
        return ",".join(f"{h}x{v}" for h, v in factors)

    @property
    def pil_subsampling(self) -> int:
        """What PIL's `JpegImagePlugin.get_sampling` says of this file: 0 (4:4:4), 1 (4:2:2),
        2 (4:2:0), -1 (anything else, and 1 or 4 components). A re-save with quality="keep" uses it,
        and PIL's default (4:2:0) for -1."""
        if len(self.components) != 3:
            return -1
        return {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}.get(self.sampling, -1)

    @property
    def color(self) -> str:
        """How the components are coded: gray, ycbcr, rgb, cmyk, ycck, or "N components"."""
        n = len(self.components)
        if n == 1:
            return "gray"
        if n == 3:
            ids = tuple(c.id for c in self.components)
            if self.adobe_transform == 0 or (self.adobe_transform is None and not self.jfif and ids == (82, 71, 66)):
                return "rgb"  # libjpeg's rule: Adobe transform 0, or component ids 'R','G','B' without JFIF
            return "ycbcr"
        if n == 4:
            return "ycck" if self.adobe_transform == 2 else "cmyk"
        return f"{n} components"


def read_header(source: bytes | bytearray | memoryview | str | os.PathLike) -> JpegHeader:
    """The header of the JPEG in `source` (its bytes, or a path), read up to the first scan.

    Raises JpegHeaderError ("not a JPEG", "truncated header", "corrupt header: ...") and OSError for a
    path that cannot be read."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse(io.BytesIO(bytes(source)))
    with open(source, "rb") as f:
        return _parse(f)


def _read(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise JpegHeaderError("truncated header: the data ends before the first scan")
    return data


def _parse(f) -> JpegHeader:
    if f.read(2) != b"\xff\xd8":
        raise JpegHeaderError("not a JPEG (no start-of-image marker)")
    frame = None
    quantization: dict[int, list[int]] = {}
    restart_interval, adobe_transform, jfif, orientation, exif_seen = 0, None, False, 1, False
    while True:
        byte = _read(f, 1)
        if byte != b"\xff":
            raise JpegHeaderError(f"corrupt header: byte 0x{byte[0]:02x} where a marker should start")
        marker = 0xFF
        while marker == 0xFF:  # any number of 0xFF fill bytes may precede a marker
            marker = _read(f, 1)[0]
        if marker in STANDALONE or marker == 0x00:
            continue
        if marker == SOI:
            raise JpegHeaderError("corrupt header: a second start-of-image marker before the first scan")
        if marker == EOI:
            raise JpegHeaderError("corrupt header: end of image before the first scan")
        (length,) = struct.unpack(">H", _read(f, 2))
        if length < 2:
            raise JpegHeaderError(f"corrupt header: marker 0xff{marker:02x} with length {length}")
        if marker == SOS:
            break
        if marker in (DQT, DRI, APP0, APP14) or marker in SOF_KINDS or (marker == APP1 and not exif_seen):
            payload = _read(f, length - 2)
        else:  # DHT, DAC, other APPn, COM, ...: not needed, skipped unread
            f.seek(length - 2, io.SEEK_CUR)
            continue
        if marker in SOF_KINDS:
            if frame is not None:
                raise JpegHeaderError("corrupt header: two start-of-frame markers")
            frame = _frame(marker, payload)
        elif marker == DQT:
            _tables(payload, quantization)
        elif marker == DRI:
            if len(payload) < 2:
                raise JpegHeaderError("corrupt header: short restart-interval marker")
            (restart_interval,) = struct.unpack(">H", payload[:2])
        elif marker == APP0:
            jfif = jfif or payload.startswith(b"JFIF\x00")
        elif marker == APP14:
            if payload.startswith(b"Adobe") and len(payload) >= 12:
                adobe_transform = payload[11]
        elif marker == APP1 and payload.startswith(b"Exif\x00\x00"):
            exif_seen = True  # like PIL, only the first EXIF segment counts
            orientation = _exif_orientation(payload[6:])
    if frame is None:
        raise JpegHeaderError("corrupt header: a scan before any start-of-frame marker")
    return JpegHeader(**frame, quantization=quantization, restart_interval=restart_interval,
                      adobe_transform=adobe_transform, jfif=jfif, orientation=orientation)


def _frame(marker: int, payload: bytes) -> dict:
    if len(payload) < 6:
        raise JpegHeaderError("corrupt header: short start-of-frame marker")
    precision, height, width, n = struct.unpack(">BHHB", payload[:6])
    if n == 0 or len(payload) < 6 + 3 * n:
        raise JpegHeaderError(f"corrupt header: start-of-frame marker with {n} components in {len(payload)} bytes")
    components = []
    for i in range(n):
        cid, factors, table = payload[6 + 3 * i:9 + 3 * i]
        h, v = factors >> 4, factors & 15
        if not (1 <= h <= 4 and 1 <= v <= 4):
            raise JpegHeaderError(f"corrupt header: component {cid} has sampling factors {h}x{v} (1-4 allowed)")
        components.append(Component(id=cid, h=h, v=v, table=table))
    process, arithmetic, differential = SOF_KINDS[marker]
    return dict(sof=marker, process=process, arithmetic=arithmetic, differential=differential, precision=precision,
                width=width, height=height, components=tuple(components))


def _tables(payload: bytes, quantization: dict[int, list[int]]) -> None:
    pos = 0
    while pos < len(payload):
        precision, table_id = payload[pos] >> 4, payload[pos] & 15
        if precision > 1 or table_id > 3:
            raise JpegHeaderError(f"corrupt header: quantization table id {table_id}, precision {precision} "
                                  "(ids 0-3, precision 0 or 1 allowed)")
        size = 64 * (precision + 1)
        values = payload[pos + 1:pos + 1 + size]
        if len(values) != size:
            raise JpegHeaderError("corrupt header: short quantization table")
        stored = struct.unpack(">64H" if precision else "64B", values)
        table = [0] * 64
        for zigzag_pos, natural in enumerate(ZIGZAG):
            table[natural] = stored[zigzag_pos]
        quantization[table_id] = table
        pos += 1 + size


def _exif_orientation(tiff: bytes) -> int:
    """Tag 0x0112 of IFD0 in an EXIF TIFF block; 1 when absent or unreadable."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            break
        tag, kind, n = struct.unpack(order + "HHI", tiff[entry:entry + 8])
        if tag == 0x0112 and kind == 3 and n >= 1:  # SHORT
            (value,) = struct.unpack(order + "H", tiff[entry + 8:entry + 10])
            return value if 1 <= value <= 8 else 1
    return 1


def fast_maps_problem(header: JpegHeader) -> str | None:
    """Why the batched ghost maps (`jpeg_ghosts_torch`) cannot handle this file, or None when they can.

    They compute what re-saving 8-bit YCbCr or grayscale samples with PIL does. Files of another kind
    go to the PIL reference: 12-bit samples, lossless or hierarchical frames (no such quantization),
    arithmetic coding (GPU decoders do not take it), CMYK/YCCK or RGB-coded components, sampling
    other than 4:4:4, 4:2:2 and 4:2:0 (the others, e.g. 4:4:0 and 4:1:1, are rare and were not
    measured against the reference), a component whose table is not defined before the first scan,
    and a height given only after the scan (DNL)."""
    if header.precision != 8:
        return f"{header.precision}-bit samples (8-bit only)"
    if header.process == "lossless":
        return "lossless JPEG (no quantization)"
    if header.differential:
        return "hierarchical (differential) JPEG"
    if header.arithmetic:
        return "arithmetic coding"
    if header.color not in ("gray", "ycbcr"):
        return {"rgb": "RGB-coded components (Adobe transform 0)", "cmyk": "CMYK components",
                "ycck": "YCCK components"}.get(header.color, header.color)
    if header.sampling not in ("gray", "4:4:4", "4:2:2", "4:2:0"):
        return f"sampling {header.sampling}"
    if header.width == 0 or header.height == 0:
        return "image size given after the first scan (DNL)"
    for component in header.components:
        if component.table not in header.quantization:
            return f"quantization table {component.table} not defined before the first scan"
    return None


def fast_maps_problem_of(source: bytes | bytearray | memoryview | str | os.PathLike) -> str | None:
    """`fast_maps_problem` of a file's bytes or path, with header read errors as their reason."""
    try:
        header = read_header(source)
    except JpegHeaderError as exc:
        return str(exc)
    return fast_maps_problem(header)


def keep_tables(header: JpegHeader) -> list[list[int]]:
    """The tables (Y, Cb, Cr; natural order) a PIL re-save with the file's own tables uses: PIL lists
    the tables by id (0, 1, ... while present), component i takes table min(i, last), and libjpeg keeps
    each value within 1..32767. Grayscale files give their one table three times."""
    listed = [header.quantization[i] for i in range(len(header.quantization)) if i in header.quantization]
    if not listed:
        raise JpegHeaderError("corrupt header: no quantization table before the first scan")
    return [[min(max(v, 1), 32767) for v in listed[min(i, len(listed) - 1)]] for i in range(3)]
