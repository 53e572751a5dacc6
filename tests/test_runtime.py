"""Running converted models: load/activate (llama-cpp-python), run, verify, bench and serve, on tiny
models made here. CPU only: the GPU paths (--ngl, energy per token) are checked for their "no GPU"
behaviour."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tritpack_gguf.convert import ConvertOptions, convert
from tritpack_gguf.converters.reader import GGUFFile
from tritpack_gguf.converters.tiny_model import make_llama, vocab_file
from tritpack_gguf.converters.writer import rewrite_tensors
from tritpack_gguf.errors import TritpackError
from tritpack_gguf.runtime import read_header

T1 = ["-t", "1"]  # one thread: two shared cores spin badly with two


# ----------------------------------------------------------------------------- models

def clear_margins(src: Path, dst: Path, seed: int = 0, block_scale: float = 0.5) -> Path:
    """`src` made easy to compare token by token: output.weight = the token embeddings with rows
    permuted (the logit of perm[i] is <e_i, h>) and the layer matrices halved, so the residual
    stream is dominated by the current token's embedding and the greedy continuation walks the
    permutation with top-1 margins far above the Q8_0-activation noise. (A random readout has near
    ties, which make an exact-match test flaky.) Halving keeps ternary blocks ternary."""
    f = GGUFFile(src)
    emb = f.tensor("token_embd.weight")
    assert emb.type == Q.F16
    e = np.frombuffer(f.raw(emb).tobytes(), dtype=np.float16).reshape(emb.shape)
    out = np.empty_like(e)
    out[np.random.default_rng(seed).permutation(e.shape[0])] = e

    def tensor(t, raw: np.ndarray) -> np.ndarray:
        if t.name == "output.weight":
            return out
        dt = {Q.F16: np.float16, Q.F32: np.float32}[t.type]
        a = np.frombuffer(raw.tobytes(), dtype=dt).reshape(t.shape)
        if t.name.startswith("blk.") and len(t.shape) == 2:
            a = (a.astype(np.float32) * block_scale).astype(dt)
        return a

    return rewrite_tensors(src, dst, tensor)


@pytest.fixture(scope="module")
def models(tmp_path_factory, patched_build):
    """src1: ternary weights (-> TP1, lossless), src4: Gaussian weights (-> TP4)."""
    d = tmp_path_factory.mktemp("runtime")
    vocab = vocab_file(patched_build.source_dir)
    out = {"dir": d}
    for kind, ternary, seed in (("tp1", True, 4), ("tp4", False, 3)):
        raw = make_llama(d / "raw.gguf", vocab, seed=seed, ternary=ternary, dtype=Q.F16)
        src = clear_margins(raw, d / f"src{kind[-1]}.gguf")
        raw.unlink()
        out["src" + kind[-1]] = src
        out[kind] = Path(convert(src, ConvertOptions(type=kind, output=d / f"src{kind[-1]}-{kind.upper()}.gguf",
                                                     threads=1)).output)
    types = {t.type for t in read_header(out["tp4"]).tensors}
    assert Q.TP4 in types and Q.TP1 not in types
    return out


@pytest.fixture(scope="module")
def cli(patched_build):
    """The real `tritpack-gguf` entry (main), with these commands registered the way the lead will."""
    from tritpack_gguf import cli as _cli
    from tritpack_gguf.cli import bench, run, serve, verify

    names = {c.name for c in _cli.app.registered_commands}
    for name, fn in (("run", run.run_command), ("verify", verify.verify_command),
                     ("bench", bench.bench_command), ("serve", serve.serve_command)):
        if name not in names:
            _cli.app.command(name)(fn)
    return _cli.main


ENTRY = """
import sys
from tritpack_gguf import cli
from tritpack_gguf.cli import serve
if "serve" not in {c.name for c in cli.app.registered_commands}:
    cli.app.command("serve")(serve.serve_command)
sys.exit(cli.main(sys.argv[1:]))
"""


def corrupt(src: Path, dst: Path, tensors: list[str], how: str) -> Path:
    """A copy of `src` with bytes of TP blocks changed: 'nan' sets one TP1 block's fp16 scale to NaN;
    'scramble' flips every index byte of TP4 blocks and multiplies their scales by 64 (finite)."""
    shutil.copy(src, dst)
    h = read_header(dst)
    by_name = {t.name: t for t in h.tensors}
    with open(dst, "r+b") as fh:
        for name in tensors:
            t = by_name[name]
            fh.seek(h.data_offset + t.offset)
            if how == "nan":
                assert t.type == Q.TP1
                blk = 7
                fh.seek(blk * 15 + 13, os.SEEK_CUR)
                fh.write(b"\xff\x7f")
            else:
                assert t.type == Q.TP4
                n_blocks = int(np.prod(t.ne)) // 64
                blocks = np.frombuffer(fh.read(n_blocks * 36), dtype=np.uint8).reshape(-1, 36).copy()
                d = blocks[:, 0:2].copy().view(np.float16) * np.float16(64)
                assert np.isfinite(d).all()
                blocks[:, 0:2] = d.view(np.uint8)
                blocks[:, 4:] ^= 0xFF
                fh.seek(h.data_offset + t.offset)
                fh.write(blocks.tobytes())
    return dst


# ----------------------------------------------------------------------------- Python: load and activate

def test_load_passes_keywords_and_generates(models):
    import tritpack_gguf

    llm = tritpack_gguf.load(models["tp4"], n_ctx=96, n_threads=1, n_batch=32, seed=7)
    try:
        assert llm.n_ctx() >= 96 and llm.context_params.n_batch == 32
        out = llm("Hello", max_tokens=4, temperature=0.0)
        assert out["usage"]["completion_tokens"] == 4
    finally:
        llm.close()


def test_activate_then_plain_llama_cpp_readme_code(models, lib_dir):
    # written the way llama-cpp-python's README shows, plus the one activate() line
    code = """
import json, sys
import tritpack_gguf
tritpack_gguf.activate()

from llama_cpp import Llama
import llama_cpp

llm = Llama(model_path=sys.argv[1], n_ctx=128, n_threads=1, verbose=False)
output = llm("Q: Name the planets in the solar system? A: ", max_tokens=8, stop=["Q:", "\\n"], echo=True)
print(json.dumps({"output": output, "lib": llama_cpp.llama_cpp._lib._name}))
"""
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    r = subprocess.run([sys.executable, "-c", code, str(models["tp1"])], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(doc["lib"]).resolve().parent == lib_dir.resolve()
    choice = doc["output"]["choices"][0]
    assert choice["text"].startswith("Q: Name the planets in the solar system? A: ")
    assert doc["output"]["usage"]["completion_tokens"] >= 1


def unknown_type_copy(src: Path, dst: Path, tensor: str, new_type: int) -> Path:
    """`src` with one tensor's type id in the header replaced (the data left as it is)."""
    data = bytearray(src.read_bytes())
    name = tensor.encode()
    i = data.rindex(len(name).to_bytes(8, "little") + name) + 8 + len(name)  # tensor infos follow the keys
    n_dims = int.from_bytes(data[i:i + 4], "little")
    j = i + 4 + 8 * n_dims
    data[j:j + 4] = new_type.to_bytes(4, "little")
    dst.write_bytes(bytes(data))
    return dst


def test_load_unknown_type_says_how_to_build(models, tmp_path):
    import tritpack_gguf

    bad = unknown_type_copy(models["tp4"], tmp_path / "t99.gguf", "blk.0.ffn_up.weight", 99)
    with pytest.raises(TritpackError) as e:
        tritpack_gguf.load(bad)
    msg = str(e.value)
    assert "blk.0.ffn_up.weight" in msg and "99" in msg and "tritpack-gguf build" in msg, msg


def test_tritpack_types_with_a_stock_library_say_how_to_build(models, ggml):
    from tritpack_gguf.runtime import check_types_supported

    class Stock:  # what a llama.cpp without our patches answers
        type_count = 43

        def knows(self, t: int) -> bool:
            return t < 80 and ggml.knows(t)

    with pytest.raises(TritpackError) as e:
        check_types_supported(models["tp1"], Path("/stock/llama.cpp"), ggml=Stock())
    msg = str(e.value)
    assert "TP1" in msg and "tritpack-gguf build" in msg and "activate" in msg, msg


# ----------------------------------------------------------------------------- run

def test_run_streams_text_and_prints_timing(models, cli, capsys):
    from tritpack_gguf.run import generate

    pieces: list[str] = []
    stats = generate(models["tp1"], "Once upon a time", n=8, temp=0.0, threads=1, on_text=pieces.append)
    assert len(pieces) >= 2 and "".join(pieces) == stats.text  # streamed piece by piece
    assert stats.n_prompt >= 4 and stats.n_decode >= 1 and stats.decode_tps > 0 and stats.prompt_tps > 0

    rc = cli(["run", str(models["tp4"]), "-p", "Once upon a time", "-n", "8", "--temp", "0", "--seed", "1", *T1])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.strip(), "no text was printed"
    line = err.strip().splitlines()[-1]
    assert re.search(r"load [\d.]+ s \| [\d.,]+ MB \| prompt \d+ tokens at [\d.,]+ tok/s \| decode \d+ tokens at [\d.,]+ tok/s", line), err


def test_run_chat_json_and_no_gpu_note(models, cli, capsys, monkeypatch):
    rc = cli(["run", str(models["tp4"]), "-p", "Hi", "-n", "4", "--chat", "--temp", "0", "--ngl", "2", *T1])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "no GPU backend" in err and "build --cuda" in err  # this machine: CPU library only
    # a conversation read from stdin, one message a line: a timing line per answer
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\nAnd then?\n"))
    rc = cli(["run", str(models["tp4"]), "--chat", "-n", "4", "--temp", "0", *T1])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert len([line for line in err.splitlines() if line.startswith("load ")]) == 2, err
    rc = cli(["run", str(models["tp4"]), "-p", "Hi", "-n", "4", "--json", *T1])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["file_size"] == models["tp4"].stat().st_size and doc["decode_tps"] > 0 and doc["text"]


# ----------------------------------------------------------------------------- verify

@pytest.mark.parametrize("kind", ["tp1", "tp4"])
def test_verify_passes_on_a_correct_model(models, cli, capsys, kind, tmp_path):
    rc = cli(["verify", str(models[kind]), "--check-data", "-n", "16", *T1])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    from tritpack_gguf.verify import default_prompts

    assert f"prompts            {len(default_prompts())} (" in out and "16 of the reference's greedy tokens" in out, out
    assert re.search(r"logits vs reference \(worst\) \d\.\de-\d+ of the logit range", out), out
    assert "tensors valid" in out and out.strip().splitlines()[-1].startswith("OK")
    assert [p for p in tmp_path.iterdir()] == []  # the on-the-fly reference went with its temp dir

    rc = cli(["verify", str(models[kind]), "--strict", "--prompt", "Hello world", "--prompt", "a b c", "-n", "8", *T1])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("greedy continuation = reference 8/8 OK") == 2, out

    if kind == "tp1":
        rc = cli(["verify", str(models[kind]), "--json", "-n", "8", *T1])
        doc = json.loads(capsys.readouterr().out)
        assert rc == 0 and doc["ok"] and doc["finite"] and not doc["strict"]
        assert doc["top1_agree"] == doc["positions"] == sum(p["n_prompt"] + 7 for p in doc["prompts"])
        assert doc["near_ties"] == doc["faults"] == [] and all(p["continuation_match"] == 8 for p in doc["prompts"])
        assert 0 <= doc["noise"] < doc["noise_ceiling"] and doc["tolerance"] == 4 * doc["noise"]
        assert 0 < doc["relative_diff"] == doc["max_abs_diff"] / doc["logit_range"] < 2 ** -7


def test_verify_fails_on_a_nan_block_scale(models, cli, capsys, tmp_path):
    bad = corrupt(models["tp1"], tmp_path / "nan-TP1.gguf", ["blk.1.ffn_down.weight"], "nan")
    rc = cli(["verify", str(bad), "--check-data", "-n", "4", *T1])
    out, err = capsys.readouterr()
    assert rc == 1, out + err
    assert "NaN/Inf logits" in out and "FAILED" in out
    assert "blk.1.ffn_down.weight (TP1): NaN or Inf block scale at row 1, block 2" in out, out  # block 7, rows of 5
    assert "tritpack-gguf: error:" in err and "verification failed" in err and "Traceback" not in err


def test_verify_against_a_saved_reference_catches_scrambled_blocks(models, cli, capsys, tmp_path):
    ref = tmp_path / "ref-F32.gguf"
    rc = cli(["verify", str(models["tp4"]), "--save-reference", str(ref), "-n", "8", *T1])
    assert rc == 0, capsys.readouterr()
    capsys.readouterr()
    ref_h, tp4_h = read_header(ref), read_header(models["tp4"])
    types = {t.name: t.type for t in ref_h.tensors}
    assert types["blk.0.ffn_up.weight"] == Q.F32 and types["token_embd.weight"] == Q.Q8_0  # stock tensors as they are
    assert [t.ne for t in ref_h.tensors] == [t.ne for t in tp4_h.tensors]
    assert not any(k.startswith("tritpack.") for k in ref_h.values)
    assert ref_h.get("tokenizer.ggml.model") == tp4_h.get("tokenizer.ggml.model")

    bad = corrupt(models["tp4"], tmp_path / "scrambled-TP4.gguf",
                  [f"blk.{i}.{n}.weight" for i in (0, 1) for n in ("ffn_up", "ffn_down", "attn_v", "attn_output")],
                  "scramble")
    rc = cli(["verify", str(bad), "--reference", str(ref), "-n", "8", *T1])
    out, err = capsys.readouterr()
    assert rc == 1, out + err
    assert "faults" in out and "beyond the tolerance" in out, out  # names the disagreements
    assert "verification failed" in err and "beyond the tolerance" in err

    rc = cli(["verify", str(bad), "--reference", str(ref), "--strict", "--prompt", "Hello world", "-n", "8", *T1])
    out, err = capsys.readouterr()
    m = re.search(r"greedy continuation = reference (\d+)/8 FAILED", out)
    assert rc == 1 and m and int(m.group(1)) < 8, out
    assert "differs from the reference" in err


def test_check_data_alone(models, tmp_path):
    from tritpack_gguf.verify import check_tensor_data

    n, issues = check_tensor_data(models["tp4"])
    assert n == len(read_header(models["tp4"]).tensors) and issues == []
    bad = corrupt(models["tp1"], tmp_path / "nan.gguf", ["blk.0.attn_q.weight"], "nan")
    n, issues = check_tensor_data(bad)
    assert [(i.tensor, i.type, i.row, i.block) for i in issues] == [("blk.0.attn_q.weight", "TP1", 3, 1)]


# ----------------------------------------------------------------------------- bench

def test_bench_types_json_and_plot(models, cli, capsys, tmp_path):
    wd = tmp_path / "work"
    rc = cli(["bench", str(models["src4"]), "--types", "source,tp1,q4_0", "-p", "16", "-n", "4", "-r", "1",
              "--baseline", "q4_0", "--work-dir", str(wd), "--json", *T1])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert [r["label"] for r in doc["rows"]] == ["src4.gguf", "TP1", "Q4_0"]
    assert sorted(p.name for p in wd.iterdir()) == ["src4-Q4_0.gguf", "src4-TP1.gguf"]
    for r in doc["rows"]:
        assert r["size"] > 0 and r["n_params"] > 0 and r["bpw"] > 0, r
        assert r["pp_tps"] > 0 and r["tg_tps"] > 0, r
    q4 = doc["rows"][2]
    assert doc["baseline"] == "Q4_0" and q4["pp_ratio"] == q4["tg_ratio"] == q4["size_ratio"] == 1.0
    assert "TP1" in doc["rows"][1]["model_type"]
    assert doc["energy"].startswith("not available")

    quality = tmp_path / "quality.json"
    quality.write_text(json.dumps({"results": [{"model": "src4-TP1.gguf", "perplexity": 12.5},
                                               {"model": str(models["tp4"]), "perplexity": 9.5}]}))
    png = tmp_path / "size-speed.png"
    rc = cli(["bench", str(wd / "src4-TP1.gguf"), str(models["tp4"]), "-p", "8", "-n", "4", "-r", "1",
              "--plot", str(png), "--quality", str(quality), "--ngl", "1", *T1])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "tg4 t/s" in out and "perplexity" in out and "1.00x" in out
    assert "energy per token: not available" in out and "no GPU backend" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 1520  # two panels


FAKE_NVIDIA_SMI = """#!/bin/sh
# what `nvidia-smi --query-gpu=index,power.draw --format=csv,noheader,nounits -lms=100` prints, two GPUs
while true; do echo "0, 150.00"; echo "1, 50.00"; sleep 0.05; done
"""


def test_bench_energy_from_sampled_board_power(models, cli, capsys, tmp_path, monkeypatch):
    """The energy path with a stand-in nvidia-smi (no GPU here): 200 W over both boards."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    rc = cli(["bench", str(models["tp4"]), "-p", "8", "-n", "4", "-r", "1", "--energy", "--json", *T1])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    row = doc["rows"][0]
    assert doc["energy"].startswith("measured")
    assert row["pp_watts"] == pytest.approx(200.0) and row["tg_watts"] == pytest.approx(200.0)
    assert row["tg_j_per_token"] == pytest.approx(200.0 / row["tg_tps"])
    assert row["pp_j_per_token"] == pytest.approx(200.0 / row["pp_tps"])


def test_read_quality_shapes(tmp_path):
    from tritpack_gguf.bench import read_quality

    p = tmp_path / "q.json"
    for doc, metric in (({"a.gguf": 7.0, "b.gguf": 9.0}, "quality"),
                        ({"a.gguf": {"kld": 0.1}, "b.gguf": {"kld": 0.3}}, "kld"),
                        ([{"file": "a.gguf", "ppl": 7.0, "n": 3}, {"file": "b.gguf", "ppl": 9.0}], "ppl"),
                        ({"models": [{"model": "a.gguf", "base": "f16.gguf", "perplexity": None, "kld_mean": 0.02},
                                     {"model": "b.gguf", "base": "f16.gguf", "kld_mean": 0.2}]}, "kld_mean")):
        p.write_text(json.dumps(doc))
        got_metric, values = read_quality(p)
        assert got_metric == metric and set(values) == {"a.gguf", "b.gguf"}
    p.write_text(json.dumps({"model": "a.gguf", "base": "f16.gguf", "perplexity": 7.5, "kld_mean": 0.01}))
    assert read_quality(p) == ("perplexity", {"a.gguf": 7.5})  # one record, as evaluate --json writes it
    assert read_quality(p, "kld_mean") == ("kld_mean", {"a.gguf": 0.01})
    p.write_text(json.dumps([{"file": "a.gguf", "n": 3}]))
    with pytest.raises(TritpackError, match="--quality-metric"):
        read_quality(p)


# ----------------------------------------------------------------------------- serve

def test_serve_chat_completion_round_trip(models, tmp_path):
    import httpx

    from tritpack_gguf.serve import start_server

    with start_server(models["tp4"], port=0, threads=1, api_key="sesame", log_file=tmp_path / "server.log") as s:
        assert s.host == "127.0.0.1" and "--host" in s.argv and s.argv[s.argv.index("--host") + 1] == "127.0.0.1"
        assert "sesame" not in " ".join(s.argv)  # the key goes in a file, not on the command line
        s.wait_ready(timeout=120)
        assert s.key_file is None  # read by the server, then removed
        chat = {"model": "src4-TP4", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
        assert httpx.post(f"{s.url}/v1/chat/completions", json=chat, timeout=60).status_code == 401
        auth = {"Authorization": "Bearer sesame"}
        r = httpx.post(f"{s.url}/v1/chat/completions", timeout=60, headers=auth,
                       json={"model": "src4-TP4", "max_tokens": 8, "temperature": 0,
                             "messages": [{"role": "user", "content": "Say hello."}]})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["object"] == "chat.completion" and doc["usage"]["completion_tokens"] >= 1
        assert isinstance(doc["choices"][0]["message"]["content"], str)
        models_doc = httpx.get(f"{s.url}/v1/models", timeout=10, headers=auth).json()
        assert any(m["id"] == "src4-TP4" for m in models_doc["data"])
        code = s.stop()
    assert code == 0, s.log_tail()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", s.port)) != 0  # nobody listens any more


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_command_forwards_the_signal_and_stops(models, patched_build, sig):
    import httpx

    from tritpack_gguf.serve import free_port

    port = free_port()
    p = subprocess.Popen([sys.executable, "-c", ENTRY, "serve", str(models["tp1"]), "--port", str(port), *T1],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
    reader.start()
    try:
        t_end = time.monotonic() + 120
        while not any("serving src1-TP1.gguf at http://127.0.0.1:" in line for line in lines):
            assert p.poll() is None and time.monotonic() < t_end, "".join(lines)[-3000:]
            time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                       json={"prompt": "Once upon a time", "max_tokens": 4})
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
        p.send_signal(sig)  # only to our process: the server runs in its own session
        p.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = "".join(lines)
    assert p.returncode == 0, err[-3000:]
    pid = int(re.search(r"llama-server \(pid (\d+)\)", err).group(1))
    assert err.rstrip().endswith("llama-server stopped"), err[-2000:]
    time.sleep(0.2)
    assert not _pid_alive(pid)


def test_serve_refuses_a_busy_port_and_warns_off_loopback(models, cli, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        rc = cli(["serve", str(models["tp4"]), "--port", str(sock.getsockname()[1])])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot listen on 127.0.0.1" in err and "--port" in err, err

    from tritpack_gguf.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
