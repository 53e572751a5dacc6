"""Small Llama GGUFs with a real tokenizer, for tests and benchmarks.

The tokenizer comes from one of llama.cpp's vocab-only GGUFs (models/ggml-vocab-*.gguf in the
pinned tree); the weights are random with a fixed seed: Gaussian, or ternary ({-s, 0, +s} per
64-block with fp16-exact s, what a ternary-trained model holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFValueType, GGUFWriter

from .errors import TritpackError
from .reader import GGUFFile, copy_fields


@dataclass(frozen=True)
class Shape:
    n_embd: int = 128
    n_ff: int = 320
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ctx: int = 256
    tied_output: bool = False


def vocab_file(llama_cpp_tree: str | Path, name: str = "llama-spm") -> Path:
    p = Path(llama_cpp_tree) / "models" / f"ggml-vocab-{name}.gguf"
    if not p.is_file():
        raise TritpackError("no vocab-only GGUF here", path=p)
    return p


def _ternary(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    t = rng.choice(np.array([-1.0, 0.0, 1.0], dtype=np.float32), size=shape, p=[0.3, 0.4, 0.3])
    blocks = t.reshape(-1, 64)
    s = (scale * rng.uniform(0.5, 1.5, size=(blocks.shape[0], 1))).astype(np.float16).astype(np.float32)
    return (blocks * s).reshape(shape)


def add_llama_header(w: GGUFWriter, shape: Shape, vocab: str | Path) -> int:
    """A Llama's hyperparameters for `shape` and every tokenizer.* key of the vocab-only GGUF `vocab`
    (as its bytes); returns the vocabulary size."""
    voc = GGUFFile(vocab)
    tokens = voc.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise TritpackError("no tokenizer.ggml.tokens (not a vocab GGUF?)", path=vocab)
    w.add_context_length(shape.n_ctx)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_rope_dimension_count(shape.n_embd // shape.n_head)
    w.add_layer_norm_rms_eps(1e-5)
    n_vocab = len(tokens.contents())
    w.add_vocab_size(n_vocab)
    copy_fields(voc, w, skip=set(), prefix="tokenizer.")
    return n_vocab


def make_llama(path: str | Path, vocab: str | Path, shape: Shape = Shape(), *, seed: int = 0,
               ternary: bool = False, dtype: Q = Q.F32) -> Path:
    """Write a Llama GGUF of `shape` with the tokenizer of the vocab-only GGUF `vocab`."""
    rng = np.random.default_rng(seed)
    head_dim = shape.n_embd // shape.n_head
    w = GGUFWriter(str(path), "llama")
    w.add_key_value("general.name", f"tiny-llama-{'ternary' if ternary else 'gauss'}-{seed}", GGUFValueType.STRING)
    w.add_key_value("general.file_type", 0 if dtype == Q.F32 else 1, GGUFValueType.UINT32)
    n_vocab = add_llama_header(w, shape, vocab)

    def mat(rows: int, cols: int, std: float) -> np.ndarray:
        if ternary:
            return _ternary(rng, (rows, cols), std)
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    def add(name: str, a: np.ndarray, force_f32: bool = False) -> None:
        if dtype == Q.F16 and not force_f32:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, a.astype(np.float32))

    e, f = shape.n_embd, shape.n_ff
    kv = head_dim * shape.n_head_kv
    add("token_embd.weight", (rng.standard_normal((n_vocab, e)) * 0.5).astype(np.float32))
    add("output_norm.weight", (1.0 + 0.1 * rng.standard_normal(e)).astype(np.float32), force_f32=True)
    if not shape.tied_output:
        add("output.weight", (rng.standard_normal((n_vocab, e)) * 0.05).astype(np.float32))
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (1.0 + 0.1 * rng.standard_normal(e)).astype(np.float32), force_f32=True)
        add(p + "attn_q.weight", mat(e, e, 0.08))
        add(p + "attn_k.weight", mat(kv, e, 0.08))
        add(p + "attn_v.weight", mat(kv, e, 0.08))
        add(p + "attn_output.weight", mat(e, e, 0.08))
        add(p + "ffn_norm.weight", (1.0 + 0.1 * rng.standard_normal(e)).astype(np.float32), force_f32=True)
        add(p + "ffn_gate.weight", mat(f, e, 0.08))
        add(p + "ffn_up.weight", mat(f, e, 0.08))
        add(p + "ffn_down.weight", mat(e, f, 0.06))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
