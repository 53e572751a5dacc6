"""`inspect`: what a GGUF holds (tensors, types, sizes, the TritPack keys) and how it compares with
its original. What converting would give (`estimate`) is converters/estimate.py's."""

from __future__ import annotations

from pathlib import Path

from .converters.metrics import ErrorStats
from .converters.reader import GGUFFile, to_float32
from .errors import TritpackError


def inspect_file(path: str | Path, against: str | Path | None = None, ggml=None) -> dict:
    f = GGUFFile(path)
    doc = {"path": str(f.path), "size": f.path.stat().st_size, "architecture": f.get("general.architecture"),
           "file_type": f.get("general.file_type"), "n_tensors": len(f.tensors),
           "n_weights": sum(t.n_elements for t in f.tensors),
           "tritpack": {k: f.get(k) for k in f.fields if k.startswith("tritpack.") and not k.startswith("tritpack.alpha")},
           "tensors": []}
    alphas = dict(zip(f.get("tritpack.alpha.tensors") or [], f.get("tritpack.alpha.values") or []))
    orig = GGUFFile(against) if against else None
    if orig is not None and ggml is None:
        from .ggml_lib import load_ggml

        ggml = load_ggml()
    counts: dict[str, int] = {}
    for t in f.tensors:
        counts[t.type.name] = counts.get(t.type.name, 0) + 1
        row = {"name": t.name, "shape": list(t.shape), "type": t.type.name, "bytes": t.nbytes,
               "bpw": round(8 * t.nbytes / max(1, t.n_elements), 4)}
        if t.name in alphas:
            row["alpha"] = round(float(alphas[t.name]), 4)
        if orig is not None:
            try:
                o = orig.tensor(t.name)
            except KeyError:
                raise TritpackError("no such tensor in the original", path=orig.path, tensor=t.name) from None
            if o.shape != t.shape:
                raise TritpackError(f"shape {list(o.shape)} in the original, {list(t.shape)} here", path=orig.path, tensor=t.name)
            s = ErrorStats()
            step = max(1, (1 << 22) // max(1, t.row_length))
            raw_a, raw_b = orig.raw(o), f.raw(t)
            for r0 in range(0, t.n_rows, step):
                s.add(to_float32(ggml, o, raw_a[r0:r0 + step], orig.path), to_float32(ggml, t, raw_b[r0:r0 + step], f.path))
            row.update(s.as_dict())
        doc["tensors"].append(row)
    doc["type_counts"] = counts
    doc["bpw"] = round(8 * sum(t.nbytes for t in f.tensors) / max(1, doc["n_weights"]), 4)
    if orig is not None:
        doc["against"] = str(orig.path)
    return doc
