"""The CUDA side of TP1/TP4, checked without a GPU.

1. Every ggml_kernels/*.cu compiles with nvcc for each architecture we ship (sm_80, sm_86, sm_89,
   sm_90), against the patched llama.cpp tree.
2. The ggml-cuda translation units our patches add call sites to (convert.cu, getrows.cu, mmvq.cu,
   mmq.cu, ggml-cuda.cu) compile for one architecture (sm_80): the dispatch compiles.
3. The decode used by the kernels (ggml_kernels/tritpack-cuda.cuh: its bit manipulation is written
   as __host__ __device__ functions, with host versions of the few intrinsics it uses) is compiled
   for the host and compared with the C reference dequantizers of libggml-base, including the
   MMVQ dot products and the bounds of every TP1 word read.

Nothing here runs a kernel: what needs a GPU is bench/gpu.sh (test-backend-ops, compute-sanitizer,
llama-bench). nvcc is required (CI has it); without it these tests fail, they do not skip. cuBLAS
headers (ggml-cuda includes cublas_v2.h) come from the CUDA toolkit if it has them, else from the
PyPI wheel nvidia-cublas.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tritpack_gguf.paths import source_root

ROOT = source_root()
KERNELS = ROOT / "ggml_kernels"
ARCHS = ("80", "86", "89", "90")
CALL_SITE_ARCH = "80"
# the patched ggml-cuda translation units that hold the dispatch our patches add
CALL_SITE_TUS = ("convert.cu", "getrows.cu", "mmvq.cu", "mmq.cu", "ggml-cuda.cu")
CUBLAS_WHEEL = "nvidia-cublas==13.0.2.14"  # the cuBLAS of CUDA 13.0
COMPILE_TIMEOUT = 1200
JOBS = max(1, min(4, os.cpu_count() or 1))

# what the ggml-cuda target gets in the real build (CUDA_FLAGS, host warnings, definitions)
NVCC_FLAGS = ["-std=c++17", "-O3", "-use_fast_math", "-extended-lambda", "-DNDEBUG", "-Xcompiler=-fPIC",
              "-Xcompiler", "-Wmissing-declarations -Wmissing-noreturn -Wall -Wextra -Wpedantic -Wcast-qual "
                            "-Wno-unused-function -Wno-array-bounds -Wextra-semi -Wno-pedantic",
              "-DGGML_BACKEND_BUILD", "-DGGML_BACKEND_SHARED", "-DGGML_CUDA_USE_GRAPHS", "-DGGML_SHARED",
              "-DGGML_SCHED_MAX_COPIES=4", "-D_GNU_SOURCE", "-D_XOPEN_SOURCE=600"]


def _nvcc() -> str:
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    pytest.fail("nvcc not found (not on PATH, not in /usr/local/cuda/bin): the CUDA compile checks need the "
                "CUDA toolkit (13.x); install it or put its bin/ on PATH", pytrace=False)


def _cublas_include(nvcc: str) -> Path:
    # the toolkit's own, when it has cuBLAS
    toolkit = Path(nvcc).resolve().parent.parent
    for inc in (toolkit / "include", Path("/usr/local/cuda/include")):
        if (inc / "cublas_v2.h").is_file():
            return inc
    # the PyPI wheel: nvidia/cublas/include (CUDA 12 wheels) or nvidia/cu13/include (CUDA 13 wheels)
    for name in ("nvidia.cublas", "nvidia.cu13"):
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        for loc in (spec.submodule_search_locations or []) if spec else []:
            if (Path(loc) / "include" / "cublas_v2.h").is_file():
                return Path(loc) / "include"
    pytest.fail(f"cuBLAS headers (cublas_v2.h) not found in the CUDA toolkit nor as the nvidia-cublas wheel; "
                f"install them with: {sys.executable} -m pip install {CUBLAS_WHEEL}", pytrace=False)


@pytest.fixture(scope="module")
def cuda_env(patched_build):
    nvcc = _nvcc()
    src = Path(patched_build.source_dir)
    cuda_dir = src / "ggml" / "src" / "ggml-cuda"
    assert (cuda_dir / "mmvq.cu").is_file(), f"no ggml-cuda sources in {src}"
    includes = [src / "ggml" / "include", src / "ggml" / "src", cuda_dir, KERNELS]
    # system headers as in the real build (-isystem: their own warnings are not reported)
    toolkit_inc = Path(nvcc).resolve().parent.parent / "include"
    system = [p for p in (toolkit_inc, _cublas_include(nvcc)) if p.is_dir()]
    return {"nvcc": nvcc, "src": src, "cuda_dir": cuda_dir, "lib_dir": Path(patched_build.lib_dir),
            "includes": [f"-I{p}" for p in includes] + [f"-isystem={p}" for p in dict.fromkeys(system)]}


def _compile(env: dict, source: Path, arch: str, out_dir: Path) -> tuple[Path, float, str | None]:
    """nvcc -c one file for one architecture; returns (file, seconds, error text or None)."""
    obj = out_dir / f"{source.stem}.sm_{arch}.o"
    cmd = [env["nvcc"], "-c", *NVCC_FLAGS, f"-arch=sm_{arch}", *env["includes"], str(source), "-o", str(obj)]
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return source, time.monotonic() - t0, f"timed out after {COMPILE_TIMEOUT} s: {' '.join(cmd)}"
    seconds = time.monotonic() - t0
    out = r.stdout + r.stderr
    if r.returncode != 0:
        return source, seconds, f"$ {' '.join(cmd)}\n{out[-6000:]}"
    # no warnings from our code (llama.cpp's own are not ours to fix)
    ours = [l for l in out.splitlines() if "warning" in l.lower() and ("ggml_kernels" in l or "tritpack" in l)]
    if ours:
        return source, seconds, "warnings in tritpack code:\n" + "\n".join(ours[:40])
    return source, seconds, None


def _compile_all(env: dict, sources: list[Path], arch: str, out_dir: Path) -> None:
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        results = list(pool.map(lambda s: _compile(env, s, arch, out_dir), sources))
    for source, seconds, _ in results:
        print(f"sm_{arch} {source.name}: {seconds:.1f} s")
    errors = [f"{s.name} (sm_{arch}):\n{err}" for s, _, err in results if err]
    assert not errors, "\n\n".join(errors)


def test_kernel_sources_exist():
    names = sorted(p.name for p in KERNELS.glob("*.cu"))
    assert "tritpack-convert.cu" in names, names
    assert {"tritpack-mmq-instance-tp1.cu", "tritpack-mmq-instance-tp4.cu"} <= set(names), names


@pytest.mark.parametrize("arch", ARCHS)
def test_ggml_kernels_compile(cuda_env, arch, tmp_path):
    """Every ggml_kernels/*.cu (our kernels and MMQ instances) for sm_80, sm_86, sm_89, sm_90."""
    _compile_all(cuda_env, sorted(KERNELS.glob("*.cu")), arch, tmp_path)


def test_patched_call_sites_compile(cuda_env, tmp_path):
    """The patched ggml-cuda TUs with our dispatch (sm_80 only: a call site compiles the same everywhere)."""
    sources = [cuda_env["cuda_dir"] / n for n in CALL_SITE_TUS]
    text = {s.name: s.read_text() for s in sources}
    for name in ("convert.cu", "getrows.cu", "mmvq.cu", "mmq.cu", "ggml-cuda.cu"):
        assert "GGML_TYPE_TP1" in text[name] and "GGML_TYPE_TP4" in text[name], f"{name} is not patched"
    # mmvq.cu first: it is by far the longest
    _compile_all(cuda_env, sorted(sources, key=lambda s: s.name != "mmvq.cu"), CALL_SITE_ARCH, tmp_path)


# -----------------------------------------------------------------------------------------------
# the decode, on the host, against the C reference

HOST_CHECK = r"""
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <random>
#include <vector>

// every 32-bit word the TP1 loader reads must hold a byte of the block being read
static const char * g_lo = nullptr;
static const char * g_hi = nullptr;
static long g_bad_reads = 0;
static uint32_t host_ld32(const uint32_t * p) {
    const char * c = (const char *) p;
    if (g_lo && (((uintptr_t) c & 3) != 0 || !(c < g_hi && c + 4 > g_lo))) {
        ++g_bad_reads;
    }
    uint32_t v;
    memcpy(&v, c, 4);
    return v;
}
#define TRITPACK_HOST_LD32(p) host_ld32(p)

#include "tritpack-cuda.cuh"
#include "tritpack-quants.h"

static int g_fail = 0;
#define CHECK(cond, ...) do { if (!(cond)) { if (g_fail++ < 20) { printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } } while (0)

static uint16_t f2h(float f) { return ggml_fp32_to_fp16(f); }
static float h2f(uint16_t h) { return ggml_fp16_to_fp32(h); }

// two q8_1 blocks with int8 values in -63..63 and d = 2^-6, so that the block sums d*sum(q) are exact
// in fp16 and the vec_dot results can be compared tightly
static void make_q8_1(std::mt19937 & rng, block_q8_1 y[2], double yf[64]) {
    std::uniform_int_distribution<int> qd(-63, 63);
    const float d = 1.0f/64;
    for (int b = 0; b < 2; ++b) {
        int sum = 0;
        for (int j = 0; j < 32; ++j) {
            const int q = qd(rng);
            y[b].qs[j] = (int8_t) q;
            sum += q;
            yf[32*b + j] = d*q;
        }
        y[b].ds = __floats2half2_rn(d, d*sum);
    }
}

static void check_tp1(std::mt19937 & rng) {
    const int nb = 512;
    std::vector<block_tp1> blocks(nb);
    // half from the reference quantizer, half random bytes (every byte value, also 243..255)
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(64*nb/2);
    for (auto & v : x) v = nd(rng);
    quantize_row_tp1_ref(x.data(), blocks.data(), (int64_t) x.size());
    std::uniform_int_distribution<int> bd(0, 255);
    std::uniform_real_distribution<float> sd(-2.0f, 2.0f);
    for (int b = nb/2; b < nb; ++b) {
        for (int m = 0; m < 13; ++m) blocks[b].qs[m] = (uint8_t) bd(rng);
        const uint16_t h = f2h(sd(rng));
        blocks[b].d[0] = h & 0xFF; blocks[b].d[1] = h >> 8;
    }
    std::vector<float> ref(64*nb);
    dequantize_row_tp1(blocks.data(), ref.data(), 64*nb);

    std::vector<char> buf(16 + 15*nb + 16);
    for (int off = 0; off < 4; ++off) {
        char * base = buf.data() + 16 + off;
        memcpy(base, blocks.data(), 15*nb);
        for (int b = 0; b < nb; ++b) {
            const float * r = ref.data() + 64*b;
            g_lo = base + 15*b; g_hi = g_lo + 15;
            uint32_t q0, q1, q2, q3;
            tritpack_tp1_load(base, b, q0, q1, q2, q3);
            int v[16];
            tritpack_tp1_codes(q0, q1, q2, q3, v);
            const float d = tritpack_tp1_scale(q3);
            CHECK(d == h2f((uint16_t) (blocks[b].d[0] | (blocks[b].d[1] << 8))), "tp1 block %d: scale", b);
            for (int j = 0; j < 64; ++j) {
                const int c = (v[j/4] >> (8*(j%4))) & 0xFF;
                CHECK(c <= 2 && d*(float) (c - 1) == r[j], "tp1 off %d block %d element %d: code %d, reference %g", off, b, j, c, r[j]);
                const int s = (int8_t) (tritpack_codes_to_i8(v[j/4]) >> (8*(j%4)));
                CHECK(s == c - 1, "tp1 codes_to_i8 block %d element %d", b, j);
                CHECK(tritpack_tp1_code(blocks[b].qs, j) == c, "tp1_code block %d element %d", b, j);
                CHECK(tritpack_tp1_value(&blocks[b], j) == r[j], "tp1_value block %d element %d", b, j);
            }
            for (int n = 0; n < 4; ++n) {
                int g[4];
                tritpack_tp1_group_codes(q0, q1, q2, q3, n, g);
                for (int k = 0; k < 4; ++k) CHECK(g[k] == v[4*n + k], "tp1 group codes block %d group %d int %d", b, n, k);
                float f[16];
                tritpack_tp1_group_values(base, b, n, f);
                for (int k = 0; k < 16; ++k) CHECK(f[k] == r[16*n + k], "tp1 group values block %d group %d", b, n);
            }
            // MMVQ
            block_q8_1 y[2];
            double yf[64];
            make_q8_1(rng, y, yf);
            double want = 0.0;
            for (int j = 0; j < 64; ++j) want += (double) r[j]*yf[j];
            const float got = tritpack_vec_dot_tp1_q8_1_impl(base, y, b);
            CHECK(fabs(got - want) <= 1e-5*(fabs(want) + fabs(d)), "tp1 vec_dot block %d: %.8g vs %.8g", b, got, want);
        }
    }
    g_lo = g_hi = nullptr;
    CHECK(g_bad_reads == 0, "tp1 loads: %ld words outside their block", g_bad_reads);
}

static void check_tp4(std::mt19937 & rng) {
    const int nb = 512;
    std::vector<block_tp4> blocks(nb);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(64*nb/2);
    for (auto & v : x) v = nd(rng);
    quantize_row_tp4_ref(x.data(), blocks.data(), (int64_t) x.size());
    std::uniform_int_distribution<int> bd(0, 255);
    std::uniform_real_distribution<float> sd(-0.1f, 0.1f);
    for (int b = nb/2; b < nb; ++b) {
        for (int m = 0; m < 32; ++m) blocks[b].qs[m] = (uint8_t) bd(rng);
        blocks[b].sc[0] = (uint8_t) bd(rng); blocks[b].sc[1] = (uint8_t) bd(rng);
        const uint16_t h = f2h(sd(rng));
        blocks[b].d[0] = h & 0xFF; blocks[b].d[1] = h >> 8;
    }
    std::vector<float> ref(64*nb);
    dequantize_row_tp4(blocks.data(), ref.data(), 64*nb);

    for (int b = 0; b < nb; ++b) {
        const float * r = ref.data() + 64*b;
        for (int j = 0; j < 64; ++j) {
            CHECK(tritpack_tp4_value(&blocks[b], j) == r[j], "tp4_value block %d element %d: %g vs %g", b, j, tritpack_tp4_value(&blocks[b], j), r[j]);
        }
        for (int n = 0; n < 4; ++n) {
            float f[16];
            tritpack_tp4_group_values(blocks.data(), b, n, f);
            for (int k = 0; k < 16; ++k) CHECK(f[k] == r[16*n + k], "tp4 group values block %d sub-block %d element %d: %g vs %g", b, n, k, f[k], r[16*n + k]);
        }
        // MMVQ: the two halves together are the whole block
        block_q8_1 y[2];
        double yf[64];
        make_q8_1(rng, y, yf);
        double want = 0.0, scale = 0.0;
        for (int j = 0; j < 64; ++j) { want += (double) r[j]*yf[j]; scale += fabs((double) r[j]*yf[j]); }
        const float got = tritpack_vec_dot_tp4_q8_1_impl(blocks.data(), y, b, 0) + tritpack_vec_dot_tp4_q8_1_impl(blocks.data(), y, b, 1);
        CHECK(fabs(got - want) <= 1e-5*scale + 1e-30, "tp4 vec_dot block %d: %.8g vs %.8g", b, got, want);
    }
    // the lookup against a plain one
    std::uniform_int_distribution<uint32_t> wd;
    for (int it = 0; it < 10000; ++it) {
        const uint32_t q4 = wd(rng), k = wd(rng) & 15;
        const int2 v = tritpack_table16(q4, tritpack_tp4_codebook(k));
        for (int i = 0; i < 4; ++i) {
            CHECK((int8_t) (v.x >> (8*i)) == tp4_codebooks[k][(q4 >> (8*i)) & 15], "table16 low nibble %d", i);
            CHECK((int8_t) (v.y >> (8*i)) == tp4_codebooks[k][(q4 >> (8*i + 4)) & 15], "table16 high nibble %d", i);
        }
    }
}

int main() {
    std::mt19937 rng(1234);
    check_tp1(rng);
    check_tp4(rng);
    if (g_fail) {
        printf("%d checks failed\n", g_fail);
        return 1;
    }
    printf("OK\n");
    return 0;
}
"""


def test_decode_matches_reference_on_host(cuda_env, tmp_path):
    """TP1/TP4 decode, MMVQ dot products and dequantizers of tritpack-cuda.cuh vs libggml-base."""
    src = tmp_path / "tritpack_host_check.cu"
    src.write_text(HOST_CHECK)
    exe = tmp_path / "tritpack_host_check"
    lib_dir = cuda_env["lib_dir"]
    cmd = [cuda_env["nvcc"], *NVCC_FLAGS, *cuda_env["includes"], str(src), "-o", str(exe),
           f"-L{lib_dir}", "-lggml-base", f"-Xlinker=-rpath,{lib_dir}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
    assert r.returncode == 0, f"$ {' '.join(cmd)}\n{(r.stdout + r.stderr)[-6000:]}"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), (r.stdout + r.stderr)[-6000:]
