"""Ollama's local model store, read only: model names, manifests, blobs, and what `convert` and
`ollama list` take from it.

Store (never copied or changed): `$OLLAMA_MODELS` (default `~/.ollama/models`) holds
`manifests/<host>/<namespace>/<model>/<tag>` (a Docker-style JSON manifest whose layers name blobs
by digest) and `blobs/sha256-<hex>`. The GGUF is the layer with mediaType
`application/vnd.ollama.image.model`. Headers are read through converters/header.py (only the
header pages of each blob are touched), sizes after conversion are converters/estimate.py's (the
converter's policy). Registering a model with a running Ollama is plugin/ollama.py's.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import TritpackError


DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
_PART = {
    # Ollama's grammar (types/model/name.go): first character alphanumeric or '_'
    "host": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),
    "namespace": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),
    "model": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
    "tag": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
}
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")


@dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def short(self) -> str:
        """Ollama's shortest display form: `llama3.2:1b`, `user/model:tag`, `host/ns/model:tag`."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)


def _unsafe_reason(s: str) -> str | None:
    if s == "":
        return "it is empty"
    if "\x00" in s:
        return "it contains a NUL byte"
    if any(ord(c) < 32 or ord(c) == 127 for c in s):
        return "it contains control characters"
    if ".." in s:
        return "it contains '..'"
    if s.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", s) or os.path.isabs(s):
        return "it is an absolute path"
    if "\\" in s:
        return "it contains a backslash"
    return None


def _parse_name(ref: str) -> OllamaName | str:
    """An OllamaName, or the reason `ref` is not a valid Ollama name."""
    if not isinstance(ref, str):
        return "it is not a string"
    why = _unsafe_reason(ref)
    if why:
        return why
    s = ref
    for scheme in ("https://", "http://"):
        if s.startswith(scheme):
            s = s[len(scheme):]
    tag = ""
    if s.rfind(":") > s.rfind("/"):
        s, tag = s.rsplit(":", 1)
        if not tag:
            return "the tag after ':' is empty"
    parts = s.split("/")
    if len(parts) > 3:
        return "it has more than host/namespace/model parts"
    host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    name = OllamaName(host, namespace, parts[-1], tag or DEFAULT_TAG)
    for kind, value in zip(("host", "namespace", "model", "tag"), name.parts):
        if not _PART[kind].fullmatch(value):
            return f"its {kind} {value!r} is not valid (letters, digits, '_', '-' and '.'; it must start with a letter, digit or '_')"
    return name


def parse_ollama_name(ref: str) -> OllamaName:
    """`llama3.2:1b` -> registry.ollama.ai/library/llama3.2:1b; TritpackError for an invalid name."""
    got = _parse_name(ref)
    if isinstance(got, str):
        raise TritpackError(f"invalid Ollama model name {ref!r}: {got}",
                            hint="names look like llama3.2:1b, library/qwen2.5:0.5b or user/model:tag")
    return got


def looks_like_ollama_ref(s: str) -> bool:
    """True for a string that is not an existing path, matches Ollama's name grammar, and does not end
    in `.gguf` (a missing `model.gguf` is a missing file, not a model name)."""
    if not isinstance(s, str) or not s or s.lower().endswith(".gguf"):
        return False
    try:
        if os.path.lexists(s):
            return False
    except (ValueError, OSError):
        return False
    return isinstance(_parse_name(s), OllamaName)


def ollama_models_dir(models_dir: str | Path | None = None) -> Path:
    """The store: `models_dir`, else $OLLAMA_MODELS, else ~/.ollama/models."""
    if models_dir is not None:
        return Path(models_dir).expanduser()
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def _store_hint(store: Path) -> str:
    return ("set OLLAMA_MODELS to the folder Ollama uses (a Linux system service keeps it in "
            "/usr/share/ollama/.ollama/models)" if not (store / "manifests").is_dir() else
            "`ollama list` shows the local models; `ollama pull NAME` fetches one")


def _blob_path(store: Path, digest: Any, manifest: Path) -> Path:
    m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if not m:
        raise TritpackError(f"manifest names an invalid blob digest {digest!r}", path=manifest)
    blobs = store / "blobs"
    p = blobs / f"sha256-{m.group(1)}"
    if not p.exists() and (blobs / f"sha256:{m.group(1)}").exists():  # stores written before Ollama 0.1.3x
        p = blobs / f"sha256:{m.group(1)}"
    return p


def _model_layer(manifest_path: Path) -> dict | None:
    try:
        doc = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TritpackError(f"unreadable Ollama manifest ({type(e).__name__})", path=manifest_path) from None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        raise TritpackError("Ollama manifest has no layers", path=manifest_path)
    for layer in layers:
        if isinstance(layer, dict) and layer.get("mediaType") == MODEL_MEDIA_TYPE:
            return layer
    return None


def _iter_manifests(store: Path) -> Iterable[tuple[OllamaName, Path]]:
    root = store / "manifests"
    if not root.is_dir():
        return
    for host in sorted(root.iterdir()):
        if not host.is_dir():
            continue
        for ns in sorted(host.iterdir()):
            if not ns.is_dir():
                continue
            for model in sorted(ns.iterdir()):
                if not model.is_dir():
                    continue
                for tag in sorted(model.iterdir()):
                    if tag.is_file():
                        name = OllamaName(host.name, ns.name, model.name, tag.name)
                        if all(_PART[k].fullmatch(v) for k, v in zip(("host", "namespace", "model", "tag"), name.parts)):
                            yield name, tag


def resolve_ollama_model(ref: str, models_dir: Path | None = None) -> Path:
    """The GGUF blob of Ollama model `ref` in the local store (read in place; nothing is changed).

    `ref` is `model[:tag]`, `namespace/model[:tag]` or `host/namespace/model[:tag]`; the defaults are
    registry.ollama.ai, library and latest. Raises TritpackError for an invalid name, an unknown model
    (listing close matches), a manifest without a GGUF model layer, or a missing blob.
    """
    name = parse_ollama_name(ref)
    store = ollama_models_dir(models_dir)
    manifest = store / "manifests" / name.host / name.namespace / name.model / name.tag
    if not manifest.is_file():
        wanted = tuple(p.lower() for p in name.parts)
        found = [m for n, m in _iter_manifests(store) if tuple(p.lower() for p in n.parts) == wanted]
        if not found:
            local = [n.short for n, _ in _iter_manifests(store)]
            close = difflib.get_close_matches(name.short, local, n=5, cutoff=0.5)
            close += [s for s in local if s.split(":")[0] == name.short.split(":")[0] and s not in close]
            hint = f"close matches: {', '.join(close[:5])}" if close else _store_hint(store)
            raise TritpackError(f"no Ollama model {name.short!r} in the local store", path=store, hint=hint)
        manifest = found[0]
    layer = _model_layer(manifest)
    if layer is None:
        raise TritpackError(f"Ollama model {name.short!r} has no GGUF model layer ({MODEL_MEDIA_TYPE})",
                            path=manifest, hint="models imported from safetensors for Ollama's own engine have no GGUF")
    blob = _blob_path(store, layer.get("digest"), manifest)
    if not blob.is_file():
        raise TritpackError(f"the GGUF blob of {name.short!r} is missing from the store", path=blob,
                            hint=f"`ollama pull {name.short}` restores it")
    return blob


def ollama_output_stem(ref: str) -> str:
    """A file stem for output made from Ollama model `ref` (`llama3.2:1b` -> `llama3.2-1b`,
    `user/m:q8` -> `user-m-q8`). Outputs go to the working folder, never next to the blob in the store."""
    n = parse_ollama_name(ref)
    parts = ([n.host] if n.host.lower() != DEFAULT_HOST else []) + \
            ([n.namespace] if n.namespace.lower() != DEFAULT_NAMESPACE else []) + [n.model, n.tag]
    return "-".join(re.sub(r"[^A-Za-z0-9_.-]", "-", p) for p in parts)


def resolve_model_input(arg: str | Path, models_dir: Path | None = None) -> Path:
    """What `convert`/`estimate` take: an existing path as it is, else an Ollama model name resolved to
    its blob in the local store; TritpackError ('no such file', or the resolver's error) otherwise."""
    s = str(arg)
    if os.path.lexists(s):
        return Path(s)
    if looks_like_ollama_ref(s):
        try:
            return resolve_ollama_model(s, models_dir)
        except TritpackError as e:
            e.hint = (e.hint + "; " if e.hint else "") + f"there is no file {s!r} either"
            raise
    raise TritpackError("no such file", path=s)


def list_ollama_models(models_dir: Path | None = None, *, estimate: bool = True) -> list[dict]:
    """Local models: name, blob, size and (with `estimate`) the estimated TP4/TP1 sizes.

    A model whose entry cannot be read is listed with an `error` instead of failing the listing.
    """
    store = ollama_models_dir(models_dir)
    out = []
    for name, manifest in _iter_manifests(store):
        row: dict[str, Any] = {"name": name.short, "manifest": str(manifest), "blob": None, "size": None,
                               "file_type": None, "tp4_bytes": None, "tp1_bytes": None}
        try:
            layer = _model_layer(manifest)
            if layer is None:
                row["error"] = "no GGUF model layer"
            else:
                blob = _blob_path(store, layer.get("digest"), manifest)
                row["blob"] = str(blob)
                if not blob.is_file():
                    row["error"] = "blob missing"
                else:
                    row["size"] = blob.stat().st_size
                    if estimate:
                        from .converters.estimate import dominant_type, file_sizes
                        from .converters.reader import GGUFFile

                        f = GGUFFile(blob)
                        row["file_type"] = dominant_type(f)
                        est = file_sizes(f)
                        row["tp4_bytes"], row["tp1_bytes"] = est["tp4_bytes"], est["tp1_bytes"]
        except TritpackError as e:
            row["error"] = e.message
        out.append(row)
    return out



# ---------------------------------------------------------------------------------------------
# Size estimate (converters/estimate.py)
# ---------------------------------------------------------------------------------------------

def __getattr__(name: str) -> Any:  # ESTIMATE_METHOD: estimate.METHOD, imported when asked (it loads gguf)
    if name == "ESTIMATE_METHOD":
        from .converters.estimate import METHOD

        return METHOD
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def estimate_sizes(path: str | Path) -> dict:
    """An ESTIMATE of the file size after conversion to TP4 and to TP1, from tensor shapes alone, by
    the converter's policy (converters/estimate.py, what `tritpack-gguf estimate` says)."""
    from .converters.estimate import file_sizes
    from .converters.reader import GGUFFile

    return file_sizes(GGUFFile(path))
