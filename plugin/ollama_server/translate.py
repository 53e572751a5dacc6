"""Ollama request fields -> llama-server's, and llama-server's streams -> Ollama's answers.

Options (Ollama's names, from the request over the model's registered parameters) become llama-server
sampling fields; num_ctx, num_thread, num_gpu and num_batch are load settings of the runner. Values of
the wrong type or out of range are a 400 with the option named; unknown options are ignored, as
Ollama ignores them.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import aiohttp

from .registry import ApiError
from .runners import FOREVER

INT32_MAX = 2**31 - 1
_SAMPLING: dict[str, tuple[str, str]] = {   # Ollama option -> (llama-server field, kind)
    "temperature": ("temperature", "float"),
    "top_k": ("top_k", "int"),
    "top_p": ("top_p", "float"),
    "min_p": ("min_p", "float"),
    "typical_p": ("typical_p", "float"),
    "seed": ("seed", "seed"),
    "repeat_penalty": ("repeat_penalty", "float"),
    "repeat_last_n": ("repeat_last_n", "int"),
    "presence_penalty": ("presence_penalty", "float"),
    "frequency_penalty": ("frequency_penalty", "float"),
    "mirostat": ("mirostat", "int"),
    "mirostat_tau": ("mirostat_tau", "float"),
    "mirostat_eta": ("mirostat_eta", "float"),
    "num_keep": ("n_keep", "int"),
    "num_predict": ("n_predict", "num_predict"),
    "stop": ("stop", "stop"),
}
_LOAD = {"num_ctx", "num_thread", "num_gpu", "num_batch"}


@dataclass
class Options:
    sampling: dict = field(default_factory=dict)
    load: dict = field(default_factory=dict)


def _int(name: str, v: Any, lo: int = -INT32_MAX, hi: int = INT32_MAX) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise ApiError(400, f"invalid options: {name} must be an integer, not {json.dumps(v)}")
    v = int(v)
    if not lo <= v <= hi:
        raise ApiError(400, f"invalid options: {name} must be between {lo} and {hi}, not {v}")
    return v


def parse_options(model_params: dict | None, options: Any) -> Options:
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "invalid options: expected a JSON object")
    merged = dict(model_params or {})
    merged.update(options or {})
    out = Options()
    for k, v in merged.items():
        if v is None:
            continue
        if k in _LOAD:
            out.load[k] = _int(k, v, lo=-1 if k == "num_gpu" else 1)
            continue
        if k not in _SAMPLING:
            continue  # as Ollama: an unknown option is ignored
        field_, kind = _SAMPLING[k]
        if kind == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ApiError(400, f"invalid options: {k} must be a number, not {json.dumps(v)}")
            out.sampling[field_] = float(v)
        elif kind == "int":
            out.sampling[field_] = _int(k, v, lo=-1 if k != "top_k" else 0)
        elif kind == "seed":
            seed = _int(k, v, lo=-(2**63), hi=2**64 - 1)
            if seed >= 0:
                out.sampling[field_] = seed & 0xFFFFFFFF
        elif kind == "num_predict":
            n = _int(k, v, lo=-2)
            out.sampling[field_] = -1 if n == -2 else n  # -2 (fill the context): generation stops at the context end
        elif kind == "stop":
            stops = [v] if isinstance(v, str) else v
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise ApiError(400, "invalid options: stop must be a string or a list of strings")
            out.sampling[field_] = [s for s in stops if s]
    return out


_DUR_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(v: Any) -> float | None:
    """keep_alive in seconds (FOREVER for a negative one); None when the request does not set it."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise ApiError(400, f"invalid keep_alive {json.dumps(v)}: use a duration such as \"5m\", \"30s\" or -1")
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            raise ApiError(400, f"invalid keep_alive {v}")
        secs = float(v)
    elif isinstance(v, str):
        s = v.strip()
        if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", s):
            secs = float(s)
        else:
            sign = -1.0 if s.startswith("-") else 1.0
            body = s.lstrip("+-")
            pos, total = 0, 0.0
            for m in _DUR_PART.finditer(body):
                if m.start() != pos:
                    break
                total += float(m.group(1)) * _UNIT[m.group(2)]
                pos = m.end()
            if not body or pos != len(body):
                raise ApiError(400, f"invalid keep_alive {v!r}: use a duration such as \"5m\", \"30s\", \"1h30m\" or -1")
            secs = sign * total
    else:
        raise ApiError(400, f"invalid keep_alive {json.dumps(v)}")
    return FOREVER if secs < 0 else secs


def json_format(fmt: Any) -> dict | None:
    """`format`: "" or null (free text), "json", or a JSON schema -> the schema to constrain to."""
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "object"}
    if isinstance(fmt, dict):
        return fmt
    raise ApiError(400, f"invalid format {json.dumps(fmt)[:80]}: use \"json\" or a JSON schema object")


def oai_messages(messages: Any, system: str | None) -> list[dict]:
    """Ollama chat messages -> OpenAI ones (tool call arguments as JSON text; thinking as reasoning_content)."""
    if not isinstance(messages, list):
        raise ApiError(400, "messages must be a list")
    out: list[dict] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a role")
        if msg.get("images"):
            raise ApiError(400, "this model does not support image input (no vision projector)")
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string")
        m: dict[str, Any] = {"role": msg["role"], "content": content or ""}
        if msg.get("thinking"):
            m["reasoning_content"] = msg["thinking"]
        if msg.get("tool_calls"):
            calls = []
            for j, tc in enumerate(msg["tool_calls"]):
                fn = (tc or {}).get("function") or {}
                args = fn.get("arguments")
                calls.append({"id": tc.get("id") or f"call_{i}_{j}", "type": "function",
                              "function": {"name": fn.get("name", ""),
                                           "arguments": args if isinstance(args, str) else json.dumps(args or {})}})
            m["tool_calls"] = calls
        if msg.get("tool_name"):
            m["name"] = msg["tool_name"]
        if msg.get("tool_call_id"):
            m["tool_call_id"] = msg["tool_call_id"]
        out.append(m)
    if system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


# ------------------------------------------------------------------------------- llama-server streams

def _llama_error(text: str) -> str:
    try:
        doc = json.loads(text)
        err = doc.get("error", doc)
        return err.get("message") or str(err) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        return text.strip()[:500] or "no message"


async def open_stream(session: aiohttp.ClientSession, url: str, payload: dict) -> aiohttp.ClientResponse:
    """POST `payload` to llama-server and return the open response; ApiError for a refusal."""
    try:
        resp = await session.post(url, json=payload)
    except aiohttp.ClientError as e:
        raise ApiError(500, f"the model runner did not answer: {e}") from None
    if resp.status != 200:
        text = await resp.text(errors="replace")
        resp.release()
        raise ApiError(resp.status if 400 <= resp.status < 500 else 500, f"llama-server: {_llama_error(text)}")
    return resp


async def sse(resp: aiohttp.ClientResponse) -> AsyncIterator[dict]:
    """The JSON events of a server-sent-events response, until [DONE]; an `error` event raises."""
    try:
        async for raw in resp.content:
            obj = _sse_event(raw)
            if obj is _DONE:
                return
            if obj is not None:
                yield obj
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise ApiError(500, f"the model runner stopped in the middle of the reply ({type(e).__name__}: {e})") from None


_DONE = object()


def _sse_event(raw: bytes) -> Any:
    """One line of a server-sent-events stream: its JSON, None to skip it, _DONE at the end."""
    line = raw.strip()
    if not line or line.startswith(b":"):
        return None
    if line.startswith(b"error:"):
        raise ApiError(500, f"llama-server: {_llama_error(line[6:].decode(errors='replace'))}")
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return _DONE
    obj = json.loads(data)
    if isinstance(obj, dict) and obj.get("error"):
        raise ApiError(500, f"llama-server: {_llama_error(json.dumps(obj))}")
    return obj


def done_reason(finish: str | None) -> str:
    return "length" if finish in ("length", "limit") else "stop"


def timing_fields(timings: dict, *, total_ns: int, load_ns: int, prompt_n: int | None = None,
                  eval_n: int | None = None) -> dict:
    """Ollama's count and duration fields (integers, nanoseconds) from llama-server's timings."""
    return {"total_duration": int(total_ns), "load_duration": int(load_ns),
            "prompt_eval_count": int(timings.get("prompt_n", prompt_n or 0) or 0),
            "prompt_eval_duration": int(float(timings.get("prompt_ms", 0) or 0) * 1e6),
            "eval_count": int(timings.get("predicted_n", eval_n or 0) or 0),
            "eval_duration": int(float(timings.get("predicted_ms", 0) or 0) * 1e6)}


def ollama_tool_calls(acc: dict[int, dict]) -> list[dict]:
    calls = []
    for i in sorted(acc):
        c = acc[i]
        try:
            args = json.loads(c["arguments"]) if c["arguments"].strip() else {}
        except ValueError:
            args = {"_raw": c["arguments"]}
        call = {"function": {"index": i, "name": c["name"], "arguments": args}}
        if c.get("id"):
            call["id"] = c["id"]
        calls.append(call)
    return calls
