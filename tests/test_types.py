"""One definition of each type: the Python registry, gguf-py and the C library agree."""

from __future__ import annotations

import numpy as np
import pytest

import gguf
from tritpack_gguf.converters.gguf_types import BY_NAME, TYPE_TP1, TYPE_TP4, TRITPACK_TYPES, register


def test_ids_are_in_the_private_range():
    for t in TRITPACK_TYPES:
        assert 80 <= t.id <= 95
    stock = [m.value for m in gguf.GGMLQuantizationType if m.name not in BY_NAME]
    assert max(stock) < 80


def test_gguf_knows_our_types_once():
    register()  # idempotent
    assert gguf.GGMLQuantizationType.TP1 == 80 and gguf.GGMLQuantizationType(81).name == "TP4"
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.TP1] == (64, 15)
    assert gguf.LlamaFileType(TYPE_TP4.id).name == "MOSTLY_TP4"
    assert [m.name for m in gguf.GGMLQuantizationType].count("TP1") == 1
    assert gguf.quant_shape_to_byte_shape((3, 576), TYPE_TP1.qtype) == (3, 576 // 64 * 15)


@pytest.mark.parametrize("t", TRITPACK_TYPES, ids=lambda t: t.name)
def test_c_library_agrees_with_python(ggml, t):
    assert ggml.is_patched
    assert ggml.type_name(t.id) == t.name.lower()
    assert ggml.block_size(t.id) == t.block_size
    assert ggml.type_size(t.id) == t.type_size
    assert t.bpw <= 4.5


def test_type_count_comes_from_the_library(ggml):
    """GGML_TYPE_COUNT is read from C (tritpack_type_count), not assumed: our types are its last ones;
    a library without the getter (stock, or an older patched build) falls back to the pinned counts."""
    from tritpack_gguf.ggml_lib import GGML

    assert ggml.type_count == ggml.base.tritpack_type_count() == max(t.id for t in TRITPACK_TYPES) + 2  # + TPQ16
    assert ggml.knows(ggml.type_count - 1) and not ggml.knows(ggml.type_count)

    class NoGetter:  # a libggml-base without tritpack_type_count
        def __getattr__(self, name):
            if name == "tritpack_type_count":
                raise AttributeError(name)
            return getattr(ggml.base, name)

    older = object.__new__(GGML)  # the same library seen without the getter (no second ggml_cpu_init)
    older.lib_dir, older.base, older.cpu = ggml.lib_dir, NoGetter(), ggml.cpu
    assert older.type_count == 83 and older.is_patched


def test_unused_ids_have_a_name_not_null(ggml):
    # ids between mainline's last type and our range have no traits; their name must not be NULL
    assert ggml.type_name(60) == "unknown" and ggml.block_size(60) == 0


def test_validate_row_data_rejects_nan_and_inf_scales(ggml):
    for t in TRITPACK_TYPES:
        x = np.random.default_rng(1).standard_normal((2, 128)).astype(np.float32)
        q = ggml.quantize_chunk(t.id, x)
        assert ggml.validate_row_data(t.id, q)
        block = q.reshape(-1, t.type_size).copy()
        off = 13 if t is TYPE_TP1 else 0  # offset of the fp16 scale in the block
        for bits in (0x7C00, 0x7E00, 0xFC00):  # +Inf, NaN, -Inf
            bad = block.copy()
            bad[1, off:off + 2] = np.frombuffer(np.uint16(bits).tobytes(), dtype=np.uint8)
            assert not ggml.validate_row_data(t.id, bad.ravel()), (t.name, hex(bits))
