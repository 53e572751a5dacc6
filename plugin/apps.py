"""What the apps (Ollama, LM Studio) share: whether a TritPack file goes to them as it is or as a
stock export (`plan_compat`: stock runtimes cannot load TP1/TP4), and making that export
(`call_exporter`, by default tritpack_gguf.export.export_gguf), with the progress callback they report
through. plugin/ollama.py registers with a running Ollama, plugin/lmstudio.py places files in LM
Studio's folder; both read headers through converters/header.py.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import TritpackError

if TYPE_CHECKING:
    from .converters.header import GGUFHeader

Progress = Callable[..., None]  # progress(message, done=0, total=0)
Exporter = Callable[..., Any]    # exporter(src, dst, to) -> report (tritpack_gguf.export.export_gguf)


def no_progress(*_: Any, **__: Any) -> None:
    pass


def plan_compat(s: GGUFHeader, compat: str, *, allowed: tuple[str, ...] = ("auto", "native", "q4_0", "q8_0")) -> tuple[str | None, str]:
    """(stock type to export to or None to send the file as it is, a sentence saying why)."""
    compat = (compat or "auto").lower()
    if compat not in allowed:
        raise TritpackError(f"--compat must be one of {', '.join(allowed)}, not {compat!r}")
    kinds = [k for k, has in (("TP1", s.has_tp1), ("TP4", s.has_tp4)) if has]
    if compat == "native":
        if kinds:
            return None, (f"using the {'+'.join(kinds)} file as it is: only a runtime built with the "
                          "tritpack patches can load it")
        return None, "no TP1/TP4 tensors: the file is stock and is used as it is"
    if not kinds:
        return None, "no TP1/TP4 tensors: the file is stock and is used as it is"
    if compat in ("q4_0", "q8_0"):
        exact = " (exact)" if compat == "q4_0" and kinds == ["TP1"] else ""
        return compat, f"using a {compat.upper()}{exact} export of the {'+'.join(kinds)} file, as asked"
    if kinds == ["TP1"]:
        return "q4_0", ("stock runtimes cannot load TP1: using an exact Q4_0 export instead "
                        "(--compat native sends the TP1 file, for a patched runtime)")
    return "q8_0", (f"stock runtimes cannot load {'+'.join(kinds)}: using a Q8_0 export instead, about 1.9x "
                    "the TP4 size (--compat native sends the TritPack file, for a patched runtime)")


def call_exporter(exporter: Exporter, src: Path, dst: Path, to: str, progress: Progress) -> dict:
    kwargs: dict[str, Any] = {}
    try:
        if "progress" in inspect.signature(exporter).parameters:
            kwargs["progress"] = progress
    except (TypeError, ValueError):
        pass
    report = exporter(src, dst, to, **kwargs)
    if is_dataclass(report) and not isinstance(report, type):
        return asdict(report)
    return dict(report) if isinstance(report, dict) else {}


def default_exporter() -> Exporter:
    from .export import export_gguf  # imported only when an export is needed

    return export_gguf
