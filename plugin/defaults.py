"""User-facing defaults that the library functions and the CLI share. A light module: the CLI reads
these when it starts, before it imports anything heavy (numpy, gguf, the converter)."""

EVAL_CTX = 512          # tritpack-gguf eval: tokens per chunk
EVAL_CHUNKS = 16        # 16 x 512 = 8192 tokens; 0 or a negative number: every chunk of the text
EVAL_SENTENCES = 256    # eval --embedding: sentences of the text compared
DEMO_PROMPT = "It is a truth universally acknowledged, that"
