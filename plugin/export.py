"""`export`: a TritPack GGUF rewritten into one stock type, for runtimes without our kernels.

TP1 -> Q4_0 is exact: a TP1 64-block {-d, 0, +d} becomes two Q4_0 blocks with the same fp16 d and
nibbles 7, 8, 9, which dequantize to the same values bit for bit. Other routes (TP4 -> Q8_0, any
-> F16, TP4 -> Q4_0) requantize with the library's stock quantizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFValueType

from .converters.gguf_types import BY_NAME, TYPE_TP1
from .converters.reader import GGUFFile, to_float32
from .converters.writer import GGUFOutput
from .errors import TritpackError
from .ggml_lib import load_ggml

TARGETS = {"q4_0": Q.Q4_0, "q8_0": Q.Q8_0, "f16": Q.F16}
FTYPE = {Q.Q4_0: 2, Q.Q8_0: 7, Q.F16: 1}


@dataclass
class ExportReport:
    input: str
    output: str
    to: str
    converted: dict[str, str]   # tensor -> "TP1->Q4_0 (exact)" etc.
    size_before: int
    size_after: int


def tp1_to_q4_0(tp1_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """TP1 bytes (rows, n/64*15) and their dequantized `values` (rows, n) -> Q4_0 bytes
    (rows, n/32*18) whose dequantized values are identical, bit for bit."""
    rows = tp1_rows.shape[0]
    blocks = np.ascontiguousarray(tp1_rows).reshape(-1, 15)
    d16 = blocks[:, 13:15].copy().view(np.float16).reshape(-1)    # the fp16 scale, as stored
    d = d16.astype(np.float32)
    vals = values.reshape(-1, 64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d[:, None] != 0, vals / d[:, None], 0.0)
    q = (np.rint(t).astype(np.int8) + 8).astype(np.uint8).reshape(-1, 2, 32)  # two Q4_0 blocks per TP1 block
    out = np.empty((q.shape[0], 2, 18), dtype=np.uint8)
    out[:, :, 0:2] = np.repeat(d16.view(np.uint8).reshape(-1, 1, 2), 2, axis=1)
    out[:, :, 2:] = q[:, :, :16] | (q[:, :, 16:] << 4)
    return out.reshape(rows, -1)


def export_gguf(src_path: str | Path, dst_path: str | Path, to: str, *, force: bool = False,
                threads: int | None = None, progress=lambda *a: None) -> ExportReport:
    to = to.lower()
    if to not in TARGETS:
        raise TritpackError(f"--to must be one of {', '.join(TARGETS)}, not {to!r}")
    target = TARGETS[to]
    src = GGUFFile(src_path)
    dst = Path(dst_path)
    if dst.exists() and dst.resolve() == src.path.resolve():
        raise TritpackError("the output would overwrite the input", path=dst)
    if dst.exists() and not force:
        raise TritpackError("output exists", path=dst, hint="use --force to overwrite it")
    g = load_ggml()
    from .convert import Quantizer

    q = Quantizer(g, threads)
    plans = []
    for t in src.tensors:
        if t.type.name in BY_NAME:
            dst_t = target if t.row_length % 32 == 0 or target == Q.F16 else Q.F16
            how = "exact" if (t.type == TYPE_TP1.qtype and dst_t == Q.Q4_0) else "requantized"
            plans.append((t, dst_t, f"{t.type.name}->{dst_t.name} ({how})"))
        else:
            plans.append((t, None, None))
    try:
        with GGUFOutput(dst, src, force=force, skip={"general.file_type"}) as w:
            w.add_key_value("general.file_type", FTYPE[target], GGUFValueType.UINT32)
            sizes = []
            for t, dst_t, _ in plans:
                nbytes = t.nbytes if dst_t is None else t.n_rows * g.row_size(int(dst_t), t.row_length)
                sizes.append(nbytes)
                w.add_tensor(t.name, t.shape, dst_t or t.type, nbytes)
            w.start_data()
            for i, (t, dst_t, _) in enumerate(plans):
                progress(f"tensor {i + 1}/{len(plans)} {t.name}", i, len(plans))
                w.begin_tensor()
                raw = src.raw(t)
                if dst_t is None:
                    w.write(raw.tobytes())
                elif t.type == TYPE_TP1.qtype and dst_t == Q.Q4_0:
                    w.write(tp1_to_q4_0(raw, g.dequantize(int(t.type), raw)).tobytes())
                else:
                    x = to_float32(g, t, raw, path=src.path)
                    w.write(q.quantize(dst_t, x, None, None).tobytes())
                w.end_tensor(t.name)
            w.publish()
    finally:
        q.close()
    return ExportReport(str(src.path), str(dst), to, {t.name: how for t, _, how in plans if how},
                        sum(t.nbytes for t in src.tensors), sum(sizes))
