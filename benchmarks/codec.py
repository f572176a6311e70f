"""Codec figures: bits per parameter of the .nervi archive against raw b-bit packing, and Huffman
encode/decode speed of nervi_hpc's numpy path against dahuffman's pure-Python codec.

    python benchmarks/codec.py                                  # ~3.4 M-parameter model, 6–12 bits
    python benchmarks/codec.py --bits 8 9 --symbols 20000000 --reference-symbols 100000

The model is "trained-looking": NeRVI-like layer shapes (3×3 convs whose channels halve, MLP
linears, biases, BatchNorm vectors) with Gaussian or Laplacian weights whose spread varies per
output channel. Raw packing = b bits per parameter plus the float32 min/scale of every channel;
entropy = the order-0 entropy of the symbols (the bound any symbol-wise code meets).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from dahuffman.huffmancodec import PrefixCodec

from nervi_hpc.codec import huffman
from nervi_hpc.codec.archive import read_archive, write_archive
from nervi_hpc.codec.quantize import quantize

SHAPES = [(128, 24), (128, 128), (1024, 128), (1024, 128), (128, 128)] + [
    shape for c_in, c_out in ((256, 128), (128, 64), (64, 32), (32, 16))
    for shape in ((c_out * 4, c_in, 3, 3), (c_out * 4,), (c_out,), (c_out,))] + [(4, 16, 1, 1), (4,)]


def trained_looking(distribution: str, seed: int = 0, shapes=SHAPES) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    state = {}
    for i, shape in enumerate(shapes):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 64
        spread = 1 / np.sqrt(fan_in) * rng.uniform(0.5, 1.5, size=(shape[0],) + (1,) * (len(shape) - 1))
        draw = rng.normal if distribution == "gaussian" else rng.laplace
        state[f"layer{i}.weight"] = torch.from_numpy((draw(0, 1, shape) * spread).astype(np.float32))
    return state


def entropy_bits(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def rate_table(bit_depths: list[int]) -> None:
    print("bits per parameter (whole archive file incl. JSON header vs raw packing incl. min/scale)")
    print(f"{'weights':9} {'b':>3} {'params':>9} {'raw b-bit':>9} {'entropy':>8} {'huffman':>8} "
          f"{'archive':>8} {'header B':>9} {'gain':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for distribution in ("gaussian", "laplace"):
            state = trained_looking(distribution)
            for bits in bit_depths:
                q = quantize(state, bits)
                n = q.parameter_count
                channels = sum(len(t.minimum) for t in q.tensors.values())
                symbols = np.concatenate([t.symbols for t in q.tensors.values()])
                path = Path(tmp) / f"{distribution}-{bits}.nervi"
                size = write_archive(path, q, {"benchmark": True})
                info = read_archive(path)[2]
                raw = bits + 64 * channels / n
                print(f"{distribution:9} {bits:3d} {n:9d} {raw:9.3f} {entropy_bits(symbols):8.3f} "
                      f"{8 * info.payload_bytes / n:8.3f} {8 * size / n:8.3f} {info.header_bytes:9d} "
                      f"{raw / (8 * size / n):5.2f}x")


def speed(count: int, reference_count: int) -> None:
    rng = np.random.default_rng(1)
    symbols = np.clip(np.rint(rng.normal(256, 40, count)), 0, 511).astype(np.uint16)
    start = time.perf_counter()
    data, table = huffman.encode(symbols)
    encoded = time.perf_counter()
    decoded = huffman.decode(data, table, count)
    done = time.perf_counter()
    assert np.array_equal(decoded, symbols)
    print(f"\nHuffman speed, 9-bit Gaussian symbols ({8 * len(data) / count:.3f} bits/symbol)")
    print(f"numpy path  ({count:>10,d} symbols): encode {count / (encoded - start) / 1e6:6.2f} M/s "
          f"(incl. dahuffman code lengths)   decode {count / (done - encoded) / 1e6:6.2f} M/s")

    reference = [int(s) for s in symbols[:reference_count]]
    codec = PrefixCodec({**table.code_book(), "end": (8, 0)}, eof="end")
    start = time.perf_counter()
    stream = codec.encode(reference)
    encoded = time.perf_counter()
    back = codec.decode(stream)
    done = time.perf_counter()
    assert back[:reference_count] == reference
    print(f"dahuffman   ({reference_count:>10,d} symbols): encode {reference_count / (encoded - start) / 1e6:6.2f} M/s "
          f"                               decode {reference_count / (done - encoded) / 1e6:6.2f} M/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=list(range(6, 13)))
    parser.add_argument("--symbols", type=int, default=5_000_000, help="symbols for the numpy path")
    parser.add_argument("--reference-symbols", type=int, default=200_000, help="symbols for dahuffman")
    args = parser.parse_args()
    rate_table(args.bits)
    speed(args.symbols, args.reference_symbols)


if __name__ == "__main__":
    main()
