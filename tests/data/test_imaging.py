"""Image file reading edge cases and contact sheets."""

import struct
import zlib

import numpy as np
import pytest

from nervi_hpc.data.imaging import contact_sheet, read_image, write_png
from nervi_hpc.errors import SourceError


def write_png16(path, width=4, height=3):
    """A 16-bit RGB PNG (PIL can read but not write one)."""
    rows = b"".join(b"\x00" + np.full((width, 3), 1000, ">u2").tobytes() for _ in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_16_bit_rgb_is_refused_instead_of_truncated(tmp_path):
    write_png16(tmp_path / "deep.png")
    with pytest.raises(SourceError, match=r"deep\.png: RGB image with 16 bits per channel"):
        read_image(tmp_path / "deep.png")


def test_png_round_trip_with_alpha(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    alpha = np.arange(35, dtype=np.uint8).reshape(5, 7)
    write_png(tmp_path / "a.png", rgb, alpha)
    back_rgb, back_alpha = read_image(tmp_path / "a.png")
    assert np.array_equal(back_rgb, rgb) and np.array_equal(back_alpha, alpha)


def test_contact_sheet_tiles_images_in_rows():
    images = [np.full((6, 10, 3), 10 * k, np.uint8) for k in range(5)]
    sheet = contact_sheet(images, columns=3, gap=2)
    assert sheet.shape == (2 * (6 + 2) + 2, 3 * (10 + 2) + 2, 3)
    assert (sheet[2:8, 2:12] == 0).all() and (sheet[10:16, 14:24] == 40).all()
