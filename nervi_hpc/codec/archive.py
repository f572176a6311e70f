"""The `.nervi` archive: one self-describing file holding a quantised, Huffman-coded model.

Layout (integers little-endian):
    magic        8 bytes   b"NERVI\\0\\r\\n" (the NUL and CR LF expose text-mode transfers)
    version      u16       FORMAT_VERSION
    header_len   u64       size of the JSON header in bytes (at most MAX_HEADER_BYTES)
    header_sha   32 bytes  sha256 of the JSON header
    header       UTF-8 JSON {"meta": the caller's JSON object, "codec": what decoding needs}
    payload      one Huffman stream (huffman.py) of every tensor's symbols, in header order

One stream with one code table: each tensor's min/scale already maps it onto the same
0..2^b − 1 range, so per-tensor tables would buy little and cost a table each, and a single
stream decodes in one vectorised pass. The header's checksum sits in the fixed prefix (it cannot
sit inside the header) and the payload's sha256 in the header, so any changed byte is detected.

The codec header holds, per tensor, name, shape, dtype and its float32 min/scale as base64 of
little-endian float32 (exact): one pair per tensor in format 2, one per output channel (dim 0 of
a tensor of ≥ 2 dims) in format 1, which this build still reads; then the code table, symbol
count, payload size and sha256.
Reading treats the file as untrusted: no pickle or eval, every length is checked against the
file size before anything is allocated, and every problem is an ArchiveError naming the file.
The header alone bounds the payload's work: the code table has no more entries than there are
symbols, every channel's largest value min + (2^b − 1)·scale is a finite float32 (so every
decoded weight is finite), and a caller's `check` sees the header before the payload is read
(decode.py compares the tensor shapes with the declared model there).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..atomic import write_bytes
from ..errors import ArchiveError
from ..units import bits_per_parameter
from . import huffman
from .quantize import MAX_BITS, MIN_BITS, QuantizedModel, QuantizedTensor, dequantize

MAGIC = b"NERVI\0\r\n"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PREFIX = struct.Struct("<8sHQ32s")
MAX_HEADER_BYTES = 64 << 20
MAX_RANK = 8
DTYPES = ("float16", "bfloat16", "float32", "float64")
CODEC_KEYS = {"bits", "tensors", "dropped", "code_table", "symbols", "payload_bytes", "payload_sha256"}
TENSOR_KEYS = {"name", "shape", "dtype", "min", "scale"}


@dataclass(frozen=True)
class ArchiveInfo:
    """Facts about a read archive, for reports."""

    path: Path
    version: int
    file_bytes: int
    header_bytes: int
    payload_bytes: int
    bits: int
    parameter_count: int
    dropped: tuple[str, ...]

    @property
    def bits_per_parameter(self) -> float:
        """Whole file (header included) in bits per quantised parameter."""
        return bits_per_parameter(self.file_bytes, self.parameter_count)


def compression_ratio(count: int, height: int, width: int, archive_bytes: int) -> float:
    """Raw RGB bytes of `count` images of height × width over the archive's size."""
    if archive_bytes <= 0:
        raise ValueError(f"archive size must be positive, got {archive_bytes}")
    return count * height * width * 3 / archive_bytes


def write_archive(path: str | os.PathLike, q: QuantizedModel, meta: dict) -> int:
    """Write `q` with the caller's JSON `meta` to `path` atomically; returns the bytes written."""
    if not isinstance(meta, dict):
        raise ArchiveError(f"{path}: metadata must be a JSON object, got {type(meta).__name__}")
    symbols = np.concatenate([t.symbols for t in q.tensors.values()]) if q.tensors else np.zeros(0, np.uint16)
    payload, table = huffman.encode(symbols)
    codec = {
        "bits": q.bits,
        "tensors": [{"name": name, "shape": list(t.shape), "dtype": t.dtype,
                     "min": _b64_floats(t.minimum), "scale": _b64_floats(t.scale)}
                    for name, t in q.tensors.items()],
        "dropped": list(q.dropped),
        "code_table": table.to_json(),
        "symbols": int(symbols.size),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    try:
        header = json.dumps({"meta": meta, "codec": codec}, allow_nan=False, ensure_ascii=False,
                            separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:
        raise ArchiveError(f"{path}: metadata is not plain JSON ({e})") from None
    data = _frame(header, payload)
    write_bytes(path, data)
    return len(data)


def _frame(header: bytes, payload: bytes) -> bytes:
    return PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), hashlib.sha256(header).digest()) + header + payload


def _b64_floats(values: np.ndarray) -> str:
    return base64.b64encode(values.astype("<f4").tobytes()).decode("ascii")


def read_header(path: str | os.PathLike) -> dict:
    """The validated JSON header {"meta": ..., "codec": ...}, without reading the payload."""
    with _naming(path):
        with open(path, "rb") as f:
            return _read_header(f, os.fstat(f.fileno()).st_size)[0]


def read_archive(path: str | os.PathLike, check: Callable[[dict], object] | None = None
                 ) -> tuple[dict, dict[str, torch.Tensor], ArchiveInfo]:
    """(meta, float32 state dict, info) of an archive; load with `load_state_dict(strict=False)`.

    `check(header)` runs on the validated header before the payload is read or decoded, so a
    caller can refuse a forged header (raising ArchiveError) before any work it would cause.
    """
    with _naming(path):
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header, header_bytes, version = _read_header(f, size)
            if check is not None:
                check(header)
            codec = header["codec"]
            payload = f.read(codec["payload_bytes"])
        if len(payload) != codec["payload_bytes"]:
            raise ArchiveError("file shrank while being read")
        if hashlib.sha256(payload).hexdigest() != codec["payload_sha256"]:
            raise ArchiveError("payload checksum mismatch (corrupt file)")
        table = huffman.CodeTable.from_json(codec["code_table"])
        symbols = huffman.decode(payload, table, codec["symbols"])
        q = _quantized_model(codec, symbols, version)
        info = ArchiveInfo(path=Path(path), version=version, file_bytes=size, header_bytes=header_bytes,
                           payload_bytes=len(payload), bits=q.bits, parameter_count=q.parameter_count,
                           dropped=q.dropped)
        return header["meta"], dequantize(q), info


@contextlib.contextmanager
def _naming(path):
    """ArchiveError and OSError leave as one ArchiveError line that names `path`."""
    try:
        yield
    except ArchiveError as e:
        raise ArchiveError(f"{path}: {e}") from None
    except OSError as e:
        raise ArchiveError(f"{path}: cannot read the archive ({e.strerror or e})") from None


def _read_header(f, size: int) -> tuple[dict, int, int]:
    """Parse and validate the prefix and header; returns (header, header length, format version)."""
    prefix = f.read(PREFIX.size)
    if prefix[:len(MAGIC)] != MAGIC[:len(prefix)]:
        raise ArchiveError("not a .nervi archive (bad magic bytes)")
    if len(prefix) < PREFIX.size:
        raise ArchiveError(f"truncated: {size} bytes, shorter than the {PREFIX.size}-byte prefix")
    _, version, header_len, header_sha = PREFIX.unpack(prefix)
    if version not in READABLE_VERSIONS:
        raise ArchiveError(f"unsupported format version {version} (this build reads versions "
                           f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade nervi-hpc")
    if header_len > MAX_HEADER_BYTES:
        raise ArchiveError(f"header length {header_len} exceeds the {MAX_HEADER_BYTES >> 20} MiB limit")
    if header_len > size - PREFIX.size:
        raise ArchiveError(f"truncated: header of {header_len} bytes, only {size - PREFIX.size} follow the prefix")
    raw = f.read(header_len)
    if hashlib.sha256(raw).digest() != header_sha:
        raise ArchiveError("header checksum mismatch (corrupt file)")
    header = _parse_json(raw)
    _check_header(header, version)
    payload_size = size - PREFIX.size - header_len
    declared = header["codec"]["payload_bytes"]
    if payload_size < declared:
        raise ArchiveError(f"truncated: payload is {payload_size} bytes, the header says {declared}")
    if payload_size > declared:
        raise ArchiveError(f"{payload_size - declared} unexpected bytes after the payload")
    return header, header_len, version


def _parse_json(raw: bytes):
    def reject_constant(name):
        raise ArchiveError(f"header holds the non-JSON constant {name}")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, ArchiveError):
            raise
        raise ArchiveError(f"header is not valid UTF-8 JSON ({type(e).__name__})") from None


def _is_int(value) -> bool:
    return type(value) is int


def range_rows(shape: tuple[int, ...], version: int) -> int:
    """How many (min, scale) pairs a tensor of `shape` has in an archive of format `version`."""
    return shape[0] if version == 1 and len(shape) >= 2 else 1


def _check_header(header, version: int) -> None:
    """Types, ranges and cross-field consistency of the header (not the payload's content)."""
    if not isinstance(header, dict) or set(header) != {"meta", "codec"}:
        raise ArchiveError("header must be an object with exactly 'meta' and 'codec'")
    if not isinstance(header["meta"], dict):
        raise ArchiveError("header 'meta' must be an object")
    codec = header["codec"]
    if not isinstance(codec, dict) or set(codec) != CODEC_KEYS:
        raise ArchiveError(f"header 'codec' must be an object with the keys {sorted(CODEC_KEYS)}")
    bits = codec["bits"]
    if not _is_int(bits) or not MIN_BITS <= bits <= MAX_BITS:
        raise ArchiveError(f"codec 'bits' must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    for key in ("symbols", "payload_bytes"):
        if not _is_int(codec[key]) or codec[key] < 0:
            raise ArchiveError(f"codec {key!r} must be a non-negative integer, got {codec[key]!r}")
    sha = codec["payload_sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
        raise ArchiveError("codec 'payload_sha256' must be 64 lowercase hex digits")
    dropped = codec["dropped"]
    if not isinstance(dropped, list) or not all(isinstance(name, str) for name in dropped):
        raise ArchiveError("codec 'dropped' must be a list of names")
    table = huffman.CodeTable.from_json(codec["code_table"])
    if table.symbols and table.symbols[-1] >= 1 << bits:
        raise ArchiveError(f"code table has symbol {table.symbols[-1]}, beyond {bits}-bit quantization")
    if len(table.symbols) > codec["symbols"]:  # the writer's table holds only symbols that occur
        raise ArchiveError(f"code table has {len(table.symbols)} entries for {codec['symbols']} symbols")
    tensors = codec["tensors"]
    if not isinstance(tensors, list):
        raise ArchiveError("codec 'tensors' must be a list")
    names, total = set(), 0
    for entry in tensors:
        name, numel = _check_tensor_entry(entry, (1 << bits) - 1, version)
        if name in names:
            raise ArchiveError(f"tensor {name!r} appears twice")
        names.add(name)
        total += numel
    if total != codec["symbols"]:
        raise ArchiveError(f"tensors hold {total} elements but the header declares {codec['symbols']} symbols")


def _check_tensor_entry(entry, levels: int, version: int) -> tuple[str, int]:
    if not isinstance(entry, dict) or set(entry) != TENSOR_KEYS:
        raise ArchiveError(f"each tensor entry must be an object with the keys {sorted(TENSOR_KEYS)}")
    name, shape = entry["name"], entry["shape"]
    if not isinstance(name, str) or not name:
        raise ArchiveError("tensor names must be non-empty strings")
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(_is_int(d) and 0 <= d < 1 << 40 for d in shape)):
        raise ArchiveError(f"tensor {name!r}: shape must be a list of at most {MAX_RANK} non-negative integers")
    if entry["dtype"] not in DTYPES:
        raise ArchiveError(f"tensor {name!r}: dtype must be one of {', '.join(DTYPES)}")
    rows = range_rows(tuple(shape), version)
    minimum = _floats_from_b64(entry["min"], rows, name, "min")
    scale = _floats_from_b64(entry["scale"], rows, name, "scale")
    if not (np.isfinite(minimum).all() and np.isfinite(scale).all() and (scale >= 0).all()):
        raise ArchiveError(f"tensor {name!r}: min/scale must be finite and scale non-negative")
    with np.errstate(over="ignore"):  # dequantization's own float32 arithmetic, for its top symbol
        top = minimum + np.float32(levels) * scale
    if not np.isfinite(top).all():
        raise ArchiveError(f"tensor {name!r}: min + {levels}·scale overflows float32")
    return name, math.prod(shape)


def _floats_from_b64(text, count: int, name: str, field: str) -> np.ndarray:
    if not isinstance(text, str) or len(text) != 4 * -(-4 * count // 3):
        raise ArchiveError(f"tensor {name!r}: {field!r} must be base64 of {count} float32 values")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ArchiveError(f"tensor {name!r}: {field!r} is not valid base64") from None
    if len(raw) != 4 * count:
        raise ArchiveError(f"tensor {name!r}: {field!r} holds {len(raw) // 4} values, not {count}")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def _quantized_model(codec: dict, symbols: np.ndarray, version: int) -> QuantizedModel:
    """Rebuild the QuantizedModel from a validated codec header and the decoded symbols."""
    tensors, offset = {}, 0
    for entry in codec["tensors"]:
        shape = tuple(entry["shape"])
        rows = range_rows(shape, version)
        numel = math.prod(shape)
        tensors[entry["name"]] = QuantizedTensor(
            shape=shape, dtype=entry["dtype"],
            minimum=_floats_from_b64(entry["min"], rows, entry["name"], "min"),
            scale=_floats_from_b64(entry["scale"], rows, entry["name"], "scale"),
            symbols=symbols[offset:offset + numel])
        offset += numel
    return QuantizedModel(bits=codec["bits"], tensors=tensors, dropped=tuple(codec["dropped"]))
