"""A PNG encoder for RGB pictures in a few lines (zlib and struct): no plotting dependency."""

from __future__ import annotations

import struct
import zlib

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode(width: int, height: int, rgb: bytes) -> bytes:
    """A PNG file of an 8-bit RGB picture given row by row, top first."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"{len(rgb)} bytes do not make a {width}x{height} RGB picture")
    stride = width * 3
    # Filter type 0 (none) in front of every row; zlib does the rest well on flat charts.
    rows = b"".join(b"\0" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )


def decode_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG file (for checks)."""
    if not data.startswith(_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)
