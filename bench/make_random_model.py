"""Write a Llama GGUF with random F16 weights and a real tokenizer, for GPU benchmarks.

    python bench/make_random_model.py OUT.gguf VOCAB.gguf [--n-embd 4096 --n-ff 11008 --n-layer 32 ...]

Default shape: Llama-2-7B (n_embd 4096, n_ff 11008, 32 layers, 32 heads, 32 KV heads, vocab of the
tokenizer: 32000 for llama.cpp's models/ggml-vocab-llama-spm.gguf). Speed does not depend on the
values, so they are Gaussian with a fixed seed. The scales (embeddings 1, layer matrices 0.004,
output 0.02, norms near 1) keep the residual stream dominated by the token embeddings and the logits
well separated, so that greedy decoding is stable enough to compare two backends token by token
(a random network with init-sized weights amplifies rounding differences from layer to layer). Tensors are generated and written one at a time (the F16 file of the
default shape is 13.5 GB; memory use stays below 1 GB).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from tritpack_gguf.converters.tiny_model import Shape, add_llama_header
from tritpack_gguf.errors import TritpackError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("vocab", type=Path, help="a vocab-only GGUF (llama.cpp's models/ggml-vocab-llama-spm.gguf)")
    ap.add_argument("--n-embd", type=int, default=4096)
    ap.add_argument("--n-ff", type=int, default=11008)
    ap.add_argument("--n-layer", type=int, default=32)
    ap.add_argument("--n-head", type=int, default=32)
    ap.add_argument("--n-head-kv", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--std", type=float, default=0.004, help="standard deviation of the layer matrices")
    a = ap.parse_args()

    t0 = time.monotonic()
    tmp = a.out.with_name(a.out.name + ".tmp")
    w = GGUFWriter(str(tmp), "llama")
    w.add_name(f"random-llama-{a.n_layer}x{a.n_embd}-seed{a.seed}")
    w.add_file_type(1)  # LLAMA_FTYPE_MOSTLY_F16
    shape = Shape(n_embd=a.n_embd, n_ff=a.n_ff, n_layer=a.n_layer, n_head=a.n_head, n_head_kv=a.n_head_kv, n_ctx=a.n_ctx)
    try:
        n_vocab = add_llama_header(w, shape, a.vocab)
    except TritpackError as e:
        sys.exit(str(e))

    e, f = a.n_embd, a.n_ff
    kv = (e // a.n_head) * a.n_head_kv
    # (name, numpy shape (rows = outputs, cols = inputs), dtype, std; std 0 = RMS norm weights of 1 + noise)
    tensors: list[tuple[str, tuple[int, ...], type, float]] = [
        ("token_embd.weight", (n_vocab, e), np.float16, 1.0),
        ("output_norm.weight", (e,), np.float32, 0.0),
        ("output.weight", (n_vocab, e), np.float16, 0.02),
    ]
    for i in range(a.n_layer):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (e,), np.float32, 0.0),
            (p + "attn_q.weight", (e, e), np.float16, a.std),
            (p + "attn_k.weight", (kv, e), np.float16, a.std),
            (p + "attn_v.weight", (kv, e), np.float16, a.std),
            (p + "attn_output.weight", (e, e), np.float16, a.std),
            (p + "ffn_norm.weight", (e,), np.float32, 0.0),
            (p + "ffn_gate.weight", (f, e), np.float16, a.std),
            (p + "ffn_up.weight", (f, e), np.float16, a.std),
            (p + "ffn_down.weight", (e, f), np.float16, a.std),
        ]
    for name, shape, dtype, _ in tensors:
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(a.seed)
    nbytes = 0
    for name, shape, dtype, std in tensors:
        if std == 0.0:
            x = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        else:
            x = rng.standard_normal(shape, dtype=np.float32)
            x *= std
        x = x.astype(dtype)
        w.write_tensor_data(x)
        nbytes += x.nbytes
    w.close()
    tmp.replace(a.out)
    n_params = sum(int(np.prod(s)) for _, s, _, _ in tensors)
    print(f"wrote {a.out}: {n_params/1e9:.2f}B parameters, {nbytes/1e9:.1f} GB of weights, "
          f"{time.monotonic() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
