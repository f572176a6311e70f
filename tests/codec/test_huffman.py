"""Huffman coding: exact round trips, a canonical plain-data table, dahuffman as the reference,
and ArchiveError (nothing else) for corrupt tables and streams."""

import base64
import json

import numpy as np
import pytest
from dahuffman import HuffmanCodec
from dahuffman.huffmancodec import PrefixCodec

from nervi_hpc.codec.huffman import BLOCK_SYMBOLS, MAX_CODE_LENGTH, CodeTable, code_lengths, decode, encode
from nervi_hpc.errors import ArchiveError



def streams():
    """name → symbols: the shapes of data the codec meets (and a few it should survive).

    A fresh generator each call, so every test sees the same streams whatever runs before it."""
    rng = np.random.default_rng(20240601)
    gaussian = np.clip(np.rint(rng.normal(256, 40, 30_000)), 0, 511).astype(np.int64)
    return {
        "uniform 9-bit": rng.integers(0, 512, 20_000),
        "gaussian 9-bit": gaussian,
        "geometric": np.minimum(rng.geometric(0.3, 20_000) - 1, 511),
        "single symbol": np.full(9_000, 300),
        "two symbols": rng.choice([3, 400], size=10_000, p=[0.9, 0.1]),
        "one block": rng.integers(0, 512, BLOCK_SYMBOLS),
        "block plus one": rng.integers(0, 512, BLOCK_SYMBOLS + 1),
        "sparse 16-bit": rng.integers(0, 1 << 16, 3_000),
        "one symbol": np.array([5]),
        "empty": np.zeros(0, dtype=np.int64),
    }


def index_bytes(count: int) -> int:
    return 4 * -(-count // BLOCK_SYMBOLS)


@pytest.mark.parametrize("name", list(streams()))
def test_round_trip_is_exact(name):
    symbols = streams()[name].astype(np.int64)
    data, table = encode(symbols)
    decoded = decode(data, table, symbols.size)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, symbols)


def test_encode_accepts_only_1d_symbol_arrays():
    for bad in (np.zeros((2, 2), dtype=int), np.array([-1, 2]), np.array([1 << 16]), np.array([0.5, 1.0])):
        with pytest.raises(ValueError):
            encode(bad)


def test_table_is_canonical_prefix_free_and_complete():
    _, table = encode(streams()["geometric"])
    book = table.code_book()
    ordered = sorted(book.items(), key=lambda item: (item[1][0], item[0]))
    for (_, (length_a, code_a)), (_, (length_b, code_b)) in zip(ordered, ordered[1:]):
        assert code_b == (code_a + 1) << (length_b - length_a)  # canonical: count up, then shift
    words = [format(code, f"0{length}b") for length, code in book.values()]
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    assert sum(2.0 ** -length for length, _ in book.values()) == 1.0
    assert sorted(book) == list(table.symbols)  # the book itself is in canonical order


def test_table_is_a_byte_per_symbol_in_json_and_survives_a_round_trip():
    _, table = encode(streams()["gaussian 9-bit"])
    text = json.dumps(table.to_json())
    assert CodeTable.from_json(json.loads(text)) == table
    assert len(base64.b64decode(table.to_json()["lengths"])) == table.symbols[-1] + 1
    assert len(text) < 2 * (table.symbols[-1] + 1)
    # format 1's lists read as the same table
    assert CodeTable.from_json({"symbols": list(table.symbols), "lengths": list(table.lengths)}) == table


@pytest.mark.parametrize("lengths", ["not base64!", 17, base64.b64encode(bytes(70000)).decode(),
                                     base64.b64encode(bytes([1, 2, 2, 40])).decode(),
                                     base64.b64encode(bytes([1, 2])).decode()])
def test_a_bad_compact_table_is_an_archive_error(lengths):
    with pytest.raises(ArchiveError):
        CodeTable.from_json({"lengths": lengths})


def test_code_is_huffman_optimal_within_one_bit_of_the_entropy():
    for name in ("uniform 9-bit", "gaussian 9-bit", "geometric"):
        symbols = streams()[name].astype(np.int64)
        data, table = encode(symbols)
        counts = np.bincount(symbols)[list(table.symbols)]
        p = counts / counts.sum()
        entropy = -(p * np.log2(p)).sum()
        mean_length = (counts * np.array(table.lengths)).sum() / counts.sum()
        assert entropy <= mean_length < entropy + 1, name
        assert len(data) - index_bytes(symbols.size) == -(-int((counts * np.array(table.lengths)).sum()) // 8)


def test_bitstream_equals_dahuffman_encoding_with_the_same_code():
    for name in ("gaussian 9-bit", "two symbols", "block plus one"):
        symbols = [int(s) for s in streams()[name][:6000]]
        data, table = encode(np.array(symbols))
        book = table.code_book()
        # An 8-bit zero "end" code makes dahuffman pad the last byte with zeros, as we do.
        reference = PrefixCodec({**book, "end": (8, 0)}, eof="end").encode(symbols)
        assert data[index_bytes(len(symbols)):] == reference, name


def test_dahuffman_decodes_our_bitstream():
    symbols = [int(s) for s in streams()["geometric"][:5000]]
    data, table = encode(np.array(symbols))
    decoded = PrefixCodec(table.code_book(), eof="never").decode(data[index_bytes(len(symbols)):])
    assert decoded[:len(symbols)] == symbols


def test_code_lengths_are_dahuffmans_and_capped_for_pathological_frequencies():
    frequencies = np.array([5, 1, 9, 30, 2, 2])
    reference = HuffmanCodec.from_frequencies(dict(enumerate(frequencies.tolist())), eof=0).get_code_table()
    assert code_lengths(frequencies).tolist() == [reference[i][0] for i in range(6)]
    fibonacci = [1, 1]
    while len(fibonacci) < 45:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    uncapped = HuffmanCodec.from_frequencies(dict(enumerate(fibonacci)), eof=0).get_code_table()
    assert max(bits for bits, _ in uncapped.values()) > MAX_CODE_LENGTH
    capped = code_lengths(np.array(fibonacci))
    assert capped.max() <= MAX_CODE_LENGTH
    CodeTable(tuple(range(45)), tuple(capped.tolist()))  # still a complete prefix code


@pytest.mark.parametrize("table", [
    None, [], {"symbols": [1, 2]}, {"symbols": [1, 2], "lengths": [1, 1], "extra": 1},
    {"symbols": "12", "lengths": [1, 1]}, {"symbols": [1, 2], "lengths": [1.0, 1]},
    {"symbols": [1, 2], "lengths": [True, 1]}, {"symbols": [1, 2], "lengths": ["1", 1]},
    {"symbols": [1, 2, 3], "lengths": [1, 1]}, {"symbols": [2, 1], "lengths": [1, 1]},
    {"symbols": [1, 1], "lengths": [1, 1]}, {"symbols": [-1, 2], "lengths": [1, 1]},
    {"symbols": [1, 1 << 16], "lengths": [1, 1]}, {"symbols": [1, 2], "lengths": [0, 1]},
    {"symbols": [1, 2], "lengths": [1, 33]}, {"symbols": [1, 2, 3], "lengths": [1, 1, 1]},
    {"symbols": [1, 2, 3], "lengths": [1, 2, 3]}, {"symbols": [1], "lengths": [2]},
    {"symbols": [1, 2], "lengths": [10 ** 30, 1]},
])
def test_malformed_tables_raise_archive_error(table):
    with pytest.raises(ArchiveError):
        CodeTable.from_json(table)


def test_corrupt_streams_raise_archive_error():
    symbols = streams()["gaussian 9-bit"]
    data, table = encode(symbols)
    n = symbols.size
    _, empty = encode(np.zeros(0, dtype=int))
    bad_index = bytearray(data)
    bad_index[0] ^= 0x01
    cases = [(data[:-1], table, n), (data + b"\0", table, n), (data[index_bytes(n):], table, n),
             (data, table, n + 1), (data, table, n - 1), (data, table, 10 ** 18), (data, table, -1),
             (data, table, 1.0 * n), (data, table, True), (data, empty, n), (b"\0", empty, 0),
             (bytes(bad_index), table, n), (b"", table, 1), (bytes(4 * 10_000), table, 10_000 * BLOCK_SYMBOLS)]
    for stream, code, count in cases:
        with pytest.raises(ArchiveError):
            decode(stream, code, count)


def test_a_block_that_decodes_past_its_end_is_rejected():
    symbols = np.random.default_rng(3).integers(0, 512, 2 * BLOCK_SYMBOLS + 2)
    data, table = encode(symbols)
    index = np.frombuffer(data[:12], dtype="<u4").copy()
    index[0] += 8  # move 8 bits from block 1 to block 0: totals still agree, block ends do not
    index[1] -= 8
    with pytest.raises(ArchiveError, match="does not end where its index says"):
        decode(index.tobytes() + data[12:], table, symbols.size)


def test_random_damage_gives_archive_error_or_symbols_of_the_table_never_a_crash():
    symbols = streams()["geometric"]
    data, table = encode(symbols)
    rng = np.random.default_rng(7)
    for _ in range(60):
        damaged = bytearray(data)
        for position in rng.integers(0, len(data), rng.integers(1, 4)):
            damaged[position] ^= int(rng.integers(1, 256))
        try:
            decoded = decode(bytes(damaged), table, symbols.size)
        except ArchiveError:
            continue
        assert decoded.size == symbols.size and np.isin(decoded, table.symbols).all()
