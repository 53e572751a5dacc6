"""The build driver: pinned llama.cpp sources + patches/ + ggml_kernels/ -> a patched llama.cpp.

Steps, each cached under $TRITPACK_HOME (never inside the repo):
1. fetch   the llama-cpp-python sdist named in patches/llama-cpp.pin with pip, check its sha256
           (a mismatch stops before anything is unpacked);
2. unpack  its vendor/llama.cpp into sdist/<name>-<sha>/;
3. patch   a copy of it with the series in patches/, idempotently (a patch whose reverse applies
           is skipped), into src/llama.cpp-<hash of sdist and patches>/;
           TRITPACK_LLAMA_CPP_SOURCE=<dir> patches and uses that tree instead (kernel work);
4. build   with the top-level CMakeLists.txt (ggml_kernels/ attached with target_sources) in
           build/<hash of source and flags>/; a stamp records the hash of everything that went in
           (sdist sha256, patches, ggml_kernels, CMakeLists.txt, flags), so a second build with
           nothing changed returns at once, and a change to the kernels rebuilds incrementally;
5. ui      the chat page llama-server serves at / : tools/ui built with npm (`npm ci` against its
           package-lock.json, then `npm run build`) into ui/<hash of tools/ui>/,
           once per content, and embedded by llama.cpp's own asset step. Where Node or npm is
           missing (or npm fails) the build goes on without the page and says why (BuildResult.ui_note).
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .digest import sha256_file
from .errors import TritpackError
from .paths import locked, source_root, tritpack_home

# what `tritpack-gguf build` makes: the libraries, the tools the commands drive, llama.cpp's tests
LIBRARIES = ["llama", "ggml", "ggml-base", "ggml-cpu", "ggml-rpc"]
PROGRAMS = ["llama-quantize", "llama-bench", "llama-perplexity", "llama-imatrix", "llama-completion",
            "llama-server", "test-quantize-fns", "test-backend-ops", "ggml-rpc-server"]
DEFAULT_CUDA_ARCHS = "80;86;89;90"
STAMP = "tritpack-build.json"

Progress = Callable[[str, int, int], None]  # (stage or message, done, total)


def _quiet(_msg: str, _done: int = 0, _total: int = 0) -> None:
    pass


@dataclass(frozen=True)
class Pin:
    package: str
    version: str
    sha256: str
    llama_cpp_commit: str
    ggml_version: str

    @classmethod
    def load(cls, path: Path) -> "Pin":
        values: dict[str, str] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise TritpackError(f"line {n} is not `key = value`", path=path)
            values[key.strip()] = value.strip()
        try:
            return cls(**{f: values[f] for f in cls.__dataclass_fields__})
        except KeyError as e:
            raise TritpackError(f"missing key {e.args[0]!r}", path=path) from None

    @property
    def sdist_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}.tar.gz"


@dataclass
class BuildResult:
    key: str
    build_dir: str
    lib_dir: str
    source_dir: str
    cuda: bool
    cuda_archs: str | None
    cached: bool
    seconds: float
    outputs: list[str] = field(default_factory=list)
    ui: str | None = None        # the built page embedded in llama-server (a folder), None: no page
    ui_key: str | None = None    # its content key (hash of tools/ui)
    ui_note: str | None = None   # why there is no page, when there is none


def _hash_files(h: "hashlib._Hash", root: Path, paths: list[Path]) -> None:
    for p in paths:
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")


def patch_series(root: Path) -> list[Path]:
    return sorted((root / "patches").glob("*.patch"))


def kernel_sources(root: Path) -> list[Path]:
    return sorted(p for p in (root / "ggml_kernels").rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _atomic_dir(dest: Path, fill: Callable[[Path], None]) -> None:
    """Make `dest` appear complete or not at all: fill a temporary sibling, then rename it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        fill(tmp)
        os.replace(tmp, dest)
    except OSError:
        if not dest.is_dir():  # not a concurrent twin that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- fetch and unpack

def fetch_sdist(pin: Pin, home: Path, progress: Progress = _quiet) -> Path:
    """The verified sdist tarball, downloaded with pip once and kept in $TRITPACK_HOME/downloads."""
    dest = home / "downloads" / pin.sdist_name
    if dest.is_file() and sha256_file(dest) == pin.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    progress(f"fetching {pin.package}=={pin.version} with pip", 0, 0)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", "--quiet", "-d", tmp, f"{pin.package}=={pin.version}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / pin.sdist_name
        if r.returncode != 0 or not got.is_file():
            # --no-build-isolation needs scikit-build-core installed; retry the plain way
            cmd.remove("--no-build-isolation")
            r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not got.is_file():
            raise TritpackError(f"pip could not download {pin.package}=={pin.version}: "
                                f"{(r.stderr or r.stdout).strip()[-400:]}",
                                hint="check network access to PyPI")
        verify_sha256(got, pin.sha256)
        os.replace(got, dest)
    return dest


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise TritpackError(
            f"sha256 mismatch: expected {expected}, got {actual}; nothing was unpacked",
            path=path,
            hint="the download is not the pinned llama.cpp source; delete it and build again, "
                 "or update patches/llama-cpp.pin deliberately",
        )


def unpack_llama_cpp(pin: Pin, tarball: Path, home: Path, progress: Progress = _quiet) -> Path:
    """vendor/llama.cpp of the verified sdist, unpacked once into $TRITPACK_HOME/sdist/."""
    dest = home / "sdist" / f"{pin.package}-{pin.version}-{pin.sha256[:12]}" / "llama.cpp"
    if (dest / "CMakeLists.txt").is_file():
        return dest
    verify_sha256(tarball, pin.sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    progress("unpacking llama.cpp", 0, 0)
    top = f"{pin.package.replace('-', '_')}-{pin.version}/vendor/llama.cpp/"

    def fill(tmp: Path) -> None:
        with tarfile.open(tarball) as tf:
            members = []
            for m in tf.getmembers():
                if m.name.startswith(top) and m.name != top + ".git":  # .git: a submodule pointer
                    m.name = m.name[len(top):]
                    members.append(m)
            if not members:
                raise TritpackError(f"no {top} in the source distribution", path=tarball)
            tf.extractall(tmp, members=members, filter="data")

    _atomic_dir(dest, fill)
    return dest


# ----------------------------------------------------------------------------- patch

def _git_apply(tree: Path, patch: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "apply", "--whitespace=nowarn", *args, str(patch)], cwd=tree,
                          capture_output=True, text=True,
                          env={**os.environ, "GIT_DIR": "/nonexistent"})  # never the repo around it


def apply_patches(tree: Path, patches: list[Path], progress: Progress = _quiet) -> list[str]:
    """Apply the series idempotently; return the names applied now (skipped ones are already in)."""
    applied = []
    for i, patch in enumerate(patches):
        progress(f"patch {patch.name}", i, len(patches))
        if _git_apply(tree, patch, "--check").returncode == 0:
            r = _git_apply(tree, patch)
            if r.returncode != 0:
                raise TritpackError(f"patch {patch.name} failed to apply: {r.stderr.strip()}", path=tree)
            applied.append(patch.name)
        elif _git_apply(tree, patch, "--check", "--reverse").returncode == 0:
            continue  # already applied
        else:
            err = _git_apply(tree, patch, "--check").stderr.strip()
            raise TritpackError(
                f"patch {patch.name} does not apply: {err}", path=tree,
                hint=f"regenerate it: set TRITPACK_LLAMA_CPP_SOURCE to a llama.cpp tree at the pinned "
                     f"commit with the patches before it applied, make the change there and write "
                     f"`git diff` of that concern's files to patches/{patch.name} (see patches/README.md)",
            )
    progress("patched", len(patches), len(patches))
    return applied


def prepare_source(pin: Pin, root: Path, home: Path, progress: Progress = _quiet) -> Path:
    """The patched llama.cpp tree to build.

    It lives at one path per pinned sdist; when the patch series changes, the series is applied to
    a fresh copy of the pristine tree and only the files whose content differs are written into the
    tree, so an incremental build recompiles what the new series changed and nothing else.
    """
    patches = patch_series(root)
    override = os.environ.get("TRITPACK_LLAMA_CPP_SOURCE")
    if override:
        tree = Path(override).expanduser().resolve()
        if not (tree / "ggml" / "include" / "ggml.h").is_file():
            raise TritpackError("not a llama.cpp source tree (no ggml/include/ggml.h)", path=tree,
                                hint="TRITPACK_LLAMA_CPP_SOURCE must point at a llama.cpp checkout")
        apply_patches(tree, patches, progress)
        return tree
    h = hashlib.sha256(pin.sha256.encode())
    _hash_files(h, root, patches)
    series = h.hexdigest()
    tree = home / "src" / f"llama.cpp-{pin.sha256[:12]}"
    marker = tree / ".tritpack-series"
    if marker.is_file() and marker.read_text() == series:
        return tree
    with locked(home / "src" / f"{tree.name}.lock"):
        if marker.is_file() and marker.read_text() == series:
            return tree
        pristine = unpack_llama_cpp(pin, fetch_sdist(pin, home, progress), home, progress)
        tree.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)  # a tree without its marker is re-synced next time
        with tempfile.TemporaryDirectory(dir=tree.parent) as tmp:
            work = Path(tmp) / "llama.cpp"
            progress("copying llama.cpp", 0, 0)
            shutil.copytree(pristine, work, symlinks=True)
            apply_patches(work, patches, progress)
            progress("updating the patched tree", 0, 0)
            _sync_tree(work, tree, keep={marker.name})
        marker.write_text(series)
    return tree


def _copy_if_changed(a: Path, b: Path) -> None:
    if not b.is_file() or not filecmp.cmp(a, b, shallow=False):
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(a, b)


def _start_build(root: Path, project: Path, build_dir: Path) -> Path:
    """Ready `build_dir` for a (re)build, its stamp gone; the build log, emptied. The CMake project is
    a copy of CMakeLists.txt and ggml_kernels/ at a path that does not depend on where the checkout
    is, with unchanged files left untouched: every checkout of the same content (CI's fresh clone
    included) shares one incremental build."""
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / STAMP).unlink(missing_ok=True)
    _sync_tree(root / "ggml_kernels", project / "ggml_kernels", keep=set())
    _copy_if_changed(root / "CMakeLists.txt", project / "CMakeLists.txt")
    log = build_dir / "build.log"
    log.write_text("")
    return log


def _ccache_args(cuda: bool) -> list[str]:
    """The compiler launchers for ccache, where it is installed."""
    if not shutil.which("ccache"):
        return []
    langs = ("C", "CXX", "CUDA") if cuda else ("C", "CXX")
    return [f"-DCMAKE_{lang}_COMPILER_LAUNCHER=ccache" for lang in langs]


def _sync_tree(src: Path, dst: Path, keep: set[str]) -> None:
    """Make `dst` hold exactly the files of `src`, rewriting only those whose content differs."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src)
        (dst / rel_dir).mkdir(parents=True, exist_ok=True)
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            rel = rel_dir / name
            seen.add(rel)
            a, b = src / rel, dst / rel
            if a.is_symlink():
                if not b.is_symlink() or os.readlink(a) != os.readlink(b):
                    if b.is_symlink() or b.exists():
                        b.unlink()
                    os.symlink(os.readlink(a), b)
            elif b.is_symlink() or not b.is_file() or not filecmp.cmp(a, b, shallow=False):
                if b.is_symlink():
                    b.unlink()
                shutil.copyfile(a, b)  # a new mtime, so that make/ninja see the change
                shutil.copymode(a, b)
    for dirpath, _, filenames in os.walk(dst):
        rel_dir = Path(dirpath).relative_to(dst)
        for name in filenames:
            rel = rel_dir / name
            if rel not in seen and str(rel) not in keep:
                (dst / rel).unlink()


# ----------------------------------------------------------------------------- the chat page

UI_NODE_MIN = (20, 19)   # what the pinned tools/ui's vite asks for (engines: ^20.19.0 || >=22.12.0)
UI_SKIP_DIRS = {"node_modules", "dist", ".svelte-kit", "build", "test-results"}
UI_HOW = ("install Node.js >= 20.19 with npm (https://nodejs.org) and run `tritpack-gguf build` again "
          "to build the chat page")


@dataclass
class UiResult:
    dist: Path | None      # the built page (index.html and its assets), None when it could not be built
    key: str
    note: str | None = None
    built_now: bool = False
    seconds: float = 0.0


def ui_sources(ui_dir: Path) -> list[Path]:
    """Every file of tools/ui that goes into the page (not what npm or a build leaves there)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(ui_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in UI_SKIP_DIRS)
        out += [Path(dirpath) / f for f in filenames]
    return sorted(out)


def node_version() -> tuple[int, ...] | None:
    """`node --version` as numbers; None when node is not on PATH or does not answer."""
    node = shutil.which("node")
    if node is None:
        return None
    try:
        r = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", r.stdout.strip())
    return tuple(int(x) for x in m.groups()) if r.returncode == 0 and m else None


def ui_key(ui_dir: Path) -> str:
    """Content key of the page: the tools/ui sources, package-lock.json among them (not the Node that
    builds them: a page built once is found again where Node is missing)."""
    h = hashlib.sha256(b"tools/ui\n")
    _hash_files(h, ui_dir, ui_sources(ui_dir))
    return h.hexdigest()


def build_ui(source: Path, home: Path, progress: Progress = _quiet) -> UiResult:
    """The chat page of llama-server built from source/tools/ui with npm, cached by content in
    $TRITPACK_HOME/ui/<key>/dist; a second call with the same sources returns it without npm."""
    t0 = time.monotonic()
    ui_dir = source / "tools" / "ui"
    node = node_version()
    if not (ui_dir / "package-lock.json").is_file():
        return UiResult(None, "", f"no tools/ui/package-lock.json in {source}")
    key = ui_key(ui_dir)
    entry = home / "ui" / key[:16]
    dist = entry / "dist"
    if (dist / "index.html").is_file():
        return UiResult(dist, key)
    npm = shutil.which("npm")
    if node is None or npm is None:
        return UiResult(None, key, f"{'node' if node is None else 'npm'} is not on PATH")
    if node[:2] < UI_NODE_MIN:
        return UiResult(None, key, f"Node.js {'.'.join(map(str, node))} is older than "
                                   f"{'.'.join(map(str, UI_NODE_MIN))}, which the page's build needs")
    with locked(home / "ui" / f"{key[:16]}.lock"):
        if (dist / "index.html").is_file():
            return UiResult(dist, key)
        log = home / "ui" / f"{key[:16]}.log"
        log.write_text("")
        env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1", "CI": "1", "NO_UPDATE_NOTIFIER": "1",
               "npm_config_cache": str(home / "npm-cache"), "npm_config_audit": "false",
               "npm_config_fund": "false", "npm_config_update_notifier": "false"}
        # npm's node_modules (~700 MB, 1000 packages) is kept per package-lock.json and Node major, so a
        # change to the page's sources alone rebuilds without `npm ci`; an older one is removed
        h = hashlib.sha256(f"node {node[0]}\n".encode())
        _hash_files(h, ui_dir, [ui_dir / "package.json", ui_dir / "package-lock.json"])
        work = home / "ui" / f"npm-{h.hexdigest()[:16]}"
        with locked(home / "ui" / f"{work.name}.lock"):
            for old in (home / "ui").glob("npm-*"):
                if old.is_dir() and old != work:
                    subprocess.run(["rm", "-rf", str(old)], check=False)   # faster than rmtree on 50k files
            work.mkdir(parents=True, exist_ok=True)
            for old in work.iterdir():   # stage the sources afresh, next to the kept node_modules
                if old.name == "node_modules":
                    continue
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                else:
                    old.unlink()
            shutil.copytree(ui_dir, work, symlinks=True, dirs_exist_ok=True,
                            ignore=lambda d, names: [n for n in names if n in UI_SKIP_DIRS])

            def fill(tmp: Path) -> None:
                tmp.chmod(0o755)   # mkdtemp's 0700 would hide the cache entry from other users
                if not (work / "node_modules" / ".package-lock.json").is_file():   # written last by npm ci
                    progress("ui: npm ci", 0, 0)
                    _run_logged([npm, "ci"], log, progress, "npm ci (the chat page)", env, cwd=work)
                progress("ui: npm run build", 0, 0)
                _run_logged([npm, "run", "build"], log, progress, "npm run build (the chat page)",
                            {**env, "LLAMA_UI_OUT_DIR": str(tmp / "dist")}, cwd=work)
                if not (tmp / "dist" / "index.html").is_file():
                    raise TritpackError("npm run build finished without dist/index.html", path=log)

            try:
                _atomic_dir(entry, fill)
            except TritpackError as e:
                return UiResult(None, key, f"the page's npm build failed ({str(e).splitlines()[0]}); "
                                           f"its log: {log}")
    return UiResult(dist, key, built_now=True, seconds=time.monotonic() - t0)


# ----------------------------------------------------------------------------- build

def _flags(cuda: bool, archs: str | None, native: bool = True) -> dict:
    flags = {"cuda": cuda, "cuda_archs": (archs or DEFAULT_CUDA_ARCHS) if cuda else None,
             "build_type": "Release", "native": native}
    if cuda:
        flags.update(cuda_libraries())
    return flags


def _cuda_toolkit() -> Path | None:
    """The CUDA toolkit's root (bin/nvcc, include/cuda_runtime.h): that of nvcc on PATH, else
    /usr/local/cuda (an nvcc on PATH may be a wrapper script, as /usr/local/bin/nvcc is here)."""
    cands = [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc", *sorted(map(str, Path("/usr/local").glob("cuda-*/bin/nvcc")))]
    for cand in cands:
        if cand and Path(cand).is_file():
            root = Path(cand).resolve().parent.parent
            if (root / "include" / "cuda_runtime.h").is_file():
                return root
    return None


def cublas_dir() -> Path | None:
    """The PyPI wheel nvidia-cublas installed in this Python (the `cuda-compile` extra): its folder with
    include/cublas_v2.h and lib/libcublas.so.* (nvidia/cu13, or nvidia/cublas for CUDA 12); None if absent."""
    import importlib.util

    for name in ("nvidia.cu13", "nvidia.cublas"):
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        for loc in (spec.submodule_search_locations or []) if spec else []:
            d = Path(loc)
            if (d / "include" / "cublas_v2.h").is_file() and list((d / "lib").glob("libcublas.so.*")):
                return d
    return None


def cuda_libraries() -> dict:
    """How the CUDA build finds cuBLAS and the driver library, as build flags (part of the build key,
    so they name versions, not paths: every checkout's venv shares one build).

    - cublas: "toolkit" when the CUDA toolkit has cuBLAS (CMake's FindCUDAToolkit finds it); else
      "nvidia-cublas==<version>", the wheel of this Python, whose libraries and headers are passed to
      CMake (_cuda_cmake_args). Neither: a clear error before anything is configured.
    - vmm: ggml-cuda links the driver library (libcuda.so) only for its virtual-memory pool; with no
      libcuda.so, not even the toolkit's stub (a compiler-only toolkit, as on the CI machine), it is
      built with GGML_CUDA_NO_VMM (the cudaMalloc pool; cudart still loads the driver at run time).
    """
    from importlib.metadata import PackageNotFoundError, version

    toolkit = _cuda_toolkit()
    if toolkit is None:
        raise TritpackError("the CUDA toolkit was not found (no nvcc on PATH nor in /usr/local/cuda/bin)",
                            hint="install the CUDA toolkit (12.x or 13.x) or put its bin/ on PATH")
    if (toolkit / "include" / "cublas_v2.h").is_file():
        cublas = "toolkit"
    elif cublas_dir() is not None:
        try:
            cublas = f"nvidia-cublas=={version('nvidia-cublas')}"
        except PackageNotFoundError:
            cublas = "nvidia-cublas"
    else:
        raise TritpackError(f"cuBLAS not found: the CUDA toolkit at {toolkit} has no cublas_v2.h and the "
                            "nvidia-cublas wheel is not installed in this Python",
                            hint=f"{sys.executable} -m pip install -e '.[cuda-compile]' (or install the toolkit's cuBLAS)")
    dirs = [toolkit / d for d in ("lib64", "lib", "targets/x86_64-linux/lib", "lib64/stubs",
                                  "targets/x86_64-linux/lib/stubs")]
    dirs += [Path(d) for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64")]
    driver = any(list(d.glob("libcuda.so*")) for d in dirs if d.is_dir())
    return {"cublas": cublas, "vmm": driver}


def _cuda_cmake_args(flags: dict) -> list[str]:
    args = [f"-DCMAKE_CUDA_ARCHITECTURES={flags['cuda_archs']}"]
    d = cublas_dir() if flags.get("cublas", "toolkit") != "toolkit" else None
    if d is not None:
        args += [f"-DCUDA_cublas_LIBRARY={sorted((d / 'lib').glob('libcublas.so.*'))[0]}",
                 f"-DCUDA_cublasLt_LIBRARY={sorted((d / 'lib').glob('libcublasLt.so.*'))[0]}",
                 f"-DCMAKE_CUDA_FLAGS=-isystem {d / 'include'}"]
    if not flags.get("vmm", True):
        args.append("-DGGML_CUDA_NO_VMM=ON")
    return args


def input_key(pin: Pin, root: Path, source: Path, flags: dict) -> str:
    """Hash of everything that goes into a build."""
    h = hashlib.sha256()
    h.update(json.dumps({"sdist": pin.sha256, "source": str(source), **flags}, sort_keys=True).encode())
    _hash_files(h, root, patch_series(root) + kernel_sources(root) + [root / "CMakeLists.txt"])
    return h.hexdigest()


def _outputs(build_dir: Path, cuda: bool) -> list[Path]:
    libs = LIBRARIES + (["ggml-cuda"] if cuda else [])
    return [build_dir / "bin" / f"lib{n}.so" for n in libs] + [build_dir / "bin" / p for p in PROGRAMS]


def read_stamp(build_dir: Path) -> dict | None:
    try:
        return json.loads((build_dir / STAMP).read_text())
    except (OSError, ValueError):
        return None


_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")


def _run_logged(cmd: list[str], log: Path, progress: Progress, stage: str, env: dict,
                cwd: Path | None = None) -> None:
    with open(log, "a", buffering=1) as f:  # line-buffered: the log can be followed live
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=cwd, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            m = _NINJA.match(line)
            if m:
                progress(stage, int(m.group(1)), int(m.group(2)))
        rc = proc.wait()
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise TritpackError(f"{stage} failed (exit {rc}); last lines of the log:\n{tail}", path=log)


def build(cuda: bool = False, archs: str | None = None, jobs: int | None = None,
          progress: Progress = _quiet, native: bool = True, cmake_args: tuple[str, ...] = (),
          ui: bool = True) -> BuildResult:
    """Build (or find cached) the patched llama.cpp; returns where its libraries and programs are.

    native=False builds the CPU code for any x86-64 with AVX2 (GGML_NATIVE off) instead of for this
    machine's CPU: for binaries that run elsewhere (bench/gpu-bundle.sh). cmake_args (-DNAME=VALUE) go
    to CMake as they are and into the build key (e.g. -DGGML_CUDA_FA=OFF for a smaller libggml-cuda).
    `ui`: build and embed the chat page (False: llama-server without it)."""
    bad = [a for a in cmake_args if not re.fullmatch(r"-D[A-Za-z0-9_]+(:[A-Z]+)?=.*", a)]
    if bad:
        raise TritpackError(f"not a CMake -DNAME=VALUE argument: {' '.join(bad)}")
    t0 = time.monotonic()
    root = source_root()
    home = tritpack_home()
    pin = Pin.load(root / "patches" / "llama-cpp.pin")
    flags = _flags(cuda, archs, native)
    if cmake_args:
        flags["cmake_args"] = list(cmake_args)
    for tool in ("cmake", "ninja", "git"):
        if shutil.which(tool) is None:
            raise TritpackError(f"`{tool}` is not on PATH", hint=f"install {tool} (Debian: apt-get install {tool})")
    source = prepare_source(pin, root, home, progress)
    tree_key = hashlib.sha256(json.dumps({"source": str(source), **flags}, sort_keys=True).encode()).hexdigest()[:16]
    build_dir = home / "build" / f"{'cuda' if cuda else 'cpu'}-{tree_key}"
    project = home / "project" / tree_key
    page = build_ui(source, home, progress) if ui else UiResult(None, "", "the build was asked for none (ui=False)")
    with locked(home / "build" / f"{build_dir.name}.lock"):
        key = input_key(pin, root, source, flags)
        outputs = _outputs(build_dir, cuda)
        stamp = read_stamp(build_dir)
        page_key = page.key if page.dist else None
        if (stamp and stamp.get("key") == key and stamp.get("ui_key") == page_key
                and all(p.exists() for p in outputs)):
            return BuildResult(**{**stamp, "ui_note": page.note, "cached": True,
                                  "seconds": time.monotonic() - t0})
        log = _start_build(root, project, build_dir)
        env = dict(os.environ)
        cfg = ["cmake", "-S", str(project), "-B", str(build_dir), "-G", "Ninja",
               "-DCMAKE_BUILD_TYPE=Release", f"-DTRITPACK_LLAMA_SOURCE={source}",
               f"-DTRITPACK_CUDA={'ON' if cuda else 'OFF'}", f"-DTRITPACK_UI_DIST={page.dist or ''}"]
        if not native:
            cfg.append("-DGGML_NATIVE=OFF")
        cfg += list(cmake_args)
        if cuda:
            cfg += _cuda_cmake_args(flags)
        cfg += _ccache_args(cuda)
        progress("configure", 0, 0)
        _run_logged(cfg, log, progress, "configure", env)
        targets = LIBRARIES + (["ggml-cuda"] if cuda else []) + PROGRAMS
        _run_logged(["cmake", "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 2),
                     "--target", *targets], log, progress, "compile", env)
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            raise TritpackError(f"the build finished without {', '.join(missing)}", path=log)
        result = BuildResult(key=key, build_dir=str(build_dir), lib_dir=str(build_dir / "bin"),
                             source_dir=str(source), cuda=cuda, cuda_archs=flags["cuda_archs"],
                             cached=False, seconds=time.monotonic() - t0,
                             outputs=[str(p) for p in outputs], ui=str(page.dist) if page.dist else None,
                             ui_key=page_key, ui_note=page.note)
        tmp = build_dir / (STAMP + ".tmp")
        tmp.write_text(json.dumps(asdict(result), indent=2))
        os.replace(tmp, build_dir / STAMP)
        _remember(home, result)
        return result


def _remember(home: Path, result: BuildResult) -> None:
    """$TRITPACK_HOME/latest-<cpu|cuda>.json: where the runtime finds the newest build of each kind."""
    tmp = home / f".latest-{os.getpid()}.json"
    tmp.write_text(json.dumps(asdict(result), indent=2))
    os.replace(tmp, home / f"latest-{'cuda' if result.cuda else 'cpu'}.json")


# ----------------------------------------------------------------------------- the aarch64 cross build

# `tritpack-gguf build --target T`: ggml (with ggml_kernels/, the NEON kernels among them) and llama.cpp's
# test-quantize-fns and test-backend-ops for ARM64, from the same patched pinned tree, with Debian's
# cross compilers; run them with qemu-aarch64 (qemu_command). Cached by content like the native build
# (the key has the compilers' versions and the -march), in build/<target>-<key>/; ccache, when there,
# recompiles only what changed, and with CCACHE_BASEDIR the two targets share what they compile alike.
CROSS_TARGETS = {
    "aarch64": "armv8-a",                          # plain NEON: every ARMv8-A CPU (Cortex-A53/A57/A72, ...)
    "aarch64-dotprod": "armv8.2-a+dotprod+i8mm",   # sdot and smmla: Graviton 3/4, Apple M2 and later, ...
}
CROSS_PREFIX = "aarch64-linux-gnu-"
CROSS_SYSROOT = "/usr/aarch64-linux-gnu"   # Debian's libc6-arm64-cross, for the linker and for qemu's -L
CROSS_LIBRARIES = ["ggml", "ggml-base", "ggml-cpu"]
CROSS_PROGRAMS = ["test-quantize-fns", "test-backend-ops"]
CROSS_APT = "gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user"


def _cross_compilers() -> tuple[str, str, str]:
    """The cross gcc and g++ and their version line; a clear error when Debian's packages are missing."""
    gcc, gxx = shutil.which(CROSS_PREFIX + "gcc"), shutil.which(CROSS_PREFIX + "g++")
    if gcc is None or gxx is None:
        raise TritpackError(f"`{CROSS_PREFIX}{'gcc' if gcc is None else 'g++'}` is not on PATH",
                            hint=f"install Debian's cross compilers: apt-get install {CROSS_APT}")
    version = subprocess.run([gxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return gcc, gxx, (version or ["?"])[0]


def build_cross(target: str, jobs: int | None = None, progress: Progress = _quiet) -> BuildResult:
    """Build (or find cached) ggml and the two test programs for `target` (a key of CROSS_TARGETS)."""
    if target not in CROSS_TARGETS:
        raise TritpackError(f"unknown target {target!r}", hint=f"one of: native, {', '.join(CROSS_TARGETS)}")
    t0 = time.monotonic()
    root = source_root()
    home = tritpack_home()
    pin = Pin.load(root / "patches" / "llama-cpp.pin")
    for tool in ("cmake", "ninja", "git"):
        if shutil.which(tool) is None:
            raise TritpackError(f"`{tool}` is not on PATH", hint=f"install {tool} (Debian: apt-get install {tool})")
    gcc, gxx, compiler = _cross_compilers()
    flags = {"target": target, "march": CROSS_TARGETS[target], "compiler": compiler, "build_type": "Release"}
    source = prepare_source(pin, root, home, progress)
    tree_key = hashlib.sha256(json.dumps({"source": str(source), **flags}, sort_keys=True).encode()).hexdigest()[:16]
    build_dir = home / "build" / f"{target}-{tree_key}"
    # one project copy for both targets (a path of the same depth as the native one's), so that ccache
    # with CCACHE_BASEDIR sees the same relative paths from either build folder
    project = home / "project" / f"cross-{hashlib.sha256(str(source).encode()).hexdigest()[:16]}"
    with locked(home / "build" / f"{build_dir.name}.lock"), locked(home / "project" / f"{project.name}.lock"):
        key = input_key(pin, root, source, flags)
        outputs = [build_dir / "bin" / f"lib{n}.so" for n in CROSS_LIBRARIES] + \
                  [build_dir / "bin" / p for p in CROSS_PROGRAMS]
        stamp = read_stamp(build_dir)
        if stamp and stamp.get("key") == key and all(p.exists() for p in outputs):
            return BuildResult(**{**stamp, "cached": True, "seconds": time.monotonic() - t0})
        log = _start_build(root, project, build_dir)
        env = {**os.environ, "CCACHE_BASEDIR": str(home)}
        cfg = ["cmake", "-S", str(project), "-B", str(build_dir), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
               f"-DTRITPACK_LLAMA_SOURCE={source}", "-DTRITPACK_GGML_ONLY=ON", "-DTRITPACK_UI_DIST=",
               "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
               f"-DCMAKE_C_COMPILER={gcc}", f"-DCMAKE_CXX_COMPILER={gxx}", f"-DCMAKE_FIND_ROOT_PATH={CROSS_SYSROOT}",
               "-DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER", "-DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY",
               "-DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY", "-DCMAKE_FIND_ROOT_PATH_MODE_PACKAGE=ONLY",
               "-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={CROSS_TARGETS[target]}"]
        cfg += _ccache_args(False)
        progress("configure", 0, 0)
        _run_logged(cfg, log, progress, "configure", env)
        _run_logged(["cmake", "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 2),
                     "--target", *CROSS_LIBRARIES, *CROSS_PROGRAMS], log, progress, "compile", env)
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            raise TritpackError(f"the build finished without {', '.join(missing)}", path=log)
        result = BuildResult(key=key, build_dir=str(build_dir), lib_dir=str(build_dir / "bin"),
                             source_dir=str(source), cuda=False, cuda_archs=None, cached=False,
                             seconds=time.monotonic() - t0, outputs=[str(p) for p in outputs])
        tmp = build_dir / (STAMP + ".tmp")
        tmp.write_text(json.dumps(asdict(result), indent=2))
        os.replace(tmp, build_dir / STAMP)
        return result


def qemu_command(program: str | Path, cpu: str = "max") -> list[str]:
    """How to run a cross-built program here: qemu-aarch64 (Debian's qemu-user) with CPU model `cpu`
    (`max`: every feature qemu has, dotprod and i8mm among them; `cortex-a57`: ARMv8.0, plain NEON)."""
    return ["qemu-aarch64", "-cpu", cpu, "-L", CROSS_SYSROOT, str(program)]
