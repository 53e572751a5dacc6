"""`tritpack-gguf ollama serve`: Ollama's API in front of the patched llama-server, checked with the
clients people use: the official `ollama` Python client (sync and async), the official `ollama` npm
package driven by node, and the request sequence of `ollama run` as the Go client sends it (with the
Go client's NDJSON rules). Tiny TritPack models are made here; every server binds loopback and is
stopped at the end of the module (no llama-server child may outlive it).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import ollama
import pytest
from gguf import GGMLQuantizationType as Q
from typer.testing import CliRunner

from tritpack_gguf.cli import ollama as ol_cli
from tritpack_gguf.convert import ConvertOptions, convert
from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file
from tritpack_gguf.serve import free_port

NAME = "tiny-tp4"
# a training context far beyond memory (only the header says so): `num_ctx` up to it is allowed, and the
# KV cache of 2^30 positions (512 GiB) is refused before anything loads
BIG_CTX = 1 << 30
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
GO_MAX_LINE = 512 * 1024
OLLAMA_JS = "0.6.4"  # the official npm package, installed by the test into the cache  # the Go client's bufio.Scanner buffer: a longer line is an error there


# ----------------------------------------------------------------------------- models and servers

@pytest.fixture(scope="module")
def models(tmp_path_factory, patched_build):
    d = tmp_path_factory.mktemp("ollama-serve")
    vocab = vocab_file(patched_build.source_dir)
    out = {}
    for kind, ternary, seed in (("tp4", False, 3), ("tp1", True, 4)):
        raw = make_llama(d / f"raw-{kind}.gguf", vocab, Shape(n_ctx=BIG_CTX), seed=seed, ternary=ternary, dtype=Q.F16)
        out[kind] = Path(convert(raw, ConvertOptions(type=kind, output=d / f"tiny-{kind.upper()}.gguf", threads=1)).output)
        if kind == "tp4":  # the same weights as an embedding model: a pooling type in the header
            pooled = _with_pooling(raw, d / "raw-embed.gguf")
            out["embed"] = Path(convert(pooled, ConvertOptions(type="tp4", output=d / "tiny-embed-TP4.gguf",
                                                               threads=1)).output)
            pooled.unlink()
        raw.unlink()
    return out


def _with_pooling(src: Path, dst: Path) -> Path:
    """A copy of `src` with llama.pooling_type = mean (what embedding GGUFs carry)."""
    import numpy as np
    from gguf import GGUFWriter

    from tritpack_gguf.converters.reader import GGUFFile, copy_fields

    f = GGUFFile(src)
    w = GGUFWriter(str(dst), f.architecture)
    copy_fields(f, w, skip=set())
    w.add_uint32("llama.pooling_type", 1)
    for t in f.tensors:
        dt = {Q.F16: np.float16, Q.F32: np.float32}[t.type]
        w.add_tensor(t.name, np.frombuffer(f.raw(t).tobytes(), dtype=dt).reshape(t.shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


class Server:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.registry = tmp / f"registry-{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        argv = [sys.executable, "-m", "tritpack_gguf.cli", "ollama", "serve", "--port", str(self.port),
                "--models-dir", str(self.registry), "-t", "1", "--ctx", "512", *args]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "wb"), start_new_session=True)
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url, timeout=2).text == "Ollama is running":
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"the server did not start: {self.log.read_text()}")

    def llama_children(self) -> list[int]:
        return [p for p in _children(self.proc.pid) if any("llama-server" in a for a in _cmdline(p)[:1])]

    def tree_rss(self) -> int:
        return _rss(self.proc.pid) + sum(_rss(p) for p in _children(self.proc.pid))

    def stop(self) -> None:
        kids = self.llama_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError("the server did not stop on SIGTERM")
        for k in kids:  # every llama-server child went with it
            for _ in range(50):
                if not Path(f"/proc/{k}").exists() or "Z" in Path(f"/proc/{k}/stat").read_text().split()[2]:
                    break
                time.sleep(0.1)
            else:
                os.kill(k, signal.SIGKILL)
                raise AssertionError(f"llama-server {k} outlived the server")
        assert self.proc.returncode == 0, self.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("srv"), "--parallel", "2")
    try:
        # registered as users do it: `tritpack-gguf ollama create NAME FILE --compat native --host URL`,
        # which uploads the blob and calls /api/create through the official client
        res = CliRunner().invoke(ol_cli.app, ["create", NAME, str(models["tp4"]), "--compat", "native",
                                              "--host", s.url, "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["statuses"][-1] == "success"
        yield s
    finally:
        s.stop()


def _client(server) -> ollama.Client:
    return ollama.Client(host=server.url.removeprefix("http://"), timeout=120)


def _alive(server) -> None:
    assert server.proc.poll() is None
    assert httpx.get(server.url, timeout=5).text == "Ollama is running"
    r = _client(server).chat(model=NAME, messages=[{"role": "user", "content": "still there?"}],
                             options={"num_predict": 4})
    assert r.done and r.eval_count >= 1


# ----------------------------------------------------------------------------- the Python client

def test_python_client_sync(server, models):
    c = _client(server)
    assert httpx.head(server.url + "/", timeout=5).status_code == 200
    assert httpx.get(server.url + "/api/version", timeout=5).json()["version"]
    names = [m.model for m in c.list().models]
    assert f"{NAME}:latest" in names
    tag = next(m for m in c.list().models if m.model == f"{NAME}:latest")
    assert tag.size >= models["tp4"].stat().st_size and tag.details.quantization_level == "TP4"
    assert re.fullmatch(r"[0-9a-f]{64}", tag.digest)

    info = c.show(NAME)
    assert info.details.family == "llama" and info.details.format == "gguf"
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.context_length"] == BIG_CTX
    assert info.modelinfo["tokenizer.ggml.tokens"] is None  # long arrays only with verbose, as Ollama shows them
    assert info.capabilities == ["completion"]

    r = c.chat(model=NAME, messages=[{"role": "user", "content": "Say hello."}], options={"num_predict": 6, "seed": 1,
                                                                                        "temperature": 0})
    assert r.message.role == "assistant" and r.message.content and r.done and r.done_reason in ("stop", "length")
    assert r.eval_count >= 1 and r.prompt_eval_count >= 1 and r.total_duration >= r.eval_duration > 0
    # the same seed and options give the same text: the options reach llama-server
    again = c.chat(model=NAME, messages=[{"role": "user", "content": "Say hello."}],
                   options={"num_predict": 6, "seed": 1, "temperature": 0})
    assert again.message.content == r.message.content

    parts = list(c.chat(model=NAME, messages=[{"role": "user", "content": "Count."}], stream=True,
                        options={"num_predict": 5}))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].eval_count >= 1
    assert "".join(p.message.content for p in parts)

    g = c.generate(model=NAME, prompt="Once upon a time", options={"num_predict": 5})
    assert g.response and g.done and g.context and all(isinstance(t, int) for t in g.context)
    streamed = list(c.generate(model=NAME, prompt="Once", stream=True, options={"num_predict": 3}))
    assert streamed[-1].done and streamed[-1].done_reason == "length" and streamed[-1].eval_count == 3
    raw = c.generate(model=NAME, prompt="abc", raw=True, options={"num_predict": 2, "stop": ["\n"]})
    assert raw.done

    # format: a JSON schema constrains the output (for chat and generate); tools reach the template
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    for out in (c.chat(model=NAME, messages=[{"role": "user", "content": "a number"}], format=schema,
                       options={"num_predict": 200}).message.content,
                c.generate(model=NAME, prompt="a number", format=schema, options={"num_predict": 200}).response):
        assert isinstance(json.loads(out)["n"], int), out
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather of a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}}}]
    assert c.chat(model=NAME, messages=[{"role": "user", "content": "Paris?"}], tools=tools,
                  options={"num_predict": 4}).done
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model=NAME, messages=[{"role": "user", "content": "x"}], think=True)
    assert e.value.status_code == 400 and "does not support thinking" in e.value.error

    ps = c.ps().models
    assert [m.model for m in ps] == [f"{NAME}:latest"] and ps[0].expires_at and ps[0].context_length == 512

    e = c.embed(model=NAME, input=["hello world", "a tiny TritPack model"])
    assert len(e.embeddings) == 2 and len(e.embeddings[0]) == 128
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-3 for v in e.embeddings)
    assert e.embeddings[0] != e.embeddings[1] and e.prompt_eval_count >= 4
    short = c.embed(model=NAME, input="hello", dimensions=16)
    assert len(short.embeddings[0]) == 16
    legacy = c.embeddings(model=NAME, prompt="hello world")
    assert len(legacy.embedding) == 128
    assert len(c.ps().models) == 1  # the embedding child is shown with its model, not as a second model


def test_python_client_async(server):
    async def go():
        c = ollama.AsyncClient(host=server.url, timeout=120)
        assert f"{NAME}:latest" in [m.model for m in (await c.list()).models]
        assert (await c.show(NAME)).details.quantization_level == "TP4"
        r = await c.chat(model=NAME, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4})
        assert r.done and r.message.content
        chunks = [p async for p in await c.chat(model=NAME, messages=[{"role": "user", "content": "hi"}], stream=True,
                                                options={"num_predict": 4})]
        assert chunks[-1].done and len(chunks) >= 2
        g = await c.generate(model=NAME, prompt="The", options={"num_predict": 3})
        assert g.done and g.eval_count == 3
        gs = [p async for p in await c.generate(model=NAME, prompt="The", stream=True, options={"num_predict": 3})]
        assert gs[-1].done
        e = await c.embed(model=NAME, input="hello")
        assert len(e.embeddings) == 1
        assert (await c.ps()).models
        # two at once through one async client
        both = await asyncio.gather(*(c.chat(model=NAME, messages=[{"role": "user", "content": q}],
                                             options={"num_predict": 4}) for q in ("a", "b")))
        assert all(b.done for b in both)

    asyncio.run(go())


def test_an_embedding_model(server, models):
    res = CliRunner().invoke(ol_cli.app, ["create", "tiny-embed", str(models["embed"]), "--compat", "native",
                                          "--host", server.url])
    assert res.exit_code == 0, res.output
    c = _client(server)
    try:
        assert c.show("tiny-embed").capabilities == ["embedding"]
        e = c.embed(model="tiny-embed", input=["first text", "second text", "third"])
        assert len(e.embeddings) == 3 and all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in e.embeddings)
        with pytest.raises(ollama.ResponseError) as err:
            c.chat(model="tiny-embed", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 400 and "does not support chat" in err.value.error
        with pytest.raises(ollama.ResponseError) as err:
            c.generate(model="tiny-embed", prompt="hi")
        assert err.value.status_code == 400 and "does not support generate" in err.value.error
        # truncate: false refuses an input longer than the context instead of cutting it
        with pytest.raises(ollama.ResponseError) as err:
            c.embed(model="tiny-embed", input="word " * 600, truncate=False)
        assert err.value.status_code == 400 and "context length" in err.value.error
        assert len(c.embed(model="tiny-embed", input="word " * 600).embeddings[0]) == 128
    finally:
        c.delete("tiny-embed")


# ----------------------------------------------------------------------------- the JavaScript client

JS = r"""
import { Ollama } from 'ollama';
const o = new Ollama({ host: process.argv[2] });
const model = process.argv[3];
const out = { parts: 0, text: '', last: null };
const stream = await o.chat({ model, messages: [{ role: 'user', content: 'hello' }], stream: true,
                              options: { num_predict: 6 } });
for await (const part of stream) { out.parts++; out.text += part.message.content; if (part.done) out.last = part; }
out.list = (await o.list()).models.map(m => m.name);
const one = await o.chat({ model, messages: [{ role: 'user', content: 'hi' }], options: { num_predict: 3 } });
out.single = one.message.content;
try { await o.chat({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }); out.err = null; }
catch (e) { out.err = String(e.message); out.status = e.status_code; }
console.log(JSON.stringify(out));
"""


def _ollama_js() -> Path:
    """node_modules with the official `ollama` npm package, installed once into the cache (outside the repo)."""
    from tritpack_gguf.paths import locked, tritpack_home

    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        pytest.skip("npm/node are not installed: the ollama-js check needs them (apt-get install nodejs npm)")
    prefix = tritpack_home() / "npm" / "ollama-js"
    pkg = prefix / "node_modules" / "ollama" / "package.json"
    with locked(prefix.parent / "ollama-js.lock"):
        if not pkg.is_file() or json.loads(pkg.read_text()).get("version") != OLLAMA_JS:
            prefix.mkdir(parents=True, exist_ok=True)
            r = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", f"ollama@{OLLAMA_JS}"],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return prefix


def test_javascript_client_chat_stream_and_list(server):
    prefix = _ollama_js()
    script = prefix / "check.mjs"
    script.write_text(JS)
    r = subprocess.run(["node", str(script), server.url, NAME], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["parts"] >= 2 and out["text"] and out["last"]["done"] is True and out["last"]["eval_count"] >= 1
    assert f"{NAME}:latest" in out["list"] and out["single"]
    assert "not found" in out["err"] and out["status"] == 404


# ----------------------------------------------------------------------------- the OpenAI client on /v1, as on Ollama

def test_openai_client_on_v1(server):
    import openai

    c = openai.OpenAI(base_url=server.url + "/v1", api_key="ollama")
    assert f"{NAME}:latest" in [m.id for m in c.models.list().data]
    r = c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert r.choices[0].message.content and r.usage.completion_tokens >= 1
    chunks = list(c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                            stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    e = c.embeddings.create(model=NAME, input=["hello", "world"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 128
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])


# ----------------------------------------------------------------------------- `ollama run`, as the Go client sends it

GO_HEADERS = {"Content-Type": "application/json", "Accept": "application/x-ndjson",
              "User-Agent": "ollama/0.13.0 (amd64 linux) Go/go1.24.0"}


def _go_stream(client: httpx.Client, path: str, body: dict) -> list[dict]:
    """POST as api.Client.stream does and parse as it does: a status >= 400 is an error; then each
    line (bufio.Scanner, at most 512 KiB) is one JSON object; a line with `error` is an error."""
    with client.stream("POST", path, content=json.dumps(body), headers=GO_HEADERS) as r:
        raw = b"".join(r.iter_bytes())
        assert r.status_code < 400, raw
    # bufio.ScanLines: \n ends a line (a \r before it is dropped), nothing else; a last line may lack it
    lines = raw.split(b"\n")
    lines = lines[:-1] if lines[-1] == b"" else lines
    objs = []
    for line in (ln.removesuffix(b"\r") for ln in lines):
        assert line and len(line) < GO_MAX_LINE  # an empty line fails Go's json.Unmarshal
        obj = json.loads(line)
        assert isinstance(obj, dict) and not obj.get("error"), obj
        assert RFC3339.match(obj["created_at"]), obj["created_at"]  # time.Time's UnmarshalJSON
        for k in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                  "eval_duration"):
            assert k not in obj or isinstance(obj[k], int)  # time.Duration and int: a float fails to decode
        objs.append(obj)
    assert objs and objs[-1]["done"] is True and all(o["done"] is False for o in objs[:-1])
    return objs


class _Ticks:
    """The event loop's turns, counted by a task that wakes every 50 ms: none while something holds the loop."""

    def __init__(self) -> None:
        self.n = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.n += 1


def test_explaining_a_failed_request_does_not_stall_the_event_loop():
    """Runner.explain asks the RPC helpers whether they still answer (a TCP connect each, up to 2 s):
    that runs in a worker thread, so the server keeps answering other requests meanwhile."""
    from tritpack_gguf.errors import TritpackError
    from tritpack_gguf.ollama_server.registry import ApiError
    from tritpack_gguf.ollama_server.runners import Runner
    from tritpack_gguf.programs import HelperWatch

    class SlowWatch(HelperWatch):
        def explain(self, e: TritpackError) -> TritpackError:
            time.sleep(0.6)  # as a connect to a silent helper host
            return TritpackError(f"RPC server 10.0.0.9:50052 stopped answering; {e.message}")

    async def go():
        r = Runner(("m", "generate"), None, None, None, watch=SlowWatch(["10.0.0.9:50052"]))
        ticks = _Ticks()
        told = await r.explain(ApiError(500, "llama-server failed"))
        ticks.task.cancel()
        return told, ticks.n

    told, ticks = asyncio.run(go())
    assert told.status == 500 and told.message.startswith("RPC server 10.0.0.9:50052 stopped answering")
    assert ticks >= 6, ticks  # about 12 in 0.6 s; 0 if explain held the loop


def test_a_client_leaving_mid_load_does_not_stall_the_event_loop(tmp_path, monkeypatch):
    """A client that leaves while its model loads: the half-loaded child is stopped (SIGTERM, up to 5 s
    before SIGKILL) in a worker thread that runs to its end, so the server keeps answering the others
    meanwhile, and stop_all waits for that child."""
    from types import SimpleNamespace

    from tritpack_gguf.ollama_server import runners as R

    class LoadingServer:  # a llama-server that loads until it is stopped, and takes 0.6 s to stop
        rpc: list = []

        def __init__(self) -> None:
            self.stopping, self.stopped = threading.Event(), threading.Event()

        def wait_ready(self, timeout: float) -> None:
            self.stopping.wait(timeout)

        def stop(self, grace: float = 5) -> int:
            self.stopping.set()
            time.sleep(0.6)
            self.stopped.set()
            return 0

    child = LoadingServer()
    monkeypatch.setattr(R, "start_server", lambda *a, **k: child)
    blob = tmp_path / "m.gguf"
    blob.write_bytes(b"GGUF")
    m = SimpleNamespace(short="m", blob=blob, digest="sha256:0")
    facts = SimpleNamespace(kv_bytes_per_token=0, pooling=None, context_length=None)

    async def go():
        runners = R.Runners(session=None, log_dir=tmp_path / "logs", ctx=64, parallel=1, threads=1, ngl=0,
                            keep_alive=300, max_loaded=1)
        async def request():
            async with runners.use(m, facts, {}, "generate", None):
                raise AssertionError("the model never loads")

        ticks = _Ticks()
        req = asyncio.create_task(request())
        await asyncio.sleep(0.2)
        req.cancel()  # the client left
        before, t_cancel = ticks.n, time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await req
        await asyncio.sleep(max(0.0, t_cancel + 0.8 - time.monotonic()))
        during = ticks.n - before
        await runners.stop_all()
        ticks.task.cancel()
        return during

    ticks = asyncio.run(go())
    assert child.stopped.is_set()
    assert ticks >= 8, ticks  # about 16 in 0.8 s; none while a stop held the loop for 0.6 s


def test_ndjson_lines_survive_unicode_line_breaks():
    from tritpack_gguf.ollama_server.api import _line

    text = "a\u2028b\u2029c\x85d\re\nf"
    line = _line({"response": text})
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and len(line.decode().splitlines()) == 1
    assert json.loads(line)["response"] == text


def test_ollama_run_request_sequence(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.head("/", headers=GO_HEADERS).status_code == 200  # checkServerHeartbeat
        # RunHandler: show (the Go struct sends every field), then an empty generate that loads the model
        show = c.post("/api/show", headers=GO_HEADERS, content=json.dumps(
            {"model": NAME, "system": "", "template": "", "verbose": False, "options": None, "name": ""}))
        assert show.status_code == 200 and "completion" in show.json()["capabilities"]
        missing = c.post("/api/show", headers=GO_HEADERS, content=json.dumps({"model": "nope", "name": ""}))
        assert missing.status_code == 404 and "not found" in missing.json()["error"]  # -> `ollama run` pulls
        load = _go_stream(c, "/api/generate", {"model": NAME, "prompt": "", "suffix": "", "system": "", "template": "",
                                               "options": None})
        assert load[-1]["done_reason"] == "load" and load[-1]["response"] == ""
        # generateInteractive: one chat a turn, the history growing
        history: list[dict] = []
        for turn in ("Hello there", "And again"):
            history.append({"role": "user", "content": turn})
            objs = _go_stream(c, "/api/chat", {"model": NAME, "messages": history, "options": {}})
            text = "".join(o["message"]["content"] for o in objs)
            assert text and all(o["message"]["role"] == "assistant" for o in objs)
            assert objs[-1]["done_reason"] in ("stop", "length") and objs[-1]["eval_count"] >= 1
            history.append({"role": "assistant", "content": text})
        # `ollama stop`: an empty generate with keep_alive 0 unloads
        stop = _go_stream(c, "/api/generate", {"model": NAME, "prompt": "", "keep_alive": 0, "options": None})
        assert stop[-1]["done_reason"] == "unload"
        assert c.get("/api/ps").json()["models"] == []


# ----------------------------------------------------------------------------- load and disconnects

def _slots_busy(port: int) -> list[bool]:
    return [bool(s.get("is_processing")) for s in httpx.get(f"http://127.0.0.1:{port}/slots", timeout=5).json()]


def test_eight_concurrent_clients_and_a_disconnect(server, count_line):
    def one_round() -> tuple[list, float]:
        results: list = [None] * 8

        def client(i: int) -> None:
            c = _client(server)
            try:
                parts = list(c.chat(model=NAME, messages=[{"role": "user", "content": f"client {i}"}], stream=True,
                                    options={"num_predict": 24, "seed": i}))
                results[i] = parts[-1]
            except Exception as e:  # noqa: BLE001  (reported below)
                results[i] = e

        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        return results, time.monotonic() - t0

    rss, times = [], []
    for _ in range(2):
        results, took = one_round()
        times.append(took)
        for r in results:
            assert isinstance(r, ollama.ChatResponse), r
            assert r.done and r.eval_count >= 1 and r.done_reason in ("stop", "length")
        assert took < 60, f"8 clients took {took:.1f} s"
        rss.append(server.tree_rss())
    assert rss[1] - rss[0] < 32 << 20, f"memory grew from {rss[0] >> 20} MiB to {rss[1] >> 20} MiB"

    # a client that goes away mid-stream: its llama-server slot is freed, the model is not left busy
    port = next(int(a[a.index("--port") + 1]) for a in map(_cmdline, server.llama_children())
                if "--embeddings" not in a)
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", server.url + "/api/chat", json={
                "model": NAME, "messages": [{"role": "user", "content": "go on forever"}],
                "options": {"num_predict": 100000, "temperature": 1.5}}) as r:
            lines = r.iter_lines()
            for _ in range(3):
                assert json.loads(next(lines))["done"] is False
    t_left = time.monotonic()
    while any(_slots_busy(port)) and time.monotonic() < t_left + 10:
        time.sleep(0.05)
    assert not any(_slots_busy(port)), "a slot is still generating for a client that left"
    count_line(f"ollama serve: 2 rounds of 8 concurrent streamed chats (24 tokens each, --parallel 2) in "
               f"{times[0]:.1f} s and {times[1]:.1f} s; server+children RSS {rss[0] / 2**20:.0f} -> "
               f"{rss[1] / 2**20:.0f} MiB; a client gone mid-stream freed its slot within "
               f"{time.monotonic() - t_left:.2f} s")
    _alive(server)

    # a llama-server child that dies mid-stream: the stream ends with an error line, the next request reloads
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", server.url + "/api/chat", json={
                "model": NAME, "messages": [{"role": "user", "content": "go on"}],
                "options": {"num_predict": 100000, "temperature": 1.5}}) as r:
            lines = r.iter_lines()
            assert json.loads(next(lines))["done"] is False
            for pid in server.llama_children():
                if "--embeddings" not in _cmdline(pid):
                    os.kill(pid, signal.SIGKILL)
            rest = [json.loads(line) for line in lines]
    assert rest and "error" in rest[-1] and "runner" in rest[-1]["error"]
    _alive(server)


def test_keep_alive_unloads(server):
    c = _client(server)
    c.generate(model=NAME, prompt="", keep_alive=0)  # start from nothing loaded
    before = set(server.llama_children())
    r = c.chat(model=NAME, messages=[{"role": "user", "content": "hi"}], keep_alive="1s", options={"num_predict": 2})
    assert r.done and c.ps().models
    new = set(server.llama_children()) - before
    assert new
    t_end = time.monotonic() + 15
    while c.ps().models and time.monotonic() < t_end:
        time.sleep(0.2)
    assert not c.ps().models
    time.sleep(0.5)
    assert not (new & set(server.llama_children()))

    # num_ctx is a load setting: another value reloads the model with it, as in Ollama
    for ctx in (256, 512):
        assert c.chat(model=NAME, messages=[{"role": "user", "content": "hi"}], options={"num_ctx": ctx, "num_predict": 2}).done
        assert [m.context_length for m in c.ps().models] == [ctx]


# ----------------------------------------------------------------------------- bad input

def test_bad_input_is_an_ollama_error_and_the_server_stays_up(server, models):
    c = _client(server)
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and "not found" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        list(c.generate(model="no-such-model", prompt="x", stream=True))
    assert e.value.status_code == 404
    _alive(server)

    for body in (b"{not json", b"", b"[1, 2]", b'{"model": 5}'):
        r = httpx.post(server.url + "/api/chat", content=body, timeout=10)
        assert 400 <= r.status_code < 500 and r.json()["error"], (body, r.text)
    r = httpx.get(server.url + "/api/nothing-here", timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    _alive(server)

    # num_predict far beyond the context: generation stops at the context end ("length"), in bounded time
    t0 = time.monotonic()
    g = c.generate(model=NAME, prompt="go", options={"num_predict": 10**9})
    assert g.done_reason == "length" and g.eval_count <= 512 and time.monotonic() - t0 < 60
    with pytest.raises(ollama.ResponseError) as e:  # beyond what any runtime takes: refused, naming the option
        c.generate(model=NAME, prompt="go", options={"num_predict": 2**40})
    assert e.value.status_code == 400 and "num_predict" in e.value.error
    for bad in ({"temperature": "hot"}, {"top_k": 1.5}, {"stop": 3}, {"num_ctx": 0}):
        with pytest.raises(ollama.ResponseError) as e:
            c.chat(model=NAME, messages=[{"role": "user", "content": "x"}], options=bad)
        assert e.value.status_code == 400 and next(iter(bad)) in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model=NAME, messages=[{"role": "user", "content": "x"}], keep_alive="forever")
    assert e.value.status_code == 400 and "keep_alive" in e.value.error
    _alive(server)

    # a context whose KV cache cannot fit: refused before anything loads, with Ollama's wording
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model=NAME, messages=[{"role": "user", "content": "x"}], options={"num_ctx": BIG_CTX})
    assert e.value.status_code == 500 and "requires more system memory" in e.value.error
    _alive(server)

    # a model whose file is deleted while registered
    res = CliRunner().invoke(ol_cli.app, ["create", "doomed", str(models["tp1"]), "--compat", "native",
                                          "--host", server.url, "--json"])
    assert res.exit_code == 0, res.output
    doomed = c.chat(model="doomed", messages=[{"role": "user", "content": "x"}], options={"num_predict": 2},
                    keep_alive=0)
    assert doomed.done  # a TP1 file runs too
    blob = next(server.registry.glob("blobs/sha256-*"), None)
    digest = json.loads(res.stdout)["digest"].replace(":", "-")
    blob = server.registry / "blobs" / digest
    blob.unlink()
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="doomed", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 500 and "missing" in e.value.error and str(blob) in e.value.error
    assert "doomed:latest" in [m.model for m in c.list().models]  # still listed, and deletable
    c.delete("doomed")
    assert "doomed:latest" not in [m.model for m in c.list().models]

    with pytest.raises(ollama.ResponseError) as e:  # names it cannot fetch
        c.pull("llama3.2:1b")
    assert e.value.status_code == 404 and "tritpack-gguf ollama create" in e.value.error
    r = httpx.post(server.url + "/api/blobs/sha256:" + "0" * 64, content=b"not those bytes", timeout=10)
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
    _alive(server)


def test_create_copy_delete_through_the_client(server):
    c = _client(server)
    st = c.create(model="terse", from_=NAME, system="You answer in one word.", parameters={"temperature": 0.1})
    assert st.status == "success"
    info = c.show("terse")
    assert "temperature" in info.parameters and "one word" in info.modelfile
    assert c.chat(model="terse", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2}).done
    c.copy("terse", "terse2:v1")
    assert {"terse:latest", "terse2:v1"} <= {m.model for m in c.list().models}
    c.delete("terse")
    c.delete("terse2:v1")
    with pytest.raises(ollama.ResponseError) as e:
        c.delete("terse")
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        c.create(model="q", from_=NAME, quantize="q4_K_M")
    assert e.value.status_code == 400 and "tritpack-gguf convert" in e.value.error
    assert {m.model for m in c.list().models} == {f"{NAME}:latest"}
    assert (server.registry / "blobs").is_dir()


# ----------------------------------------------------------------------------- upstream, binding

def test_upstream_passes_unknown_names_through(server, tmp_path):
    front = Server(tmp_path, "--upstream", server.url)  # the first server plays the user's own Ollama
    try:
        c = ollama.Client(host=front.url, timeout=120)
        assert f"{NAME}:latest" in [m.model for m in c.list().models]
        assert c.show(NAME).details.quantization_level == "TP4"
        parts = list(c.chat(model=NAME, messages=[{"role": "user", "content": "hi"}], stream=True,
                            options={"num_predict": 4}))
        assert parts[-1].done and len(parts) >= 2
        assert not front.llama_children()  # served by the upstream, nothing loaded here
        with pytest.raises(ollama.ResponseError) as e:
            c.chat(model="nowhere", messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 404  # the upstream's own answer
    finally:
        front.stop()
    gone = Server(tmp_path, "--upstream", f"http://127.0.0.1:{free_port()}")  # an upstream that is not running
    try:
        c = ollama.Client(host=gone.url, timeout=60)
        assert c.list().models == []  # its own models still list
        with pytest.raises(ollama.ResponseError) as e:
            c.chat(model=NAME, messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 502 and "upstream" in e.value.error
    finally:
        gone.stop()


def test_stops_promptly_with_a_reply_in_flight(models, tmp_path, count_line):
    s = Server(tmp_path)
    try:
        res = CliRunner().invoke(ol_cli.app, ["create", "m", str(models["tp1"]), "--compat", "native", "--host", s.url])
        assert res.exit_code == 0, res.output
        with httpx.Client(timeout=60) as c:
            with c.stream("POST", s.url + "/api/generate", json={"model": "m", "prompt": "go",
                                                                 "options": {"num_predict": 100000}}) as r:
                assert json.loads(next(r.iter_lines()))["done"] is False
                kids = s.llama_children()
                assert kids
                t0 = time.monotonic()
                s.proc.send_signal(signal.SIGTERM)
                s.proc.wait(timeout=30)
        took = time.monotonic() - t0
        assert took < 20 and s.proc.returncode == 0, (took, s.proc.returncode, s.log.read_text()[-2000:])
        count_line(f"ollama serve: stopped by SIGTERM with a reply in flight in {took:.2f} s")
        time.sleep(0.5)
        assert not [k for k in kids if Path(f"/proc/{k}").exists()], "a llama-server child outlived the server"
    finally:
        s.stop()


def test_binds_loopback_unless_told_otherwise():
    from tritpack_gguf.errors import TritpackError
    from tritpack_gguf.ollama_server import ServerConfig, check_config

    assert check_config(ServerConfig(), allow_network=False) == []
    with pytest.raises(TritpackError, match="--allow-network"):
        check_config(ServerConfig(host="0.0.0.0"), allow_network=False)
    warnings = check_config(ServerConfig(host="0.0.0.0"), allow_network=True)
    assert warnings and "no authentication" in warnings[0]
    res = CliRunner().invoke(ol_cli.app, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert res.exit_code != 0 and "--allow-network" in str(res.exception or res.output)


# ----------------------------------------------------------------------------- request fields (no server)

def test_keep_alive_and_options_as_clients_send_them():
    from tritpack_gguf.ollama_server.registry import ApiError
    from tritpack_gguf.ollama_server.translate import FOREVER, parse_keep_alive, parse_options

    # Go's api.Duration marshals as time.Duration.String() ("5m0s"), -1 for "forever"; Python sends numbers too
    for v, secs in (("5m0s", 300), ("1h30m0s", 5400), ("300ms", 0.3), ("1.5h", 5400), ("0s", 0), (0, 0), (10, 10),
                    ("10", 10), (-1, FOREVER), ("-1", FOREVER), ("-1m", FOREVER), (None, None)):
        assert parse_keep_alive(v) == secs, v
    for bad in ("forever", "5 minutes", "m", True, [1], ""):
        with pytest.raises(ApiError):
            parse_keep_alive(bad)
    o = parse_options({"stop": ["<|im_end|>"], "temperature": 0.7, "num_ctx": 2048},
                      {"temperature": 0, "seed": -1, "num_predict": -2, "stop": "END", "top_k": 5.0, "tfs_z": 1.0})
    assert o.sampling == {"stop": ["END"], "temperature": 0.0, "n_predict": -1, "top_k": 5}  # seed -1: random
    assert o.load == {"num_ctx": 2048}
    assert parse_options(None, {"seed": 2**40 + 7}).sampling["seed"] == 7  # llama-server's seeds are 32-bit
