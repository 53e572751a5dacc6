"""Load: `serve` (the patched llama-server) on a small TritPack model with --parallel 4, driven by 16
concurrent chat completions from loopback for a bounded time, in two rounds.

Every response must be complete and well-formed (HTTP 200, JSON or a server-sent event stream that
ends with [DONE], one choice with text, a finish reason, token counts within max_tokens), malformed
requests sent alongside must get a 4xx answer, the server must stay up, and its resident memory must
not grow from the first round to the second. Standard library only (http.client, threads).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import pytest

from tritpack_gguf.convert import ConvertOptions, convert
from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file

CLIENTS = 16
PARALLEL = 4
ROUND_SECONDS = 15.0
MAX_TOKENS = 12
RSS_SLACK = 16 << 20  # bytes the server may grow by between rounds (allocator noise)


@pytest.fixture(scope="module")
def model(tmp_path_factory, patched_build) -> Path:
    d = tmp_path_factory.mktemp("load")
    src = make_llama(d / "src.gguf", vocab_file(patched_build.source_dir), Shape(n_ctx=1024), seed=11)
    return Path(convert(src, ConvertOptions(type="tp4", output=d / "load-TP4.gguf", threads=1)).output)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _post(port: int, body: bytes, timeout: float = 120) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        conn.close()


def _check_completion(status: int, ctype: str, data: bytes, stream: bool) -> str | None:
    """None when the response is a complete, well-formed chat completion; else what is wrong."""
    if status != 200:
        return f"HTTP {status}: {data[:200]!r}"
    if stream:
        if "text/event-stream" not in ctype:
            return f"stream with Content-Type {ctype!r}"
        events = [line[len(b"data: "):] for line in data.split(b"\n") if line.startswith(b"data: ")]
        if not events or events[-1].strip() != b"[DONE]":
            return f"stream does not end with [DONE]: {data[-200:]!r}"
        finish = None
        for e in events[:-1]:
            doc = json.loads(e)
            if doc.get("object") != "chat.completion.chunk":
                return f"stream chunk of object {doc.get('object')!r}"
            for ch in doc.get("choices", []):
                finish = ch.get("finish_reason") or finish
        return None if finish in ("stop", "length") else f"stream without a finish reason: {data[-300:]!r}"
    if "application/json" not in ctype:
        return f"Content-Type {ctype!r}"
    doc = json.loads(data)
    if doc.get("object") != "chat.completion" or len(doc.get("choices", [])) != 1:
        return f"not one chat.completion choice: {data[:300]!r}"
    ch = doc["choices"][0]
    if not isinstance(ch.get("message", {}).get("content"), str) or ch.get("finish_reason") not in ("stop", "length"):
        return f"bad choice: {ch!r}"
    usage = doc.get("usage", {})
    if not (1 <= usage.get("completion_tokens", 0) <= MAX_TOKENS) or usage.get("prompt_tokens", 0) < 1:
        return f"bad usage: {usage!r}"
    return None


BAD_REQUESTS = [
    b"{not json",
    json.dumps({"model": "m", "max_tokens": 4}).encode(),                      # no messages
    json.dumps({"messages": "hello", "max_tokens": 4}).encode(),               # messages not a list
    json.dumps({"messages": [{"role": "user", "content": {"x": 1}}], "max_tokens": 4}).encode(),
    b"[]",
]


def _round(port: int, seconds: float, tag: str) -> dict:
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    stats = {"ok": 0, "stream": 0, "bad_rejected": 0, "problems": []}

    def client(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            stream = (i + n) % 4 == 0
            body = json.dumps({"messages": [{"role": "user", "content": f"{tag} client {i} request {n}: count on."}],
                               "max_tokens": MAX_TOKENS, "temperature": 0.8, "seed": 1000 * i + n,
                               "stream": stream}).encode()
            try:
                problem = _check_completion(*_post(port, body), stream)
            except (OSError, http.client.HTTPException, ValueError) as e:
                problem = f"{type(e).__name__}: {e}"
            with lock:
                if problem:
                    stats["problems"].append(problem)
                else:
                    stats["ok"] += 1
                    stats["stream"] += stream
            n += 1

    def hostile() -> None:
        k = 0
        while time.monotonic() < stop:
            try:
                status, _, data = _post(port, BAD_REQUESTS[k % len(BAD_REQUESTS)], timeout=60)
                # llama-server answers 400, or 500 for a body that is not JSON: an error, in JSON
                ok = status >= 400 and isinstance(json.loads(data).get("error"), dict)
                problem = None if ok else f"malformed request answered {status}: {data[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError) as e:
                problem = f"malformed request: {type(e).__name__}: {e}"
            with lock:
                if problem:
                    stats["problems"].append(problem)
                else:
                    stats["bad_rejected"] += 1
            k += 1
            time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    threads.append(threading.Thread(target=hostile, daemon=True))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 150)
    assert not any(t.is_alive() for t in threads), "a client never got its answer"
    stats["seconds"] = time.monotonic() - t0
    return stats


def test_serve_parallel_load(model, tmp_path, count_line):
    from tritpack_gguf.serve import start_server

    log = tmp_path / "server.log"
    with start_server(model, port=0, threads=1, ctx=1024, log_file=log,
                      extra=["--parallel", str(PARALLEL)]) as s:
        assert s.host == "127.0.0.1"
        s.wait_ready(timeout=120)
        _round(s.port, 3.0, "warm-up")  # pages of the KV cache and the buffers get touched
        rounds = []
        for tag in ("first", "second"):
            st = _round(s.port, ROUND_SECONDS, tag)
            st["rss"] = _rss(s.pid)
            rounds.append(st)
            assert s.proc.poll() is None, f"llama-server exited:\n{s.log_tail(30)}"
            assert s.ready(), "llama-server stopped answering /health"
        code = s.stop()
    for st in rounds:
        assert not st["problems"], f"{len(st['problems'])} bad responses, e.g. {st['problems'][:5]}"
        assert st["ok"] >= CLIENTS and st["bad_rejected"] >= 1
    a, b = rounds
    growth = b["rss"] - a["rss"]
    total = sum(r["ok"] for r in rounds)
    count_line(f"load: {total} chat completions served to {CLIENTS} concurrent clients (--parallel {PARALLEL}) in "
          f"{a['seconds'] + b['seconds']:.0f} s: {a['ok']} then {b['ok']} "
          f"({a['stream'] + b['stream']} streamed), {a['bad_rejected'] + b['bad_rejected']} malformed requests "
          f"answered with an error; server RSS {a['rss'] / 2**20:.1f} MiB after round 1, {b['rss'] / 2**20:.1f} MiB after round 2")
    assert growth <= max(RSS_SLACK, a["rss"] // 20), f"server memory grew by {growth / 2**20:.1f} MiB"
    assert code == 0, s.log_tail(30)
