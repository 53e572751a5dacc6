"""The one error type of tritpack-gguf. Commands raise it; the CLI formats it in one place.

It lives in converters/ because converters/ stands alone (it never imports plugin/); plugin.errors
re-exports it.
"""

from __future__ import annotations

from pathlib import Path


class TritpackError(Exception):
    """A failure the user can act on: what went wrong, where (file, tensor), and what to do.

    `exit_code` is what the CLI exits with (1 unless a command says otherwise).
    """

    def __init__(self, message: str, *, path: str | Path | None = None, tensor: str | None = None,
                 hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.tensor = tensor
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.tensor:
            where.append(f"tensor '{self.tensor}'")
        text = (": ".join(where) + ": " if where else "") + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text
