"""The .nervi archive: exact round trips, a cheap header read, and ArchiveError (nothing else)
for every damaged, truncated, forged or junk file."""

import base64
import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nervi_hpc.codec import archive
from nervi_hpc.codec.archive import (FORMAT_VERSION, MAGIC, MAX_HEADER_BYTES, PREFIX, compression_ratio,
                                     read_archive, read_header, write_archive)
from nervi_hpc.codec.quantize import QuantizedModel, QuantizedTensor, dequantize, quantize
from nervi_hpc.errors import ArchiveError

META = {"model": {"c1": 16, "c2": 32, "factors": [4, 2]}, "parameters": {"names": ["t", "theta", "phi"],
        "ranges": [[0.0, 1.0], [-0.1234567890123, 3.14159]], "grids": [[0.1, 0.2, 0.30000000000000004]]},
        "image_size": [32, 48], "background": [255, 255, 255], "mode": "IR", "note": "π → ü",
        "eval": {"psnr": 31.25, "ms_ssim": 0.987654321}}


def small_model() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 40))
    model(torch.randn(8, 3, 4, 4))  # training-mode pass: BatchNorm statistics move
    return model.eval()


@pytest.fixture(scope="module")
def quantized():
    return quantize(small_model().state_dict(), 9)


@pytest.fixture(scope="module")
def good(tmp_path_factory, quantized) -> Path:
    path = tmp_path_factory.mktemp("archive") / "model.nervi"
    write_archive(path, quantized, META)
    return path


def split(data: bytes) -> tuple[dict, bytes]:
    """(header JSON, payload) of a well-formed archive's bytes."""
    header_len = struct.unpack_from("<Q", data, 10)[0]
    return json.loads(data[PREFIX.size:PREFIX.size + header_len]), data[PREFIX.size + header_len:]


def forge(header: dict, payload: bytes) -> bytes:
    """A file with valid framing and header checksum around whatever `header` says."""
    return archive._frame(json.dumps(header).encode(), payload)


def assert_refused(path: Path, data: bytes, *, header_too: bool = True):
    path.write_bytes(data)
    readers = (read_archive, read_header) if header_too else (read_archive,)
    for reader in readers:
        with pytest.raises(ArchiveError) as caught:
            reader(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and "\n" not in message


def test_round_trip_is_bit_identical_to_dequantize(good, quantized):
    meta, state, info = read_archive(good)
    expected = dequantize(quantized)
    assert list(state) == list(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == torch.float32 and torch.equal(state[name], tensor), name
    assert meta == META
    assert info.bits == 9 and info.parameter_count == quantized.parameter_count and info.version == FORMAT_VERSION
    assert info.file_bytes == good.stat().st_size == PREFIX.size + info.header_bytes + info.payload_bytes
    assert info.dropped == ("1.num_batches_tracked",)
    assert info.bits_per_parameter == pytest.approx(8 * info.file_bytes / quantized.parameter_count)


def per_channel(quantized: QuantizedModel) -> QuantizedModel:
    """`quantized` as format 1 stored it: a (min, scale) pair per output channel of each tensor of
    ≥ 2 dims, the symbols requantised against them."""
    tensors = {}
    for name, t in quantized.tensors.items():
        values = dequantize_one(t)
        rows = values.reshape(t.shape[0] if len(t.shape) >= 2 else 1, -1)
        low, high = rows.min(axis=1), rows.max(axis=1)
        scale = ((high - low) / 511).astype(np.float32)
        symbols = np.rint((rows - low[:, None]) / np.where(scale > 0, scale, 1)[:, None])
        tensors[name] = QuantizedTensor(t.shape, t.dtype, low.astype(np.float32), scale,
                                        symbols.astype(np.uint16).reshape(-1))
    return QuantizedModel(quantized.bits, tensors, quantized.dropped)


def dequantize_one(t: QuantizedTensor) -> np.ndarray:
    return dequantize(QuantizedModel(9, {"t": t}))["t"].numpy().astype(np.float64)


def test_format_1_archives_with_a_range_per_channel_are_still_read(quantized, tmp_path):
    old = per_channel(quantized)
    path = tmp_path / "format-1.nervi"
    write_archive(path, old, META)
    data = bytearray(path.read_bytes())
    with pytest.raises(ArchiveError, match="must be base64 of 1 float32"):
        read_archive(path)  # format 2 has one range a tensor
    struct.pack_into("<H", data, len(MAGIC), 1)
    path.write_bytes(bytes(data))
    meta, state, info = read_archive(path)
    assert info.version == 1 and meta == META
    assert any(t.rows > 1 for t in old.tensors.values())
    for name, tensor in dequantize(old).items():
        assert torch.equal(state[name], tensor), name


def test_model_from_the_archive_gives_the_same_outputs(good, quantized):
    x = torch.randn(3, 3, 4, 4)
    from_archive, in_memory = small_model(), small_model()
    from_archive.load_state_dict(read_archive(good)[1], strict=False)
    in_memory.load_state_dict(dequantize(quantized), strict=False)
    with torch.no_grad():
        assert torch.equal(from_archive(x), in_memory(x))


def test_write_returns_the_size_and_leaves_no_temporary_files(tmp_path, quantized):
    path = tmp_path / "sub" / "m.nervi"
    first = write_archive(path, quantized, {"run": 1})
    second = write_archive(path, quantized, {"run": 22})
    assert second == path.stat().st_size == first + 1
    assert [p.name for p in path.parent.iterdir()] == ["m.nervi"]
    assert read_header(path)["meta"] == {"run": 22}


def test_header_is_read_without_the_payload(good, quantized, tmp_path):
    data = bytearray(good.read_bytes())
    data[-1] ^= 0xFF  # a damaged payload does not stop the header read, only the full read
    damaged = tmp_path / "damaged.nervi"
    damaged.write_bytes(bytes(data))
    header = read_header(damaged)
    assert header["meta"] == META
    assert header["codec"]["bits"] == 9 and len(header["codec"]["tensors"]) == len(quantized.tensors)
    with pytest.raises(ArchiveError, match="payload checksum"):
        read_archive(damaged)


def test_min_and_scale_are_stored_exactly(good, quantized):
    tensors = read_header(good)["codec"]["tensors"]
    for entry in tensors:
        stored = np.frombuffer(base64.b64decode(entry["min"]), dtype="<f4")
        np.testing.assert_array_equal(stored, quantized.tensors[entry["name"]].minimum)
        assert entry["shape"] == list(quantized.tensors[entry["name"]].shape)


@pytest.mark.parametrize("meta", [{"psnr": float("inf")}, {"x": float("nan")}, {"obj": object()}, [1, 2], "text"])
def test_metadata_must_be_a_plain_json_object(tmp_path, quantized, meta):
    with pytest.raises(ArchiveError, match="metadata"):
        write_archive(tmp_path / "m.nervi", quantized, meta)
    assert not list(tmp_path.iterdir())


def test_empty_model_round_trips(tmp_path):
    path = tmp_path / "empty.nervi"
    write_archive(path, quantize({}, 9), {})
    assert read_archive(path)[:2] == ({}, {})


def test_random_byte_flips_anywhere_are_detected(good, tmp_path):
    data = good.read_bytes()
    rng = np.random.default_rng(11)
    positions = list(range(PREFIX.size)) + rng.integers(0, len(data), 150).tolist()
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= int(rng.integers(1, 256))
        assert_refused(tmp_path / f"flip-{position}.nervi", bytes(damaged), header_too=False)


def test_truncations_at_every_boundary_and_random_points_are_detected(good, tmp_path):
    data = good.read_bytes()
    header_end = PREFIX.size + struct.unpack_from("<Q", data, 10)[0]
    cuts = {0, 1, 7, 8, 9, 10, 11, 17, 18, 19, 49, PREFIX.size - 1, PREFIX.size, PREFIX.size + 1,
            header_end - 1, header_end, header_end + 1, header_end + 4, len(data) - 1}
    cuts |= set(np.random.default_rng(12).integers(0, len(data), 40).tolist())
    for cut in sorted(cuts):
        assert_refused(tmp_path / f"cut-{cut}.nervi", data[:cut])
    assert_refused(tmp_path / "longer.nervi", data + b"\0")


def test_junk_files_are_refused(tmp_path):
    rng = np.random.default_rng(13)
    for i, size in enumerate(rng.integers(0, 400, 30).tolist()):
        junk = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert_refused(tmp_path / f"junk-{i}", junk)
        assert_refused(tmp_path / f"magic-junk-{i}", MAGIC + junk)
    assert_refused(tmp_path / "pickle", b"\x80\x04\x95" + bytes(60))
    assert_refused(tmp_path / "empty", b"")


def test_missing_file_and_directory_are_archive_errors(tmp_path):
    for path in (tmp_path / "missing.nervi", tmp_path):
        with pytest.raises(ArchiveError, match="cannot read"):
            read_header(path)


def test_wrong_magic_version_and_declared_lengths_are_refused(good, tmp_path):
    data = good.read_bytes()
    header_len = struct.unpack_from("<Q", data, 10)[0]
    header_sha = data[18:50]
    rest = data[PREFIX.size:]

    def prefix(magic=MAGIC, version=FORMAT_VERSION, length=header_len, sha=header_sha):
        return struct.pack("<8sHQ32s", magic, version, length, sha)

    cases = {
        "magic": prefix(magic=b"NERVI\0\n\r") + rest, "png": b"\x89PNG\r\n\x1a\n" + data[8:],
        "version 0": prefix(version=0) + rest, "version next": prefix(version=FORMAT_VERSION + 1) + rest,
        "version 1 with one range a tensor": prefix(version=1) + rest,
        "version max": prefix(version=0xFFFF) + rest, "length max": prefix(length=2 ** 64 - 1) + rest,
        "length 2^40": prefix(length=1 << 40) + rest, "length over limit": prefix(length=MAX_HEADER_BYTES + 1) + rest,
        "length of file": prefix(length=len(data)) + rest, "length short": prefix(length=header_len - 1) + rest,
    }
    for name, forged in cases.items():
        assert_refused(tmp_path / f"{name}.nervi", forged)


def header_mutations():
    """name → function that damages a parsed header in place (the file is then re-framed)."""
    def set_codec(key, value):
        return lambda h: h["codec"].__setitem__(key, value)

    def set_tensor(key, value, index=0):
        return lambda h: h["codec"]["tensors"][index].__setitem__(key, value)

    nan_floats = base64.b64encode(np.full(8, np.nan, dtype="<f4").tobytes()).decode()
    negative = base64.b64encode(np.full(8, -1.0, dtype="<f4").tobytes()).decode()
    return {
        "top list": lambda h: h.clear() or h.update({"x": []}),
        "meta list": lambda h: h.__setitem__("meta", [1]),
        "extra top key": lambda h: h.__setitem__("more", 1),
        "codec list": lambda h: h.__setitem__("codec", []),
        "codec missing key": lambda h: h["codec"].pop("symbols"),
        "codec extra key": set_codec("surprise", 1),
        "bits string": set_codec("bits", "9"), "bits float": set_codec("bits", 9.0),
        "bits bool": set_codec("bits", True), "bits 1": set_codec("bits", 1), "bits 17": set_codec("bits", 17),
        "bits too few for symbols": set_codec("bits", 4),
        "symbols negative": set_codec("symbols", -1), "symbols huge": set_codec("symbols", 10 ** 15),
        "symbols off by one": lambda h: h["codec"].__setitem__("symbols", h["codec"]["symbols"] + 1),
        "payload bytes huge": set_codec("payload_bytes", 1 << 62),
        "payload bytes string": set_codec("payload_bytes", "12"),
        "sha short": set_codec("payload_sha256", "abc"), "sha upper": set_codec("payload_sha256", "A" * 64),
        "sha wrong": set_codec("payload_sha256", "0" * 64),
        "dropped string": set_codec("dropped", "x"), "dropped ints": set_codec("dropped", [1]),
        "code table list": set_codec("code_table", [1, 2]),
        "code table incomplete": set_codec("code_table", {"symbols": [1, 2, 3], "lengths": [1, 2, 3]}),
        "tensors dict": set_codec("tensors", {}), "tensor list": lambda h: h["codec"]["tensors"].__setitem__(0, []),
        "tensor missing key": lambda h: h["codec"]["tensors"][0].pop("scale"),
        "tensor duplicated": lambda h: h["codec"]["tensors"].__setitem__(1, dict(h["codec"]["tensors"][0])),
        "tensor removed": lambda h: h["codec"]["tensors"].pop(),
        "name int": set_tensor("name", 5), "name empty": set_tensor("name", ""),
        "shape string": set_tensor("shape", "8,3,3,3"), "shape negative": set_tensor("shape", [-8, 3, 3, 3]),
        "shape float": set_tensor("shape", [8.0, 3, 3, 3]), "shape bool": set_tensor("shape", [8, 3, 3, True]),
        "shape rank 9": set_tensor("shape", [8, 3, 3, 3, 1, 1, 1, 1, 1]),
        "shape huge": set_tensor("shape", [1 << 39, 1 << 39]), "shape too big": set_tensor("shape", [8, 3, 3, 4]),
        "shape giant dim": set_tensor("shape", [10 ** 20, 1]),
        "dtype int": set_tensor("dtype", "int64"), "dtype none": set_tensor("dtype", None),
        "min not base64": set_tensor("min", "!" * 44), "min short": set_tensor("min", "AAAA"),
        "min list": set_tensor("min", [0.0] * 8), "min nan": set_tensor("min", nan_floats),
        "scale negative": set_tensor("scale", negative),
    }


@pytest.mark.parametrize("name", list(header_mutations()))
def test_headers_with_wrong_types_or_values_are_refused(good, tmp_path, name):
    header, payload = split(good.read_bytes())
    header_mutations()[name](header)
    assert_refused(tmp_path / "forged.nervi", forge(header, payload), header_too=name != "sha wrong")


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000,
                                 b'{"meta": NaN, "codec": {}}', b"[1, 2]", b"", b"null"])
def test_malformed_json_is_refused(good, tmp_path, raw):
    _, payload = split(good.read_bytes())
    assert_refused(tmp_path / "bad-json.nervi", archive._frame(raw, payload))


def test_payload_rewritten_with_a_matching_checksum_is_refused_or_decodes_to_the_right_shapes(good, tmp_path):
    header, payload = split(good.read_bytes())
    rng = np.random.default_rng(14)
    shapes = {t["name"]: tuple(t["shape"]) for t in header["codec"]["tensors"]}
    for i in range(40):
        damaged = bytearray(payload)
        damaged[int(rng.integers(0, len(payload)))] ^= int(rng.integers(1, 256))
        header["codec"]["payload_sha256"] = hashlib.sha256(damaged).hexdigest()
        path = tmp_path / f"resealed-{i}.nervi"
        path.write_bytes(forge(header, bytes(damaged)))
        try:
            _, state, _ = read_archive(path)
        except ArchiveError:
            continue
        assert {name: tuple(t.shape) for name, t in state.items()} == shapes


def test_compression_ratio_is_raw_rgb_bytes_over_archive_bytes():
    assert compression_ratio(10, 64, 32, 1000) == pytest.approx(10 * 64 * 32 * 3 / 1000)
    assert compression_ratio(1, 1024, 1024, 3 * 1024 * 1024) == 1.0
    with pytest.raises(ValueError):
        compression_ratio(1, 2, 2, 0)


def test_codec_never_uses_pickle_or_eval(good):
    forbidden = re.compile(r"(import|from)\s+(pickle|marshal|shelve|dill)\b|torch\.(load|save)\(|"
                           r"\b(eval|exec)\(|\.(save|load)\(")
    for source in Path(archive.__file__).parent.glob("*.py"):
        assert not forbidden.search(source.read_text()), source.name
    assert good.read_bytes().startswith(MAGIC)
