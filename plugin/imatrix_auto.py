"""`convert --imatrix auto`: an importance matrix made by the patched llama-imatrix from the package's
calibration text (plugin/imatrix_calibration.txt: Northanger Abbey, chapters 1 to 8, public domain;
the quality table evaluates on Pride and Prejudice), cached in $TRITPACK_HOME/imatrix by the sha256
of the source model and of the text, so that a second conversion of the same model reuses it.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from .digest import sha256_file
from .errors import TritpackError
from .paths import tritpack_home
from .programs import program, run_program

CALIBRATION_TEXT = Path(__file__).with_name("imatrix_calibration.txt")
CALIBRATION_NAME = "northanger-abbey-1-8"
AUTO_CTX = 512
AUTO_CHUNKS = 16


def auto_label(chunks: int = AUTO_CHUNKS) -> str:
    """The value of the output's tritpack.imatrix key for an automatic imatrix."""
    return f"auto:{CALIBRATION_NAME}:{chunks}x{AUTO_CTX}"


def auto_imatrix(model: Path, source_sha256: str, lib_dir: Path, threads: int | None = None,
                 progress=lambda *a: None) -> tuple[Path, bool]:
    """(path of the imatrix GGUF, whether it came from the cache) for `model`, whose sha256 is
    `source_sha256`. llama-imatrix runs once per (model, text, chunks); its log stays beside it."""
    if not CALIBRATION_TEXT.is_file():
        raise TritpackError("the calibration text is missing from the package", path=CALIBRATION_TEXT)
    key = hashlib.sha256(f"{source_sha256}\0{sha256_file(CALIBRATION_TEXT)}\0{AUTO_CTX}\0{AUTO_CHUNKS}".encode()).hexdigest()[:24]
    d = tritpack_home() / "imatrix"
    out = d / f"{key}.gguf"
    if out.is_file():
        return out, True
    exe = program(lib_dir, "llama-imatrix")
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"{key}.{os.getpid()}.tmp.gguf"
    log = d / f"{key}.log"
    cmd = [str(exe), "-m", str(model), "-f", str(CALIBRATION_TEXT), "-c", str(AUTO_CTX),
           "--chunks", str(AUTO_CHUNKS), "-o", str(tmp), "--no-ppl"]
    if threads:
        cmd += ["-t", str(threads)]
    progress("imatrix (llama-imatrix over the calibration text)", 0, 0)
    t0 = time.monotonic()
    try:
        r = run_program(cmd, lib_dir, what="llama-imatrix", path=model)
        text = (r.stdout + r.stderr).decode("utf-8", errors="replace")
        log.write_text(" ".join(cmd) + "\n\n" + text + f"\n[{time.monotonic() - t0:.1f} s]\n")
        if r.returncode != 0 or not tmp.is_file():
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            raise TritpackError(f"llama-imatrix failed (exit {r.returncode}): {'; '.join(lines[-3:])[-400:]}",
                                path=model, hint=f"its log: {log}; or convert with --imatrix none")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out, False
