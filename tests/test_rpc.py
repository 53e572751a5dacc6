"""TritPack models over llama.cpp's RPC backend (issue 19): two patched rpc-servers on loopback plus
the local backend give the single-process tokens and logits; a server that does not share our type
table is refused before a model is sent, with one error naming it; a helper killed mid-generation is
a clear error in bounded time for run and for serve.

Servers that do not know our types stand behind tritpack_gguf.rpc_wire.Relay, in front of a real
patched server: it forwards every byte and, for the stock stand-in, closes the connection at the
first command carrying a tensor type id >= 43, the GGML_TYPE_COUNT of the pinned stock llama.cpp —
what a stock server's deserialize_tensor() does (it returns nullptr, the command fails, the server
drops the client). The other stand-in rewrites each TP4 block's codebook index k to k+1 on the way:
a server whose codebook table is ours rotated by one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tritpack_gguf import rpc
from tritpack_gguf.convert import ConvertOptions, convert
from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file
from tritpack_gguf.errors import TritpackError
from tritpack_gguf.rpc_wire import CMD, Relay, tensor_types
from tritpack_gguf.verify import greedy_run, tokenize

STOCK_TYPE_COUNT = 43   # GGML_TYPE_COUNT of the pinned llama.cpp without our patches
PROMPT = "The quick brown fox jumps over the lazy dog because"
N = 16
KILL_BOUND_S = 20.0     # a killed helper must be an error within this (measured: well under a second)


@pytest.fixture(scope="module")
def models(tmp_path_factory, patched_build) -> dict[str, Path]:
    """A TP1 (ternary weights) and a TP4 (Gaussian) Llama of 3 layers: one each for the local
    backend and the two servers."""
    d = tmp_path_factory.mktemp("rpc")
    voc = vocab_file(patched_build.source_dir)
    out = {}
    for kind, ternary in (("tp1", True), ("tp4", False)):
        raw = make_llama(d / f"raw-{kind}.gguf", voc, Shape(n_layer=3), seed=19, ternary=ternary, dtype=Q.F16)
        out[kind] = Path(convert(raw, ConvertOptions(type=kind, output=d / f"m-{kind.upper()}.gguf", threads=1)).output)
    return out


@pytest.fixture(scope="module")
def servers(tmp_path_factory, lib_dir):
    d = tmp_path_factory.mktemp("rpc-logs")
    started = []
    try:
        for i in range(2):
            started.append(rpc.start_rpc_server(port=0, threads=1, log_file=d / f"server{i}.log", lib_dir=lib_dir))
        yield started
    finally:
        for s in started:
            s.stop()


def _one_server(lib_dir, tmp_path, name="helper") -> rpc.RpcServer:
    return rpc.start_rpc_server(port=0, threads=1, log_file=tmp_path / f"{name}.log", lib_dir=lib_dir)


# ----------------------------------------------------------------------------- the split itself

def test_offload_plan_splits_three_ways(models):
    # 3 repeating layers + the output layer: layer 0 local, layer 1 on server 0, layer 2 and the
    # output on server 1; tensor-split counts put the boundaries exactly on layers
    ngl, split = rpc.offload_plan(models["tp1"], ["127.0.0.1:1", "127.0.0.1:2"], None, None)
    assert (ngl, split) == (3, [1.0, 2.0])
    assert rpc.offload_plan(models["tp1"], ["127.0.0.1:1"], 4, None) == (4, [1.0])
    assert rpc.offload_plan(models["tp1"], ["127.0.0.1:1", "127.0.0.1:2"], None, [3.0, 1.0]) == (3, [3.0, 1.0])


@pytest.mark.parametrize("kind", ["tp1", "tp4"])
def test_split_three_ways_matches_single_process(kind, models, servers, monkeypatch):
    """Local backend + two rpc-servers: the same 16 greedy tokens and the same logits as one process.

    The local layers run the CPU repack (CPU_TRITPACK), the helpers the plain vec_dot path; both
    multiply with the same activations (TP1: TPQ16, TP4: Q8_0), so they differ only in float summation
    order. Float noise is measured on this model, not assumed: the single-process run with the repack
    off (GGML_TRITPACK_NO_REPACK=1) is the same computation in another order, and the split may differ
    from the single-process run by at most twice that (plus 1e-4 of the logit range)."""
    m = models[kind]
    tokens = tokenize(m, PROMPT)
    monkeypatch.delenv("GGML_TRITPACK_NO_REPACK", raising=False)
    single = greedy_run(m, tokens, N)
    monkeypatch.setenv("GGML_TRITPACK_NO_REPACK", "1")
    plain = greedy_run(m, tokens, N, follow=single.tokens)
    monkeypatch.delenv("GGML_TRITPACK_NO_REPACK")
    with Relay(servers[0].endpoint) as r0, Relay(servers[1].endpoint) as r1:
        split = greedy_run(m, tokens, N, rpc=[r0.endpoint, r1.endpoint])
        wire = [r0.commands, r1.commands]
    assert split.tokens == single.tokens, f"{sum(a == b for a, b in zip(split.tokens, single.tokens))}/{N}"
    scale = float(np.abs(single.prompt_logits).max())
    for part in ("prompt_logits", "cont_logits"):
        noise = float(np.abs(getattr(plain, part) - getattr(single, part)).max())
        diff = float(np.abs(getattr(split, part) - getattr(single, part)).max())
        print(f"{kind} {part}: split vs single {diff / scale:.2e}, float noise {noise / scale:.2e} of the logit range")
        assert diff <= 2 * noise + 1e-4 * scale, (diff / scale, noise / scale)
    for c in wire:  # both servers held weights and computed every token (prompt + 15 decodes)
        assert c.get("SET_TENSOR", 0) > 0 and c.get("GRAPH_COMPUTE", 0) + c.get("GRAPH_RECOMPUTE", 0) >= N, wire


def test_load_with_rpc(models, servers):
    """tritpack_gguf.load(..., rpc=...) in a fresh process (llama.cpp binds at import), greedy text
    equal to the single-process one."""
    code = (
        "import sys, tritpack_gguf as t\n"
        "m, eps = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None\n"
        "llm = t.load(m, rpc=eps, n_ctx=128)\n"
        "print(repr(llm('Once upon a time', max_tokens=12, temperature=0)['choices'][0]['text']))\n")
    eps = ",".join(s.endpoint for s in servers)
    outs = [subprocess.run([sys.executable, "-c", code, str(models["tp4"]), *extra], capture_output=True, text=True,
                           timeout=300) for extra in ([], [eps])]
    for o in outs:
        assert o.returncode == 0, o.stderr[-2000:]
    assert outs[0].stdout == outs[1].stdout and outs[0].stdout.strip()


def test_run_and_bench_commands_with_rpc(models, servers):
    """`run --rpc` prints the single-process greedy text; `bench --rpc` measures the split model."""
    eps = ",".join(s.endpoint for s in servers)
    base = [sys.executable, "-m", "tritpack_gguf", "run", str(models["tp1"]), "-p", PROMPT, "-n", "12", "--temp", "0",
            "--json"]
    runs = [subprocess.run(base + extra, capture_output=True, text=True, timeout=300) for extra in ([], ["--rpc", eps])]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    texts = [json.loads(r.stdout)["text"] for r in runs]
    assert texts[0] == texts[1] and texts[0]

    from tritpack_gguf.bench import BenchFile, bench

    rep = bench([BenchFile("tp4", models["tp4"])], n_prompt=8, n_gen=4, repetitions=1, threads=1, rpc=eps)
    assert rep.rows[0].tg_tps and rep.rows[0].tg_tps > 0 and rep.rows[0].pp_tps > 0
    assert any("RPC servers" in n for n in rep.notes)


# ----------------------------------------------------------------------------- mismatches

def _stock(cmd: int, payload: bytes) -> bytes | None:
    return None if any(t >= STOCK_TYPE_COUNT for t in tensor_types(cmd, payload)) else payload


def _rotate_tp4_codebooks(cmd: int, p: bytes) -> bytes:
    if cmd == CMD["SET_TENSOR"] and struct.unpack_from("<I", p, 8)[0] == 81:  # a TP4 tensor
        b = bytearray(p)
        start = 296 + 1 + 8  # | rpc_tensor | cache flag | offset | data |
        off = struct.unpack_from("<Q", p, 297)[0]
        for i in range(start, len(b)):
            if (off + i - start) % 36 == 2:  # sc[0]: bits 0..3 are the block's codebook index
                b[i] = (b[i] & 0xF0) | ((b[i] + 1) & 0x0F)
        return bytes(b)
    return p


def test_probe_passes_on_a_patched_server(servers):
    infos = rpc.check_servers([s.endpoint for s in servers], force=True)
    for info in infos:
        assert info.devices == 1 and info.proto.startswith(f"{rpc.RPC_PROTO_MAJOR}.")
        assert {r["type"] for r in info.probe} == {"TP1", "TP4"}
        assert all(r["rel_err"] < rpc.PROBE_TOLERANCE / 10 for r in info.probe), info.probe


def test_stock_server_is_refused_before_the_model_is_sent(models, servers):
    with Relay(servers[0].endpoint, inspect=_stock) as stock:
        with pytest.raises(TritpackError) as e:
            greedy_run(models["tp1"], [1, 2, 3], 2, rpc=[servers[1].endpoint, stock.endpoint])
        assert stock.closed_by_inspect == 1
        assert "GRAPH_COMPUTE" not in stock.commands  # refused at the probe's first TP1 tensor
    msg = str(e.value)
    assert stock.endpoint in msg and "does not know the TritPack types" in msg and "rpc-server" in msg
    assert servers[1].endpoint not in msg.split("(")[0]


def test_stock_server_cli_message(models, servers):
    """The command line: exit code 1 and one line naming the host, no abort, no traceback."""
    with Relay(servers[0].endpoint, inspect=_stock) as stock:
        p = subprocess.run([sys.executable, "-m", "tritpack_gguf", "run", str(models["tp4"]), "-p", "Hi", "-n", "4",
                            "--rpc", stock.endpoint], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tritpack-gguf: error:") and stock.endpoint in lines[0], p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_other_type_table_is_refused(models, servers):
    with Relay(servers[0].endpoint, inspect=_rotate_tp4_codebooks) as other:
        with pytest.raises(TritpackError) as e:
            rpc.check_servers([other.endpoint], force=True)
        assert other.commands.get("SET_TENSOR", 0) <= 4  # the probe's tensors only
    msg = str(e.value)
    assert other.endpoint in msg and "computes TP4 differently" in msg
    rel = float(msg.split("relative error ")[1].split(" ")[0])
    assert rel > 50 * rpc.PROBE_TOLERANCE  # far from the tolerance: the check is not a coin toss


def test_unreachable_busy_and_wrong_protocol(lib_dir, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(TritpackError, match=f"RPC server {dead}: cannot connect"):
        rpc.check_servers([dead], force=True)
    with _one_server(lib_dir, tmp_path) as srv:
        # a server serves one client at a time: hold it with a hello of our own
        with socket.create_connection(("127.0.0.1", srv.port)) as held:
            held.sendall(struct.pack("<BQ", rpc.RPC_CMD_HELLO, rpc.RPC_CONN_CAPS_SIZE) + bytes(rpc.RPC_CONN_CAPS_SIZE))
            held.recv(64)
            t0 = time.monotonic()
            with pytest.raises(TritpackError, match="did not answer within") as e:
                rpc.hello(srv.endpoint, timeout=2)
            assert time.monotonic() - t0 < 10 and "one client at a time" in str(e.value)
    # something that is not a ggml RPC server (an HTTP-like listener that answers nonsense)
    with socket.create_server(("127.0.0.1", 0)) as lst:
        ep = f"127.0.0.1:{lst.getsockname()[1]}"
        import threading

        def answer():
            c, _ = lst.accept()
            with c:
                c.recv(64)
                c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        with pytest.raises(TritpackError, match=f"RPC server {ep}"):
            rpc.hello(ep, timeout=2)
        t.join(5)


def test_endpoint_parsing():
    assert rpc.parse_endpoints("10.0.0.2:50052, host-b:50053") == ["10.0.0.2:50052", "host-b:50053"]
    for bad in ("10.0.0.2", "h:0", "h:x", ":50052", "h:1,h:1"):
        with pytest.raises(TritpackError, match="--rpc"):
            rpc.parse_endpoints(bad)
    assert rpc.parse_tensor_split("2,1/1") == [2.0, 1.0, 1.0]
    with pytest.raises(TritpackError, match="--tensor-split"):
        rpc.parse_tensor_split("a,b")


# ----------------------------------------------------------------------------- a helper dies

def test_killed_helper_mid_generation_run(models, lib_dir, tmp_path, servers):
    from tritpack_gguf.run import generate

    victim = _one_server(lib_dir, tmp_path, "victim")
    state = {"pieces": 0, "t": None}

    def on_text(_piece: str) -> None:
        state["pieces"] += 1
        if state["pieces"] == 3:
            state["t"] = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)

    try:
        with pytest.raises(TritpackError) as e:
            generate(models["tp4"], "Hello there", n=200, temp=0, rpc=[servers[0].endpoint, victim.endpoint],
                     on_text=on_text)
    finally:
        victim.stop()
    assert state["t"] is not None, "the generation never started"
    took = time.monotonic() - state["t"]
    msg = str(e.value)
    assert took < KILL_BOUND_S, took
    assert f"RPC server {victim.endpoint} stopped answering" in msg and servers[0].endpoint not in msg, msg


def test_silent_helper_mid_generation_run(models, servers):
    """A helper host that goes silent without closing its connection (power or network lost: its
    peer sees nothing) is an error after rpc_stall_s without a token, not a hang."""
    from tritpack_gguf.run import generate

    stall = 3.0
    with Relay(servers[1].endpoint) as silent:
        state = {"pieces": 0, "t": None}

        def on_text(_piece: str) -> None:
            state["pieces"] += 1
            if state["pieces"] == 3:
                state["t"] = time.monotonic()
                silent.frozen.set()

        with pytest.raises(TritpackError) as e:
            generate(models["tp4"], "Hello there", n=200, temp=0, rpc=[servers[0].endpoint, silent.endpoint],
                     on_text=on_text, rpc_stall_s=stall)
        took = time.monotonic() - state["t"]
    msg = str(e.value)
    assert stall <= took < stall + 10, took
    assert "stopped answering" in msg and f"no progress for {stall:g} s while generating" in msg, msg


def _after_computes(n: int, then) -> Callable[[int, bytes], bytes]:
    """A Relay inspect that calls then() once, as the n-th graph computation reaches the helper."""
    seen = [0]

    def inspect(cmd: int, payload: bytes) -> bytes:
        if cmd in (CMD["GRAPH_COMPUTE"], CMD["GRAPH_RECOMPUTE"]):
            seen[0] += 1
            if seen[0] == n:
                then()
        return payload
    return inspect


@pytest.fixture
def fresh(lib_dir, tmp_path):
    """Two helpers of this test's own: a test that kills or freezes one leaves the shared ones alone."""
    started = []
    try:
        for i in range(2):
            started.append(_one_server(lib_dir, tmp_path, f"fresh{i}"))
        yield started
    finally:
        for srv in started:
            srv.stop()


def test_killed_helper_mid_generation_verify(models, lib_dir, tmp_path, fresh):
    """verify's greedy runs (its --rpc): a helper killed while the continuation is decoded is one
    error naming it, in bounded time (llama.cpp aborts in the child; the watch names who went)."""
    victim = fresh[1]
    state: dict = {}

    def kill() -> None:
        state["t"] = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        relay.close()  # the helper's port is gone with it

    m = models["tp4"]
    tokens = tokenize(m, PROMPT)
    relay = Relay(victim.endpoint, inspect=_after_computes(6, kill))
    with relay, pytest.raises(TritpackError) as e:
        greedy_run(m, tokens, 64, rpc=[fresh[0].endpoint, relay.endpoint])
    assert "t" in state, "the decoding never reached the helper"
    took = time.monotonic() - state["t"]
    msg = str(e.value)
    assert took < KILL_BOUND_S, took
    assert f"RPC server {relay.endpoint} stopped answering" in msg and fresh[0].endpoint not in msg, msg


def test_silent_helper_mid_generation_verify(models, fresh):
    """verify's greedy runs: a helper gone silent (connections left open) while decoding is an error
    after rpc_stall_s without a decoded token, not a hang."""
    stall = 3.0
    m = models["tp4"]
    tokens = tokenize(m, PROMPT)
    state: dict = {}
    relay = Relay(fresh[1].endpoint)

    def freeze() -> None:
        state["t"] = time.monotonic()
        relay.frozen.set()

    relay.inspect = _after_computes(6, freeze)
    with relay, pytest.raises(TritpackError) as e:
        greedy_run(m, tokens, 64, rpc=[fresh[0].endpoint, relay.endpoint], rpc_stall_s=stall)
    assert "t" in state, str(e.value)
    took = time.monotonic() - state["t"]
    msg = str(e.value)
    assert stall <= took < stall + 10, took
    assert "stopped answering" in msg and f"no progress for {stall:g} s while decoding" in msg, msg


def test_silent_helper_bench(models, fresh):
    """bench --rpc: a helper gone silent during llama-bench's tests is an error after rpc_stall_s
    without progress of llama-bench, not a hang."""
    from tritpack_gguf.bench import BenchFile, bench

    stall = 3.0
    state: dict = {}
    relay = Relay(fresh[1].endpoint)

    def freeze() -> None:
        state["t"] = time.monotonic()
        relay.frozen.set()

    relay.inspect = _after_computes(3, freeze)
    with relay, pytest.raises(TritpackError) as e:
        bench([BenchFile("tp4", models["tp4"])], n_prompt=8, n_gen=64, repetitions=1, threads=1,
              rpc=[fresh[0].endpoint, relay.endpoint], rpc_stall_s=stall)
    assert "t" in state, str(e.value)
    took = time.monotonic() - state["t"]
    msg = str(e.value)
    assert stall <= took < stall + 10, took
    assert "stopped answering" in msg and f"no progress for {stall:g} s while running llama-bench" in msg, msg


def _wait_health(p: subprocess.Popen, port: int) -> None:
    """Until the server child `p` answers /health on `port` (its stderr in the failure if it exits)."""
    t_end = time.monotonic() + 240
    while time.monotonic() < t_end and p.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            break
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    assert p.poll() is None, p.communicate()[1][-2000:]


def _post(port: int, n: int) -> str:
    body = json.dumps({"prompt": "Hello", "max_tokens": n, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["choices"][0]["text"]


def test_killed_helper_serve_exits_cleanly(models, lib_dir, tmp_path):
    """`serve --rpc`: while the helper lives, requests are answered; when it is killed, the request in
    flight fails, and serve exits (code 1) with one error naming the helper, in bounded time."""
    from tritpack_gguf.serve import free_port

    victim = _one_server(lib_dir, tmp_path, "victim")
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "tritpack_gguf", "serve", str(models["tp4"]), "--port", str(port),
                          "--rpc", victim.endpoint, "-t", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, stdin=subprocess.DEVNULL)
    try:
        _wait_health(p, port)
        assert _post(port, 8)
        os.kill(victim.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises((urllib.error.URLError, OSError, ConnectionError)):
            _post(port, 8)
        _, err = p.communicate(timeout=KILL_BOUND_S + 15)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.terminate()
            p.communicate(timeout=30)
        victim.stop()
    assert p.returncode == 1 and took < KILL_BOUND_S + 15, (p.returncode, took)
    last = err.strip().splitlines()[-1]
    assert last.startswith("tritpack-gguf: error:") and f"RPC server {victim.endpoint} stopped answering" in last, err[-2000:]


def test_silent_helper_serve_exits_cleanly(models, lib_dir, tmp_path):
    """`serve --rpc`: a helper gone silent (connections left open) while a request is computed: the
    watch finds llama-server's main loop stuck for rpc_stall_s, stops it, and serve exits (code 1)
    with one error naming the helpers, not a hang."""
    from tritpack_gguf.serve import free_port

    stall = 3.0
    victim = _one_server(lib_dir, tmp_path, "victim")
    port = free_port()
    code = ("import sys\n"
            "from tritpack_gguf.errors import TritpackError\n"
            "from tritpack_gguf.serve import serve\n"
            "try:\n"
            "    sys.exit(serve(sys.argv[1], port=int(sys.argv[2]), rpc=sys.argv[3], threads=1, rpc_stall_s=3.0,\n"
            "                   log_file=sys.argv[4]))\n"
            "except TritpackError as e:\n"
            "    print(f'error: {e}', file=sys.stderr)\n"
            "    sys.exit(1)\n")
    with Relay(victim.endpoint) as relay:
        p = subprocess.Popen([sys.executable, "-c", code, str(models["tp4"]), str(port), relay.endpoint,
                              str(tmp_path / "server.log")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, stdin=subprocess.DEVNULL)
        try:
            _wait_health(p, port)
            assert _post(port, 8)
            relay.frozen.set()
            t0 = time.monotonic()
            with pytest.raises((urllib.error.URLError, OSError, ConnectionError)):
                _post(port, 8)
            _, err = p.communicate(timeout=stall + 30)
            took = time.monotonic() - t0
        finally:
            if p.poll() is None:
                p.terminate()
                p.communicate(timeout=30)
            victim.stop()
    assert p.returncode == 1 and stall <= took < stall + 20, (p.returncode, took)
    last = err.strip().splitlines()[-1]
    assert "stopped answering" in last and f"no progress for {stall:g} s while serving a request" in last, err[-2000:]


# ----------------------------------------------------------------------------- the server command

def test_rpc_server_refuses_the_network_without_the_flag(monkeypatch, capsys):
    from tritpack_gguf.cli import main

    assert main(["rpc-server", "--host", "0.0.0.0", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "--allow-network" in err and "authentication" in err
    # with the flag: the no-auth/no-encryption warning, then the server (not started here: no socket
    # is opened beyond loopback in tests)
    seen = {}
    monkeypatch.setattr(rpc, "serve_rpc", lambda **kw: seen.update(kw) or 0)
    assert main(["rpc-server", "--host", "0.0.0.0", "--port", "0", "--allow-network", "--threads", "2"]) == 0
    err = capsys.readouterr().err
    assert "no authentication and no encryption" in err and "trusted network" in err
    assert seen["host"] == "0.0.0.0" and seen["allow_network"] and seen["threads"] == 2


def test_rpc_server_command_serves(lib_dir, tmp_path, models):
    """`tritpack-gguf rpc-server` on loopback answers the check and stops cleanly on SIGTERM."""
    port = None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "tritpack_gguf", "rpc-server", "--port", str(port), "--threads", "1",
                          "--cache", str(tmp_path / "cache")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ep = f"127.0.0.1:{port}"
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        info = rpc.check_servers([ep], force=True)[0]
        assert info.devices >= 1
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert f"listening on {ep}" in err and "rpc-server stopped" in err
    assert (tmp_path / "cache" / "rpc").is_dir()


def test_ollama_serve_with_rpc(models, lib_dir, tmp_path):
    """`ollama serve --rpc`: the model a client names is split with the helpers, and the official
    ollama client's greedy reply is the one a single-process server gives (both on the plain CPU path,
    as in test_split_three_ways_matches_single_process). Helpers of its own: a ggml-rpc-server serves
    one client at a time, and other tests kill theirs."""
    import ollama

    from tritpack_gguf.serve import free_port

    helpers = [_one_server(lib_dir, tmp_path, f"ollama-helper{i}") for i in range(2)]
    eps = ",".join(s.endpoint for s in helpers)
    replies = []
    try:
        for extra in ([], ["--rpc", eps]):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = _ollama_server(tmp_path, port, ["-m", "tritpack_gguf.cli", "ollama", "serve", "--port", str(port),
                                                   "--models-dir", str(tmp_path / f"reg-{port}"), "-t", "1", "--ctx",
                                                   "256", *extra], models["tp4"])
            log = tmp_path / f"ollama-{port}.log"
            try:
                r = ollama.Client(host=url.removeprefix("http://"), timeout=120).generate(
                    model="m", prompt=PROMPT, options={"temperature": 0, "num_predict": N, "seed": 1})
                assert r.done and r.eval_count == N, r
                replies.append(r.response)
                if extra:  # the llama-server child was started with the helpers
                    assert any(eps in " ".join(Path(f"/proc/{k}/cmdline").read_bytes().decode().split("\0"))
                               for k in _descendants(proc.pid)), log.read_text()[-2000:]
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        for h in helpers:
            h.stop()
    assert replies[0] == replies[1] and replies[0]


def _ollama_server(tmp_path: Path, port: int, args: list[str], model: Path) -> subprocess.Popen:
    """A Python child serving Ollama's API on `port` (its log in tmp_path), `model` registered there as "m"."""
    import httpx
    from typer.testing import CliRunner

    from tritpack_gguf.cli import ollama as ol_cli

    url = f"http://127.0.0.1:{port}"
    log = tmp_path / f"ollama-{port}.log"
    proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"), start_new_session=True)
    try:
        t_end = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < t_end, log.read_text()
            try:
                if httpx.get(url, timeout=2).text == "Ollama is running":
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        res = CliRunner().invoke(ol_cli.app, ["create", "m", str(model), "--compat", "native", "--host", url])
        assert res.exit_code == 0, res.output
    except BaseException:
        proc.terminate()
        proc.wait(timeout=30)
        raise
    return proc


_OLLAMA_CHILD = ("import sys\n"
                 "from pathlib import Path\n"
                 "from tritpack_gguf.ollama_server import ServerConfig, serve\n"
                 "sys.exit(serve(ServerConfig(port=int(sys.argv[1]), models_dir=Path(sys.argv[2]), threads=1, ctx=256,\n"
                 "                            rpc=sys.argv[3], rpc_stall_s=float(sys.argv[4]))))\n")


@pytest.mark.parametrize("how", ["killed", "silent"])
def test_helper_lost_under_ollama_serve(how, models, lib_dir, tmp_path):
    """`ollama serve --rpc`: a helper killed, or gone silent (connections left open), while a request
    is computed: the official client gets an error naming the helper in bounded time (the silent
    one after the watch's stall time: the runner is stopped, not left hanging), and the server lives
    on for other requests."""
    import contextlib

    import httpx
    import ollama

    from tritpack_gguf.serve import free_port

    stall = 3.0
    victim = _one_server(lib_dir, tmp_path, "victim")
    try:
        with (Relay(victim.endpoint) if how == "silent" else contextlib.nullcontext()) as relay:
            ep = relay.endpoint if relay else victim.endpoint
            port = free_port()
            proc = _ollama_server(tmp_path, port, ["-c", _OLLAMA_CHILD, str(port), str(tmp_path / "reg"), ep,
                                                   str(stall)], models["tp4"])
            log = tmp_path / f"ollama-{port}.log"
            try:
                client = ollama.Client(host=f"127.0.0.1:{port}", timeout=120)
                assert client.generate(model="m", prompt=PROMPT, options={"temperature": 0, "num_predict": 4}).done
                if relay:
                    relay.frozen.set()
                else:
                    os.kill(victim.pid, signal.SIGKILL)
                t0 = time.monotonic()
                with pytest.raises(ollama.ResponseError) as ei:
                    client.generate(model="m", prompt=PROMPT, options={"temperature": 0, "num_predict": N})
                took = time.monotonic() - t0
                assert httpx.get(f"http://127.0.0.1:{port}", timeout=5).text == "Ollama is running"
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        victim.stop()
    err = ei.value.error
    assert ei.value.status_code == 500 and "stopped answering" in err, (err, log.read_text()[-2000:])
    if relay:
        assert f"no progress for {stall:g} s while serving a request" in err and stall <= took < stall + 20, (err, took)
    else:
        assert f"RPC server {victim.endpoint}" in err and took < KILL_BOUND_S, (err, took)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                kids = []
            out += kids
            todo += kids
    return out
