"""Ollama: read its local model store, estimate TP sizes, register a GGUF with a running server.

Store (read only, never copied or changed): `$OLLAMA_MODELS` (default `~/.ollama/models`) holds
`manifests/<host>/<namespace>/<model>/<tag>` (a Docker-style JSON manifest whose layers name blobs
by digest) and `blobs/sha256-<hex>`. The GGUF is the layer with mediaType
`application/vnd.ollama.image.model`.

Registration goes through the official `ollama` client: the file's blob is uploaded (skipped when the
server already has it), then `/api/create` gets the files map and the stop tokens / sampling
parameters from the GGUF metadata. Stock Ollama rejects tensor types it does not know, so
`compat="auto"` registers a stock-type export (TP1 -> Q4_0 exactly, TP4 -> Q8_0) instead.

GGUF headers are read through converters/header.py (the one header view of the bounds-checked
reader) rather than gguf.GGUFReader, which decodes every key (a 150k-entry vocabulary costs seconds
per file): listing a store of many models stays fast, and only the header pages of each blob are
touched. Sizes after conversion are converters/estimate.py's, the converter's policy.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .errors import TritpackError

if TYPE_CHECKING:  # the CLI imports this module: numpy and gguf load only when a file is read
    from .converters.header import GGUFHeader

Progress = Callable[..., None]  # progress(message, done=0, total=0)
Exporter = Callable[..., Any]    # exporter(src, dst, to) -> report (the lead's tritpack_gguf.export.export_gguf)


def _no_progress(*_: Any, **__: Any) -> None:
    pass


# the header view and the size estimate are converters/header.py's and converters/estimate.py's

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


# ---------------------------------------------------------------------------------------------
# Ollama names and the store
# ---------------------------------------------------------------------------------------------

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
# Compatibility (shared with LM Studio) and the metadata Ollama gets
# ---------------------------------------------------------------------------------------------

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


_SAMPLING = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_k": "top_k",
    "general.sampling.top_p": "top_p",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_last_n": "repeat_last_n",
    "general.sampling.penalty_repeat": "repeat_penalty",
    "general.sampling.mirostat": "mirostat",
    "general.sampling.mirostat_tau": "mirostat_tau",
    "general.sampling.mirostat_eta": "mirostat_eta",
}
_STOP_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


def ollama_settings(s: GGUFHeader) -> dict:
    """What `/api/create` gets from the GGUF metadata: `parameters` (stop tokens = the texts of the
    eos/eot/eom tokens; sampling defaults from general.sampling.*) and whether a chat template is there.

    The chat template itself is NOT sent as `template`: GGUF templates are Jinja, Ollama's are Go
    templates (a Jinja text is refused or renders garbage). Ollama reads tokenizer.chat_template from
    the uploaded GGUF and maps it to its matching built-in template when the model is created.
    """
    params: dict[str, Any] = {}
    ids = [s.get(k) for k in _STOP_KEYS]
    texts = s.strings_at("tokenizer.ggml.tokens", [i for i in ids if isinstance(i, int)])
    stop = []
    for i in ids:
        t = texts.get(i) if isinstance(i, int) else None
        if t and t.strip() and t not in stop:
            stop.append(t)
    if stop:
        params["stop"] = stop
    for key, pname in _SAMPLING.items():
        v = s.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            params[pname] = round(v, 6) if isinstance(v, float) else v
    tmpl = s.get("tokenizer.chat_template")
    return {"parameters": params, "chat_template": isinstance(tmpl, str) and bool(tmpl.strip())}


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------

def validate_create_name(name: str) -> str:
    """A name for a new Ollama model: `model` or `model:tag`; no path separators, `..`, NUL or control
    characters (a namespaced copy can be made afterwards with `ollama cp`)."""
    if not isinstance(name, str):
        raise TritpackError("invalid Ollama model name")
    why = _unsafe_reason(name)
    if why is None and "/" in name:
        why = "it contains '/' (a path separator)"
    if why is None:
        model, _, tag = name.partition(":")
        if not _PART["model"].fullmatch(model):
            why = f"the model part {model!r} is not valid"
        elif ":" in name and not _PART["tag"].fullmatch(tag):
            why = f"the tag {tag!r} is not valid"
    if why:
        raise TritpackError(f"invalid Ollama model name {name!r}: {why}",
                            hint="use letters, digits, '_', '-' and '.', e.g. llama3.2-tp4:1b")
    return name


def sha256_file(path: Path, progress: Progress = _no_progress) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            done += len(chunk)
            progress("hashing", done, total)
    return f"sha256:{h.hexdigest()}"


class _ProgressFile:
    """A read-only file for httpx: its real size gives Content-Length, reads report upload progress."""

    def __init__(self, f: Any, total: int, progress: Progress) -> None:
        self._f, self._total, self._progress, self._done = f, total, progress, 0

    def read(self, n: int = -1) -> bytes:
        b = self._f.read(n)
        self._done += len(b)
        self._progress("uploading", self._done, self._total)
        return b

    def fileno(self) -> int:
        return self._f.fileno()

    def __iter__(self):
        while chunk := self.read(1 << 20):
            yield chunk


def _client(host: str | None):
    import httpx
    import ollama

    return ollama.Client(host=host, timeout=httpx.Timeout(None, connect=10.0))


def _base_url(client: Any, host: str | None) -> str:
    try:
        return str(client._client.base_url).rstrip("/")
    except AttributeError:
        return host or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434"


def _has_blob(client: Any, digest: str) -> bool:
    import ollama

    try:
        client._request_raw("HEAD", f"/api/blobs/{digest}")
        return True
    except ollama.ResponseError as e:
        if e.status_code == 404:
            return False
        raise


def _upload_blob(client: Any, path: Path, digest: str, progress: Progress) -> None:
    total = path.stat().st_size
    with open(path, "rb") as f:
        client._request_raw("POST", f"/api/blobs/{digest}", content=_ProgressFile(f, total, progress))


def _call_exporter(exporter: Exporter, src: Path, dst: Path, to: str, progress: Progress) -> dict:
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


def _default_exporter() -> Exporter:
    from .export import export_gguf  # the lead's module; imported only when an export is needed

    return export_gguf


def _sent_file_name(path: Path) -> str:
    n = path.name
    return n if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}\.gguf", n) and ".." not in n else "model.gguf"


def create_ollama_model(
    name: str,
    gguf_path: str | Path,
    *,
    host: str | None = None,
    compat: str = "auto",
    exporter: Exporter | None = None,
    client: Any = None,
    work_dir: str | Path | None = None,
    progress: Progress = _no_progress,
) -> dict:
    """Register `gguf_path` with the Ollama server at `host` (default $OLLAMA_HOST or
    127.0.0.1:11434) as model `name`.

    compat: `auto` sends stock files as they are and TritPack files as a stock export (TP1 -> Q4_0,
    exact; TP4 -> Q8_0); `q4_0`/`q8_0` force that export; `native` sends the TritPack file (for an
    Ollama built with the tritpack patches). `exporter(src, dst, to)` makes the export (default
    tritpack_gguf.export.export_gguf); it writes into a temporary folder under `work_dir` (default the
    system temp folder) that is removed afterwards. `client` is an `ollama.Client` (default one for
    `host`). Returns what was done; raises TritpackError for an invalid name, an unreachable server,
    or a refused upload / create (with the server's message).
    """
    import httpx
    import ollama

    name = validate_create_name(name)
    src = Path(gguf_path)
    from .converters.header import read_header

    summary = read_header(src)
    to, note = plan_compat(summary, compat)
    settings = ollama_settings(summary)
    if client is None:
        try:
            client = _client(host)
        except (ValueError, TypeError) as e:
            raise TritpackError(f"invalid Ollama host {host!r}: {e}", hint="e.g. --host http://127.0.0.1:11434") from None
    url = _base_url(client, host)
    result: dict[str, Any] = {"name": name, "host": url, "source": str(src), "compat": compat.lower(),
                              "export": to, "note": note, "parameters": settings["parameters"],
                              "chat_template": "from the GGUF (Ollama maps tokenizer.chat_template to its built-in template)"
                              if settings["chat_template"] else None}
    progress(note)
    try:
        with tempfile.TemporaryDirectory(prefix="tritpack-ollama-", dir=work_dir) as tmp:
            sent = src
            if to is not None:
                sent = Path(tmp) / f"{src.stem}.{to.upper()}.gguf"
                progress(f"exporting to {to.upper()}")
                result["export_report"] = _call_exporter(exporter or _default_exporter(), src, sent, to, progress)
                if not sent.is_file():
                    raise TritpackError(f"the {to.upper()} export wrote no file", path=sent)
            digest = sha256_file(sent, progress)
            size = sent.stat().st_size
            result.update(sent_file=_sent_file_name(src if to is None else sent), digest=digest, bytes=size)
            if _has_blob(client, digest):
                result["uploaded"] = False
                progress("the server already has the blob", size, size)
            else:
                _upload_blob(client, sent, digest, progress)
                result["uploaded"] = True
            statuses = []
            for part in client.create(model=name, files={result["sent_file"]: digest},
                                      parameters=settings["parameters"] or None, stream=True):
                status = getattr(part, "status", None) or ""
                statuses.append(status)
                progress(status or "creating", getattr(part, "completed", None) or 0, getattr(part, "total", None) or 0)
            result["statuses"] = statuses
            if not statuses or statuses[-1] != "success":
                raise TritpackError(f"Ollama did not confirm creating {name!r} (last status: {statuses[-1] if statuses else 'none'})",
                                    hint=f"check the server log at {url}")
    except ConnectionError:
        raise TritpackError(f"cannot reach the Ollama server at {url}",
                            hint="start it with `ollama serve`, or pass --host URL or set OLLAMA_HOST") from None
    except httpx.ConnectError:
        raise TritpackError(f"cannot reach the Ollama server at {url}",
                            hint="start it with `ollama serve`, or pass --host URL or set OLLAMA_HOST") from None
    except httpx.TransportError as e:
        raise TritpackError(f"lost the connection to the Ollama server at {url} ({type(e).__name__}: {e})") from None
    except ollama.ResponseError as e:
        hint = None
        if to is None and (summary.has_tp1 or summary.has_tp4):
            hint = "stock Ollama cannot load TP1/TP4 tensors: use --compat auto (a stock export), or an Ollama built with the tritpack patches"
        where = "the upload" if "uploaded" not in result else f"creating {name!r}"
        raise TritpackError(f"Ollama refused {where}: {e.error} (HTTP {e.status_code})" if e.status_code > 0
                            else f"Ollama refused {where}: {e.error}", hint=hint) from None
    return result
