"""Ollama's REST API (aiohttp) in front of patched llama-server children.

Every answer is JSON; a stream is NDJSON (one object a line, no blank lines, as the Go client's
line scanner and ollama-python / ollama-js expect). An error before a stream starts is
`{"error": "..."}` with its HTTP status; once a stream has started, it is a last `{"error": ...}` line.
Names this server does not hold go to `--upstream` (the user's own Ollama) when one is set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp
from aiohttp import web

from .registry import ApiError, LocalModel, Registry, model_key, parse_digest, rfc3339
from .runners import FOREVER, Runners
from .translate import (done_reason, json_format, oai_messages, ollama_tool_calls, open_stream, parse_keep_alive,
                        parse_options, sse, timing_fields)

OLLAMA_API_VERSION = "0.13.0"  # the Ollama API this server speaks (what clients check features against)
log = logging.getLogger("tritpack_gguf.ollama_server")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 11435
    upstream: str | None = None
    models_dir: Path | None = None
    ctx: int = 4096
    parallel: int = 1
    threads: int | None = None
    ngl: int = 0
    keep_alive: float = 300.0
    max_loaded: int = 3
    rpc: str | None = None            # HOST:PORT[,...] of rpc-server helpers every model is split with
    tensor_split: str | None = None
    rpc_stall_s: float | None = None  # a split request with no progress this long fails (None: programs.STALL_S)


class _ToUpstream(Exception):
    """The request names a model this server does not hold: hand it to --upstream as it came."""


REGISTRY = web.AppKey("registry", Registry)
RUNNERS = web.AppKey("runners", Runners)
CONFIG = web.AppKey("config", ServerConfig)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(obj, ensure_ascii=True).encode(),
                        content_type="application/json")


def _line(obj: Any) -> bytes:
    """One NDJSON line, ASCII only: a model's U+2028, U+2029 or U+0085 would split the line for clients
    that split on every Unicode line break (Python's str.splitlines, httpx's iter_lines)."""
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


async def _body(request: web.Request) -> dict:
    raw = await request.read()
    request["raw_body"] = raw
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"invalid JSON in the request body: {e}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return doc


def _name(body: dict, *keys: str) -> str:
    for k in keys or ("model", "name"):
        v = body.get(k)
        if isinstance(v, str) and v:
            return v
    raise ApiError(400, "model is required")


def _lookup(request: web.Request, name: str, *, not_found: str | None = None) -> LocalModel:
    m = request.app[REGISTRY].get(name)
    if m is None:
        if request.app[CONFIG].upstream:
            raise _ToUpstream()
        raise ApiError(404, not_found or f"model \"{name}\" not found, try pulling it first")
    return m


# ------------------------------------------------------------------------------- middleware, upstream

@web.middleware
async def errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return _json({"error": e.message}, e.status)
    except _ToUpstream:
        try:
            return await _proxy(request)
        except ApiError as e:
            return _json({"error": e.message}, e.status)
    except web.HTTPException as e:
        if e.status >= 400:
            return _json({"error": f"{e.status} {e.reason}: {request.method} {request.path}"}, e.status)
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as e:  # a bug: say so in Ollama's shape and keep serving
        log.exception("internal error on %s %s", request.method, request.path)
        return _json({"error": f"internal error: {type(e).__name__}: {e}"}, 500)


async def _proxy(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    body = request.get("raw_body")
    if body is None:
        body = await request.read()
    url = cfg.upstream.rstrip("/") + request.rel_url.path_qs
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept", "authorization",
                                                                       "user-agent")}
    try:
        up = await request.app[SESSION].request(request.method, url, data=body, headers=headers)
    except aiohttp.ClientError as e:
        raise ApiError(502, f"not found here, and the upstream Ollama at {cfg.upstream} did not answer: {e}") from None
    try:
        return await _relay(request, up)
    finally:
        up.close()


async def _relay(request: web.Request, up: aiohttp.ClientResponse) -> web.StreamResponse:
    """`up`'s status, type and body, streamed on; if `up` breaks off, so does this reply (the client
    sees a truncated stream, as it would from the server itself)."""
    resp = web.StreamResponse(status=up.status)
    resp.content_type = up.content_type
    await resp.prepare(request)
    try:
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError) as e:
        log.warning("%s %s: the reply broke off: %s", request.method, request.path, e)
        return resp
    await resp.write_eof()
    return resp


async def _upstream_json(request: web.Request, path: str) -> dict | None:
    cfg = request.app[CONFIG]
    if not cfg.upstream:
        return None
    try:
        async with request.app[SESSION].get(cfg.upstream.rstrip("/") + path,
                                            timeout=aiohttp.ClientTimeout(total=10)) as r:
            return await r.json() if r.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        log.warning("upstream %s did not answer %s", cfg.upstream, path)
        return None


# ------------------------------------------------------------------------------- simple endpoints

async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    return _json({"version": OLLAMA_API_VERSION})


def _tag_entry(reg: Registry, m: LocalModel) -> dict:
    try:
        details = reg.facts(m).details
    except ApiError:
        details = {"parent_model": "", "format": "gguf", "family": "", "families": None, "parameter_size": "",
                   "quantization_level": ""}
    return {"name": m.short, "model": m.short, "modified_at": rfc3339(m.modified_at), "size": m.size,
            "digest": m.manifest_digest, "details": details}


async def tags(request: web.Request) -> web.Response:
    reg = request.app[REGISTRY]
    models = [_tag_entry(reg, m) for m in sorted(reg.list(), key=lambda m: -m.modified_at)]  # newest first
    up = await _upstream_json(request, "/api/tags")
    names = {m["name"].lower() for m in models}
    for m in (up or {}).get("models") or []:
        if isinstance(m, dict) and str(m.get("name", "")).lower() not in names:
            models.append(m)
    return _json({"models": models})


async def ps(request: web.Request) -> web.Response:
    models = request.app[RUNNERS].ps()
    up = await _upstream_json(request, "/api/ps")
    models += [m for m in (up or {}).get("models") or [] if isinstance(m, dict)]
    return _json({"models": models})


def _param_text(params: dict) -> str:
    lines = []
    for k, v in sorted(params.items()):
        for item in (v if isinstance(v, list) else [v]):
            lines.append(f"{k:<30} {json.dumps(item) if isinstance(item, str) else item}")
    return "\n".join(lines)


async def show(request: web.Request) -> web.Response:
    body = await _body(request)
    name = _name(body)
    m = _lookup(request, name, not_found=f"model '{name}' not found")
    reg = request.app[REGISTRY]
    facts = reg.facts(m, verbose=bool(body.get("verbose")))
    template = m.template or facts.chat_template or ""
    mf = ["# Modelfile generated by \"ollama show\"", "# To build a new Modelfile based on this, replace FROM with:",
          f"# FROM {m.short}", "", f"FROM {m.blob}"]
    if template:
        mf.append(f'TEMPLATE """{template}"""')
    if m.system:
        mf.append(f'SYSTEM """{m.system}"""')
    for k, v in sorted(m.parameters.items()):
        for item in (v if isinstance(v, list) else [v]):
            mf.append(f"PARAMETER {k} {item}")
    out = {"license": m.license or "", "modelfile": "\n".join(mf) + "\n", "parameters": _param_text(m.parameters),
           "template": template, "details": facts.details, "model_info": facts.model_info,
           "capabilities": facts.capabilities, "modified_at": rfc3339(m.modified_at)}
    if m.system:
        out["system"] = m.system
    return _json(out)


# ------------------------------------------------------------------------------- generate / chat

def _stream_flag(body: dict) -> bool:
    return body.get("stream") is not False


def _think(body: dict, caps: list[str], name: str) -> Any:
    think = body.get("think")
    if think not in (None, False, "") and "thinking" not in caps:
        raise ApiError(400, f"\"{name}\" does not support thinking")
    return think


async def _load_only(request: web.Request, m: LocalModel, body: dict, mode: str, reply: dict) -> web.Response:
    """An empty prompt / no messages: load the model (or, with keep_alive 0, unload it), as Ollama does."""
    reg, runners = request.app[REGISTRY], request.app[RUNNERS]
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    if keep_alive == 0:
        await runners.unload(m.short)
        reason = "unload"
    else:
        facts = reg.facts(m)
        opts = parse_options(m.parameters, body.get("options"))
        async with runners.use(m, facts, opts.load, mode, keep_alive):
            pass
        reason = "load"
    return _json({"model": _name(body), "created_at": rfc3339(), **reply, "done": True, "done_reason": reason})


class _Writer:
    """NDJSON out, started lazily so that an error before the first line is still an HTTP status."""

    def __init__(self, request: web.Request, stream: bool) -> None:
        self.request, self.stream, self.resp = request, stream, None

    async def send(self, obj: dict) -> None:
        if self.resp is None:
            self.resp = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
            await self.resp.prepare(self.request)
        await self.resp.write(_line(obj))

    async def finish(self) -> web.StreamResponse:
        assert self.resp is not None
        await self.resp.write_eof()
        return self.resp

    async def end(self, last: dict) -> web.StreamResponse:
        """The reply's last object: the one JSON body without streaming (status 500 for an error that
        came before anything was sent), else the final NDJSON line."""
        if not self.stream:
            return _json(last, 500 if "error" in last else 200)
        await self.send(last)
        return await self.finish()


async def _completion_request(request: web.Request, what: str) -> tuple[int, dict, str, LocalModel, Any]:
    """What generate and chat start with: (start time, body, model name, the model, its facts), a 400
    when the model cannot complete text (`what`: the endpoint, for the message)."""
    t0 = time.monotonic_ns()
    body = await _body(request)
    name = _name(body)
    m = _lookup(request, name)
    facts = request.app[REGISTRY].facts(m)
    if "completion" not in facts.capabilities:
        raise ApiError(400, f"\"{name}\" does not support {what}")
    return t0, body, name, m, facts


def _request_settings(m: LocalModel, body: dict) -> tuple[Any, dict | None, float | None]:
    """The options (over the model's parameters), the `format` schema and keep_alive of a request."""
    return (parse_options(m.parameters, body.get("options")), json_format(body.get("format")),
            parse_keep_alive(body.get("keep_alive")))


async def generate(request: web.Request) -> web.StreamResponse:
    t0, body, name, m, facts = await _completion_request(request, "generate")
    runners, session = request.app[RUNNERS], request.app[SESSION]
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    if body.get("images"):
        raise ApiError(400, "this model does not support image input (no vision projector)")
    if body.get("suffix"):
        raise ApiError(400, "suffix (fill-in-the-middle) is not supported by this server")
    if body.get("template"):
        raise ApiError(400, "a request `template` (Go template) is not supported: the model's own chat template "
                            "is used; send \"raw\": true with a formatted prompt instead")
    _think(body, facts.capabilities, name)
    if not prompt and not body.get("context"):
        return await _load_only(request, m, body, "generate", {"response": ""})
    opts, schema, keep_alive = _request_settings(m, body)
    context = body.get("context") or []
    if not isinstance(context, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
        raise ApiError(400, "context must be a list of token ids")
    stream = _stream_flag(body)
    system = body.get("system") or m.system
    async with runners.use(m, facts, opts.load, "generate", keep_alive) as (r, load_ns):
        text = prompt
        if not body.get("raw"):
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            resp = await open_stream(session, r.url + "/apply-template", {"messages": msgs})
            text = (await resp.json()).get("prompt", prompt)
            resp.release()
        resp = await open_stream(session, r.url + "/tokenize", {"content": text, "add_special": not context})
        tokens = context + list((await resp.json()).get("tokens") or [])
        resp.release()
        payload = {"prompt": tokens, "stream": True, "return_tokens": True, "cache_prompt": True, **opts.sampling}
        if schema is not None:
            payload["json_schema"] = schema
        resp = await open_stream(session, r.url + "/completion", payload)
        out = _Writer(request, stream)
        parts: list[str] = []
        try:
            final: dict = {}
            async for ev in sse(resp):
                tokens += [t for t in ev.get("tokens") or [] if isinstance(t, int)]
                piece = ev.get("content") or ""
                if ev.get("stop"):
                    final = ev
                if piece:
                    if stream:
                        await out.send({"model": name, "created_at": rfc3339(), "response": piece, "done": False})
                    else:
                        parts.append(piece)
            last = {"model": name, "created_at": rfc3339(), "response": "" if stream else "".join(parts), "done": True,
                    "done_reason": done_reason(final.get("stop_type")), "context": tokens,
                    **timing_fields(final.get("timings") or {}, total_ns=time.monotonic_ns() - t0, load_ns=load_ns,
                                    prompt_n=final.get("tokens_evaluated"), eval_n=final.get("tokens_predicted"))}
        except ApiError as e:
            if out.resp is None:
                raise
            last = {"error": (await r.explain(e)).message}
        finally:
            resp.close()
        return await out.end(last)


async def chat(request: web.Request) -> web.StreamResponse:
    t0, body, name, m, facts = await _completion_request(request, "chat")
    runners, session = request.app[RUNNERS], request.app[SESSION]
    think = _think(body, facts.capabilities, name)
    messages = body.get("messages") or []
    if not messages:
        return await _load_only(request, m, body, "generate", {"message": {"role": "assistant", "content": ""}})
    msgs = oai_messages(messages, m.system)
    opts, schema, keep_alive = _request_settings(m, body)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ApiError(400, "tools must be a list")
    stream = _stream_flag(body)
    payload: dict[str, Any] = {"messages": msgs, "stream": True, "stream_options": {"include_usage": True},
                               "cache_prompt": True, **opts.sampling}
    if tools:
        payload["tools"] = tools
    if think is False and "thinking" in facts.capabilities:
        payload["chat_template_kwargs"] = {"enable_thinking": False}
    # `format` without tools: the rendered chat as a prompt, constrained by the schema alone (llama-server's
    # chat endpoint wraps the grammar around the template's generation prompt, which fails to build for
    # templates whose markers are not tokens of the vocabulary)
    via_completion = schema is not None and not tools
    if schema is not None and tools:
        payload["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}

    async def open_chat(r) -> aiohttp.ClientResponse:
        if not via_completion:
            return await open_stream(session, r.url + "/v1/chat/completions", payload)
        tr = await open_stream(session, r.url + "/apply-template",
                               {k: v for k, v in payload.items() if k in ("messages", "chat_template_kwargs")})
        text = (await tr.json()).get("prompt", "")
        tr.release()
        return await open_stream(session, r.url + "/completion", {"prompt": text, "stream": True, "cache_prompt": True,
                                                                  "json_schema": schema, **opts.sampling})

    async with runners.use(m, facts, opts.load, "generate", keep_alive) as (r, load_ns):
        while True:
            try:
                resp = await open_chat(r)
                break
            except ApiError as e:
                # as Ollama: a history longer than the context loses its oldest turns (system kept)
                drop = [i for i, x in enumerate(payload["messages"]) if x["role"] != "system"]
                if "exceeds the available context size" not in e.message or len(drop) <= 1:
                    raise
                payload["messages"] = [x for i, x in enumerate(payload["messages"]) if i != drop[0]]
        out = _Writer(request, stream)
        content: list[str] = []
        thinking: list[str] = []
        calls: dict[int, dict] = {}
        try:
            finish, timings, usage = None, {}, {}
            async for ev in sse(resp):
                if via_completion:  # /completion's events in the chat endpoint's shape
                    ev = {"choices": [{"delta": {"content": ev.get("content") or ""},
                                       "finish_reason": ("length" if ev.get("stop_type") == "limit" else "stop")
                                       if ev.get("stop") else None}],
                          "timings": ev.get("timings"),
                          "usage": {"prompt_tokens": ev.get("tokens_evaluated"),
                                    "completion_tokens": ev.get("tokens_predicted")} if ev.get("stop") else None}
                timings = ev.get("timings") or timings
                usage = ev.get("usage") or usage
                for ch in ev.get("choices") or []:
                    d = ch.get("delta") or {}
                    piece, thought = d.get("content") or "", d.get("reasoning_content") or ""
                    for tc in d.get("tool_calls") or []:
                        c = calls.setdefault(int(tc.get("index", len(calls))), {"name": "", "arguments": "", "id": None})
                        fn = tc.get("function") or {}
                        c["id"] = c["id"] or tc.get("id")
                        c["name"] += fn.get("name") or ""
                        c["arguments"] += fn.get("arguments") or ""
                    finish = ch.get("finish_reason") or finish
                    if piece or thought:
                        if stream:
                            msg = {"role": "assistant", "content": piece}
                            if thought:
                                msg["thinking"] = thought
                            await out.send({"model": name, "created_at": rfc3339(), "message": msg, "done": False})
                        else:
                            content.append(piece)
                            thinking.append(thought)
            message: dict[str, Any] = {"role": "assistant", "content": "" if stream else "".join(content)}
            if not stream and "".join(thinking):
                message["thinking"] = "".join(thinking)
            if calls:
                message["tool_calls"] = ollama_tool_calls(calls)
            last = {"model": name, "created_at": rfc3339(), "message": message, "done": True,
                    "done_reason": done_reason(finish),
                    **timing_fields(timings, total_ns=time.monotonic_ns() - t0, load_ns=load_ns,
                                    prompt_n=usage.get("prompt_tokens"), eval_n=usage.get("completion_tokens"))}
        except ApiError as e:
            if out.resp is None:
                raise
            last = {"error": (await r.explain(e)).message}
        finally:
            resp.close()
        return await out.end(last)


# ------------------------------------------------------------------------------- embeddings

async def _embed_vectors(request: web.Request, m: LocalModel, inputs: list[str], *, truncate: bool,
                         normalize: bool, body: dict) -> tuple[list[list[float]], int, int]:
    reg, runners, session = request.app[REGISTRY], request.app[RUNNERS], request.app[SESSION]
    facts = reg.facts(m)
    opts = parse_options(m.parameters, body.get("options"))
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    async with runners.use(m, facts, opts.load, "embed", keep_alive) as (r, load_ns):
        if not inputs:
            return [], 0, load_ns
        token_lists = []
        for text in inputs:
            resp = await open_stream(session, r.url + "/tokenize", {"content": text, "add_special": True})
            toks = (await resp.json()).get("tokens") or []
            resp.release()
            if len(toks) > r.spec.ctx:
                if not truncate:
                    raise ApiError(400, f"the input length ({len(toks)} tokens) exceeds the context length "
                                        f"({r.spec.ctx}); send truncate: true or a larger num_ctx")
                toks = toks[:r.spec.ctx]
            token_lists.append(toks)
        resp = await open_stream(session, r.url + "/v1/embeddings",
                                 {"input": token_lists, "embd_normalize": 2 if normalize else -1})
        doc = await resp.json()
        resp.release()
    data = sorted(doc.get("data") or [], key=lambda d: d.get("index", 0))
    vecs = [d.get("embedding") or [] for d in data]
    n_tokens = int((doc.get("usage") or {}).get("prompt_tokens") or sum(len(t) for t in token_lists))
    return vecs, n_tokens, load_ns


def _embedding_model(request: web.Request, name: str) -> LocalModel:
    m = _lookup(request, name)
    request.app[REGISTRY].facts(m)  # a missing or unreadable file is named before anything loads
    return m


async def embed(request: web.Request) -> web.Response:
    t0 = time.monotonic_ns()
    body = await _body(request)
    name = _name(body)
    m = _embedding_model(request, name)
    inp = body.get("input")
    inputs = [inp] if isinstance(inp, str) else inp if isinstance(inp, list) else None
    if inputs is None or not all(isinstance(s, str) for s in inputs):
        raise ApiError(400, "input must be a string or a list of strings")
    inputs = [s for s in inputs if s != ""] if inputs != [""] else []
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise ApiError(400, "dimensions must be a positive integer")
    vecs, n_tokens, load_ns = await _embed_vectors(request, m, inputs, truncate=body.get("truncate") is not False,
                                                   normalize=True, body=body)
    if dims:
        if vecs and dims > len(vecs[0]):
            raise ApiError(400, f"dimensions {dims} is larger than the model's embedding length {len(vecs[0])}")
        cut = []
        for v in vecs:
            v = v[:dims]
            norm = math.sqrt(sum(x * x for x in v)) or 1.0
            cut.append([x / norm for x in v])
        vecs = cut
    return _json({"model": name, "embeddings": vecs, "total_duration": time.monotonic_ns() - t0,
                  "load_duration": load_ns, "prompt_eval_count": n_tokens})


async def embeddings(request: web.Request) -> web.Response:
    body = await _body(request)
    name = _name(body)
    m = _embedding_model(request, name)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    vecs, _, _ = await _embed_vectors(request, m, [prompt] if prompt else [], truncate=True, normalize=False, body=body)
    return _json({"embedding": vecs[0] if vecs else []})


# ------------------------------------------------------------------------------- OpenAI-compatible /v1

async def v1_models(request: web.Request) -> web.Response:
    data = [{"id": m.short, "object": "model", "created": int(m.modified_at), "owned_by": "library"}
            for m in request.app[REGISTRY].list()]
    return _json({"object": "list", "data": data})


async def v1_forward(request: web.Request) -> web.StreamResponse:
    """Ollama's /v1 endpoints: the request goes as it is to the model's llama-server (which speaks the
    OpenAI API itself), the answer comes back as it is, streamed."""
    body = await _body(request)
    name = _name(body, "model")
    m = _lookup(request, name)
    reg, runners, session = request.app[REGISTRY], request.app[RUNNERS], request.app[SESSION]
    facts = reg.facts(m)
    mode = "embed" if request.path.endswith("/embeddings") else "generate"
    if mode == "generate" and "completion" not in facts.capabilities:
        raise ApiError(400, f"\"{name}\" does not support generate")
    async with runners.use(m, facts, {}, mode, None) as (r, _):
        try:
            up = await session.post(r.url + request.path, json=body)
        except aiohttp.ClientError as e:
            raise ApiError(500, f"the model runner did not answer: {e}") from None
        try:
            return await _relay(request, up)
        finally:
            up.close()


# ------------------------------------------------------------------------------- registry endpoints

async def blob_head(request: web.Request) -> web.Response:
    digest = request.match_info["digest"]
    parse_digest(digest)
    return web.Response(status=200 if request.app[REGISTRY].has_blob(digest) else 404)


async def blob_post(request: web.Request) -> web.Response:
    digest = request.match_info["digest"]
    reg = request.app[REGISTRY]
    if reg.has_blob(digest):
        async for _ in request.content.iter_chunked(1 << 20):  # drained, not buffered: it may be gigabytes
            pass
        return web.Response(status=200)
    w = reg.open_blob_writer(digest)
    try:
        async for chunk in request.content.iter_chunked(1 << 20):
            w.write(chunk)
        w.commit()
    except BaseException:
        w.abort()
        raise
    return web.Response(status=201)


async def create(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    name = _name(body)
    reg = request.app[REGISTRY]
    model_key(name)
    for k, why in (("quantize", "quantizing is not done here: convert the model with `tritpack-gguf convert` first"),
                   ("adapters", "adapters are not supported by this server"),
                   ("messages", "preset messages are not supported by this server"),
                   ("modelfile", "the old `modelfile` field is not supported: send `files` (as ollama-python, "
                                 "ollama-js and the ollama command line do)")):
        if body.get(k):
            raise ApiError(400, why)
    files = body.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ApiError(400, "files must map file names to sha256 digests")
    base: LocalModel | None = None
    if body.get("from"):
        base = reg.get(body["from"])
        if base is None:
            raise ApiError(400, f"cannot create from {body['from']!r}: no such model here")
    ggufs = [d for f, d in files.items() if f.lower().endswith(".gguf")] or list(files.values())
    if len(ggufs) > 1:
        raise ApiError(400, "send one GGUF file (safetensors folders are not supported: convert to GGUF first)")
    if not ggufs and base is None:
        raise ApiError(400, "neither files nor from: nothing to create the model from")
    digest = ggufs[0] if ggufs else base.digest  # type: ignore[union-attr]
    params = dict(base.parameters) if base else {}
    if body.get("parameters") is not None:
        if not isinstance(body["parameters"], dict):
            raise ApiError(400, "parameters must be an object")
        parse_options(None, body["parameters"])  # refused here, not at every use
        params.update({k: v for k, v in body["parameters"].items() if v is not None})
    lic = body.get("license")
    lic = "\n".join(lic) if isinstance(lic, list) else lic
    statuses = [f"using existing layer {digest}" if reg.has_blob(digest) else "parsing GGUF"]
    m = reg.create(name, digest, parameters=params,
                   template=body.get("template") or (base.template if base else None),
                   system=body.get("system") or (base.system if base else None),
                   license=lic or (base.license if base else None))
    runners = request.app[RUNNERS]
    for r in runners.loaded():
        if r.key[0] == m.short.lower() and r.model.manifest_digest != m.manifest_digest:
            await runners.unload(m.short)
    statuses += ["writing manifest", "success"]
    if not _stream_flag(body):
        return _json({"status": "success"})
    return await _status_stream(request, statuses)


async def delete(request: web.Request) -> web.Response:
    body = await _body(request)
    name = _name(body)
    reg = request.app[REGISTRY]
    if reg.get(name) is None:
        _lookup(request, name, not_found=f"model '{name}' not found")
    m = reg.delete(name)
    await request.app[RUNNERS].unload(m.short)  # type: ignore[union-attr]
    return web.Response(status=200)


async def copy(request: web.Request) -> web.Response:
    body = await _body(request)
    src, dst = body.get("source"), body.get("destination")
    if not isinstance(src, str) or not src or not isinstance(dst, str) or not dst:
        raise ApiError(400, "source and destination are required")
    model_key(dst)
    _lookup(request, src, not_found=f"model '{src}' not found")
    request.app[REGISTRY].copy(src, dst)
    return web.Response(status=200)


async def pull(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    name = _name(body)
    if request.app[REGISTRY].get(name) is not None:
        return _json({"status": "success"}) if not _stream_flag(body) else await _status_stream(request, ["success"])
    _lookup(request, name, not_found=(
        f"cannot pull \"{name}\": this tritpack-gguf server does not download models. Convert a GGUF with "
        f"`tritpack-gguf convert`, then register it with `tritpack-gguf ollama create {name} FILE --compat native "
        f"--host http://{request.host}` (or start the server with --upstream http://127.0.0.1:11434 to use a stock "
        f"Ollama for other names)"))
    raise AssertionError("unreachable")


async def push(request: web.Request) -> web.Response:
    raise ApiError(400, "push is not supported by this tritpack-gguf server")


async def _status_stream(request: web.Request, statuses: list[str]) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    for s in statuses:
        await resp.write(_line({"status": s}))
    await resp.write_eof()
    return resp


async def not_found(request: web.Request) -> web.Response:
    raise ApiError(404, f"404 page not found: {request.method} {request.path}")


# ------------------------------------------------------------------------------- the app

def make_app(cfg: ServerConfig, registry: Registry, log_dir: Path) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=64 << 20)
    app[CONFIG] = cfg
    app[REGISTRY] = registry

    async def startup(app: web.Application) -> None:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                                        read_bufsize=1 << 20,
                                        # a connection a request: llama-server (cpp-httplib) closes idle
                                        # keep-alive connections on its own, and a reused one fails then
                                        connector=aiohttp.TCPConnector(limit=0, force_close=True))
        app[SESSION] = session
        runners = Runners(session=session, log_dir=log_dir, ctx=cfg.ctx, parallel=cfg.parallel, threads=cfg.threads,
                          ngl=cfg.ngl, keep_alive=cfg.keep_alive, max_loaded=cfg.max_loaded,
                          rpc=cfg.rpc, tensor_split=cfg.tensor_split, rpc_stall_s=cfg.rpc_stall_s)
        app[RUNNERS] = runners
        runners.start_reaper()

    async def cleanup(app: web.Application) -> None:
        await app[RUNNERS].stop_all()
        await app[SESSION].close()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    r = app.router
    r.add_get("/", root)
    r.add_get("/api/version", version)
    r.add_get("/api/tags", tags)
    r.add_get("/api/ps", ps)
    r.add_post("/api/show", show)
    r.add_post("/api/generate", generate)
    r.add_post("/api/chat", chat)
    r.add_post("/api/embed", embed)
    r.add_post("/api/embeddings", embeddings)
    r.add_delete("/api/delete", delete)
    r.add_post("/api/copy", copy)
    r.add_head("/api/blobs/{digest}", blob_head)
    r.add_post("/api/blobs/{digest}", blob_post)
    r.add_post("/api/create", create)
    r.add_post("/api/pull", pull)
    r.add_post("/api/push", push)
    r.add_get("/v1/models", v1_models)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        r.add_post(path, v1_forward)
    r.add_route("*", "/{tail:.*}", not_found)
    return app


def keep_alive_seconds(v: Any) -> float:
    got = parse_keep_alive(v)
    return 300.0 if got is None else got


__all__ = ["ServerConfig", "make_app", "OLLAMA_API_VERSION", "FOREVER", "keep_alive_seconds"]
