"""Ollama: register a GGUF with a running server (`create_ollama_model`).

Registration goes through the official `ollama` client: the file's blob is uploaded (skipped when the
server already has it), then `/api/create` gets the files map and the stop tokens / sampling
parameters from the GGUF metadata. Stock Ollama rejects tensor types it does not know, so
`compat="auto"` registers a stock-type export (TP1 -> Q4_0 exactly, TP4 -> Q8_0) instead
(apps.plan_compat, shared with LM Studio). The local store (names, manifests, blobs, `ollama list`)
is plugin/ollama_store.py's.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .apps import Exporter, Progress, call_exporter, default_exporter, no_progress, plan_compat
from .errors import TritpackError
from .ollama_store import _PART, _unsafe_reason

if TYPE_CHECKING:
    from .converters.header import GGUFHeader


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


def sha256_file(path: Path, progress: Progress = no_progress) -> str:
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
    progress: Progress = no_progress,
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
                result["export_report"] = call_exporter(exporter or default_exporter(), src, sent, to, progress)
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
