"""tritpack-gguf: TP1 and TP4 quantization types for GGUF models, run in a patched llama.cpp."""

__version__ = "0.1.0"

from .errors import TritpackError  # noqa: E402
from .runtime import activate, load  # noqa: E402

__all__ = ["TritpackError", "activate", "load", "__version__"]
