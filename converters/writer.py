"""The one GGUF writer: a source's key/values carried over, tensors streamed one by one, and the file
published at its final path only when complete.

convert, export, verify's F32 reference and `rewrite_tensors` (the dequantized F16 of the demo) all
write through `GGUFOutput`:

    with GGUFOutput(out, src, force=force, skip=...) as w:
        w.add_key_value(...)                       # after the source's own
        w.add_tensor(name, shape, qtype, nbytes)   # every tensor, in file order
        w.start_data()                             # header, key/values and tensor infos written
        for ...:
            w.begin_tensor(); w.write(bytes ...); w.end_tensor(name)   # padded, size checked
        w.publish()                                # synced, then renamed or linked into place

A failure anywhere leaves nothing at `out` (the temporary sibling is removed), and a full disk or a
file size limit is one TritpackError naming the output.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFValueType, GGUFWriter

from .errors import TritpackError
from .reader import GGUFFile, TensorInfo, copy_fields


def temporary_sibling(out: Path) -> Path:
    """A hidden, unique name next to `out` (same file system: the publish step is a rename or link)."""
    return out.with_name(f".{out.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def publish(tmp: Path, out: Path, force: bool) -> None:
    """Make the complete file appear at `out`: replace with `force`, else create only if absent."""
    if force:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)  # fails if `out` exists: two conversions never interleave or clobber
    except FileExistsError:
        raise TritpackError("output appeared while converting (another conversion?)", path=out,
                            hint="use --force to overwrite it") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
            raise
        if out.exists():
            raise TritpackError("output exists", path=out, hint="use --force") from None
        os.replace(tmp, out)


class GGUFOutput:
    """A GGUF being written to a temporary sibling of `out` (see the module's docstring).

    `src`'s key/values are copied first (arrays as their bytes), except `skip`, every `tritpack.*` key
    when `drop_tritpack` and the architecture (the writer's own)."""

    def __init__(self, out: str | Path, src: GGUFFile, *, force: bool = False, skip: set[str] = frozenset(),
                 drop_tritpack: bool = True, what: str = "") -> None:
        self.out = Path(out)
        self.force = force
        self.what = what
        self.tmp = temporary_sibling(self.out)
        self.writer = GGUFWriter(self.tmp, src.architecture)
        self._sizes: list[int] = []
        self._start = 0
        self.header_bytes = 0
        copy_fields(src, self.writer, skip=set(skip) | ({k for k in src.fields if k.startswith("tritpack.")}
                                                         if drop_tritpack else set()))

    # --- the header
    def add_key_value(self, key: str, value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> None:
        self.writer.add_key_value(key, value, vtype, sub_type=sub_type)

    def add_tensor(self, name: str, shape: tuple[int, ...], qtype: Q | int, nbytes: int) -> None:
        """A tensor of `shape` (numpy order: the row length last) stored as `nbytes` of `qtype`."""
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        self.writer.add_tensor_info(name, (*shape[:-1], nbytes // max(1, rows)), np.dtype(np.uint8), nbytes,
                                    raw_dtype=Q(int(qtype)))
        self._sizes.append(nbytes)

    def add_array(self, name: str, a: np.ndarray) -> None:
        """A tensor given as a numpy array (F32, F16, ... by its dtype), written later with `write`."""
        self.writer.add_tensor_info(name, a.shape, a.dtype, a.nbytes)
        self._sizes.append(a.nbytes)

    def start_data(self) -> int:
        """Write the header, key/values and tensor infos; returns the bytes written (where data starts)."""
        self.writer.write_header_to_file()
        self.writer.write_kv_data_to_file()
        self.writer.write_ti_data_to_file()
        self.fout = self.writer.fout[0]
        self.header_bytes = self.fout.tell()
        self._next = 0
        return self.header_bytes

    # --- the data, tensor by tensor in the order of add_tensor
    def begin_tensor(self) -> None:
        self.writer.write_padding(self.fout, self.fout.tell())
        self._start = self.fout.tell()

    def write(self, data: bytes | np.ndarray) -> None:
        if isinstance(data, np.ndarray):
            data.tofile(self.fout)
        else:
            self.fout.write(data)

    def end_tensor(self, name: str) -> None:
        expected = self._sizes[self._next]
        written = self.fout.tell() - self._start
        if written != expected:
            raise TritpackError(f"wrote {written} bytes, expected {expected}", path=self.out, tensor=name)
        self.writer.write_padding(self.fout, written)
        self._next += 1

    def publish(self, before: Callable[[Path, int], None] | None = None) -> Path:
        """Close and sync the file, then put it at its final path. `before(tmp, header_bytes)` runs on the
        closed file first (convert fills in the source's sha256 there)."""
        if self._next != len(self._sizes):
            raise TritpackError(f"{len(self._sizes) - self._next} tensors were not written", path=self.out)
        self.writer.close()
        if before is not None:
            before(self.tmp, self.header_bytes)
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        publish(self.tmp, self.out, self.force)
        return self.out

    # --- failures leave nothing behind
    def __enter__(self) -> "GGUFOutput":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.writer.close()
        except OSError:
            pass  # a buffer that cannot be flushed (disk full) must not mask the first error
        self.tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            what = f" the {self.what}" if self.what else ""
            if exc.errno == errno.ENOSPC:
                raise TritpackError(f"no space left on the device while writing{what}; nothing was written",
                                    path=self.out) from None
            if exc.errno == errno.EFBIG:
                raise TritpackError(f"file size limit exceeded while writing{what}; nothing was written",
                                    path=self.out) from None
            raise TritpackError(f"cannot write{what}: {exc.strerror or exc}", path=self.out) from None


def rewrite_tensors(src_path: str | Path, dst_path: str | Path, fn: Callable[[TensorInfo, np.ndarray], np.ndarray], *,
                    skip: set[str] = frozenset(), file_type: int | None = None,
                    extra: tuple[tuple[str, Any, GGUFValueType], ...] = ()) -> Path:
    """A copy of a GGUF (every key/value but `skip`, then `extra` (key, value, type)) whose tensors
    are fn(tensor, raw bytes as (rows, row bytes) uint8): numpy arrays written as F32/F16/... by their
    dtype. The whole model is held in memory (small models: the tests' and the benchmarks'); dst
    appears only when complete."""
    src = GGUFFile(src_path)
    with GGUFOutput(dst_path, src, force=True, skip=set(skip), drop_tritpack=False) as w:
        if file_type is not None:
            w.writer.add_file_type(file_type)
        for key, value, vtype in extra:
            w.add_key_value(key, value, vtype)
        arrays = []
        for t in src.tensors:
            a = np.ascontiguousarray(fn(t, src.raw(t)))
            arrays.append(a)
            w.add_array(t.name, a)
        w.start_data()
        for t, a in zip(src.tensors, arrays):
            w.begin_tensor()
            w.write(a)
            w.end_tensor(t.name)
        return w.publish()
