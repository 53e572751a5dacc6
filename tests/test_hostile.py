"""Hostile and broken GGUF input on the Python side: convert, inspect, estimate, export, run and verify.

A table of files made here byte by byte (tests/fuzz_seeds/gguf_craft.py): wrong magic, unsupported
versions, the file cut at every structural boundary, absurd counts, lengths past the end, bad
offsets, overflowing and zero dimensions, unknown types, duplicates. Each must give exactly one line
`tritpack-gguf: error: <file>: ...` saying what is wrong, a non-zero exit, no output file, no
temporary file, and the input untouched; the cases whose declared sizes are absurd run again in a
subprocess whose address space is capped at 2 GB (no allocation from a size the file cannot back).
`run` and `verify`, which hand the file to llama.cpp, are checked on an unknown tensor type, a
truncated file and a model that makes llama.cpp abort (a SentencePiece vocabulary without byte
tokens): the same one line, and the Python process survives.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz_seeds"))
import gguf_craft as G  # noqa: E402

ERROR_PREFIX = "tritpack-gguf: error: "
MEMORY_CAP = 2 << 30


# ----------------------------------------------------------------------------- driving the CLI

def commands(src: Path, out: Path) -> dict[str, list[str]]:
    return {
        "convert": ["convert", str(src), "-o", str(out)],
        "inspect": ["inspect", str(src)],
        "estimate": ["estimate", str(src)],
        "export": ["export", str(src), "--to", "q8_0", "-o", str(out)],
    }


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """tritpack_gguf.cli.main in this process; (exit code, stdout, stderr)."""
    from tritpack_gguf.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def check_clear_error(rc: int, err: str, src: Path, folder: Path, before: str, expect: str | None = None) -> str:
    """The contract for bad input: one error line naming the file, non-zero exit, nothing written."""
    assert rc != 0, f"exit code 0 for a bad file; stderr:\n{err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f"{ERROR_PREFIX}{src}: "), lines[0]
    if expect is not None:
        assert expect in lines[0], (expect, lines[0])
    assert sorted(p.name for p in folder.iterdir()) == [src.name], "output or temporary files were left behind"
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before, "the input was changed"
    return lines[0]


@pytest.fixture(scope="module")
def env(patched_build):
    return patched_build  # TRITPACK_LIB_DIR is set: convert and export find the patched library


def base() -> G.Craft:
    return G.base_model(0)


# ----------------------------------------------------------------------------- the table

def _header(magic=b"GGUF", version=3, n_tensors=0, n_kv=0) -> bytes:
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def _with(mutate) -> bytes:
    c = base()
    mutate(c)
    return c.build()


def _kv(key, vtype, value=None, sub=None, raw=None):
    return lambda c: c.kvs.append(G.KV(key, vtype, value, sub, raw))


def _tensor(i, **changes):
    def m(c):
        for k, v in changes.items():
            setattr(c.tensors[i], k, v)
    return m


def _poke(data: bytes, pos: int, new: bytes) -> bytes:
    return data[:pos] + new + data[pos + len(new):]


def _dup_tensor_name(c):
    c.tensors[1].name = c.tensors[2].name


def _overlap(c):
    c.build()
    c.tensors[2].offset = 0  # the second float tensor's data at the first one's


def _offset_in_padding(c):
    c.tensors[0].offset = 1 << 60


def _nested_array(c):
    inner = struct.pack("<IQ", G.U8, 1) + b"\x01"
    c.kvs.append(G.KV("test.nested", G.ARR, raw=struct.pack("<IQ", G.ARR, 1) + inner))


def _big_endian() -> bytes:
    return b"GGUF" + struct.pack(">IQQ", 3, 0, 0)


def _kv_count_plus_one() -> bytes:
    c = base()
    c.n_kv = len(c.kvs) + 1
    return c.build()


def _tensor_count_plus_one() -> bytes:
    c = base()
    c.n_tensors = len(c.tensors) + 1
    return c.build()


# (id, bytes factory, expected words in the error line; None: any clear error, tensor named or not)
CASES = [
    ("empty-file", lambda: b"", "bad magic"),
    ("wrong-magic", lambda: b"GGML" + base().build()[4:], "bad magic"),
    ("ggjt-magic", lambda: b"tjgg" + base().build()[4:], "bad magic"),
    ("magic-only", lambda: b"GGUF", "truncated"),
    ("version-1", lambda: _poke(base().build(), 4, struct.pack("<I", 1)), "unsupported GGUF version 1"),
    ("version-4", lambda: _poke(base().build(), 4, struct.pack("<I", 4)), "unsupported GGUF version 4"),
    ("version-max", lambda: _poke(base().build(), 4, b"\xff" * 4), "unsupported GGUF version 4294967295"),
    ("big-endian", _big_endian, "big-endian"),
    ("kv-count-2^63", lambda: _poke(base().build(), 16, struct.pack("<Q", 1 << 63)), "key/values cannot fit"),
    ("kv-count-2^64-1", lambda: _poke(base().build(), 16, b"\xff" * 8), "key/values cannot fit"),
    ("tensor-count-2^63", lambda: _poke(base().build(), 8, struct.pack("<Q", 1 << 63)), "tensors cannot fit"),
    ("tensor-count-2^64-1", lambda: _poke(base().build(), 8, b"\xff" * 8), "tensors cannot fit"),
    ("kv-count-plus-one", _kv_count_plus_one, None),
    ("tensor-count-plus-one", _tensor_count_plus_one, None),
    ("key-length-past-eof", lambda: _poke(base().build(), 24, struct.pack("<Q", 1 << 62)),
        "key/value 1 of 25: the key: string length 4611686018427387904 runs past the end"),
    ("string-value-past-eof", lambda: _with(_kv("test.s", G.STR, raw=struct.pack("<Q", 1 << 62) + b"abc")),
        "key 'test.s': string length"),
    ("string-value-2^64-1", lambda: _with(_kv("test.s", G.STR, raw=b"\xff" * 8)), "runs past the end"),
    ("array-u8-past-eof", lambda: _with(_kv("test.a", G.ARR, raw=struct.pack("<IQ", G.U8, 1 << 62))),
        "key 'test.a': an array of 4611686018427387904 UINT8 runs past the end"),
    ("array-f64-past-eof", lambda: _with(_kv("test.a", G.ARR, raw=struct.pack("<IQ", G.F64, (1 << 61) + 1))),
        "runs past the end"),
    ("array-strings-past-eof", lambda: _with(_kv("test.a", G.ARR, raw=struct.pack("<IQ", G.STR, 1 << 61))),
        "an array of 2305843009213693952 strings runs past the end"),
    ("array-string-element-past-eof", lambda: _with(_kv("test.a", G.ARR, raw=struct.pack("<IQ", G.STR, 2)
                                                         + G.gstr("ok") + struct.pack("<Q", 1 << 40))),
        "key 'test.a', string 1: string length"),
    ("unknown-value-type", lambda: _with(_kv("test.t", 13, raw=b"\0" * 8)), "key 'test.t': unknown value type 13"),
    ("unknown-value-type-max", lambda: _with(_kv("test.t", 0xFFFFFFFF, raw=b"")), "unknown value type 4294967295"),
    ("unknown-array-element-type", lambda: _with(_kv("test.a", G.ARR, raw=struct.pack("<IQ", 77, 1))),
        "unknown value type 77"),
    ("nested-array", lambda: _with(_nested_array), "arrays of arrays are not supported"),
    ("duplicate-key", lambda: _with(_kv("general.name", G.STR, "again")), "duplicate key 'general.name'"),
    ("key-not-utf8", lambda: _with(_kv(b"test.\xff\xfe", G.U8, 1)), "not valid UTF-8"),
    ("string-not-utf8", lambda: _with(_kv("test.s", G.STR, b"\xc3\x28")), "the value of key 'test.s' is not valid UTF-8"),
    ("array-string-not-utf8", lambda: _with(_kv("test.a", G.ARR, raw=struct.pack("<IQ", G.STR, 1) + G.gstr(b"\xe2\x82"))),
        "not valid UTF-8"),
    ("alignment-zero", lambda: _with(_kv("general.alignment", G.U32, 0)), "'general.alignment': 0 is not a power of two"),
    ("alignment-three", lambda: _with(_kv("general.alignment", G.U32, 3)), "not a power of two"),
    ("alignment-wrong-type", lambda: _with(_kv("general.alignment", G.U64, 32)), "must be UINT32"),
    ("tensor-name-not-utf8", lambda: _with(_tensor(1, name=b"blk.\xff")), "tensor info 2 of 8: the name is not valid UTF-8"),
    ("tensor-name-empty", lambda: _with(_tensor(1, name="")), "empty tensor name"),
    ("tensor-name-too-long", lambda: _with(_tensor(1, name="x" * 200)), "longer than ggml's 63"),
    ("tensor-name-escape-codes", lambda: _with(_tensor(1, name="\x1b[2J\x1b[31mred", type=99)), "unknown tensor type 99"),
    ("duplicate-tensor-name", lambda: _with(_dup_tensor_name), "tensor 'blk.0.attn_norm.weight': duplicate tensor name"),
    ("n-dims-zero", lambda: _with(_tensor(1, n_dims=0, ne=[])), "tensor 'output_norm.weight': 0 dimensions"),
    ("n-dims-five", lambda: _with(_tensor(1, ne=[64, 1, 1, 1, 1])), "5 dimensions"),
    ("n-dims-2^32-1", lambda: _with(_tensor(1, n_dims=0xFFFFFFFF)), "4294967295 dimensions"),
    ("dimension-zero", lambda: _with(_tensor(0, ne=[64, 0])), "tensor 'token_embd.weight': dimension 1 is zero"),
    ("dimension-zero-first", lambda: _with(_tensor(1, ne=[0])), "dimension 0 is zero"),
    ("dims-overflow-2^64", lambda: _with(_tensor(0, ne=[1 << 32, 1 << 32])), "past 2^63"),
    ("dims-overflow-4d", lambda: _with(_tensor(0, ne=[64, 1 << 20, 1 << 20, 1 << 20])), "past 2^63"),
    ("dims-huge-not-backed", lambda: _with(_tensor(0, ne=[64, 1 << 40])),
        "tensor 'token_embd.weight': tensor data runs past the end of the file"),
    ("dim-2^64-1", lambda: _with(_tensor(1, ne=[(1 << 64) - 1])), "past 2^63"),
    ("unknown-tensor-type", lambda: _with(_tensor(1, type=99)), "tensor 'output_norm.weight': unknown tensor type 99"),
    ("removed-tensor-type-q4_2", lambda: _with(_tensor(1, type=4)), "unknown tensor type 4"),
    ("tensor-type-max", lambda: _with(_tensor(1, type=0xFFFFFFFF)), "unknown tensor type 4294967295"),
    ("row-not-whole-blocks", lambda: _with(_tensor(5, ne=[48, 32])), "tensor 'blk.0.ffn_gate.weight': row length 48 is not a multiple of Q8_0's block of 32"),
    ("offset-past-eof", lambda: _with(_offset_in_padding), "tensor 'token_embd.weight': tensor data runs past the end"),
    ("offset-2^64-32", lambda: _with(_tensor(7, offset=(1 << 64) - 32)), "tensor 'blk.0.attn_v.weight': tensor data runs past the end"),
    ("offset-unaligned", lambda: _with(_tensor(1, offset=4100)), "not a multiple of the alignment 32"),
    ("offsets-overlap", lambda: _with(_overlap), "overlaps tensor 'token_embd.weight'"),
    ("data-truncated", lambda: base().build()[:-1], "tensor 'blk.0.attn_v.weight': tensor data runs past the end"),
    ("header-only", lambda: base().build()[:24], "25 key/values cannot fit in the 24 bytes of the file"),
]

# declared sizes the file cannot back: these run again under a 2 GB address-space cap
MEMORY_CASES = ["kv-count-2^63", "tensor-count-2^63", "string-value-past-eof", "array-u8-past-eof",
                "array-strings-past-eof", "dims-overflow-2^64", "dims-huge-not-backed", "n-dims-2^32-1"]


@pytest.mark.parametrize("case,make,expect", CASES, ids=[c[0] for c in CASES])
def test_hostile_file_gives_one_clear_error(env, tmp_path, case, make, expect):
    src = tmp_path / f"{case}.gguf"
    src.write_bytes(make())
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out.gguf"
    for name, argv in commands(src, out).items():
        rc, _, err = run_cli(argv)
        check_clear_error(rc, err, src, tmp_path, before, expect)


def test_escape_codes_in_names_are_not_printed(env, tmp_path):
    src = tmp_path / "esc.gguf"
    src.write_bytes(dict((c[0], c[1]) for c in CASES)["tensor-name-escape-codes"]())
    rc, _, err = run_cli(["inspect", str(src)])
    assert rc != 0 and "\x1b" not in err and "\\x1b[2J" in err, err


def test_table_covers_the_issue(env, count_line):
    ids = {c[0] for c in CASES}
    for needed in ("wrong-magic", "version-1", "kv-count-2^63", "tensor-count-2^63", "string-value-past-eof",
                   "array-u8-past-eof", "offset-past-eof", "offsets-overlap", "dims-overflow-2^64",
                   "dimension-zero", "unknown-value-type", "unknown-tensor-type", "duplicate-tensor-name"):
        assert needed in ids
    assert set(MEMORY_CASES) <= ids
    count_line(f"hostile table: {len(CASES)} files x {len(commands(Path('x'), Path('y')))} commands")


# ----------------------------------------------------------------------------- cut at every boundary

def _cut_points() -> list[tuple[str, int]]:
    c = base()
    data = c.build()
    points = {n: f"header byte {n}" for n in range(24)}
    marks = sorted(c.marks, key=lambda m: m[1])
    for (label, pos), nxt in zip(marks, marks[1:] + [("end", len(data))]):
        for p, how in ((pos, "at"), (pos + 1, "1 byte into"), ((pos + nxt[1]) // 2, "inside")):
            if 24 <= p < len(data):
                points.setdefault(p, f"{how} {label}")
    return sorted(((label, p) for p, label in points.items()), key=lambda x: x[1])


def test_cut_at_every_structural_boundary(env, tmp_path, count_line):
    data = base().build()
    points = _cut_points()
    names = list(commands(Path("a"), Path("b")))
    checked = 0
    for i, (label, n) in enumerate(points):
        d = tmp_path / f"cut{n}"
        d.mkdir()
        src = d / "cut.gguf"
        src.write_bytes(data[:n])
        before = hashlib.sha256(data[:n]).hexdigest()
        name = names[i % len(names)]  # every command sees cuts of every kind
        rc, _, err = run_cli(commands(src, d / "out.gguf")[name])
        try:
            check_clear_error(rc, err, src, d, before)
        except AssertionError as e:
            raise AssertionError(f"cut {label} (byte {n}), {name}: {e}") from None
        checked += 1
    assert checked > 60
    count_line(f"cut the file at {checked} points (every header byte, each key/value, tensor info, the padding "
          f"and each tensor's data)")


# ----------------------------------------------------------------------------- memory bounded

_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from tritpack_gguf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _capped(argv: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD.format(cap=MEMORY_CAP), *argv],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("case", MEMORY_CASES)
def test_absurd_sizes_under_a_2gb_address_space(env, tmp_path, case):
    make, expect = {c[0]: (c[1], c[2]) for c in CASES}[case]
    src = tmp_path / f"{case}.gguf"
    src.write_bytes(make())
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    r = _capped(["convert", str(src), "-o", str(tmp_path / "out.gguf")])
    check_clear_error(r.returncode, r.stderr, src, tmp_path, before, expect)
    assert "MemoryError" not in r.stderr


def test_large_metadata_array_opens_in_bounded_memory(env, tmp_path):
    """A valid file whose key/values hold 4 million array elements (4 MB): gguf's own reader makes
    numpy objects per element (about 0.7 KB each: ~2.8 GB); ours reads it in a 2 GB address space."""
    c = base()
    c.kvs.append(G.KV("test.big", G.ARR, raw=struct.pack("<IQ", G.U8, 4 << 20) + b"\1" * (4 << 20)))
    src = tmp_path / "big-array.gguf"
    src.write_bytes(c.build())
    r = _capped(["inspect", str(src), "--json"])
    assert r.returncode == 0, r.stderr[-2000:]
    r = _capped(["estimate", str(src)])
    assert r.returncode == 0, r.stderr[-2000:]


# ----------------------------------------------------------------------------- beyond the header

def test_not_a_regular_file(env, tmp_path):
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    rc, _, err = run_cli(["inspect", str(fifo)])  # must not block reading the FIFO
    assert rc != 0 and f"{ERROR_PREFIX}{fifo}: not a regular file" in err, err
    rc, _, err = run_cli(["inspect", str(tmp_path)])
    assert rc != 0 and "is a folder" in err, err
    rc, _, err = run_cli(["inspect", str(tmp_path / "missing.gguf")])
    assert rc != 0 and "no such file" in err, err


def test_nan_weight_names_the_tensor_and_writes_nothing(env, tmp_path):
    c = base()
    t = c.tensors[4]  # blk.0.ffn_up.weight, F16
    t.data = _poke(t.data, 2 * 70, b"\x00\x7e")  # fp16 NaN
    src = tmp_path / "nan.gguf"
    src.write_bytes(c.build())
    rc, _, err = run_cli(["convert", str(src), "-o", str(tmp_path / "out.gguf")])
    line = check_clear_error(rc, err, src, tmp_path, hashlib.sha256(src.read_bytes()).hexdigest(), "NaN")
    assert "blk.0.ffn_up.weight" in line


def test_missing_or_wrong_architecture(env, tmp_path):
    for label, kv in (("none", None), ("u32", G.KV("general.architecture", G.U32, 7))):
        c = base()
        c.kvs = [k for k in c.kvs if k.key != "general.architecture"] + ([kv] if kv else [])
        d = tmp_path / label
        d.mkdir()
        src = d / "m.gguf"
        src.write_bytes(c.build())
        rc, _, err = run_cli(["convert", str(src), "-o", str(d / "out.gguf")])
        check_clear_error(rc, err, src, d, hashlib.sha256(src.read_bytes()).hexdigest(), "general.architecture")


def test_empty_array_key_survives_convert_and_export(env, tmp_path):
    """GGUF allows empty arrays; gguf's writer refuses them (this was a traceback in convert)."""
    from tritpack_gguf.converters.reader import GGUFFile

    src = tmp_path / "m.gguf"
    src.write_bytes(base().build())
    for argv in (["convert", str(src), "-o", str(tmp_path / "c.gguf")],
                 ["export", str(src), "--to", "q4_0", "-o", str(tmp_path / "e.gguf")]):
        rc, _, err = run_cli(argv)
        assert rc == 0, err
        f = GGUFFile(argv[-1])
        assert f.get("test.empty") == [] and f.fields["test.empty"].types[-1].name == "UINT8"
        assert f.get("tokenizer.ggml.tokens") == [f"t{i}" for i in range(16)]


def test_reader_matches_gguf_reader_on_real_vocab_files(env, patched_build):
    """The hardened reader gives the same keys, values, types and tensors as gguf.GGUFReader."""
    from gguf import GGUFReader

    from tritpack_gguf.converters.reader import GGUFFile

    files = sorted((Path(patched_build.source_dir) / "models").glob("ggml-vocab-*.gguf"), key=lambda p: p.stat().st_size)[:2]
    files.append(Path(__file__).parent / "fuzz_seeds" / "base.gguf")
    for p in files:
        ours, theirs = GGUFFile(p), GGUFReader(p)
        for k, rf in theirs.fields.items():
            if k.startswith("GGUF."):
                assert ours.get(k) == rf.contents()
                continue
            assert ours.fields[k].contents() == rf.contents(), (p, k)
            assert ours.fields[k].types[:len(rf.types)] == rf.types, (p, k)
        assert [(t.name, t.offset, t.nbytes, int(t.type)) for t in ours.tensors] == \
            [(t.name, t.data_offset, t.n_bytes, int(t.tensor_type)) for t in theirs.tensors]


# ----------------------------------------------------------------------------- every tensor type

def _all_types():
    from gguf import GGML_QUANT_SIZES

    from tritpack_gguf.converters import gguf_types  # noqa: F401  (TP1, TP4)

    return sorted(GGML_QUANT_SIZES.items())


@pytest.mark.parametrize("qtype,sizes", [pytest.param(q, s, id=q.name) for q, s in _all_types()])
def test_every_tensor_type_with_random_bytes(env, tmp_path, qtype, sizes):
    """A tensor of each type gguf knows, holding random bytes (NaN scales included): each command
    succeeds or gives one clear error naming the file."""
    import numpy as np

    block, type_size = sizes
    ne0 = 256 if block > 1 else 64
    c = base()
    data = np.random.default_rng(int(qtype)).integers(0, 256, ne0 // block * type_size * 4, dtype=np.uint8)
    c.tensors.append(G.Tensor("blk.0.ffn_down.weight", [ne0, 4], int(qtype), data.tobytes()))
    src = tmp_path / "m.gguf"
    src.write_bytes(c.build())
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out.gguf"
    for name, argv in commands(src, out).items():
        rc, _, err = run_cli(argv)
        assert "Traceback" not in err, err[-3000:]
        if rc == 0:
            if out.exists():
                out.unlink()
            continue
        check_clear_error(rc, err, src, tmp_path, before)


@pytest.mark.parametrize("pattern", ["gaussian", "constant"])
def test_huge_finite_weights(env, tmp_path, pattern):
    """F32 weights of 1e9 are finite but need a TP4 block scale past fp16's largest: convert must
    refuse with a clear error (it validates every block it writes), never write Inf scales."""
    import numpy as np

    from tritpack_gguf.converters.reader import GGUFFile
    from tritpack_gguf.ggml_lib import load_ggml

    c = base()
    if pattern == "constant":
        w = np.full((32, 64), 1e9, dtype=np.float32)
    else:
        w = (np.random.default_rng(5).standard_normal((32, 64)) * 1e9).astype(np.float32)
    c.tensors.append(G.Tensor("blk.0.ffn_down.weight", [64, 32], G.T_F32, w.tobytes()))
    src = tmp_path / "m.gguf"
    src.write_bytes(c.build())
    out = tmp_path / "out.gguf"
    rc, _, err = run_cli(["convert", str(src), "-o", str(out), "--type", "tp4"])
    assert "Traceback" not in err, err[-3000:]
    if rc != 0:
        check_clear_error(rc, err, src, tmp_path, hashlib.sha256(src.read_bytes()).hexdigest())
        return
    f, g = GGUFFile(out), load_ggml()
    for t in f.tensors:
        if t.type.name in ("TP1", "TP4"):
            assert g.validate_row_data(int(t.type), f.raw(t).reshape(-1)), f"{t.name}: Inf/NaN block scale written"


@pytest.mark.parametrize("where", ["tensor-name", "architecture", "tritpack-value"])
def test_markup_in_names_is_printed_literally(env, tmp_path, where):
    c = base()
    text = "x[/bold]y"
    if where == "tensor-name":
        c.tensors[1].name = text
    elif where == "architecture":
        c.kvs[0] = G.KV("general.architecture", G.STR, text)
    else:
        c.kvs.append(G.KV("tritpack.type", G.STR, text))
    src = tmp_path / "m.gguf"
    src.write_bytes(c.build())
    try:
        rc, out, err = run_cli(["inspect", str(src)])
    except Exception as e:  # noqa: BLE001  (what this test is about)
        pytest.fail(f"inspect raised {type(e).__name__}: {e}")
    assert rc == 0 and text in out, (out, err)


# ----------------------------------------------------------------------------- run and verify (llama.cpp)

PROMPT = "The capital of France is"  # 'T', ',' and the capitals are not in the vocabulary below


def spm_without_byte_tokens(path: Path, work: Path) -> Path:
    """A tiny Llama whose SentencePiece vocabulary has no <0xNN> byte tokens (and no single-byte
    fallback for most characters): llama.cpp's tokenizer throws std::out_of_range out of
    llama_tokenize for any text with a character outside the vocabulary, and that aborts its process."""
    from gguf import GGUFWriter

    from tritpack_gguf.converters.tiny_model import Shape, make_llama

    vocab = work / "vocab-spm-no-bytes.gguf"
    tokens = ["<unk>", "<s>", "</s>", "\u2581"] + list("abcdefghijklmnopqrstuvwxyz") + ["\u2581a", "\u2581the"]
    w = GGUFWriter(str(vocab), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 4 + [-float(i) for i in range(len(tokens) - 4)])
    w.add_token_types([2, 3, 3] + [1] * (len(tokens) - 3))  # unknown, control, control, normal...
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return make_llama(path, vocab, Shape(n_embd=64, n_ff=128, n_layer=1, n_head=2, n_head_kv=1, n_ctx=128), seed=1)


@pytest.fixture(scope="module")
def no_byte_tokens(env, tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("spm-no-bytes")
    return spm_without_byte_tokens(d / "m.gguf", d).read_bytes()


def runtime_commands(src: Path) -> dict[str, list[str]]:
    return {"run": ["run", str(src), "-p", PROMPT, "-n", "4", "--temp", "0", "-t", "1"],
            "verify": ["verify", str(src), "--prompt", PROMPT, "-n", "4", "-t", "1"]}


# (id, what the error line must hold); the files: CASES' ones, and the model above
RUNTIME_CASES = [
    ("unknown-tensor-type", "tensor 'output_norm.weight': unknown tensor type 99"),
    ("data-truncated", "tensor 'blk.0.attn_v.weight': tensor data runs past the end of the file"),
    ("spm-without-byte-tokens", "llama.cpp aborted while tokenizing the prompt (signal SIGABRT): "
                                "terminate called after throwing an instance of 'std::out_of_range'"),
]


@pytest.mark.parametrize("command", ["run", "verify"])
@pytest.mark.parametrize("case,expect", RUNTIME_CASES, ids=[c[0] for c in RUNTIME_CASES])
def test_run_and_verify_give_one_clear_error_and_survive(env, no_byte_tokens, tmp_path, case, expect, command):
    """The whole command in a child Python (`python -m tritpack_gguf`), with TMPDIR in the test's
    folder: exit code 1 (an abort in llama.cpp would be -6 here, the process dead), one error line
    naming the file and what is wrong, no traceback, and nothing left behind (verify's on-the-fly
    reference and the llama.cpp process's log included)."""
    src = tmp_path / f"{case}.gguf"
    src.write_bytes(no_byte_tokens if case == "spm-without-byte-tokens" else dict((c[0], c[1]) for c in CASES)[case]())
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    r = subprocess.run([sys.executable, "-m", "tritpack_gguf", *runtime_commands(src)[command]],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert r.returncode == 1, f"exit code {r.returncode}; stderr:\n{r.stderr[-3000:]}"
    line = check_clear_error(r.returncode, r.stderr, src, tmp_path, before, expect)
    assert "\n" not in line and len(line) < 600, line


def test_library_calls_survive_a_llama_cpp_abort(env, no_byte_tokens, tmp_path):
    """verify.tokenize, verify.greedy_run and run.generate (the Python API) raise a TritpackError
    naming the file when llama.cpp aborts, and the calling process goes on (checked in a child
    Python, so that a regression fails this test instead of killing the test run)."""
    src = tmp_path / "no-bytes.gguf"
    src.write_bytes(no_byte_tokens)
    code = f"""
import sys
from tritpack_gguf import run, verify
from tritpack_gguf.errors import TritpackError
src = {str(src)!r}
for name, call in (("tokenize", lambda: verify.tokenize(src, {PROMPT!r})),
                   ("generate", lambda: run.generate(src, {PROMPT!r}, n=2, threads=1)),
                   ("greedy_run", lambda: verify.greedy_run(src, [1, 5, 6], 2, threads=1))):
    try:
        call()
        print(name, "returned")
    except TritpackError as e:
        print(name, "TritpackError", str(e).replace(chr(10), " "))
print("survived")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert r.returncode == 0, f"exit code {r.returncode}; stderr:\n{r.stderr[-3000:]}"
    out = r.stdout.splitlines()
    assert out[-1] == "survived", r.stdout
    got = {line.split(" ", 1)[0]: line for line in out[:-1]}
    for name in ("tokenize", "generate"):
        assert got[name].startswith(f"{name} TritpackError {src}: llama.cpp aborted while tokenizing the prompt "
                                    "(signal SIGABRT)"), got[name]
    assert got["greedy_run"] == "greedy_run returned", got  # token ids need no tokenizer: it runs
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


# ----------------------------------------------------------------------------- commands, not shells

def test_no_shell_in_subprocess_calls():
    """Every process the package starts gets an argument list: no shell=True, no command string, no
    os.system/os.popen (a model or file name from a stranger never reaches a shell)."""
    import ast

    root = Path(__file__).resolve().parent.parent
    spawners = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}
    problems, calls = [], 0
    for py in sorted([*(root / "plugin").rglob("*.py"), *(root / "converters").rglob("*.py")]):
        tree = ast.parse(py.read_text(), filename=str(py))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            where = f"{py.relative_to(root)}:{node.lineno}"
            if owner == "os" and name in ("system", "popen") or name in ("create_subprocess_shell",
                                                                        "getoutput", "getstatusoutput"):
                problems.append(f"{where}: {owner}.{name} runs a shell")
                continue
            if owner not in ("subprocess", "sp") or name not in spawners:
                continue
            calls += 1
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    problems.append(f"{where}: shell={ast.unparse(kw.value)}")
            if node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)) and \
                    not isinstance(getattr(node.args[0], "value", None), (list, tuple)):
                problems.append(f"{where}: a command string {ast.unparse(node.args[0])[:60]}")
    assert not problems, "\n".join(problems)
    assert calls > 5  # the check saw the package's subprocess calls
