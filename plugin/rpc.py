"""TritPack models over llama.cpp's RPC backend: helper servers, and the check a client makes first.

A helper host runs the patched `ggml-rpc-server` (`start_rpc_server()`, the `rpc-server` command):
its ggml knows TP1/TP4 (type ids, traits, CPU and CUDA kernels), so a client may put layers of a
TritPack model there. A client (`run`, `verify`, `serve`, `bench`, `load()` with `rpc=`) names the
helpers as HOST:PORT endpoints; llama.cpp registers each as a device, puts the last layers on them
(llama.cpp's -ngl/--tensor-split, computed by `offload_plan()` unless given) and the rest on the local
backend.

The RPC hello carries only the protocol version, not a type table, and a stock server closes the
connection (the client then aborts in RPC_STATUS_ASSERT) when it meets a type id it does not know.
So before a model is sent, `check_servers()` checks each endpoint in two steps:

1. hello (here, over a plain socket with timeouts): the server answers, speaks RPC protocol major
   version 7, and how many devices it has; a refused connection, silence (it serves one client at a
   time) or another protocol version is an error naming the host;
2. probe (in a child process, so that llama.cpp's abort on a stock server becomes a message): on every
   device of the server, one graph with a TP1 and a TP4 mul_mat over weights quantized here from
   seeded random data, whose result the child also computes itself from the same bytes (the local
   library's dequantization, float64 product). A server that does not know the types closes the
   connection (stock, or an older build), one whose type table or kernels mean something else for
   those bytes answers numbers off by O(1); both are one TritpackError naming the endpoint.
   docs/distributed.md says why that is sound.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import TritpackError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50052
RPC_PROTO_MAJOR = 7          # ggml-rpc.h of the pinned llama.cpp
RPC_CMD_HELLO = 14
RPC_CMD_DEVICE_COUNT = 15
RPC_CONN_CAPS_SIZE = 24      # transport.h
HELLO_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 120.0
PROBE_TOLERANCE = 1e-3       # max |remote - expected| / max |expected| (measured: 1e-5 on the CPU; a
                             # codebook table rotated by one: 0.15)
PROBE_K, PROBE_M, PROBE_N = 1024, 32, 2  # weights K x M (16 blocks of 64 a row), activations K x N
NO_AUTH_WARNING = ("warning: ggml's RPC protocol has no authentication and no encryption: anyone who can "
                   "reach {endpoint} can allocate memory here, read and write its buffers and run compute "
                   "graphs. Keep it on a trusted network (or bind loopback and use an SSH tunnel).")

RPC_HINT = "start the helper with `tritpack-gguf rpc-server`, the patched ggml-rpc-server of this tritpack-gguf"


# ----------------------------------------------------------------------------- endpoints

def parse_endpoints(spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """'HOST:PORT[,HOST:PORT...]' (or a list of them) -> ['HOST:PORT', ...], checked."""
    if not spec:
        return []
    items = spec.split(",") if isinstance(spec, str) else [s for part in spec for s in part.split(",")]
    out: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TritpackError(f"--rpc: {item!r} is not HOST:PORT (e.g. 192.168.1.20:50052)")
        if host.startswith("[") and host.endswith("]"):
            raise TritpackError(f"--rpc: {item!r}: ggml's RPC client takes IPv4 addresses or host names only")
        if item in out:
            raise TritpackError(f"--rpc: {item} is named twice")
        out.append(item)
    if len(out) > 16:
        raise TritpackError("--rpc: at most 16 servers (GGML_RPC_MAX_SERVERS)")
    return out


def parse_tensor_split(spec: str | list[float] | None) -> list[float] | None:
    """'3,1,1' -> [3.0, 1.0, 1.0] (proportions per offload device: the RPC servers in --rpc order,
    then local GPUs), as llama.cpp's --tensor-split."""
    if spec is None or spec == "":
        return None
    if not isinstance(spec, str):
        return [float(x) for x in spec]
    try:
        vals = [float(x) for x in spec.replace("/", ",").split(",") if x.strip()]
    except ValueError:
        raise TritpackError(f"--tensor-split: {spec!r} is not a list of numbers (e.g. 2,1,1)") from None
    if not vals or any(v < 0 for v in vals) or sum(vals) <= 0:
        raise TritpackError(f"--tensor-split: {spec!r} needs non-negative proportions with a positive sum")
    return vals


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


# ----------------------------------------------------------------------------- step 1: hello

@dataclass
class ServerInfo:
    endpoint: str
    proto: str
    devices: int
    probe: list[dict] = field(default_factory=list)  # per device and type: max error, scale, seconds

    def as_dict(self) -> dict:
        return asdict(self)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("closed")
        buf += chunk
    return buf


def hello(endpoint: str, timeout: float = HELLO_TIMEOUT_S) -> ServerInfo:
    """Connect, say HELLO, ask the device count, hang up. Errors name the endpoint."""
    host, port = _split(endpoint)
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise TritpackError(f"RPC server {endpoint}: no answer to a connection within {timeout:.0f} s",
                            hint="is the host up and the port open?") from None
    except OSError as e:
        raise TritpackError(f"RPC server {endpoint}: cannot connect: {e.strerror or e}", hint=RPC_HINT) from None
    with s:
        s.settimeout(timeout)
        try:
            s.sendall(struct.pack("<BQ", RPC_CMD_HELLO, RPC_CONN_CAPS_SIZE) + bytes(RPC_CONN_CAPS_SIZE))
            size, = struct.unpack("<Q", _recv_exact(s, 8))
            if size != 4 + RPC_CONN_CAPS_SIZE:
                raise TritpackError(f"RPC server {endpoint}: its hello answer has {size} bytes, not "
                                    f"{4 + RPC_CONN_CAPS_SIZE}: another RPC protocol version (this client speaks "
                                    f"{RPC_PROTO_MAJOR}.x)", hint=RPC_HINT)
            major, minor, patch = _recv_exact(s, size)[:3]
            if major != RPC_PROTO_MAJOR:
                raise TritpackError(f"RPC server {endpoint} speaks RPC protocol {major}.{minor}.{patch}, this "
                                    f"client {RPC_PROTO_MAJOR}.x", hint=RPC_HINT)
            s.sendall(struct.pack("<BQ", RPC_CMD_DEVICE_COUNT, 0))
            size, = struct.unpack("<Q", _recv_exact(s, 8))
            n_dev, = struct.unpack("<I", _recv_exact(s, size)[:4])
        except socket.timeout:
            raise TritpackError(
                f"RPC server {endpoint} accepted the connection but did not answer within {timeout:.0f} s",
                hint="a ggml-rpc-server serves one client at a time: is another run or serve using it?") from None
        except (ConnectionError, OSError) as e:
            raise TritpackError(f"RPC server {endpoint} closed the connection during the hello ({e}): not a "
                                f"ggml RPC server of protocol {RPC_PROTO_MAJOR}", hint=RPC_HINT) from None
    if n_dev < 1:
        raise TritpackError(f"RPC server {endpoint} has no devices")
    return ServerInfo(endpoint, f"{major}.{minor}.{patch}", n_dev)


# ----------------------------------------------------------------------------- step 2: the probe

def probe_weights(seed: int = 0x7217):
    """The probe's inputs, the same on every client: weights W (M x K) and activations X (N x K),
    float32, seeded. Gaussian weights with scales varying per 16 make the TP4 quantizer use all 16
    codebooks and all 8 sub-scale codes (checked), and the TP1 quantizer every trit. The activations
    are integers in [-127, 127] with a +-127 in every 32 values, so that every backend's activation
    quantization (8-bit with a scale per 32 on CUDA, per 256 or int16 per 64 on the CPU) is exact or
    nearly so: the remote result then equals the float64 product up to summation rounding, and any
    difference in what the weight bytes mean shows at full size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((PROBE_M, PROBE_K)) * 0.05).astype(np.float32)
    w *= rng.uniform(0.25, 4.0, size=(PROBE_M, PROBE_K // 16, 1)).repeat(16, axis=2).reshape(PROBE_M, PROBE_K)
    x = rng.integers(-127, 128, size=(PROBE_N, PROBE_K // 32, 32))
    x[:, :, 0] = np.where(rng.random((PROBE_N, PROBE_K // 32)) < 0.5, -127, 127)
    x = rng.permuted(x, axis=2).reshape(PROBE_N, PROBE_K).astype(np.float32)
    return w, x


def _probe_device(lib_dir: Path, endpoint: str, device: int, say) -> list[dict]:
    """In the probe child: the TP1 and TP4 mul_mat on `device` of `endpoint`, against the expected
    product of the same bytes dequantized by this library."""
    import numpy as np

    from .converters.gguf_types import TYPE_TP1, TYPE_TP4
    from .ggml_lib import InitParams, load_backends, load_ggml

    gl = load_ggml(lib_dir)
    lib = load_backends(lib_dir)
    g, r = lib.base, lib.rpc
    w, x = probe_weights()
    out = []
    for name, t in (("TP1", TYPE_TP1.id), ("TP4", TYPE_TP4.id)):
        q = gl.quantize_chunk(t, w)
        expected = (x.astype(np.float64) @ gl.dequantize(t, q).astype(np.float64).T)  # N x M
        say(f"{name} on device {device}")
        t0 = time.perf_counter()
        ctx = g.ggml_init(InitParams(g.ggml_tensor_overhead() * 8 + g.ggml_graph_overhead(), None, True))
        backend = buf = None
        try:
            wt = g.ggml_new_tensor_2d(ctx, t, PROBE_K, PROBE_M)
            xt = g.ggml_new_tensor_2d(ctx, 0, PROBE_K, PROBE_N)  # GGML_TYPE_F32
            yt = g.ggml_mul_mat(ctx, wt, xt)
            gf = g.ggml_new_graph(ctx)
            g.ggml_build_forward_expand(gf, yt)
            backend = r.ggml_backend_rpc_init(endpoint.encode(), device)
            if not backend:
                raise TritpackError(f"RPC server {endpoint}: cannot open device {device}")
            buf = g.ggml_backend_alloc_ctx_tensors(ctx, backend)
            if not buf:
                raise TritpackError(f"RPC server {endpoint}: no buffer for the probe on device {device}")
            assert g.ggml_nbytes(wt) == q.nbytes, (g.ggml_nbytes(wt), q.nbytes)
            g.ggml_backend_tensor_set(wt, q.ctypes.data, 0, q.nbytes)
            g.ggml_backend_tensor_set(xt, x.ctypes.data, 0, x.nbytes)
            status = g.ggml_backend_graph_compute(backend, gf)
            y = np.empty((PROBE_N, PROBE_M), dtype=np.float32)
            g.ggml_backend_tensor_get(yt, y.ctypes.data, 0, y.nbytes)
        finally:
            if buf:
                g.ggml_backend_buffer_free(buf)
            if backend:
                g.ggml_backend_free(backend)
            g.ggml_free(ctx)
        scale = float(np.abs(expected).max())
        err = float(np.abs(y - expected).max()) if np.isfinite(y).all() else float("inf")
        out.append({"device": device, "type": name, "status": int(status), "max_abs_err": err,
                    "scale": scale, "rel_err": err / scale, "seconds": round(time.perf_counter() - t0, 3)})
    return out


def _probe_main(argv: list[str]) -> int:
    """The probe child: `python -m tritpack_gguf.rpc probe LIB_DIR ENDPOINT N_DEVICES` -> JSON on stdout;
    what it is doing goes to stderr line by line (the parent reads the last one when it dies)."""
    _, lib_dir, endpoint, n_dev = argv

    def say(what: str) -> None:
        sys.stderr.write(f"probe: {what}\n")
        sys.stderr.flush()

    results = []
    for d in range(int(n_dev)):
        results += _probe_device(Path(lib_dir), endpoint, d, say)
    sys.stdout.write(json.dumps(results) + "\n")
    return 0


def probe(info: ServerInfo, lib_dir: Path, timeout: float = PROBE_TIMEOUT_S) -> list[dict]:
    """Step 2 for one server (see the module's docstring): a list of results, or a TritpackError
    naming the endpoint."""
    ep = info.endpoint
    from .programs import run_program

    argv = [sys.executable, "-m", __name__, "probe", str(lib_dir), ep, str(info.devices)]
    try:
        p = run_program(argv, None, what="the probe", timeout=timeout, no_backtrace=True)
        p.stdout, p.stderr = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        raise TritpackError(f"RPC server {ep}: the TP1/TP4 probe did not finish within {timeout:.0f} s",
                            hint="a ggml-rpc-server serves one client at a time: is another run or serve using it?") from None
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    doing = next((ln[len("probe: "):] for ln in reversed(lines) if ln.startswith("probe: ")), "the probe")
    if p.returncode != 0:
        said = [ln for ln in lines if not ln.startswith("probe: ")]
        if any("Remote RPC server crashed" in ln for ln in said) or p.returncode < 0:
            raise TritpackError(
                f"RPC server {ep} does not know the TritPack types: it closed the connection when sent a "
                f"{doing.split(' ')[0]} tensor (a stock ggml-rpc-server, or one of another llama.cpp build); "
                "no model was sent", hint=RPC_HINT)
        tail = " | ".join(said[-2:])
        raise TritpackError(f"RPC server {ep}: the TP1/TP4 probe failed while running {doing}"
                            + (f": {tail}" if tail else ""), hint=RPC_HINT)
    try:
        results = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise TritpackError(f"RPC server {ep}: the probe printed no result: {p.stdout[-200:]!r}") from None
    for res in results:
        if res["status"] != 0 or not res["rel_err"] <= PROBE_TOLERANCE:
            raise TritpackError(
                f"RPC server {ep} computes {res['type']} differently from this client (device {res['device']}: "
                f"relative error {res['rel_err']:.3g} on the probe, tolerance {PROBE_TOLERANCE}, graph status "
                f"{res['status']}): its tritpack-gguf version or type table differs; no model was sent",
                hint="build the same tritpack-gguf on the client and every helper (`tritpack-gguf build`)")
    return results


_CHECKED: dict[str, ServerInfo] = {}


def check_servers(endpoints: list[str], lib_dir: Path | None = None, *, force: bool = False) -> list[ServerInfo]:
    """Hello and probe every endpoint (once a process unless `force`). Raises at the first bad one."""
    from .runtime import library_dir

    d = Path(lib_dir) if lib_dir else library_dir()
    out = []
    for ep in endpoints:
        if force or ep not in _CHECKED:
            info = hello(ep)
            info.probe = probe(info, d)
            _CHECKED[ep] = info
        out.append(_CHECKED[ep])
    return out


# ----------------------------------------------------------------------------- the client side

def n_layers(path: str | Path) -> int | None:
    from .runtime import read_header

    h = read_header(path)
    n = h.get(f"{h.architecture}.block_count")
    return int(n) if isinstance(n, int) else None


def offload_plan(path: str | Path, endpoints: list[str], ngl: int | None,
                 tensor_split: list[float] | None) -> tuple[int, list[float] | None]:
    """(-ngl, --tensor-split) for a model split over the local backend and `endpoints`.

    llama.cpp counts n_layer + 1 units (the repeating layers, then the output layer); the first
    n_layer + 1 - ngl stay on the local CPU, the rest go to the offload devices (the RPC servers in
    --rpc order, then local GPUs) in proportion to tensor_split: unit k of the offloaded ones goes to
    the first device whose cumulative share exceeds k / ngl; the output layer is always the last
    offloaded unit. Without --ngl, the local backend and each server get an equal share of the
    repeating layers (the output layer goes with the last server, so n_vocab logits come back each
    token), and tensor_split is those unit counts, so the boundaries fall exactly on layers. With --ngl but
    no --tensor-split the servers share the offloaded units equally (llama.cpp's default would weigh
    them by free memory)."""
    if not endpoints:
        return (ngl or 0), tensor_split
    r = len(endpoints)
    if not ngl:
        n = n_layers(path) or 0
        local = n // (r + 1)
        off = n - local
        counts = [off // r + (1 if j < off % r else 0) for j in range(r)]
        counts[-1] += 1  # the output layer
        ngl = off + 1
        if tensor_split is None:
            tensor_split = [float(c) for c in counts]
    if tensor_split is None:
        tensor_split = [1.0] * r
    return ngl, tensor_split


_ATTACHED: set[str] = set()


def attach(endpoints: list[str], lib_dir: Path | None = None) -> None:
    """In the process that runs llama.cpp: register each endpoint's devices with ggml (what
    llama.cpp's --rpc does), so that llama_cpp.Llama offloads layers to them. Idempotent."""
    from .runtime import library_dir

    todo = [ep for ep in endpoints if ep not in _ATTACHED]
    if not todo:
        return
    from .ggml_lib import load_backends

    lib = load_backends(lib_dir or library_dir())
    for ep in todo:
        reg = lib.rpc.ggml_backend_rpc_add_server(ep.encode())
        if not reg:
            raise TritpackError(f"RPC server {ep}: no devices", hint=RPC_HINT)
        lib.ggml.ggml_backend_register(reg)
        _ATTACHED.add(ep)


def llama_args(endpoints: list[str], ngl: int, tensor_split: list[float] | None) -> list[str]:
    """The llama.cpp program options (llama-server, llama-bench) for the same split."""
    if not endpoints:
        return []
    args = ["--rpc", ",".join(endpoints)]
    if tensor_split:
        args += ["-ts", "/".join(f"{v:g}" for v in tensor_split)]
    return args


def which_died(endpoints: list[str], timeout: float = 2.0) -> list[str]:
    """After a failure: the endpoints that no longer accept a connection."""
    dead = []
    for ep in endpoints:
        host, port = _split(ep)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError:
            dead.append(ep)
    return dead


def explain_failure(e: TritpackError, endpoints: list[str]) -> TritpackError:
    """A llama.cpp failure of a split run, reworded when an RPC server went away."""
    if not endpoints:
        return e
    dead = which_died(endpoints)
    if dead or "Remote RPC server" in e.message or "made no progress" in e.message:
        who = ", ".join(dead) if dead else "one of " + ", ".join(endpoints)
        e.message = (f"RPC server {who} stopped answering (the helper died or the network dropped); "
                     f"{e.message}")
        e.hint = e.hint or "restart the helper with `tritpack-gguf rpc-server` and run again"
    return e


# ----------------------------------------------------------------------------- the server side

def server_argv(lib_dir: Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, device: str | None = None,
                threads: int | None = None, cache: bool = False) -> list[str]:
    argv = [str(lib_dir / "ggml-rpc-server"), "--host", host, "--port", str(port)]
    if device:
        argv += ["--device", device]
    if threads:
        argv += ["--threads", str(threads)]
    if cache:
        argv.append("--cache")
    return argv


def start_rpc_server(*, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, device: str | None = None,
                     threads: int | None = None, cache_dir: str | Path | None = None, allow_network: bool = False,
                     log_file: str | Path | None = None, lib_dir: Path | None = None):
    """Start the patched ggml-rpc-server; returns a serve.ServerProcess-like handle once it accepts
    connections (a TritpackError if it exits first). Binding another address than loopback needs
    `allow_network`: the protocol has no authentication or encryption."""
    from .ggml_lib import tritpack_version_of
    from .programs import check_port, free_port, is_loopback, program, program_env, spawn, tools_dir

    if not is_loopback(host) and not allow_network:
        raise TritpackError(f"--host {host} would expose the RPC server beyond this machine",
                            hint="RPC has no authentication or encryption; add --allow-network to do it on a "
                                 "trusted network")
    # the CUDA build when there is one (ggml-rpc-server then serves the GPU), unless the CPU is asked for
    d = Path(lib_dir) if lib_dir else tools_dir(ngl=0 if (device or "").upper() == "CPU" else 1)
    exe = program(d, "ggml-rpc-server")
    if tritpack_version_of(d) is None:
        raise TritpackError("this build is not patched by tritpack-gguf", path=d, hint="run `tritpack-gguf build`")
    if port == 0:
        port = free_port(host)
    else:
        check_port(host, port)
    extra = {}
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        extra["LLAMA_CACHE"] = str(Path(cache_dir).resolve())  # ggml-rpc-server keeps tensors in $LLAMA_CACHE/rpc
    argv = server_argv(d, host=host, port=port, device=device, threads=threads, cache=bool(cache_dir))
    out = open(log_file, "ab") if log_file else None
    try:
        proc = spawn(argv, env=program_env(d, **extra), what="ggml-rpc-server", path=exe, stdout=out,
                     stderr=subprocess.STDOUT if out else None)
    finally:
        if out:
            out.close()
    handle = RpcServer(proc, host, port, argv, Path(log_file) if log_file else None)
    handle.wait_listening()
    return handle


@dataclass
class RpcServer:
    proc: subprocess.Popen
    host: str
    port: int
    argv: list[str]
    log_file: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:]) if self.log_file else ""
        except OSError:
            return ""

    def listening(self) -> bool:
        """Whether the port accepts a connection (probed with connect + close: the server then goes
        back to accept())."""
        host = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        try:
            socket.create_connection((host, self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Until the port accepts a connection; a TritpackError if the server exits first."""
        from .programs import wait_for

        try:
            wait_for(self.proc, self.listening, timeout=timeout, what="ggml-rpc-server", tail=self.log_tail,
                     interval=0.1, until="it listened",
                     late=f"ggml-rpc-server did not listen on {self.endpoint} within {timeout:.0f} s")
        except TritpackError:
            self.stop()
            raise

    def send(self, sig: int) -> None:
        from .programs import send

        send(self.proc, sig)

    def stop(self, grace: float = 5.0) -> int:
        from .programs import stop

        return stop(self.proc, grace=grace)

    def __enter__(self) -> "RpcServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_rpc(*, on_ready=lambda s: None, **kwargs) -> int:
    """Run the RPC server in the foreground until it exits or SIGINT/SIGTERM (forwarded to it; it is
    killed 5 s later if still running). programs.foreground runs it."""
    from .programs import foreground

    server, received = foreground(lambda: start_rpc_server(**kwargs), on_ready=on_ready, grace=5.0)
    if received:
        return 0
    code = server.proc.returncode
    if code != 0:
        raise TritpackError(f"ggml-rpc-server exited with code {code}", exit_code=code if 0 < code < 256 else 1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        sys.exit(_probe_main(sys.argv[1:]))
    sys.exit(2)
