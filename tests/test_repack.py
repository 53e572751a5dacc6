"""The CPU_TRITPACK repack (ggml_kernels/tritpack-gemm.c, tritpack-repack.cpp): TP1/TP4 weights in
tiles of 8 rows, multiplied by GEMV/GEMM kernels with the activations of the plain vec_dot (TP1:
TPQ16, TP4: Q8_0), so that repacked and plain products agree up to float summation order. Checked against the numpy
reference (float64 products of the dequantized weights and activations), the SIMD path against the
generic one, both against the plain vec_dot path, and a whole model with the repack against the same
model with GGML_TRITPACK_NO_REPACK=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

T_TP1, T_TP4 = 80, 81
TYPES = {"tp1": T_TP1, "tp4": T_TP4}


def _activations(ggml, t, y):
    """The activations as the kernels see them (TP1: TPQ16, an f32 scale and 64 int16; TP4: Q8_0, an
    f16 scale and 32 int8), dequantized in float64"""
    scale, q, per = ("<f4", "<i2", 64) if t == T_TP1 else ("<f2", "i1", 32)
    ds, qs = np.dtype(scale).itemsize, np.dtype(q).itemsize
    b = ggml.activations_ref(t, y).reshape(-1, ds + per * qs)
    d = b[:, :ds].copy().view(scale)[:, 0].astype(np.float64)
    return (d[:, None] * b[:, ds:].copy().view(q).astype(np.float64)).ravel()


@pytest.mark.parametrize("name", ["tp1", "tp4"])
@pytest.mark.parametrize("n,nrows,ncols", [(576, 16, 1), (896, 24, 3), (576, 8, 4), (896, 40, 5), (1024, 16, 37),
                                           (576, 72, 77)])
def test_repacked_matches_reference_generic_and_plain(ggml, name, n, nrows, ncols):
    t = TYPES[name]
    r = np.random.default_rng(n * 1000 + nrows + ncols)
    w = r.standard_t(4, (nrows, n)).astype(np.float32)
    y = r.standard_normal((ncols, n)).astype(np.float32)
    y[0, :64] = 0.0  # an all-zero activation block
    q = ggml.quantize_chunk(t, w)
    wd = ggml.dequantize(t, q, n).astype(np.float64)
    yd = np.stack([_activations(ggml, t, y[c]) for c in range(ncols)])
    ref = yd @ wd.T                                     # (ncols, nrows), float64
    tol = 2e-6 * (np.abs(yd) @ np.abs(wd).T) + 1e-30    # float32 sums of exact block products

    packed = ggml.repack(t, q, nrows, n)
    simd = ggml.repacked_mul_mat(t, packed, n, nrows, y, True)
    gen = ggml.repacked_mul_mat(t, packed, n, nrows, y, False)
    assert np.all(np.abs(gen - ref) <= tol), float(np.max(np.abs(gen - ref) / tol))
    assert np.all(np.abs(simd - ref) <= tol), float(np.max(np.abs(simd - ref) / tol))

    # the plain path multiplies the same activations: equal up to float summation order
    plain = np.array([[ggml.vec_dot(t, q[i], y[c]) for i in range(nrows)] for c in range(ncols)])
    assert np.all(np.abs(plain - simd) <= 2 * tol), float(np.max(np.abs(plain - simd) / tol))
    assert np.all(np.abs(plain - gen) <= 2 * tol), float(np.max(np.abs(plain - gen) / tol))


def test_the_layout_matters(ggml):
    """Unrepacked rows through the repacked kernels give other numbers (the check can fail)."""
    n, nrows = 576, 16
    r = np.random.default_rng(7)
    w = r.standard_normal((nrows, n)).astype(np.float32)
    y = r.standard_normal((4, n)).astype(np.float32)
    for t in (T_TP1, T_TP4):
        q = ggml.quantize_chunk(t, w)
        good = ggml.repacked_mul_mat(t, ggml.repack(t, q, nrows, n), n, nrows, y, True)
        bad = ggml.repacked_mul_mat(t, q, n, nrows, y, True)
        assert not np.allclose(good, bad, rtol=1e-3, atol=1e-3)


def test_can_repack_only_whole_tiles(ggml):
    f = ggml.can_repack
    assert f(T_TP4, 576, 896) and f(T_TP1, 896, 8)
    assert not f(T_TP4, 576, 12) and not f(T_TP1, 576, 4)
    assert not f(2, 576, 896)  # Q4_0 is ggml's own repack's business


def _logits(model, no_repack: bool):
    """logits of a short prompt (every position) through llama-cpp-python in a fresh process, and
    whether the load put weights in the CPU_TRITPACK buffer"""
    code = (
        "import sys, numpy as np\n"
        "from tritpack_gguf.runtime import load\n"
        "llm = load(sys.argv[1], n_ctx=128, n_threads=2, logits_all=True, verbose=True)\n"
        "llm.eval(llm.tokenize(b'The quick brown fox jumps over the lazy dog, and then'))\n"
        "np.save(sys.argv[2], np.array(llm.scores[:llm.n_tokens], dtype=np.float32))\n"
    )
    env = dict(os.environ)
    env.pop("GGML_TRITPACK_NO_REPACK", None)
    if no_repack:
        env["GGML_TRITPACK_NO_REPACK"] = "1"
    out = model.with_suffix(f".{int(no_repack)}.npy")
    r = subprocess.run([sys.executable, "-c", code, str(model), str(out)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return np.load(out), "CPU_TRITPACK" in r.stderr


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, patched_build):
    from tritpack_gguf.convert import ConvertOptions, convert
    from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file

    d = tmp_path_factory.mktemp("repack")
    src = make_llama(d / "src.gguf", vocab_file(patched_build.source_dir), Shape(n_ctx=256), seed=5)
    return {t: Path(convert(src, ConvertOptions(type=t, output=d / f"m-{t}.gguf", threads=1)).output)
            for t in ("tp1", "tp4")}


@pytest.mark.parametrize("name", ["tp1", "tp4"])
def test_model_logits_with_and_without_repack(tiny_models, name):
    on, used_on = _logits(tiny_models[name], no_repack=False)
    off, used_off = _logits(tiny_models[name], no_repack=True)
    assert used_on and not used_off, "GGML_TRITPACK_NO_REPACK did not switch the CPU_TRITPACK buffer"
    rel = float(np.sqrt(np.mean((on - off) ** 2)) / np.sqrt(np.mean(off ** 2)))
    # The same activations both ways (TP1: TPQ16, TP4: Q8_0); one product differs by ~1e-7 (float
    # summation order, tests/repack/driver.cpp), which this random 2-layer model amplifies to ~1e-3 in
    # the logits (measured 1.1e-3; bench/results/quality.md shows the same amplification between F32
    # and F16). A wrong layout or kernel gives O(1).
    print(f"{name}: logits with vs without the repack, relative RMS difference {rel:.2e}")
    assert rel < 1e-2, rel
    assert np.mean(np.argmax(on, -1) == np.argmax(off, -1)) >= 0.8


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def driver(patched_build, tmp_path_factory) -> Path:
    """tests/repack/driver.cpp, compiled against the build."""
    lib = Path(patched_build.lib_dir)
    exe = tmp_path_factory.mktemp("driver") / "driver"
    cc = subprocess.run(["g++", "-O2", "-std=c++17", f"-I{patched_build.source_dir}/ggml/include",
                         f"-I{ROOT / 'ggml_kernels'}", str(ROOT / "tests" / "repack" / "driver.cpp"), "-o", str(exe),
                         f"-L{lib}", "-lggml", "-lggml-base", "-lggml-cpu", f"-Wl,-rpath,{lib}"],
                        capture_output=True, text=True, timeout=600)
    assert cc.returncode == 0, cc.stderr[-3000:]
    return exe


def _run_driver(exe: Path, **env: str) -> str:
    e = dict(os.environ, **env)
    e.pop("GGML_TRITPACK_NO_REPACK", None)
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env=e)
    assert r.returncode == 0 and "all ok" in r.stdout, r.stdout + r.stderr[-2000:]
    assert r.stdout.count(" ok") >= 18
    return r.stdout


def test_driver_mul_mat_and_mul_mat_id_through_the_buffer(driver):
    """tests/repack/driver.cpp: MUL_MAT (1 to 512 columns, rows of 576 and 896) and MUL_MAT_ID through
    the CPU backend with the weights in CPU_TRITPACK, against the plain buffer."""
    _run_driver(driver)


def test_relinked_cpu_library_for_kernel_ab(patched_build, driver, tmp_path):
    """bench/relink_cpu.py, the kernel A/Bs' tool: the build's libggml-cpu relinked with a tritpack-gemm.c
    given as a file (here a copy of ours that marks itself) runs the driver through LD_LIBRARY_PATH."""
    gemm = tmp_path / "gemm-variant.c"
    gemm.write_text((ROOT / "ggml_kernels" / "tritpack-gemm.c").read_text()
                    + "\nconst char tritpack_gemm_variant_mark[] = \"relinked\";\n")
    out = tmp_path / "lib"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "relink_cpu.py"), patched_build.build_dir, str(out),
                        "--gemm", str(gemm)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "(1 objects recompiled)" in r.stdout, r.stdout + r.stderr[-3000:]
    lib = out / "libggml-cpu.so.0"
    assert b"relinked" in lib.read_bytes()
    _run_driver(driver, LD_LIBRARY_PATH=str(out))


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


@pytest.mark.parametrize("switch", ["GGML_TRITPACK_NO_VNNI", "GGML_TRITPACK_NO_AVX512"])
def test_avx2_paths(patched_build, switch):
    """The AVX2 kernels, which this machine's AVX-512 would hide, in a process of their own (the choice is
    made once per process): GGML_TRITPACK_NO_VNNI, the plain AVX2 paths (TP4's vpmaddubsw, TP1's
    vpmaddwd); GGML_TRITPACK_NO_AVX512, TP1's AVX2 kernels with AVX-VNNI's vpdpwssd and TP4's one-column
    kernel with its vpdpbusd, where the CPU has AVX-VNNI (Intel's client cores; a Xeon from Sapphire
    Rapids on has it too)."""
    if switch == "GGML_TRITPACK_NO_AVX512" and "avx_vnni" not in _cpu_flags():
        pytest.skip("this CPU has no AVX-VNNI (the flag avx_vnni in /proc/cpuinfo)")
    env = dict(os.environ, **{switch: "1"})
    r = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "matches"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:]
