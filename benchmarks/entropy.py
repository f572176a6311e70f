"""Entropy coding figures: would a coder beyond the archive's one Huffman table shrink archives?

    python benchmarks/entropy.py --checkpoint RUN/checkpoints/step-NNNNNN [...]   # real weights too
    python benchmarks/entropy.py --parts rate      # without --checkpoint: storage/runs, ../*/runs

Needs `constriction` (pip install constriction) for its ANS coder. Every coder below is run for
real and its output decoded and checked; side information is counted as the archive would store
it (base64 in the JSON header). Bits per quantised parameter (9-bit symbols by default):

  archive      the .nervi file written today: one Huffman table for all tensors, header included
  huffman      that file's payload alone
  H global     order-0 entropy of all symbols together: the floor for one table
  H tensor     Σ n_t·H_t / N: one ideal code per tensor, tables free
  H channel    the same per output channel, plug-in estimate: biased low for short channels (a
               channel of 144 symbols cannot show more than log2 144 = 7.2 bits), not reachable
  huff/t       one Huffman table per tensor, each table's JSON counted
  cat/t        ANS with one categorical model per tensor; its histogram (LEB128 counts, zlib,
               base64) counted
  gauss/c      ANS with a quantised Gaussian per output channel; mean and std as float32 counted
  laplace/c    the same with a quantised Laplace (median, mean absolute deviation)
  best/t       per tensor the smallest of huff/t, cat/t, gauss/c, laplace/c: what a writer that
               picks per tensor would store
  gain         1 − (archive − huffman payload − its table + best/t) / archive

`speed` times encode and decode of the paper-sized model (c1 128, c2 1024 at 1024²: 101 M
parameters, Laplacian "trained-looking" weights as in benchmarks/codec.py) with each coder.

Measured (2 shared cores): on CPU-trained models of 0.16–0.5 M parameters, picking the best coder
per tensor saves 0.25–0.5 % of the archive (3 % only on synthetic Laplacian weights), the
parametric coders decode 4–7× slower than Huffman; so the archive keeps Huffman.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from codec import trained_looking  # benchmarks/codec.py: per-channel-spread Gaussian/Laplace weights

from nervi_hpc.codec import huffman
from nervi_hpc.codec.archive import write_archive
from nervi_hpc.codec.quantize import QuantizedModel, quantize
from nervi_hpc.model import checkpoint

try:
    import constriction
except ImportError:
    raise SystemExit("benchmarks/entropy.py needs constriction: pip install constriction") from None

MODELS = constriction.stream.model
CHUNK = 1 << 22  # symbols per constriction call for per-symbol parameters (bounds their memory)


def paper_shapes(c1: int = 128, c2: int = 1024, factors=(4, 4, 2, 2, 2, 2, 2), embed: int = 24) -> list[tuple]:
    """The paper model's tensor shapes at 1024² (MLP, then conv + bias + BatchNorm per block, head)."""
    shapes = [shape for c_in, c_out in ((embed, c1), (c1, c2 // 2))
              for shape in ((c_out, c_in), (c_out,), (c_out, c_out), (c_out,), (c_out, c_in), (c_out,))]
    channels = [c1] + [c2 // 2 ** i for i in range(len(factors))]
    for (c_in, c_out), f in zip(zip(channels, channels[1:]), factors):
        shapes += [(c_out * f * f, c_in, 3, 3), (c_out * f * f,)] + [(c_out,)] * 4
    return shapes + [(4, channels[-1], 1, 1), (4,)]


def b64_len(raw_bytes: int) -> int:
    return 4 * math.ceil(raw_bytes / 3)


def entropy(symbols: np.ndarray) -> float:
    """Order-0 entropy in bits per symbol."""
    if symbols.size == 0:
        return 0.0
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def rows(t) -> np.ndarray:
    return t.symbols.reshape(t.channels, -1)


def leb128(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while v >= 0x80:
            out.append(v & 0x7F | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


# Each coder: symbols of one tensor (channels × n) → (payload bytes, side-information bytes),
# with a check that its payload decodes to the same symbols. Times are kept per coder.

def huffman_coder(r: np.ndarray, levels: int) -> tuple[int, int]:
    data, table = huffman.encode(r.reshape(-1))
    assert np.array_equal(huffman.decode(data, table, r.size), r.reshape(-1))
    return len(data), len(json.dumps(table.to_json(), separators=(",", ":")))


def categorical_model(counts: np.ndarray):
    return MODELS.Categorical(counts.astype(np.float64), perfect=False)


def categorical_coder(r: np.ndarray, levels: int) -> tuple[int, int]:
    symbols = r.reshape(-1).astype(np.int32)
    counts = np.bincount(symbols, minlength=levels)
    model = categorical_model(counts)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, model)
    words = coder.get_compressed()
    assert np.array_equal(constriction.stream.stack.AnsCoder(words).decode(model, symbols.size), symbols)
    return 4 * words.size, b64_len(len(zlib.compress(leb128(counts), 9)))


def channel_parameters(r: np.ndarray, family: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (location, spread) as float32, as the header would store them."""
    x = r.astype(np.float64)
    if family == "gauss":
        location, spread = x.mean(axis=1), x.std(axis=1)
    else:
        location = np.median(x, axis=1)
        spread = np.abs(x - location[:, None]).mean(axis=1)
    return location.astype(np.float32), np.maximum(spread, 0.05).astype(np.float32)


def parametric_calls(r: np.ndarray, family: str, levels: int):
    """(model, symbols, locations, spreads) per chunk of whole channels."""
    model = (MODELS.QuantizedGaussian if family == "gauss" else MODELS.QuantizedLaplace)(0, levels - 1)
    location, spread = channel_parameters(r, family)
    per = max(1, CHUNK // max(r.shape[1], 1))
    for first in range(0, r.shape[0], per):
        block = r[first:first + per]
        yield (model, block.reshape(-1).astype(np.int32),
               np.repeat(location[first:first + per].astype(np.float64), block.shape[1]),
               np.repeat(spread[first:first + per].astype(np.float64), block.shape[1]))


def parametric_coder(family: str):
    def code(r: np.ndarray, levels: int) -> tuple[int, int]:
        payload = 0
        for model, symbols, location, spread in parametric_calls(r, family, levels):
            coder = constriction.stream.stack.AnsCoder()
            coder.encode_reverse(symbols, model, location, spread)
            words = coder.get_compressed()
            assert np.array_equal(constriction.stream.stack.AnsCoder(words).decode(model, location, spread), symbols)
            payload += 4 * words.size
        return payload, 2 * b64_len(4 * r.shape[0])
    return code


CODERS = {"huff/t": huffman_coder, "cat/t": categorical_coder,
          "gauss/c": parametric_coder("gauss"), "laplace/c": parametric_coder("laplace")}


def rate_row(name: str, q: QuantizedModel) -> None:
    n = q.parameter_count
    levels = 1 << q.bits
    everything = np.concatenate([t.symbols for t in q.tensors.values()])
    with tempfile.TemporaryDirectory() as tmp:
        file_bytes = write_archive(Path(tmp) / "m.nervi", q, {})
    payload, table = huffman.encode(everything)
    one_table = len(payload) + len(json.dumps(table.to_json(), separators=(",", ":")))
    totals = dict.fromkeys(CODERS, 0)
    best = 0
    for t in q.tensors.values():
        if t.numel == 0:
            continue
        sizes = {coder: sum(code(rows(t), levels)) for coder, code in CODERS.items()}
        for coder, size in sizes.items():
            totals[coder] += size
        best += min(sizes.values())
    per_tensor = sum(t.numel * entropy(t.symbols) for t in q.tensors.values()) / n
    per_channel = sum(r.size * entropy(r) for t in q.tensors.values() for r in rows(t)) / n
    figures = [8 * file_bytes / n, 8 * len(payload) / n, entropy(everything), per_tensor, per_channel]
    figures += [8 * totals[coder] / n for coder in CODERS] + [8 * best / n]
    gain = 1 - (file_bytes - one_table + best) / file_bytes
    print(f"| {name} | {n:,} | " + " | ".join(f"{v:.3f}" for v in figures) + f" | {100 * gain:+.2f} % |")


def rate(sources: dict[str, dict[str, torch.Tensor]], bits: int) -> None:
    print(f"## bits per parameter at {bits} bits (each tensor's side information counted)\n")
    print("| weights | params | archive | huffman | H global | H tensor | H channel | "
          + " | ".join(CODERS) + " | best/t | gain |")
    print("|---" * (10 + len(CODERS) - 1) + "|")
    for name, state in sources.items():
        rate_row(name, quantize(state, bits))


def timed(label: str, n: int, encode, decode) -> None:
    start = time.perf_counter()
    encoded = encode()
    middle = time.perf_counter()
    decode(encoded)
    end = time.perf_counter()
    print(f"| {label} | {middle - start:.2f} | {end - middle:.2f} | {n / (end - middle) / 1e6:.1f} |")


def speed(bits: int) -> None:
    q = quantize(trained_looking("laplace", shapes=paper_shapes()), bits)
    levels = 1 << bits
    n = q.parameter_count
    tensors = [rows(t) for t in q.tensors.values()]
    print(f"\n## encode/decode of the paper-sized model ({n:,} parameters, {bits} bits, "
          f"{torch.get_num_threads()} thread(s)), seconds\n")
    print("| coder | encode s | decode s | decode M symbols/s |\n|---|---|---|---|")

    def huffman_encode():
        return huffman.encode(np.concatenate([r.reshape(-1) for r in tensors]))

    timed("Huffman, one table (today)", n, huffman_encode, lambda enc: huffman.decode(*enc, n))

    def categorical_encode():
        out = []
        for r in tensors:
            symbols = r.reshape(-1).astype(np.int32)
            counts = np.bincount(symbols, minlength=levels)
            coder = constriction.stream.stack.AnsCoder()
            coder.encode_reverse(symbols, categorical_model(counts))
            out.append((coder.get_compressed(), counts, symbols.size))
        return out

    def categorical_decode(encoded):
        for words, counts, size in encoded:
            constriction.stream.stack.AnsCoder(words).decode(categorical_model(counts), size)

    timed("ANS, categorical per tensor", n, categorical_encode, categorical_decode)

    for family in ("gauss", "laplace"):
        def parametric_encode():
            out = []
            for r in tensors:
                for model, symbols, location, spread in parametric_calls(r, family, levels):
                    coder = constriction.stream.stack.AnsCoder()
                    coder.encode_reverse(symbols, model, location, spread)
                    out.append((coder.get_compressed(), model, location, spread))
            return out

        def parametric_decode(encoded):
            for words, model, location, spread in encoded:
                constriction.stream.stack.AnsCoder(words).decode(model, location, spread)

        timed(f"ANS, {family} per channel", n, parametric_encode, parametric_decode)


def discover() -> list[Path]:
    """The newest complete checkpoint of every run under the repository's storage/runs and ../*/runs."""
    repo = Path(__file__).resolve().parent.parent
    roots = [repo / "storage" / "runs", *repo.parent.glob("*/runs")]
    runs = [run for root in roots if root.is_dir() for run in sorted(root.iterdir())]
    found = [checkpoint.latest(run / "checkpoints") for run in runs]
    return [path for path in found if path is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, nargs="*", default=None,
                        help="checkpoint folders (default: every run found under storage/runs, ../*/runs)")
    parser.add_argument("--bits", type=int, default=9)
    parser.add_argument("--parts", nargs="+", choices=["rate", "speed"], default=["rate", "speed"])
    args = parser.parse_args()
    if "rate" in args.parts:
        sources = {f"{path.parent.parent.name}/{path.name}": checkpoint.load(path)[0]["model"]
                   for path in (discover() if args.checkpoint is None else args.checkpoint)}
        sources |= {f"synthetic {d}": trained_looking(d) for d in ("gaussian", "laplace")}
        rate(sources, args.bits)
    if "speed" in args.parts:
        speed(args.bits)


if __name__ == "__main__":
    main()
