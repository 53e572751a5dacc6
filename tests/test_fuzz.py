"""A fuzzer (hypothesis) over mutated tiny GGUFs: convert, inspect, estimate and export.

The seeds are the committed files of tests/fuzz_seeds/ (made by gguf_craft.py; a file added there,
e.g. a reproducer of a past failure, is a seed too). Each input is a seed with one to six mutations:
a structural field (a count, length, type, dimension or offset: the seeds' recorded boundaries) set
to an interesting value, bytes flipped or set, the file cut, bytes inserted, deleted or duplicated.
Each runs through one command in-process, and must end in one of two ways:
  - success (exit 0), with a readable output file for convert and export; or
  - one line `tritpack-gguf: error: <file>: ...`, a non-zero exit, no output or temporary file;
and in both, no traceback and the input untouched. The fuzzer runs in a child process whose address
space is capped at 2 GB and for a bounded time (TRITPACK_FUZZ_SECONDS, default 120): a hang,
a crash, a MemoryError or any other outcome fails the test, and the input that caused it is kept
(the child writes each input to disk before running it) to be added to tests/fuzz_seeds/.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SEED_DIR = HERE / "fuzz_seeds"
sys.path.insert(0, str(SEED_DIR))
import gguf_craft as G  # noqa: E402

FUZZ_SECONDS = float(os.environ.get("TRITPACK_FUZZ_SECONDS", "120"))
MEMORY_CAP = 2 << 30
PER_INPUT_SECONDS = 30
ERROR_PREFIX = "tritpack-gguf: error: "
COMMANDS = ("convert", "inspect", "estimate", "export")

INTERESTING_U64 = [0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 63, 64, 65, 127, 128, 255, 256, 4096, 65535, 65536,
                   (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40, (1 << 62), (1 << 63) - 1, 1 << 63,
                   (1 << 64) - 32, (1 << 64) - 1]
INTERESTING_U32 = [0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 14, 30, 39, 41, 80, 81, 82, 255, 0x7FFFFFFF,
                   0x80000000, 0xFFFFFFFF]
INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, 0x7C, 0x7E, 0xC3, 0xE2]


def test_seeds_are_committed_small_and_regenerate(tmp_path):
    from tritpack_gguf.converters.reader import GGUFFile

    files = sorted(SEED_DIR.glob("*.gguf"))
    assert {p.name for p in files} >= set(G.SEEDS), "run python tests/fuzz_seeds/gguf_craft.py"
    assert sum(p.stat().st_size for p in files) < 100_000
    for name, make in G.SEEDS.items():
        assert (SEED_DIR / name).read_bytes() == make().build(), f"{name} differs from gguf_craft.py's"
    for p in files:
        GGUFFile(p)  # every seed is a valid file


# ----------------------------------------------------------------------------- the child

def _seeds() -> list[tuple[str, bytes, list[int]]]:
    """(name, bytes, structural offsets) of each seed."""
    out = []
    for p in sorted(SEED_DIR.glob("*.gguf")):
        marks: list[int] = []
        if p.name in G.SEEDS:
            c = G.SEEDS[p.name]()
            c.build()
            marks = sorted({pos for label, pos in c.marks if label != "magic"})  # the table covers the magic
        out.append((p.name, p.read_bytes(), marks))
    return out


def mutate(data: bytes, marks: list[int], ops: list[tuple]) -> bytes:
    b = bytearray(data)
    for op, where_raw, value in ops:
        n = len(b)
        # hypothesis favours small integers: spread `where` over the file so that 0, 1, 2... do not
        # all land on the magic
        where = (where_raw * 2654435761 + 40503) & 0xFFFFFFFF
        if op == "field" and marks:  # a count, length, type, dimension or offset near a boundary
            base_pos, delta, width = marks[where % len(marks)], (value >> 8) % 24, 8 if value & 1 else 4
            pos = base_pos + delta
            table = INTERESTING_U64 if width == 8 else INTERESTING_U32
            v = table[(value >> 1) % len(table)]
            if pos + width <= n:
                b[pos:pos + width] = struct.pack("<Q" if width == 8 else "<I", v)
        elif op == "byte" and n:
            b[where % n] = INTERESTING_BYTES[value % len(INTERESTING_BYTES)] if value & 256 else value & 255
        elif op == "flip" and n:
            b[where % n] ^= 1 << (value % 8)
        elif op == "cut" and n:
            del b[where % n:]
        elif op == "insert":
            pos = where % (n + 1)
            b[pos:pos] = bytes([value & 255]) * (1 + (value >> 8) % 16)
        elif op == "delete" and n:
            pos = where % n
            del b[pos:pos + 1 + (value % 32)]
        elif op == "duplicate" and n:
            pos = where % n
            chunk = b[pos:pos + 1 + value % 64]
            b[pos:pos] = chunk
    return bytes(b)


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang(f"an input ran longer than {PER_INPUT_SECONDS} s")


def _run_cli(argv: list[str]) -> tuple[int, str]:
    from tritpack_gguf.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()


def _error_kind(line: str, src: Path) -> str:
    what = line[len(f"{ERROR_PREFIX}{src}: "):]
    what = re.sub(r"tensor '[^']*'", "tensor", what)
    what = re.sub(r"key '[^']*'", "key", what)
    what = re.sub(r"\d+", "N", what)
    return what[:60]


def check_one(work: Path, data: bytes, command: str, stats: dict) -> None:
    """Run one input through one command; raise AssertionError for any outcome but the two allowed."""
    from tritpack_gguf.converters.reader import GGUFFile

    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    src = work / "in.gguf"
    src.write_bytes(data)
    out = work / "out.gguf"
    argv = {"convert": ["convert", str(src), "-o", str(out), "--threads", "1"],
            "inspect": ["inspect", str(src)],
            "estimate": ["estimate", str(src)],
            "export": ["export", str(src), "--to", "q4_0", "-o", str(out), "--threads", "1"]}[command]
    signal.alarm(PER_INPUT_SECONDS)
    try:
        rc, err = _run_cli(argv)
    finally:
        signal.alarm(0)
    assert "Traceback" not in err, err[-3000:]
    assert src.read_bytes() == data, "the input was changed"
    left = sorted(p.name for p in work.iterdir())
    stats["inputs"] += 1
    stats["by_command"][command] = stats["by_command"].get(command, 0) + 1
    if rc == 0:
        if command in ("convert", "export"):
            assert left == ["in.gguf", "out.gguf"], left
            GGUFFile(out)  # what we write is readable
        else:
            assert left == ["in.gguf"], left
        stats["accepted"] += 1
        return
    lines = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, f"exit {rc} without exactly one error line:\n{err[-2000:]}"
    assert lines[0].startswith(f"{ERROR_PREFIX}{src}: "), lines[0]
    assert left == ["in.gguf"], f"files left after an error: {left}"
    stats["errors"] += 1
    kind = _error_kind(lines[0], src)
    stats["error_kinds"][kind] = stats["error_kinds"].get(kind, 0) + 1


def child_main(seconds: float, outdir: str) -> int:
    """The fuzz loop (run by the test in a child process with a 2 GB address-space cap)."""
    import faulthandler

    from hypothesis import HealthCheck, Phase, given, settings, strategies as st

    faulthandler.enable()
    signal.signal(signal.SIGALRM, _on_alarm)
    seeds = _seeds()
    out = Path(outdir)
    work = out / "work"
    stats = {"inputs": 0, "accepted": 0, "errors": 0, "by_command": {}, "error_kinds": {}, "seeds": len(seeds)}
    stop = time.monotonic() + seconds

    ops = st.tuples(st.sampled_from(["field", "field", "field", "byte", "flip", "cut", "insert", "delete",
                                     "duplicate"]),
                    st.integers(0, 1 << 20), st.integers(0, 1 << 16))

    @settings(max_examples=300, deadline=None, database=None, derandomize=False, print_blob=True,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, len(seeds) - 1), mutations=st.lists(ops, min_size=1, max_size=6),
           command=st.sampled_from(COMMANDS))
    def fuzz(seed, mutations, command):
        if time.monotonic() > stop:
            return
        name, data, marks = seeds[seed]
        data = mutate(data, marks, mutations)
        (out / "current.json").write_text(json.dumps({"seed": name, "command": command, "mutations": mutations}))
        (out / "current.gguf").write_bytes(data)  # the reproducer, should this input crash the process
        try:
            check_one(work, data, command, stats)
        except BaseException:
            shutil.copy(out / "current.gguf", out / f"failing-{command}.gguf")
            raise

    t0 = time.monotonic()
    rounds = 0
    while time.monotonic() < stop:
        fuzz()
        rounds += 1
    stats["seconds"] = round(time.monotonic() - t0, 1)
    stats["rounds"] = rounds
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    return 0


_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
sys.path.insert(0, {here!r})
import test_fuzz
sys.exit(test_fuzz.child_main({seconds}, {out!r}))
"""


def test_fuzz_mutated_ggufs(patched_build, tmp_path, count_line):
    out = tmp_path / "fuzz"
    out.mkdir()
    code = _CHILD.format(cap=MEMORY_CAP, here=str(HERE), seconds=FUZZ_SECONDS, out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           timeout=FUZZ_SECONDS + 300)
    except subprocess.TimeoutExpired:
        keep = _keep(out)
        pytest.fail(f"the fuzzer hung; the input it was on is {keep}")
    if r.returncode != 0:
        keep = _keep(out)
        pytest.fail(f"fuzzer child exited {r.returncode} (a negative code is a signal: a crash); input kept at "
                    f"{keep} (add it to tests/fuzz_seeds/ once fixed)\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}")
    stats = json.loads((out / "stats.json").read_text())
    kinds = sorted(stats["error_kinds"].items(), key=lambda kv: -kv[1])
    count_line(f"fuzz: {stats['inputs']} inputs in {stats['seconds']} s from {stats['seeds']} seeds "
          f"({', '.join(f'{k} {v}' for k, v in sorted(stats['by_command'].items()))}): "
          f"{stats['accepted']} accepted, {stats['errors']} clear errors, 0 other outcomes")
    count_line("fuzz: most common errors: " + "; ".join(f"{v} x {k}" for k, v in kinds[:8]))
    assert stats["inputs"] > 0 and stats["errors"] > 0


def _keep(out: Path) -> str:
    cur = out / "current.gguf"
    if not cur.exists():
        return "(none)"
    keep = Path(tempfile.gettempdir()) / f"tritpack-fuzz-failure-{os.getpid()}.gguf"
    shutil.copy(cur, keep)
    meta = out / "current.json"
    return f"{keep} ({meta.read_text() if meta.exists() else ''})"
