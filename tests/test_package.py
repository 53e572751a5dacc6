"""The package as users get it: converters/ stands alone, and the wheel builds and converts."""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gguf import GGMLQuantizationType as Q

from tritpack_gguf.converters.tiny_model import make_llama, vocab_file

ROOT = Path(__file__).resolve().parent.parent
CONVERTERS = ROOT / "converters"


def _imports_outside(path: Path) -> list[str]:
    """The imports of one converters/ module that reach out of converters/ into the package."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level >= 2 or (node.level == 0 and mod.startswith("tritpack_gguf")
                                   and not mod.startswith("tritpack_gguf.converters")):
                bad.append(f"{path.name}:{node.lineno}: from {'.' * node.level}{mod} import ...")
        elif isinstance(node, ast.Import):
            bad += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names
                    if a.name.startswith("tritpack_gguf") and not a.name.startswith("tritpack_gguf.converters")]
    return bad


def test_the_import_check_sees_an_import_of_plugin(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("from ..errors import TritpackError\nimport tritpack_gguf.runtime\nfrom . import reader\n")
    assert len(_imports_outside(p)) == 2


def test_converters_never_imports_plugin(tmp_path):
    bad = [line for p in sorted(CONVERTERS.glob("*.py")) for line in _imports_outside(p)]
    assert not bad, "converters/ imports plugin/:\n" + "\n".join(bad)
    # and every module imports as a package of its own, away from plugin/
    pkg = tmp_path / "standalone_converters"
    shutil.copytree(CONVERTERS, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    mods = sorted(p.stem for p in CONVERTERS.glob("*.py") if p.stem != "__init__")
    code = "import importlib\n" + "".join(f"importlib.import_module('standalone_converters.{m}')\n" for m in mods)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_wheel_installs_builds_and_converts(tmp_path, patched_build):
    """`pip install tritpack-gguf` works like `pip install -e .`: the wheel carries what `build` compiles
    (sharing the cached library: same sources, same key) and the TP4 codebooks; its convert writes the
    same bytes as the checkout's."""
    whl_dir = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(whl_dir), str(ROOT)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = whl_dir.glob("tritpack_gguf-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {**os.environ, "CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("TRITPACK_SOURCE_DIR", None)
    env.pop("TRITPACK_LIB_DIR", None)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    exe = str(venv / "bin" / "tritpack-gguf")

    r = subprocess.run([exe, "build", "--json"], capture_output=True, text=True, timeout=3600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert '"cached": true' in r.stdout, "the installed wheel rebuilt instead of sharing the cached library"
    assert patched_build.lib_dir in r.stdout

    vocab = vocab_file(patched_build.source_dir)
    src = make_llama(tmp_path / "tiny.gguf", vocab, seed=21, dtype=Q.F16)
    for typ in ("tp4", "tp1"):
        ours = tmp_path / f"wheel-{typ}.gguf"
        r = subprocess.run([exe, "convert", str(src), "--type", typ, "-o", str(ours)],
                           capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        ref = tmp_path / f"checkout-{typ}.gguf"
        r = subprocess.run([sys.executable, "-m", "tritpack_gguf.cli", "convert", str(src), "--type", typ,
                            "-o", str(ref)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert _sha(ours) == _sha(ref), f"--type {typ}: the wheel's file differs from the checkout's"
    # the numpy twin's codebooks come from the wheel's own data, not from a checkout
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "from tritpack_gguf.converters import tp4; print(tp4._header_path())"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0 and str(venv) in r.stdout, r.stdout + r.stderr
