"""Ollama: the store reader (a store laid out as Ollama writes it), the size estimate, the GGUF header
reader, and registration through the official `ollama` client against a loopback server that
implements the documented blob and create endpoints (plus a real Ollama when $OLLAMA_HOST reaches one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

import tritpack_gguf.converters.gguf_types  # noqa: F401  (TP1/TP4 known to gguf)
from tritpack_gguf import apps
from tritpack_gguf import ollama as ol
from tritpack_gguf import ollama_store as ost
from tritpack_gguf.cli import ollama as ol_cli
from tritpack_gguf.converters.header import read_header
from tritpack_gguf.errors import TritpackError

Q = gguf.GGMLQuantizationType
TP1, TP4 = Q(80), Q(81)
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


# ------------------------------------------------------------------------------------------------
# helpers: small GGUF files, an Ollama store, a fake exporter
# ------------------------------------------------------------------------------------------------

def write_gguf(path: Path, kind: str = "stock", *, n_vocab: int = 300, eos: int | None = 2, eot: int | None = 5,
               chat_template: str | None = CHATML, sampling: dict | None = None) -> Path:
    """A tiny llama-architecture GGUF. kind: stock (F32/F16/Q8_0), tp1, tp4 or mixed (TP1 + TP4)."""
    rng = np.random.default_rng(1234)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(64)
    tokens = [f"tok{i}" for i in range(n_vocab)]
    tokens[2], tokens[5] = "<|im_end|>", "<|endoftext|>"
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    if eos is not None:
        w.add_eos_token_id(eos)
    if eot is not None:
        w.add_uint32(gguf.Keys.Tokenizer.EOT_ID, eot)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for k, v in (sampling or {}).items():
        if isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_int32(k, v)
    w.add_tensor("token_embd.weight", rng.standard_normal((32, 64)).astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    w.add_tensor("blk.0.ffn_down.weight", rng.standard_normal((64, 96)).astype(np.float32))  # ne0 = 96: kept
    w.add_tensor("blk.0.attn_k.weight", rng.integers(0, 255, (16, 68), dtype=np.uint8), raw_dtype=Q.Q8_0)
    if kind == "stock":
        w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((64, 64)).astype(np.float32))
    else:
        qtype = {"tp1": TP1, "tp4": TP4, "mixed": TP1}[kind]
        w.add_tensor("blk.0.attn_q.weight", rng.integers(0, 255, (64, 64 // 64 * (15 if qtype == TP1 else 36)),
                                                         dtype=np.uint8), raw_dtype=qtype)
        if kind == "mixed":
            w.add_tensor("blk.0.attn_v.weight", rng.integers(0, 255, (64, 36), dtype=np.uint8), raw_dtype=TP4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def sha256_hex(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _put_blob(store: Path, data: bytes) -> str:
    hexd = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{hexd}").write_bytes(data)
    return f"sha256:{hexd}"


def add_ollama_model(store: Path, host: str, namespace: str, model: str, tag: str, gguf_file: Path | None,
                     *, extra_layers: bool = True) -> Path:
    """Lay out a model exactly as Ollama writes it: blobs/sha256-<hex> and a v2 manifest."""
    layers = []
    if gguf_file is not None:
        data = gguf_file.read_bytes()
        layers.append({"mediaType": "application/vnd.ollama.image.model", "digest": _put_blob(store, data),
                       "size": len(data)})
    if extra_layers:
        for media, text in (("application/vnd.ollama.image.template", "{{ .Prompt }}"),
                            ("application/vnd.ollama.image.license", "MIT"),
                            ("application/vnd.ollama.image.params", '{"stop":["<|im_end|>"]}')):
            layers.append({"mediaType": media, "digest": _put_blob(store, text.encode()), "size": len(text)})
    config = json.dumps({"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                         "model_type": "1M", "file_type": "F32", "architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": _put_blob(store, config), "size": len(config)},
                "layers": layers}
    mpath = store / "manifests" / host / namespace / model / tag
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(manifest, separators=(",", ":")))
    return mpath


def snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, sha256_hex(p)) for p in sorted(root.rglob("*")) if p.is_file()}


class FakeExporter:
    """Stands in for tritpack_gguf.export.export_gguf: writes a small valid stock GGUF at dst."""

    def __init__(self, with_progress: bool = False) -> None:
        self.calls: list[tuple[Path, Path, str]] = []
        self.with_progress = with_progress

    def __call__(self, src, dst, to, *, force=False, **kw):
        if self.with_progress:
            assert callable(kw.get("progress"))
        self.calls.append((Path(src), Path(dst), to))
        assert not Path(dst).exists()
        write_gguf(Path(dst), "stock")
        return {"input": str(src), "output": str(dst), "to": to}


# ------------------------------------------------------------------------------------------------
# a loopback Ollama: HEAD/POST /api/blobs/:digest (digest checked), streaming POST /api/create
# ------------------------------------------------------------------------------------------------

STOCK_TYPES = {int(t) for t in Q if int(t) < 80}


class FakeOllama:
    def __init__(self, tmp: Path, *, patched: bool = False) -> None:
        self.blob_dir = tmp / "fake-ollama-blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.patched = patched
        self.requests: list[tuple[str, str]] = []
        self.creates: list[dict] = []
        self.models: dict[str, dict] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _json(self, code: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        n = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if n == 0:
                            self.rfile.readline()
                            return bytes(out)
                        out += self.rfile.read(n)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_HEAD(self):
                fake.requests.append(("HEAD", self.path))
                m = re.fullmatch(r"/api/blobs/sha256:([0-9a-f]{64})", self.path)
                code = 200 if m and (fake.blob_dir / f"sha256-{m.group(1)}").is_file() else 404
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                fake.requests.append(("POST", self.path))
                body = self._body()
                if self.path.startswith("/api/blobs/"):
                    m = re.fullmatch(r"/api/blobs/sha256:([0-9a-f]{64})", self.path)
                    if not m:
                        return self._json(400, {"error": "invalid digest format"})
                    got = hashlib.sha256(body).hexdigest()
                    if got != m.group(1):
                        return self._json(400, {"error": f"digest mismatch, expected sha256:{m.group(1)}, got sha256:{got}"})
                    (fake.blob_dir / f"sha256-{got}").write_bytes(body)
                    self.send_response(201)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if self.path == "/api/create":
                    return self._create(json.loads(body))
                return self._json(404, {"error": "not found"})

            def _create(self, req: dict) -> None:
                fake.creates.append(req)
                name = req.get("model", "")
                if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?", name):
                    return self._json(400, {"error": "invalid model name"})
                files = req.get("files") or {}
                blobs = []
                for fname, digest in files.items():
                    p = fake.blob_dir / digest.replace(":", "-")
                    if not p.is_file():
                        return self._json(400, {"error": f"blob not found for {fname} (digest {digest})"})
                    blobs.append(p)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def send(obj: dict) -> None:
                    data = (json.dumps(obj) + "\n").encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()

                send({"status": "parsing GGUF"})
                error = None
                for p in blobs:
                    r = gguf.GGUFReader(p)
                    bad = [t for t in r.tensors if int(t.tensor_type) not in STOCK_TYPES]
                    if bad and not fake.patched:
                        error = f"unsupported tensor type {int(bad[0].tensor_type)} in {bad[0].name}"
                    elif "tokenizer.chat_template" in r.fields:
                        send({"status": "using autodetected template chatml"})
                if name.startswith("fail"):
                    error = "no space left on device"
                if req.get("template") and "{%" in req["template"]:
                    error = "template: :1: unexpected \"%\" in command"
                if error:
                    send({"error": error})
                else:
                    fake.models[name] = req
                    send({"status": "writing manifest"})
                    send({"status": "success"})
                self.wfile.write(b"0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def uploads(self) -> int:
        return sum(1 for m, p in self.requests if m == "POST" and p.startswith("/api/blobs/"))


@pytest.fixture
def fake_ollama(tmp_path):
    srv = FakeOllama(tmp_path)
    yield srv
    srv.close()


@pytest.fixture
def patched_ollama(tmp_path):
    srv = FakeOllama(tmp_path, patched=True)
    yield srv
    srv.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ref,parts", [
    ("llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b")),
    ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest")),
    ("library/qwen2.5:0.5b", ("registry.ollama.ai", "library", "qwen2.5", "0.5b")),
    ("user/model:tag", ("registry.ollama.ai", "user", "model", "tag")),
    ("localhost:5000/team/m_x:v1.2", ("localhost:5000", "team", "m_x", "v1.2")),
    ("https://example.com/ns/m", ("example.com", "ns", "m", "latest")),
])
def test_parse_ollama_name(ref, parts):
    assert ost.parse_ollama_name(ref).parts == parts


@pytest.mark.parametrize("ref", ["", "../x", "a/../b", "/abs/model", "x\x00y", "x\ny", "tab\tname", "a/b/c/d",
                                 "model:", ":tag", "-lead", "ns.dot/model", "a\\b", "m:t/x", "C:\\models\\x",
                                 "a//b", "x" * 81])
def test_invalid_ollama_names_refused(ref):
    with pytest.raises(TritpackError, match="invalid Ollama model name"):
        ost.parse_ollama_name(ref)
    assert not ost.looks_like_ollama_ref(ref)


def test_looks_like_ollama_ref(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ost.looks_like_ollama_ref("llama3.2:1b")
    assert ost.looks_like_ollama_ref("user/model:tag")
    assert ost.looks_like_ollama_ref("qwen2.5")
    (tmp_path / "qwen2.5").write_bytes(b"x")          # an existing file is a file, not a model name
    assert not ost.looks_like_ollama_ref("qwen2.5")
    assert not ost.looks_like_ollama_ref("model.gguf")  # a missing .gguf is a missing file
    assert not ost.looks_like_ollama_ref("dir/model.GGUF")
    assert not ost.looks_like_ollama_ref(str(tmp_path / "nothing"))
    assert not ost.looks_like_ollama_ref("./model")


# ------------------------------------------------------------------------------------------------
# the store
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    s = tmp_path / "ollama-models"
    add_ollama_model(s, "registry.ollama.ai", "library", "llama3.2", "1b", write_gguf(tmp_path / "a.gguf"))
    add_ollama_model(s, "registry.ollama.ai", "library", "llama3.2", "3b", write_gguf(tmp_path / "b.gguf", n_vocab=400))
    add_ollama_model(s, "registry.ollama.ai", "library", "qwen2.5", "0.5b", write_gguf(tmp_path / "c.gguf", n_vocab=500))
    add_ollama_model(s, "registry.ollama.ai", "someuser", "mymodel", "q8", write_gguf(tmp_path / "d.gguf", n_vocab=600))
    add_ollama_model(s, "localhost:5000", "team", "private", "latest", write_gguf(tmp_path / "e.gguf", n_vocab=700))
    add_ollama_model(s, "registry.ollama.ai", "library", "safetensors-only", "latest", None)
    return s


def _blob_of(store: Path, gguf_file: Path) -> Path:
    return store / "blobs" / f"sha256-{sha256_hex(gguf_file)}"


def test_resolve_ollama_model(store, tmp_path):
    before = snapshot(store)
    assert ost.resolve_ollama_model("llama3.2:1b", store) == _blob_of(store, tmp_path / "a.gguf")
    assert ost.resolve_ollama_model("library/qwen2.5:0.5b", store) == _blob_of(store, tmp_path / "c.gguf")
    assert ost.resolve_ollama_model("registry.ollama.ai/library/llama3.2:3b", store) == _blob_of(store, tmp_path / "b.gguf")
    assert ost.resolve_ollama_model("someuser/mymodel:q8", store) == _blob_of(store, tmp_path / "d.gguf")
    assert ost.resolve_ollama_model("localhost:5000/team/private", store) == _blob_of(store, tmp_path / "e.gguf")
    assert ost.resolve_ollama_model("LLaMA3.2:1B", store) == _blob_of(store, tmp_path / "a.gguf")  # names fold case
    assert snapshot(store) == before  # read in place: nothing written, nothing touched


def test_resolve_uses_ollama_models_env(store, tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    assert ost.resolve_ollama_model("llama3.2:1b") == _blob_of(store, tmp_path / "a.gguf")
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(TritpackError, match="no Ollama model") as e:
        ost.resolve_ollama_model("llama3.2:1b")
    assert ".ollama/models" in str(e.value) and "OLLAMA_MODELS" in str(e.value)


def test_resolve_unknown_lists_close_matches(store):
    with pytest.raises(TritpackError) as e:
        ost.resolve_ollama_model("llama3.2:8b", store)
    msg = str(e.value)
    assert "no Ollama model 'llama3.2:8b'" in msg
    assert "llama3.2:1b" in msg and "llama3.2:3b" in msg
    with pytest.raises(TritpackError, match="qwen2.5:0.5b"):
        ost.resolve_ollama_model("qwen2.5:05b", store)


def test_resolve_errors(store, tmp_path):
    with pytest.raises(TritpackError, match="no GGUF model layer"):
        ost.resolve_ollama_model("safetensors-only", store)
    with pytest.raises(TritpackError, match="invalid Ollama model name"):
        ost.resolve_ollama_model("../../etc/passwd", store)
    # a manifest whose digest tries to leave the blobs folder
    m = add_ollama_model(store, "registry.ollama.ai", "library", "evil", "latest", None)
    doc = json.loads(m.read_text())
    doc["layers"].append({"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:../../../etc/passwd", "size": 1})
    m.write_text(json.dumps(doc))
    with pytest.raises(TritpackError, match="invalid blob digest"):
        ost.resolve_ollama_model("evil", store)
    # a blob that is gone
    blob = ost.resolve_ollama_model("qwen2.5:0.5b", store)
    blob.unlink()
    with pytest.raises(TritpackError, match="missing from the store"):
        ost.resolve_ollama_model("qwen2.5:0.5b", store)
    # an unreadable manifest
    (store / "manifests/registry.ollama.ai/library/broken").mkdir()
    (store / "manifests/registry.ollama.ai/library/broken/latest").write_text("{not json")
    with pytest.raises(TritpackError, match="unreadable Ollama manifest"):
        ost.resolve_ollama_model("broken", store)


def test_resolve_legacy_colon_blob_name(tmp_path):
    s = tmp_path / "store"
    g = write_gguf(tmp_path / "x.gguf")
    add_ollama_model(s, "registry.ollama.ai", "library", "old", "latest", g)
    new = _blob_of(s, g)
    legacy = new.with_name(new.name.replace("sha256-", "sha256:"))
    new.rename(legacy)
    assert ost.resolve_ollama_model("old", s) == legacy


def test_resolve_model_input(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ost.resolve_model_input("a.gguf", store) == Path("a.gguf")  # an existing file wins
    assert ost.resolve_model_input("llama3.2:1b", store) == _blob_of(store, tmp_path / "a.gguf")
    with pytest.raises(TritpackError, match="no such file"):
        ost.resolve_model_input("missing.gguf", store)
    with pytest.raises(TritpackError, match="no file 'llama9'"):
        ost.resolve_model_input("llama9", store)


def test_ollama_output_stem():
    assert ost.ollama_output_stem("llama3.2:1b") == "llama3.2-1b"
    assert ost.ollama_output_stem("qwen2.5") == "qwen2.5-latest"
    assert ost.ollama_output_stem("user/m:q8") == "user-m-q8"
    assert ost.ollama_output_stem("localhost:5000/team/m:t") == "localhost-5000-team-m-t"


def test_list_ollama_models(store, tmp_path):
    before = snapshot(store)
    rows = {r["name"]: r for r in ost.list_ollama_models(store)}
    assert set(rows) == {"llama3.2:1b", "llama3.2:3b", "qwen2.5:0.5b", "someuser/mymodel:q8",
                         "localhost:5000/team/private:latest", "safetensors-only:latest"}
    r = rows["llama3.2:1b"]
    assert r["size"] == (tmp_path / "a.gguf").stat().st_size
    est = ost.estimate_sizes(tmp_path / "a.gguf")
    assert (r["tp4_bytes"], r["tp1_bytes"]) == (est["tp4_bytes"], est["tp1_bytes"])
    assert r["file_type"] == "F32"
    assert rows["safetensors-only:latest"]["error"] == "no GGUF model layer"
    assert snapshot(store) == before


def test_list_cli(store, tmp_path):
    res = CliRunner().invoke(ol_cli.app, ["list", "--models-dir", str(store), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["models_dir"] == str(store) and "estimate" in doc["estimate_method"]
    assert {m["name"] for m in doc["models"]} >= {"llama3.2:1b", "qwen2.5:0.5b"}
    res = CliRunner().invoke(ol_cli.app, ["list", "--models-dir", str(store)])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "TYPE", "SIZE"] and "TP4 (est.)" in lines[0]
    assert any(line.startswith("llama3.2:1b ") and "KB" in line for line in lines)


# ------------------------------------------------------------------------------------------------
# the header reader and the estimate
# ------------------------------------------------------------------------------------------------

def test_header_reader_matches_gguf_reader(tmp_path):
    p = write_gguf(tmp_path / "m.gguf", "mixed", n_vocab=5000, sampling={"general.sampling.temp": 0.6})
    s = read_header(p)
    r = gguf.GGUFReader(p)
    assert [(t.name, t.ne, t.type) for t in s.tensors] == \
           [(t.name, tuple(int(d) for d in t.shape), int(t.tensor_type)) for t in r.tensors]
    assert [s.data_offset + t.offset for t in s.tensors] == [int(t.data_offset) for t in r.tensors]
    assert s.get("general.architecture") == "llama"
    assert s.get("tokenizer.chat_template") == CHATML
    assert s.get("tokenizer.ggml.eos_token_id") == 2
    assert s.get("general.sampling.temp") == pytest.approx(0.6)
    assert s.strings_at("tokenizer.ggml.tokens", [0, 2, 4999, 5000]) == {0: "tok0", 2: "<|im_end|>", 4999: "tok4999"}
    assert s.has_tp1 and s.has_tp4


def test_header_reader_rejects_bad_files(tmp_path):
    p = write_gguf(tmp_path / "m.gguf")
    data = p.read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(data[:200])
    with pytest.raises(TritpackError, match="runs past the end of the file") as e:
        read_header(tmp_path / "trunc.gguf")
    assert str(e.value).startswith(f"{tmp_path / 'trunc.gguf'}: ")  # names the file
    (tmp_path / "notgguf.gguf").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(TritpackError, match="not a GGUF"):
        read_header(tmp_path / "notgguf.gguf")
    with pytest.raises(TritpackError, match="no such file"):
        read_header(tmp_path / "missing.gguf")
    huge = bytearray(data)
    huge[8:16] = (10**15).to_bytes(8, "little")  # tensor count
    (tmp_path / "huge.gguf").write_bytes(bytes(huge))
    with pytest.raises(TritpackError, match="cannot fit"):
        read_header(tmp_path / "huge.gguf")


def test_estimate_sizes_by_hand(tmp_path):
    """ollama list's sizes are the converter's policy (converters/estimate.py), what `estimate` says."""
    from tritpack_gguf.converters.estimate import estimate_file

    p = write_gguf(tmp_path / "m.gguf", "stock")
    est = ost.estimate_sizes(p)
    # token_embd (32 x 64, F16; tied: it is the output) -> Q8_0 (Q6_K needs rows of 256); attn_q
    # (64 x 64, F32) and attn_k (16 x 64, Q8_0) -> TP; ffn_down (ne0 = 96) -> IQ4_NL for TP4, Q4_0 for
    # TP1 (both 18 bytes per 32); output_norm (1-D) kept
    current = 32 * 64 * 2 + 64 * 64 * 4 + 16 * 68 + 64 * 96 * 4 + 64 * 4
    tp4 = 32 * 2 * 34 + 64 * 36 + 16 * 36 + 64 * 3 * 18 + 64 * 4
    tp1 = 32 * 2 * 34 + 64 * 15 + 16 * 15 + 64 * 3 * 18 + 64 * 4
    size = p.stat().st_size
    assert est["tensor_bytes"] == current
    assert est["tp4_bytes"] == size - current + tp4
    assert est["tp1_bytes"] == size - current + tp1
    assert est["n_packed"] == 2 and est["estimate"] is True and est["file_bytes"] == size
    assert est["tp1_bytes"] < est["tp4_bytes"] < size
    one = estimate_file(p, ["TP4", "TP1"])["estimates"]
    assert (one["TP4"]["bytes"], one["TP1"]["bytes"]) == (tp4, tp1)


# ------------------------------------------------------------------------------------------------
# what /api/create gets
# ------------------------------------------------------------------------------------------------

def test_ollama_settings_from_metadata(tmp_path):
    s = read_header(write_gguf(tmp_path / "m.gguf", sampling={"general.sampling.temp": 0.7,
                                                                      "general.sampling.top_k": 20}))
    got = ol.ollama_settings(s)
    assert got["parameters"]["stop"] == ["<|im_end|>", "<|endoftext|>"]
    assert got["parameters"]["temperature"] == pytest.approx(0.7) and got["parameters"]["top_k"] == 20
    assert got["chat_template"] is True
    s = read_header(write_gguf(tmp_path / "n.gguf", eos=None, eot=None, chat_template=None))
    assert ol.ollama_settings(s) == {"parameters": {}, "chat_template": False}


@pytest.mark.parametrize("kind,compat,to", [
    ("stock", "auto", None), ("tp1", "auto", "q4_0"), ("tp4", "auto", "q8_0"), ("mixed", "auto", "q8_0"),
    ("tp4", "q4_0", "q4_0"), ("tp1", "q8_0", "q8_0"), ("tp4", "native", None), ("stock", "q8_0", None),
])
def test_plan_compat(tmp_path, kind, compat, to):
    got, note = apps.plan_compat(read_header(write_gguf(tmp_path / "m.gguf", kind)), compat)
    assert got == to and note
    if kind == "tp1" and compat == "auto":
        assert "exact" in note


# ------------------------------------------------------------------------------------------------
# registration against the loopback server, through the official client
# ------------------------------------------------------------------------------------------------

def test_create_stock_file_uploads_once(tmp_path, fake_ollama):
    g = write_gguf(tmp_path / "tiny.gguf")
    seen = []
    r = ol.create_ollama_model("tiny:test", g, host=fake_ollama.url, exporter=FakeExporter(),
                               progress=lambda msg, done=0, total=0: seen.append((msg, done, total)))
    assert r["export"] is None and r["uploaded"] is True and r["statuses"][-1] == "success"
    assert r["digest"] == f"sha256:{sha256_hex(g)}"
    assert (fake_ollama.blob_dir / f"sha256-{sha256_hex(g)}").read_bytes() == g.read_bytes()
    req = fake_ollama.creates[-1]
    assert req["model"] == "tiny:test" and req["files"] == {"tiny.gguf": r["digest"]}
    assert req["parameters"]["stop"] == ["<|im_end|>", "<|endoftext|>"]
    assert "template" not in req  # Jinja stays in the GGUF; Ollama maps it to its own template
    size = g.stat().st_size
    assert ("uploading", size, size) in seen
    assert "using autodetected template chatml" in r["statuses"]
    # again: the server has the blob, so it is not sent twice
    r2 = ol.create_ollama_model("tiny:again", g, host=fake_ollama.url)
    assert r2["uploaded"] is False and fake_ollama.uploads() == 1
    assert set(fake_ollama.models) == {"tiny:test", "tiny:again"}


@pytest.mark.parametrize("kind,compat,to", [("tp1", "auto", "q4_0"), ("tp4", "auto", "q8_0"), ("tp4", "q4_0", "q4_0")])
def test_create_auto_registers_stock_export(tmp_path, fake_ollama, kind, compat, to):
    g = write_gguf(tmp_path / f"m-{kind}.gguf", kind)
    exp = FakeExporter(with_progress=True)

    def exporter(src, dst, to, progress=None):
        return exp(src, dst, to, progress=progress)

    work = tmp_path / "work"
    work.mkdir()
    r = ol.create_ollama_model("packed", g, host=fake_ollama.url, compat=compat, exporter=exporter, work_dir=work)
    (src, dst, got_to), = exp.calls
    assert (src, got_to) == (g, to) and dst.parent.parent == work
    assert r["export"] == to and r["statuses"][-1] == "success"
    assert r["sent_file"] == f"m-{kind}.{to.upper()}.gguf"
    assert fake_ollama.creates[-1]["files"] == {r["sent_file"]: r["digest"]}
    blob = fake_ollama.blob_dir / r["digest"].replace(":", "-")
    assert {int(t.tensor_type) for t in gguf.GGUFReader(blob).tensors} <= STOCK_TYPES
    assert list(work.iterdir()) == []  # the export is removed after the upload
    assert g.read_bytes() == (tmp_path / f"m-{kind}.gguf").read_bytes()


def test_create_native_on_stock_server_shows_server_message(tmp_path, fake_ollama):
    g = write_gguf(tmp_path / "m.gguf", "tp4")
    with pytest.raises(TritpackError) as e:
        ol.create_ollama_model("native-tp4", g, host=fake_ollama.url, compat="native", exporter=FakeExporter())
    msg = str(e.value)
    assert "unsupported tensor type 81" in msg and "--compat auto" in msg
    assert "native-tp4" not in fake_ollama.models


def test_create_native_on_patched_server(tmp_path, patched_ollama):
    g = write_gguf(tmp_path / "m.gguf", "tp1")
    exp = FakeExporter()
    r = ol.create_ollama_model("native-tp1", g, host=patched_ollama.url, compat="native", exporter=exp)
    assert exp.calls == [] and r["export"] is None and r["digest"] == f"sha256:{sha256_hex(g)}"
    assert "native-tp1" in patched_ollama.models


def test_create_failure_shows_server_message(tmp_path, fake_ollama):
    with pytest.raises(TritpackError, match="no space left on device"):
        ol.create_ollama_model("failing", write_gguf(tmp_path / "m.gguf"), host=fake_ollama.url)


def test_fake_server_checks_digest(tmp_path, fake_ollama):
    """The loopback server refuses a body whose sha256 is not the digest in the URL (as Ollama does)."""
    import ollama

    c = ollama.Client(host=fake_ollama.url)
    with pytest.raises(ollama.ResponseError, match="digest mismatch"):
        c._request_raw("POST", f"/api/blobs/sha256:{'0' * 64}", content=b"not the right bytes")
    assert c.create_blob(write_gguf(tmp_path / "m.gguf")) == f"sha256:{sha256_hex(tmp_path / 'm.gguf')}"


def test_create_unreachable_server(tmp_path):
    g = write_gguf(tmp_path / "m.gguf")
    with pytest.raises(TritpackError, match="cannot reach the Ollama server at http://127.0.0.1:") as e:
        ol.create_ollama_model("x", g, host=f"http://127.0.0.1:{closed_port()}")
    assert "ollama serve" in str(e.value)


@pytest.mark.parametrize("name", ["../evil", "ns/model", "a\\b", "/abs", "x\x00", "bad\nname", "", "a..b", "-x", "m:t:u"])
def test_create_invalid_names_refused_before_any_request(tmp_path, fake_ollama, name):
    g = write_gguf(tmp_path / "m.gguf")
    with pytest.raises(TritpackError, match="invalid Ollama model name"):
        ol.create_ollama_model(name, g, host=fake_ollama.url)
    assert fake_ollama.requests == []


def test_create_cli(tmp_path, fake_ollama, monkeypatch):
    g = write_gguf(tmp_path / "m.gguf", "tp1")
    exp = FakeExporter()
    monkeypatch.setattr(ol, "default_exporter", lambda: exp)
    res = CliRunner().invoke(ol_cli.app, ["create", "cli-tp1", str(g), "--host", fake_ollama.url, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["export"] == "q4_0" and doc["statuses"][-1] == "success" and len(exp.calls) == 1
    res = CliRunner().invoke(ol_cli.app, ["create", "cli-tp1b", str(g), "--host", fake_ollama.url])
    assert res.exit_code == 0, res.output
    assert "created cli-tp1b" in res.stdout and "Q4_0" in res.output
    res = CliRunner().invoke(ol_cli.app, ["create", "cli-x", str(g), "--host", fake_ollama.url, "--compat", "bogus"])
    assert res.exit_code != 0


# ------------------------------------------------------------------------------------------------
# a real Ollama, when $OLLAMA_HOST reaches one
# ------------------------------------------------------------------------------------------------

def _real_ollama() -> str | None:
    host = os.environ.get("OLLAMA_HOST")
    if not host:
        return None
    import httpx
    import ollama

    try:
        c = ollama.Client(host=host, timeout=3)
        c._request_raw("GET", "/api/version")
        return host
    except (ConnectionError, httpx.HTTPError, ollama.ResponseError):
        return None


REAL_OLLAMA = _real_ollama()


@pytest.mark.skipif(REAL_OLLAMA is None, reason="no real Ollama: $OLLAMA_HOST is unset or does not answer "
                                                "(the loopback-server tests above ran instead)")
def test_real_ollama_create_and_delete(tmp_path):
    import ollama

    name = f"tritpack-test-{uuid.uuid4().hex[:8]}:latest"
    g = write_gguf(tmp_path / "tiny.gguf")
    r = ol.create_ollama_model(name, g, host=REAL_OLLAMA)
    c = ollama.Client(host=REAL_OLLAMA)
    try:
        assert r["statuses"][-1] == "success"
        assert any(m.model == name for m in c.list().models)
    finally:
        c.delete(name)
