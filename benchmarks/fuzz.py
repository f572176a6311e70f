"""Fuzz the archive reader: seeded damaged and forged `.nervi` files, each opened and decoded by
a sandboxed worker process under a memory limit and a time bound per case.

    python benchmarks/fuzz.py --cases 2000 --seed 0            # prints the table of outcomes

Cases start from one small valid archive (a NeRVI with feature grids and BatchNorm, 16² images)
and are plain damage (byte flips, truncation: checksums left wrong) or forgeries whose checksums
are recomputed: hostile values at random header fields, targeted model/image/codec fields (the
issue-16 inputs), code tables and payloads rewritten, tensor shapes rewritten to fit a forged
model, and harmless edits that must decode bit-identically. Each case must end clean: an
ArchiveError of one line naming the file, or a decode with finite network outputs (bit-identical
to the original for the harmless edits). Otherwise it counts as uncaught (any other exception,
a worker crash, a differing harmless decode), hang (over the time bound), memory (MemoryError or
a worker killed at its memory limit) or NaN (non-finite network outputs decoded without error).
tests/test_fuzz.py runs a few hundred cases of the same generator.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import resource
import selectors
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nervi_hpc.codec import archive, huffman
from nervi_hpc.codec.header import ArchiveMeta, Parameter
from nervi_hpc.codec.quantize import quantize
from nervi_hpc.data.dataset import normalize
from nervi_hpc.errors import ArchiveError, NerviError
from nervi_hpc.model.config import ModelConfig, with_parameter_grids
from nervi_hpc.model.network import NeRVI
from nervi_hpc.stages.decode.decoder import Decoder, model_skeleton

OUTCOMES = ("clean", "uncaught", "hang", "memory", "NaN")
CLEAN = ("refused", "identical", "decoded")  # how a clean case ended
SIDE = 16
GRIDS = {"t": [0.0, 1.0], "theta": [30.0, 60.0, 90.0], "phi": [0.0, 90.0, 180.0, 270.0]}
MAX_FORGED_SYMBOLS = 1 << 28  # a one-symbol payload this long is a 32 MB file
HOSTILE = [0, -1, 1, 3, 255, 65536, 2**31, 10**6, 10**7, 2**63, 2**1100, -2**1100, 0.5, -0.0, 1e-320,
           1e155, 1e308, -1e308, "", "x", None, True, False, [], {}, [0], [1e308, -1e308], [-1e308, 1e308],
           [2**1100, 0], [[]], {"a": 1}]
MODEL_HOSTILE = {"grid_levels": [10**6, 64, 17], "c1": [10**5, 8193, 4096], "c2": [10**6, 8192, 2048],
                 "min_channels": [10**6, 8192], "grid_features": [10**4, 257, 256], "channel_decay": [1e155, 1e308],
                 "omega0": [1e308, 1e30, 1e4], "grid_size": [[10**6] * 3, [64] * 3, [0, 1, 1]],
                 "upscale": [[2] * 100, [5, 5], [7]], "stem": [[1000, 1000], [1, 1], [16, 16]],
                 "periods": [[1e308, 0, 0], [0, 0, 1e300]], "pe_levels": [32, 10**6],
                 "periodic": [["phi"] * 10**4]}
IMAGE_HOSTILE = {"height": [8192, 16384, 10**5, 17], "width": [8192, 16384, 10**5, 17],
                 "count": [10**7, 25, 10**9]}


# ----------------------------------------------------------------------------------------------
# The base archive and its bytes


def write_base(path: Path) -> Path:
    """A small valid archive: random NeRVI weights (BatchNorm statistics moved), 24 images of 16²."""
    torch.manual_seed(0)
    config = with_parameter_grids(ModelConfig(c1=8, c2=16, grid_features=4, periodic=("phi",), composite="soft")
                                  .resolved(SIDE, SIDE), GRIDS)
    model = NeRVI(config, SIDE, SIDE, len(GRIDS))
    model.train()
    model(torch.rand(8, len(GRIDS)) * 2 - 1)  # BatchNorm running statistics move off 0/1
    parameters = tuple(Parameter(name, min(grid), max(grid), tuple(grid)) for name, grid in GRIDS.items())
    meta = ArchiveMeta(model=model.config, parameters=parameters, height=SIDE, width=SIDE,
                       background=(255, 255, 255), mode="ir", count=24, bits=9,
                       training={"epochs": 1, "psnr": 20.0}, source="fuzz base")
    archive.write_archive(path, quantize(model.eval().state_dict(), 9), meta.to_json())
    return path


def split(data: bytes) -> tuple[dict, bytes]:
    """(header JSON, payload) of a well-formed archive's bytes."""
    header_len = struct.unpack_from("<Q", data, 10)[0]
    return json.loads(data[archive.PREFIX.size:archive.PREFIX.size + header_len]), data[archive.PREFIX.size + header_len:]


def frame(header: dict, payload: bytes) -> bytes:
    """An archive around `header` and `payload` with every checksum and length recomputed."""
    codec = header.get("codec")
    if isinstance(codec, dict):
        codec["payload_bytes"] = len(payload)
        codec["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    return archive._frame(json.dumps(header).encode(), payload)


def one_symbol_payload(count: int, symbol: int = 0) -> tuple[dict, bytes]:
    """(code table, stream) of `count` copies of one symbol (1 bit each), without encoding them."""
    blocks = -(-count // huffman.BLOCK_SYMBOLS)
    index = np.full(blocks, huffman.BLOCK_SYMBOLS, "<u4")
    index[-1] = count - (blocks - 1) * huffman.BLOCK_SYMBOLS
    return {"symbols": [symbol], "lengths": [1]}, index.tobytes() + bytes((count + 7) // 8)


def b64_floats(values) -> str:
    return base64.b64encode(np.asarray(values, "<f4").tobytes()).decode()


# ----------------------------------------------------------------------------------------------
# Mutations: each edits (header, payload) with a random generator and returns them


@dataclass
class Case:
    kind: str
    data: bytes
    harmless: bool = False


def _leaves(obj, path=()):
    """Every path into a JSON value (containers included)."""
    yield path
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        yield from _leaves(value, path + (key,))


def _set(obj, path, value):
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _pick(rng, values):
    return values[int(rng.integers(len(values)))]


def hostile_field(rng, header, payload):
    """A random header field (of meta or codec) replaced, deleted or grown."""
    paths = [p for p in _leaves(header) if len(p) >= 2]
    path = _pick(rng, paths)
    action = rng.random()
    if action < 0.1 and isinstance(path[-1], str):
        parent = header
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
    elif action < 0.2:
        _set(header, path, [copy.deepcopy(_get(header, path))] * int(rng.integers(2, 5)))
    else:
        _set(header, path, copy.deepcopy(_pick(rng, HOSTILE)))
    return header, payload


def _get(obj, path):
    for key in path:
        obj = obj[key]
    return obj


def model_field(rng, header, payload):
    """One ModelConfig field set to a value the issue found hostile (or any hostile value)."""
    key = _pick(rng, sorted(MODEL_HOSTILE))
    header["meta"]["model"][key] = copy.deepcopy(_pick(rng, MODEL_HOSTILE[key] + HOSTILE[:12]))
    return header, payload


def image_field(rng, header, payload):
    """Image size or count forged (with grids grown to match a forged count)."""
    key = _pick(rng, sorted(IMAGE_HOSTILE))
    value = _pick(rng, IMAGE_HOSTILE[key])
    header["meta"]["image"][key] = value
    if key == "count" and value == 10**7:  # grids whose product is the count: `decode --all` of 10^7 rows
        for parameter, size in zip(header["meta"]["parameters"], (100, 100, 1000)):
            low, high = parameter["range"]
            high = high if high > low else low + 1
            parameter["range"], parameter["grid"] = [low, high], np.linspace(low, high, size).tolist()
    if key in ("height", "width") and rng.random() < 0.7:
        side = value
        header["meta"]["image"]["height"] = header["meta"]["image"]["width"] = side
        header["meta"]["model"]["stem"] = header["meta"]["model"]["upscale"] = None
    return header, payload


def declared_shapes(meta: dict) -> dict[str, tuple[int, ...]]:
    """The floating-point tensor shapes of the model `meta` declares; NerviError if it does not build."""
    skeleton = model_skeleton(ArchiveMeta.from_json(meta))
    return {k: tuple(v.shape) for k, v in skeleton.state_dict().items() if v.is_floating_point()}


def fit_codec(header: dict, shapes: dict[str, tuple[int, ...]], symbol: int = 0, low: float = 0.0,
              step: float = 0.0) -> bytes:
    """Rewrite the codec's tensors to `shapes`, every weight the one symbol `symbol` (1 bit each,
    dequantised to low + symbol·step); returns the payload."""
    count = sum(int(np.prod(s)) for s in shapes.values())
    table, payload = one_symbol_payload(count, symbol)
    header["codec"].update(symbols=count, code_table=table, tensors=[
        {"name": name, "shape": list(shape), "dtype": "float32", "min": b64_floats([low]), "scale": b64_floats([step])}
        for name, shape in shapes.items()])
    return payload


def refit(rng, header, payload):
    """A forged model or image size with the codec's tensors rewritten to its shapes, so that
    only the reader's limits stand between it and the allocation (one-symbol payload)."""
    header, payload = (model_field if rng.random() < 0.5 else image_field)(rng, header, payload)
    try:
        shapes = declared_shapes(header["meta"])
    except NerviError:
        return header, payload
    if not 0 < sum(int(np.prod(s)) for s in shapes.values()) <= MAX_FORGED_SYMBOLS:
        return header, payload
    return header, fit_codec(header, shapes, int(rng.integers(512)), -0.1, 0.2 / 511)


def codec_values(rng, header, payload):
    """A tensor's min/scale set to huge, negative (BatchNorm variance) or overflowing values."""
    tensors = header["codec"]["tensors"]
    variances = [t for t in tensors if t["name"].endswith("running_var")]
    entry = _pick(rng, variances) if variances and rng.random() < 0.3 else _pick(rng, tensors)
    channels = len(base64.b64decode(entry["min"])) // 4
    low, scale = _pick(rng, [(3e38, 1e36), (1e30, 1e27), (-5.0, 0.0), (0.0, 3e38), (1e20, 0.0), (-1e38, 1e35)])
    entry["min"], entry["scale"] = b64_floats([low] * channels), b64_floats([scale] * channels)
    return header, payload


def codec_stream(rng, header, payload):
    """Payload re-encoded: random symbols (a valid stream of other weights), one symbol, or the
    symbol count / code table forged against the stream."""
    codec = header["codec"]
    if not (type(codec["bits"]) is int and 2 <= codec["bits"] <= 16 and type(codec["symbols"]) is int
            and 0 <= codec["symbols"] <= MAX_FORGED_SYMBOLS):
        return header, payload  # an earlier mutation forged these: nothing sane to re-encode
    choice = rng.random()
    if choice < 0.4:
        symbols = rng.integers(0, 1 << codec["bits"], size=codec["symbols"]).astype(np.uint16)
        payload, table = huffman.encode(symbols)
        codec["code_table"] = table.to_json()
    elif choice < 0.6:
        codec["code_table"], payload = one_symbol_payload(codec["symbols"], int(rng.integers(1 << codec["bits"])))
    elif choice < 0.8:
        codec["symbols"] = _pick(rng, [0, codec["symbols"] * 8, codec["symbols"] - 1, 2**40])
    else:
        codec["code_table"] = _pick(rng, [{"symbols": list(range(512)), "lengths": [9] * 512},
                                          {"symbols": [0], "lengths": [1]},
                                          {"symbols": [0, 1], "lengths": [1, 1]}])
    return header, payload


def harmless(rng, header, payload):
    """Edits a reader ignores: training figures, the source line, unknown keys."""
    meta = header["meta"]
    meta["training"] = {"epochs": int(rng.integers(1000)), "note": "x" * int(rng.integers(100))}
    meta["image"]["source"] = "forged " * int(rng.integers(10))
    meta["future_key"] = {"anything": [1, 2, 3]}
    return header, payload


FORGERIES = [(hostile_field, 4), (model_field, 3), (image_field, 2), (refit, 2), (codec_values, 2),
             (codec_stream, 2), (harmless, 1)]


def make_case(base: bytes, rng: np.random.Generator) -> Case:
    """One damaged or forged variant of the archive `base`."""
    roll = rng.random()
    if roll < 0.1:
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
        return Case("damage: byte flips", bytes(data))
    if roll < 0.15:
        return Case("damage: truncated", base[:int(rng.integers(len(base)))])
    header, payload = split(base)
    weights = np.array([w for _, w in FORGERIES], float)
    kinds = []
    for _ in range(1 if rng.random() < 0.7 else int(rng.integers(2, 4))):
        mutate = FORGERIES[int(rng.choice(len(FORGERIES), p=weights / weights.sum()))][0]
        try:
            header, payload = mutate(rng, header, payload)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            continue  # an earlier mutation removed or retyped what this one edits
        kinds.append(mutate.__name__)
    return Case("forged: " + "+".join(kinds), frame(header, payload), harmless=kinds == ["harmless"])


# ----------------------------------------------------------------------------------------------
# The sandboxed worker: reads case paths on stdin, answers one JSON line per case


def worker(base: str, memory_mb: int) -> None:
    torch.set_num_threads(1)
    reference = Decoder.open(base, device="cpu")
    expected = reference.decode(reference.grid()[:2])
    _limit_memory(memory_mb)
    for line in sys.stdin:
        case = json.loads(line)
        path = case["path"]
        try:
            decoder = Decoder.open(path, device="cpu")
            rows = decoder.grid()[:2]  # what `decode --all` asks for, then its first images
            images = decoder.decode(rows)
            with torch.inference_mode():  # the reader's own check must have caught this
                raw = decoder.model(torch.from_numpy(normalize(rows, decoder.meta.ranges)))
            if not torch.isfinite(raw).all():
                outcome, how = "NaN", "non-finite outputs decoded without an error"
            elif case["harmless"] and not np.array_equal(images, expected):
                outcome, how = "uncaught", "a harmless edit changed the decoded images"
            else:
                outcome, how = "clean", "identical" if np.array_equal(images, expected) else "decoded"
        except ArchiveError as e:
            text = str(e)
            if "\n" not in text and text.startswith(path):
                outcome, how = "clean", "refused"
            else:
                outcome, how = "uncaught", f"not one line naming the file: {text[:200]}"
        except MemoryError:
            outcome, how = "memory", "MemoryError"
        except RuntimeError as e:  # torch's allocator reports an exhausted limit as a RuntimeError
            outcome = "memory" if "allocate" in str(e) else "uncaught"
            how = f"{type(e).__name__}: {str(e)[:200]}"
        except Exception as e:
            outcome, how = "uncaught", f"{type(e).__name__}: {str(e)[:200]}"
        print(json.dumps({"outcome": outcome, "how": how.splitlines()[0] if how else how}), flush=True)


def _limit_memory(memory_mb: int) -> None:
    """Cap the address space at what the process maps now (torch included) plus `memory_mb`."""
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:"))
    limit = mapped + (memory_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class Sandbox:
    """A worker process fed one case at a time; restarted after a hang or a crash."""

    def __init__(self, base: Path, memory_mb: int, budget_mb: int):
        self.args = [sys.executable, __file__, "--worker", str(base), "--memory-mb", str(memory_mb)]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "NERVI_MAX_MEMORY_MB": str(budget_mb)}
        self.process = None

    def run(self, path: Path, harmless: bool, timeout: float) -> tuple[str, str]:
        if self.process is None:
            self.process = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, env=self.env, text=True)
            timeout += 60  # the worker's start (torch import, reference decode) is not the case's
        self.process.stdin.write(json.dumps({"path": str(path), "harmless": harmless}) + "\n")
        self.process.stdin.flush()
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout)
        if not ready:
            self.stop()
            return "hang", f"no answer within {timeout:.0f} s"
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            self.process = None
            return ("memory", f"worker killed (signal {-code})") if code < 0 else ("uncaught", f"worker exited {code}")
        answer = json.loads(line)
        return answer["outcome"], answer["how"]

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def fuzz(cases: int, seed: int = 0, *, timeout: float = 20.0, memory_mb: int = 2048, budget_mb: int = 512,
         folder: Path | None = None) -> list[tuple[str, str, str]]:
    """(kind, outcome, how) of `cases` seeded cases, each read by the sandbox."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        base = write_base(Path(tmp) / "base.nervi")
        data = base.read_bytes()
        rng = np.random.default_rng(seed)
        sandbox = Sandbox(base, memory_mb, budget_mb)
        results = []
        try:
            for i in range(cases):
                case = make_case(data, rng)
                path = Path(tmp) / f"case-{i:05d}.nervi"
                path.write_bytes(case.data)
                results.append((case.kind, *sandbox.run(path, case.harmless, timeout)))
                path.unlink()
        finally:
            sandbox.stop()
        return results


def table(results: list[tuple[str, str, str]]) -> str:
    """The outcome table (markdown), then how the clean cases ended, then every failure."""
    outcomes = Counter(outcome for _, outcome, _ in results)
    hows = Counter(how for _, outcome, how in results if outcome == "clean")
    lines = ["| cases | " + " | ".join(OUTCOMES) + " |", "|" + "---:|" * (len(OUTCOMES) + 1),
             f"| {len(results)} | " + " | ".join(str(outcomes[o]) for o in OUTCOMES) + " |", "",
             "clean: " + ", ".join(f"{hows[h]} {h}" for h in CLEAN)]
    lines += [f"{outcome}: {kind}: {how}" for kind, outcome, how in results if outcome != "clean"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds a case may take")
    parser.add_argument("--memory-mb", type=int, default=2048, help="address space a worker may add to torch's")
    parser.add_argument("--budget-mb", type=int, default=512, help="the reader's NERVI_MAX_MEMORY_MB")
    parser.add_argument("--worker", metavar="BASE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.memory_mb)
    started = time.perf_counter()
    results = fuzz(args.cases, args.seed, timeout=args.timeout, memory_mb=args.memory_mb, budget_mb=args.budget_mb)
    print(table(results))
    kinds = Counter(kind.split(":")[0] for kind, _, _ in results)
    print(f"\n{dict(kinds)}; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
