#!/usr/bin/env python3
"""An importance matrix for a BERT sentence-embedding model, which llama-imatrix cannot run (it
asserts the vocabulary adds no EOS token; BERT's adds [SEP]).

    python bench/minilm_imatrix.py HF_MODEL_DIR TEXT OUT.dat [--sentences 2000] [--threads N]

Runs in a venv with torch and transformers (bench/quality_table.py makes one). It measures what
llama-imatrix measures: for every matrix of the encoder, the mean over all tokens of the squared
input of each column; the names are GGUF's (blk.N.attn_q.weight, ...). Written in llama-imatrix's
legacy format (int32 count; per entry: int32 name length, name, int32 ncall, int32 nval, float32
values[nval] = mean * ncall; then int32 chunk count and the dataset name), which llama-quantize and
tritpack-gguf both read.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

# Hugging Face BERT module names -> GGUF tensor names (llama.cpp's BERT mapping)
NAMES = {
    r"encoder\.layer\.(\d+)\.attention\.self\.query": "blk.{}.attn_q.weight",
    r"encoder\.layer\.(\d+)\.attention\.self\.key": "blk.{}.attn_k.weight",
    r"encoder\.layer\.(\d+)\.attention\.self\.value": "blk.{}.attn_v.weight",
    r"encoder\.layer\.(\d+)\.attention\.output\.dense": "blk.{}.attn_output.weight",
    r"encoder\.layer\.(\d+)\.intermediate\.dense": "blk.{}.ffn_up.weight",
    r"encoder\.layer\.(\d+)\.output\.dense": "blk.{}.ffn_down.weight",
}


def gguf_name(module: str) -> str | None:
    for pat, fmt in NAMES.items():
        m = re.fullmatch(r"(?:bert\.)?" + pat, module)
        if m:
            return fmt.format(m.group(1))
    return None


def sentences(text: str, n: int) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        for s in re.split(r"(?<=[.!?])\s+", para):
            if len(s.split()) >= 4:
                out.append(s)
                if len(out) >= n:
                    return out
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("text", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModel.from_pretrained(args.model_dir).eval()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask_holder: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_mod, inputs, _out):
            x = inputs[0].detach().to(torch.float64)          # (batch, seq, n_in)
            keep = mask_holder["mask"].bool()                  # real tokens only, as llama.cpp sees them
            x = x[keep]
            sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            g = gguf_name(mod_name)
            if g:
                mod.register_forward_hook(hook(g))
    sents = sentences(args.text.read_text(errors="replace"), args.sentences)
    with torch.no_grad():
        for i in range(0, len(sents), args.batch):
            enc = tok(sents[i:i + args.batch], padding=True, truncation=True, max_length=512, return_tensors="pt")
            mask_holder["mask"] = enc["attention_mask"]
            model(**enc)
    if not sums:
        raise SystemExit("no matrices matched: is this a BERT model?")
    n_chunks = (len(sents) + args.batch - 1) // args.batch
    with open(args.out, "wb") as f:
        f.write(struct.pack("<i", len(sums)))
        for name in sorted(sums):
            mean = (sums[name] / counts[name]).numpy().astype(np.float32)
            b = name.encode()
            f.write(struct.pack("<i", len(b)) + b + struct.pack("<ii", 1, mean.size))
            f.write(mean.tobytes())
        ds = args.text.name.encode()
        f.write(struct.pack("<i", n_chunks) + struct.pack("<i", len(ds)) + ds)
    sys.stderr.write(f"imatrix of {len(sums)} matrices over {len(sents)} sentences -> {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
