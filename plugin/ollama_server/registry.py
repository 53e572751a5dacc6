"""The model registry of `tritpack-gguf ollama serve`: names to GGUF files, stored as Ollama stores them.

Layout (Ollama's own, so that `tritpack-gguf ollama list --models-dir DIR` reads it too):
`DIR/blobs/sha256-<hex>` holds uploaded files (the GGUF, the parameters, the template, the system
prompt, a config), `DIR/manifests/<host>/<namespace>/<model>/<tag>` a Docker-style manifest naming
them. Writes go to a temporary file in the same folder and are renamed into place, so a reader never
sees a half-written blob or manifest. The reading side reuses plugin/ollama_store.py's store reader.

What a client sees of a model (`details`, `model_info`, `capabilities`) comes from the GGUF header,
read through converters/header.py (the one header view of the bounds-checked parser), cached per
file and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import ollama_store as _ol
from ..converters.estimate import dominant_type
from ..converters.header import LazyArray, read_header
from ..errors import TritpackError

PARAMS_MEDIA = "application/vnd.ollama.image.params"
TEMPLATE_MEDIA = "application/vnd.ollama.image.template"
SYSTEM_MEDIA = "application/vnd.ollama.image.system"
LICENSE_MEDIA = "application/vnd.ollama.image.license"
CONFIG_MEDIA = "application/vnd.docker.container.image.v1+json"
MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"
_HEX = re.compile(r"sha256[:-]([0-9a-f]{64})")

# architectures that only embed (llama.cpp's encoders); any GGUF with <arch>.pooling_type embeds too
EMBEDDING_ARCHS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "t5encoder", "neo-bert",
                   "modern-bert"}
_VERBOSE_ONLY_ARRAY = 5  # longer arrays are `null` in model_info unless verbose, as Ollama shows them


class ApiError(Exception):
    """An error the API answers with `{"error": message}` and `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def rfc3339(t: float | None = None) -> str:
    """A time as Ollama writes it: RFC 3339 with the local offset and nanosecond-style fraction."""
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).astimezone().isoformat(timespec="microseconds")


def default_models_dir() -> Path:
    """$TRITPACK_OLLAMA_MODELS, else <tritpack home>/ollama-models (never Ollama's own store)."""
    from ..paths import tritpack_home

    env = os.environ.get("TRITPACK_OLLAMA_MODELS")
    return Path(env).expanduser() if env else tritpack_home() / "ollama-models"


def parse_digest(digest: Any) -> str:
    """`sha256:<hex>` (or `sha256-<hex>`) -> the hex; ApiError 400 otherwise."""
    m = _HEX.fullmatch(digest) if isinstance(digest, str) else None
    if not m:
        raise ApiError(400, f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return m.group(1)


def model_key(name: str) -> _ol.OllamaName:
    """A request's model name as Ollama reads it (`tiny` = `tiny:latest` = registry.ollama.ai/library/tiny:latest)."""
    got = _ol._parse_name(name) if isinstance(name, str) else "it is not a string"
    if isinstance(got, str):
        raise ApiError(400, f"invalid model name {name!r}: {got}")
    return got


@dataclass
class LocalModel:
    name: _ol.OllamaName
    manifest_path: Path
    manifest_digest: str        # hex of the manifest bytes: what /api/tags shows as `digest`
    modified_at: float
    blob: Path                  # the GGUF
    digest: str                 # sha256:<hex> of the GGUF
    size: int                   # all layers together
    parameters: dict = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    license: str | None = None

    @property
    def short(self) -> str:
        return self.name.short


@dataclass
class ModelFacts:
    """What the GGUF header says, in the shapes the API returns."""

    architecture: str
    details: dict
    model_info: dict
    capabilities: list[str]
    chat_template: str | None
    context_length: int | None
    kv_bytes_per_token: int     # f16 K+V of all layers: the KV cache of one context position
    pooling: bool               # the file sets a pooling type (an embedding model)
    summary: Any = field(repr=False, default=None)


def _plain(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def human_params(n: int) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f}{unit}" if v >= 100 else f"{v:.1f}{unit}" if v >= 10 else f"{v:.2f}{unit}"
    return str(n)


def human_bytes(n: float) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _kv_bytes_per_token(s: Any, arch: str) -> int:
    def num(key: str, default: int = 0) -> int:
        v = s.get(f"{arch}.{key}")
        if isinstance(v, list):
            v = max((x for x in v if isinstance(x, int)), default=default)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default

    n_layer, n_embd, n_head = num("block_count"), num("embedding_length"), num("attention.head_count", 1)
    n_head_kv = num("attention.head_count_kv", n_head)
    k_len = num("attention.key_length", n_embd // max(n_head, 1))
    v_len = num("attention.value_length", k_len)
    return n_layer * n_head_kv * (k_len + v_len) * 2


def read_facts(path: Path, *, verbose: bool = False) -> ModelFacts:
    """details, model_info and capabilities of the GGUF at `path` (TritpackError for a bad file)."""
    s = read_header(path)
    arch = s.get("general.architecture") or "unknown"
    n_params = sum(t.n_elements for t in s.tensors)
    tp = s.get("tritpack.type")
    quant = tp.upper() if isinstance(tp, str) and tp else (dominant_type(s.source) or "unknown")
    info: dict[str, Any] = {}
    for key, v in s.values.items():
        if key == "tokenizer.chat_template" or key.startswith("GGUF."):
            continue
        if isinstance(v, LazyArray) or (isinstance(v, list) and len(v) > _VERBOSE_ONLY_ARRAY):
            info[key] = _plain(s.array(key)) if verbose else None
        else:
            info[key] = _plain(v)
    info.setdefault("general.parameter_count", n_params)
    pooling = isinstance(s.get(f"{arch}.pooling_type"), int) and s.get(f"{arch}.pooling_type") > 0
    tmpl = s.get("tokenizer.chat_template")
    tmpl = tmpl if isinstance(tmpl, str) and tmpl.strip() else None
    if pooling or arch in EMBEDDING_ARCHS:
        caps = ["embedding"]
    else:
        caps = ["completion"]
        if tmpl and "tools" in tmpl:
            caps.append("tools")
        if tmpl and ("<think>" in tmpl or "enable_thinking" in tmpl or "reasoning_content" in tmpl):
            caps.append("thinking")
    ctx = s.get(f"{arch}.context_length")
    details = {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
               "parameter_size": human_params(n_params), "quantization_level": quant}
    return ModelFacts(arch, details, info, caps, tmpl, ctx if isinstance(ctx, int) and ctx > 0 else None,
                      _kv_bytes_per_token(s, arch), pooling, s)


class Registry:
    """Names -> GGUF files under `root` (Ollama's store layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self._facts: dict[tuple[str, int, int], ModelFacts] = {}

    def ensure(self) -> None:
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.manifests.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TritpackError(f"cannot create the model registry: {e.strerror or e}", path=self.root) from None

    # ------------------------------------------------------------------------------- blobs

    def blob_path(self, digest: str) -> Path:
        return self.blobs / f"sha256-{parse_digest(digest)}"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob_writer(self, digest: str) -> "BlobWriter":
        return BlobWriter(self, parse_digest(digest))

    def _put_bytes(self, data: bytes) -> str:
        hexd = hashlib.sha256(data).hexdigest()
        p = self.blobs / f"sha256-{hexd}"
        if not p.is_file():
            _atomic_write(p, data)
        return f"sha256:{hexd}"

    # ------------------------------------------------------------------------------- models

    def _manifest_path(self, n: _ol.OllamaName) -> Path:
        return self.manifests / n.host / n.namespace / n.model / n.tag

    def _find_manifest(self, n: _ol.OllamaName) -> tuple[_ol.OllamaName, Path] | None:
        p = self._manifest_path(n)
        if p.is_file():
            return n, p
        wanted = tuple(x.lower() for x in n.parts)  # Ollama's names are case-insensitive
        for found, mp in _ol._iter_manifests(self.root):
            if tuple(x.lower() for x in found.parts) == wanted:
                return found, mp
        return None

    def get(self, name: str) -> LocalModel | None:
        """The model `name`, or None when it is not registered here (ApiError 400 for an invalid name)."""
        found = self._find_manifest(model_key(name))
        return self._load(*found) if found else None

    def list(self) -> list[LocalModel]:
        out = []
        for n, mp in _ol._iter_manifests(self.root):
            try:
                out.append(self._load(n, mp))
            except ApiError:
                continue  # an unreadable manifest is skipped in listings (and named when used)
        return out

    def _load(self, n: _ol.OllamaName, mp: Path) -> LocalModel:
        try:
            raw = mp.read_bytes()
            doc = json.loads(raw)
            layers = doc["layers"]
            st = mp.stat()
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ApiError(500, f"the manifest of {n.short!r} is unreadable ({type(e).__name__}): {mp}") from None
        m = LocalModel(n, mp, hashlib.sha256(raw).hexdigest(), st.st_mtime, Path(), "", 0)
        for layer in layers if isinstance(layers, list) else []:
            if not isinstance(layer, dict):
                continue
            media, digest = layer.get("mediaType"), layer.get("digest")
            m.size += int(layer.get("size") or 0)
            try:
                path = self.blob_path(digest)
            except ApiError:
                continue
            if media == _ol.MODEL_MEDIA_TYPE:
                m.blob, m.digest = path, f"sha256:{parse_digest(digest)}"
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if media == PARAMS_MEDIA:
                try:
                    params = json.loads(text)
                    m.parameters = params if isinstance(params, dict) else {}
                except ValueError:
                    pass
            elif media == TEMPLATE_MEDIA:
                m.template = text
            elif media == SYSTEM_MEDIA:
                m.system = text
            elif media == LICENSE_MEDIA:
                m.license = text
        if not m.digest:
            raise ApiError(500, f"{n.short!r} has no GGUF model layer: {mp}")
        return m

    def facts(self, m: LocalModel, *, verbose: bool = False) -> ModelFacts:
        """The GGUF facts of `m` (ApiError 500 naming the file when it is missing or unreadable)."""
        try:
            st = m.blob.stat()
        except OSError:
            raise ApiError(500, f"the file of model {m.short!r} is missing: {m.blob} (it was deleted while "
                                f"registered; create the model again)") from None
        key = (str(m.blob), st.st_mtime_ns, st.st_size)
        if not verbose and key in self._facts:
            return self._facts[key]
        try:
            f = read_facts(m.blob, verbose=verbose)
        except TritpackError as e:
            raise ApiError(500, f"model {m.short!r}: {e}") from None
        if not verbose:
            self._facts[key] = f
        return f

    def create(self, name: str, model_digest: str, *, parameters: dict | None = None, template: str | None = None,
               system: str | None = None, license: str | None = None) -> LocalModel:
        """Write the manifest of `name` over the GGUF blob `model_digest` (which must be here and read)."""
        n = model_key(name)
        blob = self.blob_path(model_digest)
        if not blob.is_file():
            raise ApiError(400, f"no blob {model_digest} here: upload it first (POST /api/blobs/{model_digest})")
        try:
            facts = read_facts(blob)
        except TritpackError as e:
            raise ApiError(400, f"the file for {name!r} is not a usable GGUF: {e}") from None
        layers = [{"mediaType": _ol.MODEL_MEDIA_TYPE, "digest": f"sha256:{parse_digest(model_digest)}",
                   "size": blob.stat().st_size}]
        for media, text in ((TEMPLATE_MEDIA, template), (SYSTEM_MEDIA, system), (LICENSE_MEDIA, license),
                            (PARAMS_MEDIA, json.dumps(parameters, sort_keys=True) if parameters else None)):
            if text:
                data = text.encode()
                layers.append({"mediaType": media, "digest": self._put_bytes(data), "size": len(data)})
        config = json.dumps({"model_format": "gguf", "model_family": facts.architecture,
                             "model_families": [facts.architecture],
                             "model_type": facts.details["parameter_size"],
                             "file_type": facts.details["quantization_level"],
                             "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}).encode()
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA,
                    "config": {"mediaType": CONFIG_MEDIA, "digest": self._put_bytes(config), "size": len(config)},
                    "layers": layers}
        existing = self._find_manifest(n)
        path = existing[1] if existing else self._manifest_path(n)
        _atomic_write(path, json.dumps(manifest, separators=(",", ":")).encode())
        return self._load(existing[0] if existing else n, path)

    def delete(self, name: str) -> LocalModel | None:
        """Remove `name`'s manifest and the blobs no other manifest uses; the model, or None if unknown."""
        m = self.get(name)
        if m is None:
            return None
        m.manifest_path.unlink(missing_ok=True)
        for d in (m.manifest_path.parent, m.manifest_path.parent.parent, m.manifest_path.parent.parent.parent):
            try:
                d.rmdir()
            except OSError:
                break
        self.prune()
        return m

    def copy(self, source: str, destination: str) -> LocalModel | None:
        src = self.get(source)
        if src is None:
            return None
        dst = model_key(destination)
        existing = self._find_manifest(dst)
        path = existing[1] if existing else self._manifest_path(dst)
        _atomic_write(path, src.manifest_path.read_bytes())
        return self._load(existing[0] if existing else dst, path)

    def prune(self) -> None:
        used: set[str] = set()
        for _, mp in _ol._iter_manifests(self.root):
            try:
                doc = json.loads(mp.read_text())
            except (OSError, ValueError):
                return  # never remove blobs while a manifest cannot be read
            for layer in [doc.get("config")] + list(doc.get("layers") or []):
                if isinstance(layer, dict) and isinstance(layer.get("digest"), str):
                    used.add(layer["digest"].replace(":", "-"))
        for p in self.blobs.glob("sha256-*"):
            if p.name not in used and len(p.name) == 71:
                p.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BlobWriter:
    """An upload in progress: written to a temporary file beside the blobs, hashed as it comes, and
    renamed into place only when complete and matching its digest."""

    def __init__(self, reg: Registry, hexd: str) -> None:
        reg.blobs.mkdir(parents=True, exist_ok=True)
        self.hexd = hexd
        self.dest = reg.blobs / f"sha256-{hexd}"
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=reg.blobs)
        self.tmp = Path(tmp)
        self.f = os.fdopen(fd, "wb")
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.h.update(chunk)
        self.f.write(chunk)
        self.size += len(chunk)

    def commit(self) -> None:
        self.f.close()
        got = self.h.hexdigest()
        if got != self.hexd:
            self.tmp.unlink(missing_ok=True)
            raise ApiError(400, f"digest mismatch: the upload's sha256 is {got}, not {self.hexd} (send the file again)")
        os.replace(self.tmp, self.dest)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)
