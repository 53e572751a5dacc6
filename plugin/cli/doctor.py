"""`tritpack-gguf doctor`: what is installed, what was built, what is missing and how to fix it."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import typer

from .. import __version__
from ..errors import TritpackError
from ._common import JsonOpt, print_json


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def diagnose() -> dict:
    """Everything doctor reports, as one dict (the --json document)."""
    from .. import build as _build
    from ..paths import latest_build, library_dir, source_root, tritpack_home

    report: dict = {"tritpack_gguf": __version__, "python": platform.python_version(),
                    "tritpack_home": str(tritpack_home()), "missing": []}
    missing = report["missing"]
    try:
        root = source_root()
        pin = _build.Pin.load(root / "patches" / "llama-cpp.pin")
        report["source_root"] = str(root)
        report["pin"] = {"package": pin.package, "version": pin.version, "sha256": pin.sha256,
                         "llama_cpp_commit": pin.llama_cpp_commit, "ggml_version": pin.ggml_version}
        report["patches"] = [p.name for p in _build.patch_series(root)]
    except TritpackError as e:
        report["source_root"] = None
        missing.append({"what": "source tree (needed to build)", "why": str(e),
                        "fix": "pip install -e . from a tritpack-gguf checkout"})

    llama_cpp_python = _version("llama-cpp-python") or _version("llama_cpp_python")
    report["llama_cpp_python"] = llama_cpp_python
    if llama_cpp_python is None:
        missing.append({"what": "llama-cpp-python", "fix": 'CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" pip install llama-cpp-python==0.3.36'})
    report["gguf"] = _version("gguf")

    builds = {kind: latest_build(kind) for kind in ("cpu", "cuda")}
    report["builds"] = {k: ({"lib_dir": v["lib_dir"], "key": v["key"][:16], "cuda_archs": v.get("cuda_archs")}
                            if v else None) for k, v in builds.items()}
    try:
        lib_dir = library_dir()
    except TritpackError as e:
        report["library"] = None
        missing.append({"what": "patched llama.cpp library", "why": str(e), "fix": "tritpack-gguf build"})
        return report

    from ..converters.gguf_types import TRITPACK_TYPES
    from ..ggml_lib import load_ggml, tritpack_version_of

    g = load_ggml(lib_dir)
    lib: dict = {"dir": str(lib_dir), "patched": g.is_patched, "tritpack_version": tritpack_version_of(lib_dir),
                 "backends": {"cpu": g.cpu_features()}}
    cuda_lib = lib_dir / "libggml-cuda.so"
    if cuda_lib.is_file():
        stamp = builds.get("cuda")
        lib["backends"]["cuda"] = {"archs": stamp.get("cuda_archs") if stamp and Path(stamp["lib_dir"]) == lib_dir else "unknown"}
    lib["types"] = [{"id": t.id, "name": g.type_name(t.id), "block": g.block_size(t.id), "bytes": g.type_size(t.id),
                     "bpw": round(8 * g.type_size(t.id) / g.block_size(t.id), 4)}
                    for t in TRITPACK_TYPES if g.knows(t.id)]
    lib["rpc"] = (lib_dir / "libggml-rpc.so").is_file() and (lib_dir / "ggml-rpc-server").is_file()
    report["library"] = lib
    if not g.is_patched:
        missing.append({"what": "the library is not patched by tritpack-gguf", "fix": "tritpack-gguf build"})
    else:
        stale = _stale_build(lib_dir)
        if stale:
            missing.append({"what": "the build is older than the sources (patches/ or ggml_kernels/ changed)",
                            "fix": "tritpack-gguf build"})
    notes = report.setdefault("notes", [])
    if builds.get("cuda") is None:
        notes.append("no CUDA build: `tritpack-gguf build --cuda` on a machine with an NVIDIA GPU")
    report["chat_page"] = page = _chat_page(lib_dir)
    if not page["embedded"]:
        notes.append(f"llama-server has no chat page ({page['note']}): {_build.UI_HOW}")
    return report


def _chat_page(lib_dir: Path) -> dict:
    """Whether the build's llama-server carries the chat page, and the Node/npm the page's build needs."""
    import shutil

    from .. import build as _build

    stamp = _build.read_stamp(lib_dir.parent) or {}
    node = _build.node_version()
    page = {"embedded": bool(stamp.get("ui")), "key": (stamp.get("ui_key") or "")[:16] or None,
            "node": ".".join(map(str, node)) if node else None, "npm": shutil.which("npm")}
    if not page["embedded"]:
        if not stamp:
            page["note"] = "the build has no stamp (not made by `tritpack-gguf build`)"
        elif node is None or page["npm"] is None:
            page["note"] = f"{'node' if node is None else 'npm'} is not on PATH"
        elif "ui_key" not in stamp:
            page["note"] = "built before the page was part of the build"
        else:
            page["note"] = stamp.get("ui_note") or "not built"
    return page


def _stale_build(lib_dir: Path) -> bool:
    """True when a source checkout is at hand and its kernels or patches differ from the build's."""
    from .. import build as _build
    from ..paths import source_root

    try:
        root = source_root()
    except TritpackError:
        return False
    stamp = _build.read_stamp(lib_dir.parent)
    if not stamp:
        return False
    pin = _build.Pin.load(root / "patches" / "llama-cpp.pin")
    flags = _build._flags(stamp["cuda"], stamp.get("cuda_archs"))
    return _build.input_key(pin, root, Path(stamp["source_dir"]), flags) != stamp["key"]


def doctor_command(json_out: JsonOpt = False) -> None:
    """Report versions, the pin, the library and whether it is patched, backends, our types, and fixes."""
    report = diagnose()
    if json_out:
        print_json(report)
    else:
        _print_human(report)
    if report["missing"]:
        raise typer.Exit(1)


def _print_human(r: dict) -> None:
    echo = typer.echo
    echo(f"tritpack-gguf {r['tritpack_gguf']} (Python {r['python']})")
    pin = r.get("pin")
    if pin:
        echo(f"pinned llama.cpp: {pin['package']} {pin['version']} (llama.cpp {pin['llama_cpp_commit']}, "
             f"ggml {pin['ggml_version']}), sha256 {pin['sha256'][:16]}…, {len(r['patches'])} patches")
    echo(f"llama-cpp-python: {r['llama_cpp_python'] or 'not installed'}   gguf: {r['gguf'] or 'not installed'}")
    echo(f"cache: {r['tritpack_home']}")
    lib = r.get("library")
    if lib:
        echo(f"library: {lib['dir']}")
        echo(f"  patched: {'yes, tritpack ' + lib['tritpack_version'] if lib['patched'] else 'NO (stock llama.cpp)'}")
        echo(f"  CPU: {' '.join(lib['backends']['cpu']) or 'generic'}")
        if "cuda" in lib["backends"]:
            echo(f"  CUDA: architectures {lib['backends']['cuda']['archs']}")
        if "rpc" in lib:
            echo(f"  RPC: {'yes (rpc-server, --rpc; docs/distributed.md)' if lib['rpc'] else 'no (tritpack-gguf build)'}")
        for t in lib["types"]:
            echo(f"  type {t['name']} (id {t['id']}): {t['block']} weights in {t['bytes']} bytes = {t['bpw']} bpw")
    page = r.get("chat_page")
    if page and page["embedded"]:
        echo(f"chat page: embedded in llama-server (ui {page['key']}); `tritpack-gguf serve` prints its address")
    for note in r.get("notes", []):
        echo(f"note: {note}")
    for m in r["missing"]:
        echo(f"missing: {m['what']}" + (f" ({m['why']})" if m.get("why") else "") + f"\n  fix: {m['fix']}")
    if not r["missing"]:
        echo("all good")
