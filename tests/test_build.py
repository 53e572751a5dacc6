"""The build pipeline: pin, sha256 check, idempotent patch series, cached builds."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tritpack_gguf import build as B
from tritpack_gguf.errors import TritpackError
from tritpack_gguf.paths import source_root, tritpack_home

ROOT = source_root()
PIN = B.Pin.load(ROOT / "patches" / "llama-cpp.pin")


def test_pin_names_the_sdist_and_commit():
    assert PIN.package == "llama-cpp-python" and PIN.version == "0.3.36"
    assert len(PIN.sha256) == 64 and int(PIN.sha256, 16)
    assert PIN.llama_cpp_commit.startswith("0c1e57098")


def test_patch_series_is_numbered_one_concern_each():
    patches = B.patch_series(ROOT)
    assert patches, "no patches"
    for i, p in enumerate(patches, 1):
        assert p.name.startswith(f"{i:04d}-"), p.name
        text = p.read_text()
        assert text.startswith("Subject: [PATCH] "), f"{p.name} has no message"
        message = text.split("\n---\n", 1)[0]
        assert len(message.splitlines()) >= 3, f"{p.name}: the message must say why"


def _fresh_unpack(tmp_path: Path) -> Path:
    pristine = B.unpack_llama_cpp(PIN, B.fetch_sdist(PIN, tritpack_home()), tritpack_home())
    tree = tmp_path / "llama.cpp"
    shutil.copytree(pristine, tree, symlinks=True)
    return tree


def test_series_applies_cleanly_and_idempotently(tmp_path):
    tree = _fresh_unpack(tmp_path)
    patches = B.patch_series(ROOT)
    assert B.apply_patches(tree, patches) == [p.name for p in patches]
    # applied: every patch reverse-applies, and a second run applies nothing
    for p in patches:
        assert B._git_apply(tree, p, "--check", "--reverse").returncode == 0, p.name
    assert B.apply_patches(tree, patches) == []
    header = (tree / "ggml" / "include" / "ggml.h").read_text()
    assert "GGML_TYPE_TP1     = 80" in header and "GGML_TYPE_COUNT   = 83" in header
    # no rejects or backups left behind
    left = subprocess.run(["find", str(tree), "-name", "*.rej", "-o", "-name", "*.orig"],
                          capture_output=True, text=True).stdout
    assert left == ""


def test_patch_that_no_longer_applies_stops_with_its_name(tmp_path):
    tree = _fresh_unpack(tmp_path)
    bad = tmp_path / "0099-ggml-break-things.patch"
    good = B.patch_series(ROOT)[0].read_text()
    bad.write_text(good.replace("GGML_TYPE_Q2_0    = 42,", "GGML_TYPE_Q2_0    = 4242,"))
    with pytest.raises(TritpackError) as e:
        B.apply_patches(tree, [bad])
    assert "0099-ggml-break-things.patch" in str(e.value) and "regenerate" in str(e.value)


def test_sha256_mismatch_unpacks_nothing(tmp_path):
    fake = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(fake, "w:gz") as tf:
        data = b"cmake_minimum_required(VERSION 3.14)\n"
        info = tarfile.TarInfo("llama_cpp_python-0.3.36/vendor/llama.cpp/CMakeLists.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    home = tmp_path / "home"
    with pytest.raises(TritpackError) as e:
        B.unpack_llama_cpp(PIN, fake, home)
    assert "sha256 mismatch" in str(e.value) and "nothing was unpacked" in str(e.value)
    assert not (home / "sdist").exists() or not any((home / "sdist").rglob("CMakeLists.txt"))


def test_input_key_changes_with_kernels_and_flags(tmp_path):
    src = Path("/nonexistent/llama.cpp")
    k_cpu = B.input_key(PIN, ROOT, src, B._flags(False, None))
    assert k_cpu == B.input_key(PIN, ROOT, src, B._flags(False, None))
    assert k_cpu != B.input_key(PIN, ROOT, src, B._flags(True, None))
    assert B.input_key(PIN, ROOT, src, B._flags(True, "90")) != B.input_key(PIN, ROOT, src, B._flags(True, None))


def test_portable_and_cuda_library_flags():
    """--portable is its own build; the CUDA build finds cuBLAS without the toolkit's (the wheel of the
    cuda-compile extra) and names it by version in the key, so every checkout's venv shares one build."""
    src = Path("/nonexistent/llama.cpp")
    assert B.input_key(PIN, ROOT, src, B._flags(False, None, native=False)) != B.input_key(PIN, ROOT, src, B._flags(False, None))
    assert B._flags(False, None) == {"cuda": False, "cuda_archs": None, "build_type": "Release", "native": True}
    flags = B._flags(True, "90", native=False)
    assert flags["cublas"] == "toolkit" or flags["cublas"].startswith("nvidia-cublas")
    assert "/" not in flags["cublas"]
    args = B._cuda_cmake_args(flags)
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in args
    if flags["cublas"] != "toolkit":
        libs = [a.split("=", 1)[1] for a in args if a.startswith(("-DCUDA_cublas_LIBRARY=", "-DCUDA_cublasLt_LIBRARY="))]
        assert len(libs) == 2 and all(Path(x).is_file() for x in libs)
    assert ("-DGGML_CUDA_NO_VMM=ON" in args) == (not flags["vmm"])


def test_second_build_is_cached(patched_build):
    again = B.build()
    assert again.cached and again.key == patched_build.key
    assert again.seconds < 10
    for out in again.outputs:
        assert Path(out).exists(), out


def test_log_lines_are_not_lost_at_exit(lib_dir):
    """Patch 0014: llama.cpp's programs print through a queue that a worker thread drains; a program
    that ends while the worker waits on a slow reader keeps its last lines (llama-perplexity's
    statistics were lost so). The child logs 200 lines into a 4 KiB pipe that nobody reads until it has
    either exited (lines lost) or waits at exit for the reader (patched)."""
    import fcntl
    import os
    import sys

    from tritpack_gguf.programs import program_env

    lines = 200
    child = (
        "import ctypes, sys\n"
        f"lib = ctypes.CDLL({str(lib_dir / 'libllama-common.so')!r})\n"
        "log = lib._Z27common_log_default_callback14ggml_log_levelPKcPv  # (level, text, user_data)\n"
        "log.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]\n"
        f"for i in range({lines}):\n"
        "    log(0, b'line %03d %s\\n' % (i, b'x' * 90), None)  # GGML_LOG_LEVEL_NONE: stdout\n"
        "sys.stderr.write('logged\\n'); sys.stderr.flush()\n")
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=w, stderr=subprocess.PIPE,
                            env=program_env(lib_dir))
    os.close(w)
    try:
        assert proc.stderr.readline() == b"logged\n"
        try:
            proc.wait(timeout=2)  # unpatched: exits now, the worker killed with the pipe full
        except subprocess.TimeoutExpired:
            pass                  # patched: waits at exit for the worker
        with os.fdopen(r, "rb") as f:
            out = f.read()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    got = out.decode().splitlines()
    assert len(got) == lines and got[-1].startswith(f"line {lines - 1:03d} "), (len(got), got[-1:])
