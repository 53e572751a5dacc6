"""TritPack over llama.cpp's RPC backend, on loopback: llama-bench local beside llama-bench split over
two `tritpack-gguf rpc-server`s (local CPU + 2 helpers, an equal share of the layers each), and the
bytes that cross the wire per token, counted by a relay (plugin/rpc_wire.py) in front of each server.

    .venv/bin/python bench/rpc.py MODEL.gguf [MODEL.gguf ...] [--tiny] [--threads 2] [--out bench/results/rpc.md]

--tiny adds a 3-layer TP4 Llama with n_embd 128 (converters/tiny_model.py, seed 5): its compute is
next to nothing, so its split-minus-local time per token is the fixed cost of the RPC path itself.

Bytes per token are differences, so that loading the weights cancels out: llama-bench -n 2G minus
-n G generated tokens, divided by G (decode), and -p 2P minus -p P (prompt), each one run (-r 1)
through the relays.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tritpack_gguf import rpc
from tritpack_gguf.bench import run_llama_bench, tools_dir
from tritpack_gguf.rpc_wire import Relay


def _tps(records: list[dict], kind: str) -> tuple[float, float, float]:
    """(median, min, max) tokens a second over the rounds' records of `kind` (pp or tg)."""
    v = sorted(float(r["avg_ts"]) for r in records if (r["n_prompt"] > 0) == (kind == "pp"))
    if not v:
        raise SystemExit(f"no {kind} record in {records}")
    return statistics.median(v), v[0], v[-1]


def wire_bytes(lib: Path, model: Path, endpoints: list[str], threads: int, *, p: int, n: int) -> dict:
    """Bytes client->servers and back during one llama-bench run (-p p -n n -r 1) through relays."""
    relays = [Relay(ep) for ep in endpoints]
    for r in relays:
        r.__enter__()
    try:
        ngl, split = rpc.offload_plan(model, [r.endpoint for r in relays], None, None)
        run_llama_bench(lib, [model], n_prompt=p, n_gen=n, ngl=ngl, threads=threads, repetitions=1,
                        extra=rpc.llama_args([r.endpoint for r in relays], ngl, split))
        time.sleep(0.2)
        sent = sum(r.counts()[0] for r in relays)
        recv = sum(r.counts()[1] for r in relays)
        cmds: dict[str, int] = {}
        for r in relays:
            for k, v in r.commands.items():
                cmds[k] = cmds.get(k, 0) + v
        return {"sent": sent, "received": recv, "commands": cmds}
    finally:
        for r in relays:
            r.close()


def _tiny(d: Path) -> Path:
    from gguf import GGMLQuantizationType as Q

    from tritpack_gguf.build import read_stamp
    from tritpack_gguf.convert import ConvertOptions, convert
    from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file

    src = read_stamp(tools_dir(0).parent)["source_dir"]
    raw = make_llama(d / "tiny-raw.gguf", vocab_file(src), Shape(n_layer=3), seed=5, dtype=Q.F16)
    return Path(convert(raw, ConvertOptions(type="tp4", output=d / "tiny-3layer-TP4.gguf", threads=1)).output)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-p", type=int, default=64)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/rpc.md"))
    ap.add_argument("--tiny", action="store_true", help="add a 3-layer n_embd-128 TP4 model (the fixed RPC cost)")
    a = ap.parse_args()
    lib = tools_dir(0)
    t = a.threads
    logs = Path("/tmp") / f"tritpack-bench-rpc-{int(time.time())}"
    logs.mkdir(parents=True, exist_ok=True)
    if a.tiny:
        a.models.append(_tiny(logs))
    servers = [rpc.start_rpc_server(port=0, threads=t, log_file=logs / f"server{i}.log", lib_dir=lib) for i in range(2)]
    eps = [s.endpoint for s in servers]
    rows, wires, cmds = [], [], []
    try:
        rpc.check_servers(eps, lib)
        for m in a.models:
            ngl, split = rpc.offload_plan(m, eps, None, None)
            local, remote = [], []
            for _ in range(a.r):  # interleaved rounds: load from other processes drifts alike on both
                local += run_llama_bench(lib, [m], n_prompt=a.p, n_gen=a.n, ngl=0, threads=t, repetitions=1)
                remote += run_llama_bench(lib, [m], n_prompt=a.p, n_gen=a.n, ngl=ngl, threads=t, repetitions=1,
                                          extra=rpc.llama_args(eps, ngl, split))
            rows.append((m, local, remote, ngl, split))
            g, pp = 16, 32
            d1 = wire_bytes(lib, m, eps, t, p=0, n=g)
            d2 = wire_bytes(lib, m, eps, t, p=0, n=2 * g)
            p1 = wire_bytes(lib, m, eps, t, p=pp, n=0)
            p2 = wire_bytes(lib, m, eps, t, p=2 * pp, n=0)
            wires.append({
                "decode_sent": (d2["sent"] - d1["sent"]) / g, "decode_recv": (d2["received"] - d1["received"]) / g,
                "prompt_sent": (p2["sent"] - p1["sent"]) / pp, "prompt_recv": (p2["received"] - p1["received"]) / pp,
                "load_sent": d1["sent"]})
            cmds.append({k: d2["commands"].get(k, 0) - d1["commands"].get(k, 0) for k in d2["commands"]})
    finally:
        for s in servers:
            s.stop()

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    cmd = " ".join([sys.executable.split("/")[-1], *sys.argv])
    out = [
        "# TritPack over llama.cpp's RPC backend (loopback)",
        "",
        f"Machine: {model_name}, {len(__import__('os').sched_getaffinity(0))} cores visible, {t} threads per process "
        f"(the client and each of 2 rpc-servers); Linux {platform.release()}. Date: {time.strftime('%Y-%m-%d')}.",
        "Every process is on this one machine, so the split runs the same kernels on the same cores; what it adds",
        "is the RPC path: serialization, loopback TCP, one round trip per split boundary and token, and the",
        "logits coming back. On two real hosts add the network's latency and bandwidth (docs/distributed.md).",
        "",
        "Command:",
        "",
        "```",
        cmd,
        f"# {a.r} rounds, each: llama-bench -m MODEL -p {a.p} -n {a.n} -r 1 -t {t} -ngl 0       (local)",
        f"#                then llama-bench -m MODEL -p {a.p} -n {a.n} -r 1 -t {t} -ngl NGL --rpc EP1,EP2 -ts TS",
        "```",
        "",
        f"t/s: median over the {a.r} rounds (min-max). Overhead per token: 1000/split - 1000/local, in ms, of the medians.",
        "",
        "| model | size MiB | split (-ngl, -ts) | pp local t/s | pp split t/s | tg local t/s | tg split t/s | "
        "decode overhead ms/token | prompt overhead ms/token |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    def cell(x: tuple[float, float, float]) -> str:
        return f"{x[0]:,.1f} ({x[1]:,.1f}-{x[2]:,.1f})"

    for (m, local, remote, ngl, split), w in zip(rows, wires):
        ppl, ppr, tgl, tgr = _tps(local, "pp"), _tps(remote, "pp"), _tps(local, "tg"), _tps(remote, "tg")
        out.append(f"| {m.name} | {m.stat().st_size / 2**20:,.1f} | {ngl}, {'/'.join(f'{v:g}' for v in split)} | "
                   f"{cell(ppl)} | {cell(ppr)} | {cell(tgl)} | {cell(tgr)} | "
                   f"{1e3 / tgr[0] - 1e3 / tgl[0]:+.2f} | {1e3 / ppr[0] - 1e3 / ppl[0]:+.3f} |")
    out += ["", "Bytes on the wire (all servers together, counted by the relay; differences of two runs, so the "
            "weights sent at load cancel):", "",
            "| model | sent in a -n 16 run MB (the weights, mostly) | decode: to servers B/token | decode: back B/token | "
            "prompt: to servers B/token | prompt: back B/token | commands per decoded token |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for (m, *_), w, c in zip(rows, wires, cmds):
        per = ", ".join(f"{k} {v / 16:g}" for k, v in sorted(c.items()) if v)
        out.append(f"| {m.name} | {w['load_sent'] / 1e6:,.1f} | {w['decode_sent']:,.0f} | {w['decode_recv']:,.0f} | "
                   f"{w['prompt_sent']:,.0f} | {w['prompt_recv']:,.0f} | {per} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(out) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
