"""Where the build's own sources are: CMakeLists.txt, patches/ and ggml_kernels/.

Two layouts carry them:
- a checkout (or an editable install of one): the folder above `converters/`;
- an installed wheel: package data in `tritpack_gguf/_source/` (pyproject.toml maps it).
$TRITPACK_SOURCE_DIR overrides both. The build (`plugin/paths.source_root`) and TP4's numpy twin
(its codebook table, `ggml_kernels/tp4-codebooks.h`) both look here, so an installed wheel builds and
quantizes like a checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent   # the checkout, or site-packages/tritpack_gguf


def candidates() -> list[Path]:
    env = os.environ.get("TRITPACK_SOURCE_DIR")
    return ([Path(env).expanduser().resolve()] if env else []) + [_PACKAGE, _PACKAGE / "_source"]


def is_source_tree(root: Path) -> bool:
    return (root / "CMakeLists.txt").is_file() and (root / "patches").is_dir() \
        and (root / "ggml_kernels").is_dir()


def find_source_root() -> Path | None:
    """The first candidate that holds the build's sources, or None."""
    return next((r for r in candidates() if is_source_tree(r)), None)
