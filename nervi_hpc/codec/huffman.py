"""Huffman coding of quantised symbols: a canonical code and a block-indexed bitstream.

The code lengths come from dahuffman (`HuffmanCodec.from_frequencies`); the codes are the canonical
code for those lengths, so the table is plain data (a length per symbol, one byte each) from which
encoder and decoder rebuild the same code. Packing and unpacking are vectorised with numpy, because dahuffman's
pure-Python encode/decode manages about a million symbols per second (benchmarks/codec.py).

Stream layout: `u32le × ceil(count / BLOCK_SYMBOLS)` bit lengths of consecutive blocks of
BLOCK_SYMBOLS symbols, then the codes MSB-first, zero-padded to a whole byte. The block index
(32 bits per 4096 symbols, < 0.01 bit per symbol) lets the decoder walk all blocks at once, one
numpy step per symbol position in a block, and check that every block ends where it should.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from dahuffman import HuffmanCodec

from ..errors import ArchiveError

ALPHABET = 1 << 16
MAX_CODE_LENGTH = 32
BLOCK_SYMBOLS = 4096
_ENCODE_CHUNK = 256 * BLOCK_SYMBOLS


@dataclass(frozen=True)
class CodeTable:
    """A canonical prefix code: `symbols` strictly increasing, `lengths[i]` bits for `symbols[i]`.

    Construction validates it (symbols in 0..65535, lengths in 1..32, a complete code, or a single
    symbol of length 1) and raises ArchiveError otherwise, so every CodeTable decodes safely.
    """

    symbols: tuple[int, ...]
    lengths: tuple[int, ...]

    def __post_init__(self):
        _check_table(self.symbols, self.lengths)

    def to_json(self) -> dict:
        """{"lengths": base64 of one byte per symbol 0..max (0: absent)}: 0.7 kB at 9 bits, where
        the lists of format 1 took 3–4 kB (3 % of a CR-300 archive at 128²)."""
        table = np.zeros(self.symbols[-1] + 1 if self.symbols else 0, dtype=np.uint8)
        table[list(self.symbols)] = self.lengths
        return {"lengths": base64.b64encode(table.tobytes()).decode("ascii")}

    @classmethod
    def from_json(cls, obj) -> CodeTable:
        """The table `to_json` writes, or format 1's {"symbols": [...], "lengths": [...]}."""
        if isinstance(obj, dict) and set(obj) == {"lengths"}:
            return cls._from_bytes(obj["lengths"])
        if not isinstance(obj, dict) or set(obj) != {"symbols", "lengths"}:
            raise ArchiveError("code table must be an object with 'lengths' (and 'symbols' in format 1)")
        symbols, lengths = obj["symbols"], obj["lengths"]
        if not isinstance(symbols, list) or not isinstance(lengths, list):
            raise ArchiveError("code table 'symbols' and 'lengths' must be lists")
        if not all(type(v) is int for v in symbols + lengths):
            raise ArchiveError("code table entries must be integers")
        return cls(tuple(symbols), tuple(lengths))

    @classmethod
    def _from_bytes(cls, text) -> CodeTable:
        if not isinstance(text, str) or len(text) > 4 * -(-ALPHABET // 3):
            raise ArchiveError(f"code table 'lengths' must be base64 of at most {ALPHABET} bytes")
        try:
            table = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
        except (binascii.Error, ValueError):
            raise ArchiveError("code table 'lengths' is not valid base64") from None
        symbols = np.flatnonzero(table)
        return cls(tuple(symbols.tolist()), tuple(table[symbols].tolist()))

    @cached_property
    def canonical(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(symbols, lengths, codes) in canonical order: by length, then symbol; codes count up."""
        order = np.lexsort((np.array(self.symbols, dtype=np.int64), np.array(self.lengths, dtype=np.int64)))
        symbols = np.array(self.symbols, dtype=np.uint16)[order]
        lengths = np.array(self.lengths, dtype=np.int64)[order]
        codes = np.zeros(len(order), dtype=np.uint64)
        code = 0
        for i in range(1, len(order)):
            code = (code + 1) << int(lengths[i] - lengths[i - 1])
            codes[i] = code
        return symbols, lengths, codes

    def code_book(self) -> dict[int, tuple[int, int]]:
        """symbol → (bit length, code value): dahuffman's code-table form of this code."""
        symbols, lengths, codes = self.canonical
        return {int(s): (int(n), int(c)) for s, n, c in zip(symbols, lengths, codes)}


def _check_table(symbols: tuple[int, ...], lengths: tuple[int, ...]) -> None:
    if len(symbols) != len(lengths):
        raise ArchiveError(f"code table has {len(symbols)} symbols but {len(lengths)} lengths")
    if len(symbols) > ALPHABET:
        raise ArchiveError(f"code table has {len(symbols)} symbols (at most {ALPHABET})")
    if not all(0 <= s < ALPHABET for s in symbols):
        raise ArchiveError(f"code table symbols must lie in 0..{ALPHABET - 1}")
    if any(a >= b for a, b in zip(symbols, symbols[1:])):
        raise ArchiveError("code table symbols must be strictly increasing")
    if not all(1 <= n <= MAX_CODE_LENGTH for n in lengths):
        raise ArchiveError(f"code lengths must lie in 1..{MAX_CODE_LENGTH}")
    if len(lengths) == 1:
        if lengths[0] != 1:
            raise ArchiveError("a one-symbol code table must give its symbol length 1")
    elif lengths and sum(1 << (MAX_CODE_LENGTH - n) for n in lengths) != 1 << MAX_CODE_LENGTH:
        raise ArchiveError("code lengths do not form a complete prefix code (Kraft sum ≠ 1)")


def code_lengths(frequencies: np.ndarray) -> np.ndarray:
    """Huffman code lengths (dahuffman) for positive `frequencies`, capped at MAX_CODE_LENGTH.

    A lone symbol gets length 1. When a skewed distribution would need longer codes, the
    frequencies are halved (rounding up) until it fits; real weights never come near the cap.
    """
    freqs = [int(f) for f in frequencies]
    if len(freqs) <= 1:
        return np.ones(len(freqs), dtype=np.int64)
    while True:
        # eof=0 names a real symbol, so dahuffman adds no end-of-file code: the count is stored.
        table = HuffmanCodec.from_frequencies(dict(enumerate(freqs)), eof=0).get_code_table()
        lengths = np.array([table[i][0] for i in range(len(freqs))], dtype=np.int64)
        if lengths.max() <= MAX_CODE_LENGTH:
            return lengths
        freqs = [(f + 1) // 2 for f in freqs]


def encode(symbols: np.ndarray) -> tuple[bytes, CodeTable]:
    """Huffman-code the 1-D array of symbols (0..65535); returns (stream, code table)."""
    symbols = np.asarray(symbols)
    if symbols.ndim != 1 or (symbols.size and (symbols.dtype.kind not in "ui" or symbols.min() < 0
                                                or symbols.max() >= ALPHABET)):
        raise ValueError(f"symbols must be a 1-D integer array with values in 0..{ALPHABET - 1}")
    symbols = symbols.astype(np.uint16, copy=False)
    counts = np.bincount(symbols, minlength=1) if symbols.size else np.zeros(0, dtype=np.int64)
    present = np.flatnonzero(counts)
    table = CodeTable(tuple(present.tolist()), tuple(code_lengths(counts[present]).tolist()))
    return _pack(symbols, table), table


def _pack(symbols: np.ndarray, table: CodeTable) -> bytes:
    """Block index + MSB-first codes. Codes (≤ 32 bits) are placed in 32-bit words: each lands in
    at most two words, and since codes never overlap, summing their bit fields per word (exact in
    float64 below 2^53) equals OR-ing them."""
    if symbols.size == 0:
        return b""
    canon_symbols, canon_lengths, canon_codes = table.canonical
    code_of = np.zeros(ALPHABET, dtype=np.uint64)
    length_of = np.zeros(ALPHABET, dtype=np.uint8)
    code_of[canon_symbols] = canon_codes
    length_of[canon_symbols] = canon_lengths
    total_bits = int(np.bincount(symbols, minlength=ALPHABET).astype(np.int64) @ length_of.astype(np.int64))
    words = np.zeros(total_bits // 32 + 2, dtype=np.uint32)
    block_bits, position = [], 0
    for begin in range(0, symbols.size, _ENCODE_CHUNK):
        chunk = symbols[begin:begin + _ENCODE_CHUNK]
        lengths = length_of[chunk].astype(np.int64)
        ends = position + np.cumsum(lengths)
        starts = ends - lengths
        first_word = position >> 5
        word = (starts >> 5) - first_word
        placed = code_of[chunk] << (64 - lengths - (starts & 31)).astype(np.uint64)
        size = int(word[-1]) + 2
        local = (np.bincount(word, weights=placed >> np.uint64(32), minlength=size)
                 + np.bincount(word + 1, weights=placed & np.uint64(0xFFFFFFFF), minlength=size))
        words[first_word:first_word + size] |= local.astype(np.uint32)
        block_bits.append(np.add.reduceat(lengths, np.arange(0, chunk.size, BLOCK_SYMBOLS)))
        position = int(ends[-1])
    index = np.concatenate(block_bits).astype("<u4").tobytes()
    return index + words.astype(">u4").tobytes()[:(total_bits + 7) // 8]


def decode(data: bytes, table: CodeTable, count: int) -> np.ndarray:
    """The `count` symbols (uint16) of a stream made by `encode`; ArchiveError if it is corrupt."""
    if type(count) is not int or count < 0:
        raise ArchiveError(f"symbol count must be a non-negative integer, got {count!r}")
    if count == 0:
        if data:
            raise ArchiveError(f"Huffman stream of 0 symbols has {len(data)} stray bytes")
        return np.zeros(0, dtype=np.uint16)
    if not table.symbols:
        raise ArchiveError(f"Huffman stream of {count} symbols has an empty code table")
    blocks = -(-count // BLOCK_SYMBOLS)
    min_length, max_length = min(table.lengths), max(table.lengths)
    stream_bytes = len(data) - 4 * blocks
    if stream_bytes < 0 or count * min_length > 8 * stream_bytes:
        raise ArchiveError(f"Huffman stream of {len(data)} bytes is too short for {count} symbols")
    block_bits = np.frombuffer(data, dtype="<u4", count=blocks).astype(np.int64)
    block_sizes = np.full(blocks, BLOCK_SYMBOLS, dtype=np.int64)
    block_sizes[-1] = count - (blocks - 1) * BLOCK_SYMBOLS
    if ((block_bits < block_sizes * min_length) | (block_bits > block_sizes * max_length)).any():
        raise ArchiveError("Huffman block index is inconsistent with the code lengths")
    total_bits = int(block_bits.sum())
    if (total_bits + 7) // 8 != stream_bytes:
        raise ArchiveError(f"Huffman stream holds {stream_bytes} bytes but its index says {total_bits} bits")
    if len(table.symbols) == 1:  # one 1-bit code: the index check above already pinned every bit
        return np.full(count, table.symbols[0], dtype=np.uint16)
    ends = np.cumsum(block_bits)
    starts = ends - block_bits
    # Zero padding lets a corrupt block overrun its end (by ≤ BLOCK_SYMBOLS codes) without an
    # out-of-range read; the end check below then rejects it.
    padding = bytes(BLOCK_SYMBOLS * max_length // 8 + 8)
    walker = _BlockWalker(data[4 * blocks:] + padding, table)
    out = np.empty(count, dtype=np.uint16)
    full = count // BLOCK_SYMBOLS
    for first, last, steps in ((0, full, BLOCK_SYMBOLS), (full, blocks, count - full * BLOCK_SYMBOLS)):
        if last > first and steps:
            symbols, reached = walker.walk(starts[first:last], steps)
            if (reached != ends[first:last]).any():
                raise ArchiveError("Huffman stream is corrupt: a block does not end where its index says")
            out[first * BLOCK_SYMBOLS:first * BLOCK_SYMBOLS + symbols.size] = symbols.reshape(-1)
    return out


class _BlockWalker:
    """Decodes blocks in lockstep. The next code is read from a window of the next W bits (W =
    longest code): in a canonical code, its length is the first length whose upper limit
    (left-aligned to W bits) exceeds the window, and the symbol follows from its offset."""

    def __init__(self, stream: bytes, table: CodeTable):
        symbols, lengths, codes = table.canonical
        distinct, first_index, counts = np.unique(lengths, return_index=True, return_counts=True)
        width = int(distinct[-1])
        first_code = codes[first_index].astype(np.int64)
        self.top = np.uint64(64 - width)
        self.limits = (first_code + counts) << (width - distinct)
        self.lengths = distinct
        self.shifts = width - distinct
        self.base = first_index - first_code
        self.symbols = symbols
        # pairs[i] = 32-bit words i and i+1: one gather reads the 33+ bits after any bit offset.
        words = np.frombuffer(stream + bytes(-len(stream) % 4 + 4), dtype=">u4").astype(np.uint64)
        self.pairs = (words[:-1] << np.uint64(32)) | words[1:]

    def walk(self, starts: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode `steps` symbols from each bit offset in `starts`: (symbols[block, step], ends)."""
        position = starts.astype(np.int64)
        out = np.empty((steps, starts.size), dtype=np.uint16)
        for step in range(steps):
            bits = self.pairs.take(position >> 5) << (position & 31).view(np.uint64)
            window = (bits >> self.top).view(np.int64)  # < 2^32: the view keeps its value
            k = np.searchsorted(self.limits, window, side="right")
            out[step] = self.symbols.take(self.base.take(k) + (window >> self.shifts.take(k)))
            position += self.lengths.take(k)
        return out.T, position
