"""Trie files: round trips, and every kind of damage rejected with ValueError."""

import os
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pyfastseq as fs
from conftest import run_python

pytestmark = pytest.mark.native

HEADER = 64
M64 = (1 << 64) - 1


def checksum(data: bytes) -> int:
    """The file format's checksum of a whole file, written independently of the C++ one: the header
    (its checksum field as zero) and the payload from version 2 on, the payload alone in version 1."""
    version = struct.unpack_from("<I", data, 8)[0]
    covered = data[HEADER:] if version == 1 else data[:48] + bytes(8) + data[56:]
    h = 0x9E3779B97F4A7C15 ^ len(covered)
    for (word,) in struct.iter_unpack("<Q", covered):
        h ^= (word * 0xC2B2AE3D27D4EB4F) & M64
        h = ((((h << 31) | (h >> 33)) & M64) * 0x9E3779B97F4A7C15) & M64
    return h ^ (h >> 29)


def arrays(trie):
    return [a.tolist() for a in trie._native.arrays()]


@pytest.fixture
def trie():
    return fs.Trie([[3, 1, 4], [3, 1, 5], [9], [2, 6, 5, 3]], eos_id=0)


@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(tmp_path, trie, mmap):
    path = tmp_path / "t.trie"
    trie.save(path)
    loaded = fs.Trie.load(path, mmap=mmap)
    assert loaded._native.memory_mapped == mmap
    assert arrays(loaded) == arrays(trie)
    assert (len(loaded), loaded.num_nodes, loaded.depth, loaded.eos_id, loaded.max_token) == (
        len(trie), trie.num_nodes, trie.depth, trie.eos_id, trie.max_token,
    )
    assert loaded.contains([3, 1, 5, 0]) and not loaded.contains([3, 1])


@given(st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=6), min_size=1, max_size=30))
def test_round_trip_random(tmp_path_factory, sequences):
    path = tmp_path_factory.mktemp("t") / "t.trie"
    trie = fs.Trie(sequences)
    trie.save(str(path))
    assert arrays(fs.Trie.load(str(path))) == arrays(trie)
    assert checksum(path.read_bytes()) == struct.unpack_from("<Q", path.read_bytes(), 48)[0]


def write_patched(path, data: bytearray, fix_checksum: bool):
    if fix_checksum:
        struct.pack_into("<Q", data, 48, checksum(bytes(data)))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("mmap", [True, False])
def test_truncation_at_every_length(tmp_path, trie, mmap):
    good = tmp_path / "good.trie"
    trie.save(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.trie"
    for cut in range(len(data)):
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated|bad magic"):
            fs.Trie.load(bad, mmap=mmap)
    bad.write_bytes(data + b"\0" * 8)
    with pytest.raises(ValueError, match="trailing bytes"):
        fs.Trie.load(bad, mmap=mmap)


@pytest.mark.parametrize(
    "offset, value, match",
    [
        (0, b"NOTATRIE", "bad magic"),
        (8, struct.pack("<I", 3), "unsupported version 3"),
        (8, struct.pack("<I", 0), "unsupported version 0"),
        (12, struct.pack("<I", 80), "header size 80"),
        (16, struct.pack("<Q", 0), "bad node count"),
        (16, struct.pack("<Q", 2**40), "bad node count"),
        (16, struct.pack("<Q", 5), r"its header gives a payload of \d+ bytes where 5 nodes take \d+"),
        (40, struct.pack("<Q", 8), r"its header gives a payload of 8 bytes where \d+ nodes take \d+"),
        (48, struct.pack("<Q", 12345), "checksum mismatch"),
        (24, struct.pack("<Q", 5), "checksum mismatch"),  # num_items
        (32, struct.pack("<i", 7), "checksum mismatch"),  # eos_id
        (36, struct.pack("<i", 8), "checksum mismatch"),  # max_token
        (56, struct.pack("<Q", 1), "checksum mismatch"),  # reserved
    ],
)
def test_damaged_header(tmp_path, trie, offset, value, match):
    path = tmp_path / "t.trie"
    trie.save(path)
    data = bytearray(path.read_bytes())
    data[offset : offset + len(value)] = value
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=match):
        fs.Trie.load(path)


def test_every_flipped_bit_is_rejected(tmp_path, trie):
    path = tmp_path / "t.trie"
    trie.save(path)
    data = path.read_bytes()
    for position in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[position] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            with pytest.raises(ValueError, match="checksum mismatch|bad magic|version|header size|node count|header gives|truncated"):
                fs.Trie.load(path)


def as_version_1(data: bytes) -> bytearray:
    """A version 2 file rewritten as version 1, whose checksum covers the payload only."""
    old = bytearray(data)
    struct.pack_into("<I", old, 8, 1)
    struct.pack_into("<Q", old, 48, checksum(bytes(old)))
    return old


@pytest.mark.parametrize("mmap", [True, False])
def test_version_1_files_load(tmp_path, trie, mmap):
    path = tmp_path / "t.trie"
    trie.save(path)
    path.write_bytes(bytes(as_version_1(path.read_bytes())))
    loaded = fs.Trie.load(path, mmap=mmap)
    assert arrays(loaded) == arrays(trie) and (loaded.eos_id, len(loaded)) == (trie.eos_id, len(trie))


@pytest.mark.parametrize("eos_id", [7, 2**24, 2**31 - 1])
def test_version_1_eos_id_that_is_no_token_is_rejected(tmp_path, trie, eos_id):
    # Version 1's checksum leaves the header out; an eos that no entry ends with is still caught.
    path = tmp_path / "t.trie"
    trie.save(path)
    data = as_version_1(path.read_bytes())
    struct.pack_into("<i", data, 32, eos_id)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad eos_id"):
        fs.Trie.load(path)


def section_offsets(num_nodes):
    pad = lambda n: (n + 7) // 8 * 8  # noqa: E731
    begin = HEADER
    token = begin + pad((num_nodes + 1) * 4)
    terminal = token + pad((num_nodes - 1) * 4)
    return begin, token, terminal


@pytest.mark.parametrize(
    "damage, match",
    [
        ("begin_first", "bad child offsets"),
        ("begin_decrease", "child offsets decrease|child numbered before"),
        ("begin_past_the_tokens", "child offsets decrease at node 0"),
        ("token_order", "not ascending"),
        ("token_negative", "not ascending and non-negative"),
        ("leaf_not_terminal", "is not terminal"),
        ("item_count", "item count mismatch"),
        ("max_token", "max token mismatch"),
        ("stray_bits", "stray terminal bits"),
        ("eos", "bad eos_id"),
        ("eos_not_a_token", "bad eos_id"),
        ("reserved", "reserved header bytes"),
        ("root_terminal", "the root is terminal"),
        ("terminal_without_eos", "node 1 is terminal but not entered by eos_id"),
    ],
)
def test_structurally_invalid_file_with_valid_checksum(tmp_path, trie, damage, match):
    """Damage that a checksum cannot catch (the file was written that way) is still rejected."""
    path = tmp_path / "t.trie"
    trie.save(path)
    data = bytearray(path.read_bytes())
    n = trie.num_nodes
    begin, token, terminal = section_offsets(n)
    if damage == "begin_first":
        struct.pack_into("<I", data, begin, 1)
    elif damage == "begin_decrease":
        struct.pack_into("<I", data, begin + 4 * 2, 0)
    elif damage == "begin_past_the_tokens":  # the root's children would run past child_token's end
        struct.pack_into("<I", data, begin + 4, n + 1000)
    elif damage == "token_order":  # root children are tokens [3, 9, 2...] sorted: swap two
        a, b = struct.unpack_from("<ii", data, token)
        struct.pack_into("<ii", data, token, b, a)
    elif damage == "token_negative":
        struct.pack_into("<i", data, token, -5)
    elif damage == "leaf_not_terminal":
        word = struct.unpack_from("<Q", data, terminal)[0]
        struct.pack_into("<Q", data, terminal, word & ~(1 << (n - 1)))
    elif damage == "item_count":
        struct.pack_into("<Q", data, 24, len(trie) + 1)
    elif damage == "max_token":
        struct.pack_into("<i", data, 36, trie.max_token + 1)
    elif damage == "stray_bits":
        word = struct.unpack_from("<Q", data, terminal)[0]
        struct.pack_into("<Q", data, terminal, word | (1 << 63))
    elif damage == "eos":
        struct.pack_into("<i", data, 32, -7)
    elif damage == "eos_not_a_token":
        struct.pack_into("<i", data, 32, 7)
    elif damage == "reserved":
        struct.pack_into("<Q", data, 56, 1)
    elif damage in ("root_terminal", "terminal_without_eos"):  # node 1 is entered by token 2
        word = struct.unpack_from("<Q", data, terminal)[0]
        struct.pack_into("<Q", data, terminal, word | (1 if damage == "root_terminal" else 2))
        struct.pack_into("<Q", data, 24, len(trie) + 1)  # the item count agrees
    write_patched(path, data, fix_checksum=True)
    with pytest.raises(ValueError, match=match):
        fs.Trie.load(path)


def test_missing_and_non_regular_files(tmp_path):
    with pytest.raises(ValueError, match="cannot open"):
        fs.Trie.load(tmp_path / "absent.trie")
    with pytest.raises(ValueError, match="not a regular file"):
        fs.Trie.load(tmp_path)
    with pytest.raises(ValueError, match="cannot create a file beside"):
        fs.Trie([[1]]).save(tmp_path / "no" / "such" / "dir.trie")
    with pytest.raises(ValueError, match=r"cannot replace .* \(a directory\)"):
        fs.Trie([[1]]).save(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):  # at once: no wait for a writer
        fs.Trie.load(fifo)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_paths_with_a_nul_character(tmp_path, as_bytes):
    # The OS would stop at the NUL and use the file named by what precedes it.
    trie = fs.Trie([[1, 2]])
    trie.save(tmp_path / "a")
    path = str(tmp_path / "a") + "\0.trie"
    path = path.encode() if as_bytes else path
    with pytest.raises(ValueError, match="path must not contain a NUL character"):
        fs.Trie.load(path)
    with pytest.raises(ValueError, match="path must not contain a NUL character"):
        trie.save(path)
    from pyfastseq import _C

    with pytest.raises(ValueError, match="path must not contain a NUL character"):
        _C.Trie.load("a\0b", True)
    with pytest.raises(ValueError, match="path must not contain a NUL character"):
        trie._native.save("a\0b")


def test_save_over_a_mapped_file_leaves_the_mapping_whole(tmp_path):
    # The new file replaces the old by name: a trie mapping the old one keeps reading it.
    path = tmp_path / "served.trie"
    fs.Trie([[1, 2], [3]]).save(path)
    served = fs.Trie.load(path, mmap=True)
    fs.Trie([[4, 5, 6]]).save(path)
    assert served.children(0)[0].tolist() == [1, 3] and served.contains([1, 2])
    assert fs.Trie.load(path).children(0)[0].tolist() == [4]
    assert os.listdir(tmp_path) == ["served.trie"]  # no temporary file left behind


def test_save_onto_a_fifo_replaces_it_rather_than_waiting(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = run_python(f"import pyfastseq as fs; fs.Trie([[1, 2]]).save({str(fifo)!r})", timeout=120)
    assert done.returncode == 0, done.stderr
    assert fs.Trie.load(fifo).contains([1, 2])


def test_a_file_padded_far_past_its_size_is_refused_before_reading(tmp_path):
    path = tmp_path / "padded.trie"
    fs.Trie([[1, 2], [3]]).save(path)
    os.truncate(path, 1 << 40)  # sparse: a terabyte that no load may try to read
    for mmap in (False, True):
        with pytest.raises(ValueError, match=r"trailing bytes \(payload 1099511627712 bytes, expected"):
            fs.Trie.load(path, mmap=mmap)


def test_file_names_that_are_not_utf8(tmp_path):
    # os.listdir hands such names back with surrogates; they save, load and appear in errors.
    name = str(tmp_path / "\udcff.trie")
    fs.Trie([[1, 2]]).save(name)
    assert fs.Trie.load(name).contains([1, 2]) and os.listdir(tmp_path) == ["\udcff.trie"]
    with pytest.raises(ValueError, match=r"cannot open '.*\\xfe\.trie'"):
        fs.Trie.load(str(tmp_path / "\udcfe.trie"))


def test_mapped_trie_outlives_views(tmp_path, trie):
    path = tmp_path / "t.trie"
    trie.save(path)
    loaded = fs.Trie.load(path, mmap=True)
    child_begin, _, _ = loaded._native.arrays()
    del loaded
    assert child_begin.tolist() == trie._native.arrays()[0].tolist()
    assert not child_begin.flags.writeable
