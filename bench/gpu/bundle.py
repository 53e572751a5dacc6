"""Pack what bench/gpu/check.py needs on a bare GPU machine (no network) into one folder, cached by content.

    python bench/gpu/bundle.py --lib-dir BUILD/bin [--out .gpu-bundle] [--json]

(bench/gpu-bundle.sh builds with --cuda --arch 90 and calls this.) The folder holds:
  check.py        the check script (stdlib + numpy)
  manifest.json   what is inside, the build it came from, sizes, the content key
  payload.tar.xz  bin/        the programs check.py calls (test-backend-ops, llama-bench, llama-quantize,
                              greedy-logits and matvec-bench compiled here against the build) and every
                              library they load from the build, plus libcudart and libgomp; stripped
                  fallback/   libstdc++ and libgcc_s of this machine, used only where the GPU machine's
                              C++ runtime is older than the build's
                  py/         gguf (pure Python) and yaml, tritpack_gguf.converters + errors,
                              make_random_model.py
                  vocab/      llama.cpp's ggml-vocab-llama-spm.gguf (the random models' tokenizer)
cuBLAS is not carried (libcublasLt.so.13 alone is over 500 MB): check.py finds the GPU machine's own.

The key hashes the build's stamp key and every file that goes in, so a second run with nothing changed
copies the cached bundle from $TRITPACK_HOME/gpu-bundle/ (or finds it already in place). The bundle and
the working tree that the device tool sends with it (tracked and untracked-not-ignored files) must stay
under 64 MiB; the bundler stops with an error otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tritpack_gguf.build import read_stamp
from tritpack_gguf.errors import TritpackError
from tritpack_gguf.paths import locked, tritpack_home

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

BUILD_PROGRAMS = ["test-backend-ops", "llama-bench", "llama-quantize"]
OUR_PROGRAMS = {"greedy-logits": ("greedy-logits.cpp", ["-lllama", "-lggml", "-lggml-base"]),
                "matvec-bench": ("matvec-bench.cpp", ["-lggml", "-lggml-base"])}
CARRIED_SYSTEM = ("libcudart.so", "libgomp.so")  # small, and a CUDA 13 runtime may be missing there
FALLBACK = ("libstdc++.so", "libgcc_s.so")
NOT_CARRIED = ("libcublas.so", "libcublasLt.so", "libcuda.so")  # from the GPU machine
LIMIT_MIB = 64
VERSION = "1"  # bump when the layout changes


def _sha(h: "hashlib._Hash", path: Path, name: str) -> None:
    h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")


def python_files() -> dict[str, Path]:
    """Archive name -> file for py/: gguf, yaml (pure Python), our converters, make_random_model."""
    import gguf

    files: dict[str, Path] = {}
    for pkg, top in ((Path(gguf.__file__).parent, "gguf"),):
        for p in sorted(pkg.rglob("*.py")):
            files[f"py/{top}/{p.relative_to(pkg)}"] = p
    try:
        import yaml

        ydir = Path(yaml.__file__).parent
        for p in sorted(ydir.glob("*.py")):
            files[f"py/yaml/{p.name}"] = p
    except ImportError:
        pass  # the GPU machine has PyYAML itself
    for p in sorted((ROOT / "converters").glob("*.py")):
        files[f"py/tritpack_gguf/converters/{p.name}"] = p
    files["py/tritpack_gguf/errors.py"] = ROOT / "plugin" / "errors.py"
    files["py/make_random_model.py"] = ROOT / "bench" / "make_random_model.py"
    return files


def content_key(stamp: dict, source: Path) -> str:
    h = hashlib.sha256(f"gpu-bundle {VERSION}\0{stamp['key']}\0".encode())
    for name in ("check.py", "bundle.py", "greedy-logits.cpp", "matvec-bench.cpp"):
        _sha(h, HERE / name, name)
    for name, p in python_files().items():
        _sha(h, p, name)
    _sha(h, source / "models" / "ggml-vocab-llama-spm.gguf", "vocab")
    return h.hexdigest()


def _needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return [ln.split("[", 1)[1].split("]", 1)[0] for ln in out.splitlines() if "(NEEDED)" in ln]


def _resolve(lib_dir: Path, programs: list[Path]) -> dict[str, Path]:
    """soname -> file for every library the programs load: from the build folder, and where ldd finds
    the ones in CARRIED_SYSTEM and FALLBACK; NOT_CARRIED and the C library stay behind."""
    env = {**os.environ, "LD_LIBRARY_PATH": f"{lib_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    found: dict[str, Path] = {}
    todo = list(programs)
    seen: set[str] = set()
    while todo:
        p = todo.pop()
        for name in _needed(p):
            if name in seen:
                continue
            seen.add(name)
            if (lib_dir / name).exists():
                found[name] = (lib_dir / name).resolve()
                todo.append(found[name])
    ldd = subprocess.run(["ldd", *map(str, programs), *map(str, found.values())], capture_output=True, text=True, env=env).stdout
    for ln in ldd.splitlines():
        parts = ln.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
            name = parts[0]
            if name.startswith(CARRIED_SYSTEM + FALLBACK) and name not in found:
                found[name] = Path(parts[2]).resolve()
    for name in seen:  # the CUDA runtime of the toolkit the build used, where ldd does not see it
        if name.startswith("libcudart.so") and name not in found:
            for d in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"):
                if (Path(d) / name).exists():
                    found[name] = (Path(d) / name).resolve()
                    break
    return found


def _working_tree_bytes(root: Path) -> int:
    """What the device tool sends besides the carried folders: tracked and untracked-not-ignored files."""
    r = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, check=True)
    total = 0
    for name in r.stdout.decode().split("\0"):
        p = root / name
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def _compress(stage: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as f:
        tar = subprocess.Popen(["tar", "-C", str(stage), "--owner=0", "--group=0", "--sort=name", "-cf", "-", "."],
                               stdout=subprocess.PIPE)
        xz = subprocess.run(["xz", "-6", "-T0", "-c"], stdin=tar.stdout, stdout=f)
        tar.stdout.close()
        if tar.wait() != 0 or xz.returncode != 0:
            raise TritpackError("tar | xz failed", path=stage)
    os.replace(tmp, dest)


def make(lib_dir: Path, cache: Path) -> dict:
    """The bundle of this build in `cache` (made if missing); returns its manifest."""
    stamp = read_stamp(lib_dir.parent)
    if not stamp:
        raise TritpackError("no tritpack-build.json next to this folder: not a build of `tritpack-gguf build`", path=lib_dir)
    source = Path(stamp["source_dir"])
    key = content_key(stamp, source)
    dest = cache / key[:16]
    if (dest / "manifest.json").is_file():
        return json.loads((dest / "manifest.json").read_text())
    with locked(cache / f"{key[:16]}.lock"):
        if (dest / "manifest.json").is_file():
            return json.loads((dest / "manifest.json").read_text())
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="gpu-bundle-", dir=cache) as tmp:
            stage = Path(tmp) / "stage"
            (stage / "bin").mkdir(parents=True)
            (stage / "fallback").mkdir()
            cxx = os.environ.get("CXX", "c++")
            inc = [f"-I{source / 'include'}", f"-I{source / 'ggml' / 'include'}"]
            for prog, (src, libs) in OUR_PROGRAMS.items():
                cmd = [cxx, "-std=c++17", "-O2", str(HERE / src), *inc, f"-L{lib_dir}", *libs,
                       "-Wl,-rpath,$ORIGIN", "-o", str(stage / "bin" / prog)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    raise TritpackError(f"compiling {src} failed:\n{r.stderr[-2000:]}", path=HERE / src)
            for prog in BUILD_PROGRAMS:
                if not (lib_dir / prog).is_file():
                    raise TritpackError(f"{prog} is missing from the build", path=lib_dir)
                shutil.copy2(lib_dir / prog, stage / "bin" / prog)
            programs = BUILD_PROGRAMS + list(OUR_PROGRAMS)
            libs = _resolve(lib_dir, [stage / "bin" / p for p in programs])
            for name, path in libs.items():
                shutil.copy2(path, stage / ("fallback" if name.startswith(FALLBACK) else "bin") / name)
            cuda = bool(stamp.get("cuda"))
            if cuda and "libggml-cuda.so" not in " ".join(libs):
                raise TritpackError("a CUDA build without libggml-cuda.so among the libraries", path=lib_dir)
            raw = 0
            for f in sorted((stage / "bin").iterdir()) + sorted((stage / "fallback").iterdir()):
                subprocess.run(["strip", "--strip-unneeded", str(f)], check=True)
                raw += f.stat().st_size
            sizes = {f.name: f.stat().st_size for f in sorted((stage / "bin").iterdir())}
            for name, p in python_files().items():
                (stage / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, stage / name)
            (stage / "py" / "tritpack_gguf" / "__init__.py").write_text(
                '"""The part of tritpack_gguf that bench/make_random_model.py needs (a GPU bundle)."""\n')
            (stage / "vocab").mkdir()
            shutil.copy2(source / "models" / "ggml-vocab-llama-spm.gguf", stage / "vocab")
            out = Path(tmp) / "bundle"
            out.mkdir()
            _compress(stage, out / "payload.tar.xz")
            shutil.copy2(HERE / "check.py", out / "check.py")
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
            manifest = {
                "key": key, "kind": "cuda" if cuda else "cpu", "archs": stamp.get("cuda_archs"),
                "cmake": _cmake_settings(lib_dir.parent), "build_dir": str(lib_dir.parent), "build_key": stamp["key"],
                "commit": commit or "unknown", "made": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "payload": "payload.tar.xz", "programs": programs, "libraries": sorted(libs),
                "not_carried": sorted(n for n in _all_needed(stage / "bin") if n.startswith(NOT_CARRIED)),
                "binary_bytes_stripped": raw, "binary_sizes": sizes,
                "payload_bytes": (out / "payload.tar.xz").stat().st_size, "seconds": round(time.monotonic() - t0, 1),
            }
            (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out, dest)
    _prune(cache, keep=dest)
    return json.loads((dest / "manifest.json").read_text())


def _prune(cache: Path, keep: Path, n: int = 4) -> None:
    """Keep the n most recent bundles in the cache (a CUDA bundle is tens of MB)."""
    olds = sorted((d for d in cache.iterdir() if d.is_dir() and (d / "manifest.json").is_file() and d != keep),
                  key=lambda d: d.stat().st_mtime, reverse=True)[n - 1:]
    for d in olds:
        shutil.rmtree(d, ignore_errors=True)
        (cache / f"{d.name}.lock").unlink(missing_ok=True)


REPORTED_CMAKE = ("CMAKE_CUDA_ARCHITECTURES", "GGML_NATIVE", "GGML_CUDA_FA", "GGML_CUDA_NO_VMM", "GGML_CUDA_COMPRESSION_MODE")


def _cmake_settings(build_dir: Path) -> dict[str, str]:
    """The build's settings that change what the check measures, from its CMakeCache.txt."""
    out = {}
    try:
        for ln in (build_dir / "CMakeCache.txt").read_text().splitlines():
            name, _, value = ln.partition("=")
            if name.split(":")[0] in REPORTED_CMAKE:
                out[name.split(":")[0]] = value
    except OSError:
        pass
    return out


def _all_needed(folder: Path) -> set[str]:
    return {n for f in folder.iterdir() for n in _needed(f)}


def bundle_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def install(manifest: dict, cache: Path, out: Path, root: Path = ROOT) -> dict:
    """Put the cached bundle at `out` (replacing another), check the size limit, return a summary."""
    src = cache / manifest["key"][:16]
    reused = (out / "manifest.json").is_file() and json.loads((out / "manifest.json").read_text()).get("key") == manifest["key"]
    if not reused:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    b = bundle_bytes(out)
    tree = _working_tree_bytes(root)
    total = b + tree
    summary = {"bundle": str(out), "key": manifest["key"][:16], "kind": manifest["kind"], "reused": reused,
               "bundle_mib": round(b / 2**20, 2), "working_tree_mib": round(tree / 2**20, 2),
               "total_mib": round(total / 2**20, 2), "limit_mib": LIMIT_MIB,
               "binaries_stripped_mib": round(manifest["binary_bytes_stripped"] / 2**20, 2),
               "largest": sorted(manifest["binary_sizes"].items(), key=lambda kv: -kv[1])[:3],
               "not_carried": manifest["not_carried"]}
    if total >= LIMIT_MIB * 2**20:
        raise TritpackError(f"bundle {b / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {total / 2**20:.1f} MiB, "
                            f"over the device tool's {LIMIT_MIB} MiB", path=out,
                            hint="carry fewer programs, or remove untracked files from the checkout")
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib-dir", type=Path, required=True, help="bin/ of a `tritpack-gguf build` (its lib_dir)")
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu-bundle")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        cache = tritpack_home() / "gpu-bundle"
        manifest = make(a.lib_dir.resolve(), cache)
        summary = install(manifest, cache, a.out.resolve())
    except TritpackError as e:
        print(f"gpu-bundle: error: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{summary['bundle']}: {summary['kind']} bundle {summary['key']} "
              f"({'up to date' if summary['reused'] else 'installed'}), {summary['bundle_mib']} MiB "
              f"(stripped binaries {summary['binaries_stripped_mib']} MiB) + working tree {summary['working_tree_mib']} MiB "
              f"= {summary['total_mib']} of {LIMIT_MIB} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
