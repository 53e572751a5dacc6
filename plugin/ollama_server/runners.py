"""One patched llama-server child per loaded model, loaded on first use and unloaded after keep_alive.

A runner is keyed by the model and its mode: `generate` (chat and generate) or `embed` (a child
started with --embeddings; a generative model gets mean pooling there). A request holds its runner
(`use`) for as long as it streams; a runner whose load settings (context size, threads, GPU layers)
differ from a request's is restarted once nobody uses it, as Ollama reloads a model. Children are
started by plugin/serve.py's start_server (loopback, a free port, the build's environment), waited
for with its wait_ready (in a worker thread), and stopped with SIGTERM, then SIGKILL.

With RPC helpers (`--rpc`), each runner applies issue 19's dead-helper rule (programs.HelperWatch): a
helper killed mid-request makes llama-server abort, and the request's error names the helper; one gone
silent leaves llama-server waiting on it, so while a request is in flight the reaper asks the server
whether it moves (/slots: answered, and the computing slot's counters moving) and, after the watch's
stall time without, stops the runner: the request fails with an error naming the helpers, not a hang.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import AsyncIterator

import aiohttp

from ..errors import TritpackError
from ..programs import HelperWatch, mem_available
from ..serve import ServerProcess, start_server
from .registry import ApiError, LocalModel, ModelFacts, human_bytes, rfc3339

FOREVER = math.inf
log = logging.getLogger(__name__)
LOAD_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class LoadSpec:
    ctx: int                  # context of one slot (a request's num_ctx, capped at the model's)
    parallel: int
    threads: int | None
    ngl: int
    batch: int | None
    mode: str                 # "generate" or "embed"


@dataclass
class Runner:
    key: tuple[str, str]
    model: LocalModel
    facts: ModelFacts
    spec: LoadSpec
    server: ServerProcess | None = None
    ready: asyncio.Future | None = None
    active: int = 0
    keep_alive: float = 300.0
    expires_at: float = FOREVER
    loaded_at: float = 0.0
    last_used: float = 0.0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    watch: HelperWatch = field(default_factory=HelperWatch)   # does nothing without RPC helpers
    failure: str | None = None   # why the watch stopped the child (a helper gone silent)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def alive(self) -> bool:
        return self.server is not None and self.server.proc.poll() is None

    async def explain(self, e: ApiError) -> ApiError:
        """A failure of a request on this runner, reworded when an RPC helper went away. Asking the
        helpers is a TCP connect to each (up to 2 s): it runs in a worker thread, not on the event loop
        that serves every other request."""
        if self.failure:
            return ApiError(500, self.failure)
        if not self.watch:
            return e
        told = await asyncio.to_thread(self.watch.explain, TritpackError(e.message))
        return ApiError(e.status, told.message)

    def size(self) -> int:
        return self.model.blob.stat().st_size + self.facts.kv_bytes_per_token * self.spec.ctx * self.spec.parallel \
            if self.model.blob.exists() else 0


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s)[:120]


class Runners:
    def __init__(self, *, session: aiohttp.ClientSession, log_dir: Path, ctx: int, parallel: int,
                 threads: int | None, ngl: int, keep_alive: float, max_loaded: int,
                 rpc: str | None = None, tensor_split: str | None = None, rpc_stall_s: float | None = None) -> None:
        self.session = session
        self.log_dir = log_dir
        self.ctx, self.parallel, self.threads, self.ngl = ctx, parallel, threads, ngl
        self.keep_alive = keep_alive
        self.max_loaded = max_loaded
        self.rpc, self.tensor_split = rpc, tensor_split   # every model split with these helpers (rpc.py)
        self.rpc_stall_s = rpc_stall_s                     # None: programs.STALL_S
        self._runners: dict[tuple[str, str], Runner] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._reaper: asyncio.Task | None = None
        self._stopping: set[asyncio.Future] = set()   # children being stopped after an abandoned load

    # ------------------------------------------------------------------------------- settings

    def spec_for(self, facts: ModelFacts, load: dict, mode: str) -> LoadSpec:
        ctx = load.get("num_ctx") or self.ctx
        if facts.context_length:
            ctx = min(ctx, facts.context_length)  # as Ollama: capped at the model's training context
        threads = load.get("num_thread") or self.threads
        ngl = load["num_gpu"] if load.get("num_gpu", -1) >= 0 else self.ngl
        return LoadSpec(ctx, 1 if mode == "embed" else self.parallel, threads, max(ngl, 0), load.get("num_batch"), mode)

    def _check_memory(self, m: LocalModel, facts: ModelFacts, spec: LoadSpec) -> None:
        need = m.blob.stat().st_size + facts.kv_bytes_per_token * spec.ctx * spec.parallel
        avail = mem_available()
        if avail is not None and need > avail:
            raise ApiError(500, f"model requires more system memory ({human_bytes(need)}) than is available "
                                f"({human_bytes(avail)}): {m.short!r} with a context of {spec.ctx} tokens"
                                f"{f' x {spec.parallel} slots' if spec.parallel > 1 else ''} (lower num_ctx)")

    # ------------------------------------------------------------------------------- use

    @asynccontextmanager
    async def use(self, m: LocalModel, facts: ModelFacts, load: dict, mode: str,
                  keep_alive: float | None) -> AsyncIterator[tuple[Runner, int]]:
        """The runner of `m` in `mode`, loaded if needed; yields (runner, load time in ns)."""
        spec = self.spec_for(facts, load, mode)
        key = (m.short.lower(), mode)
        lock = self._locks.setdefault(key, asyncio.Lock())
        t0 = time.monotonic_ns()
        loaded = False
        async with lock:
            r = self._runners.get(key)
            if r is not None and (r.spec != spec or r.model.digest != m.digest or not r.alive()):
                while r.active and r.alive():  # as Ollama: a reload waits for the requests in flight
                    r.idle.clear()
                    await r.idle.wait()
                await self._stop(r)
                r = None
            if r is None:
                r = await self._load(m, facts, spec)
                loaded = True
            r.active += 1
            r.expires_at = FOREVER
        load_ns = time.monotonic_ns() - t0 if loaded else 0
        r.watch.progress()
        try:
            yield r, load_ns
        except ApiError as e:
            raise (await r.explain(e)) from None
        finally:
            r.active -= 1
            r.last_used = time.monotonic()
            r.keep_alive = self.keep_alive if keep_alive is None else keep_alive
            if r.active == 0:
                r.idle.set()
                r.expires_at = r.last_used + r.keep_alive if r.keep_alive != FOREVER else FOREVER
                if r.keep_alive <= 0:
                    await self._stop(r)

    async def _load(self, m: LocalModel, facts: ModelFacts, spec: LoadSpec) -> Runner:
        if not m.blob.is_file():
            raise ApiError(500, f"the file of model {m.short!r} is missing: {m.blob} (it was deleted while "
                                "registered; create the model again)")
        self._check_memory(m, facts, spec)
        await self._make_room()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{_slug(m.short)}-{spec.mode}.log"
        log.unlink(missing_ok=True)
        extra = ["--no-webui"]
        if spec.mode == "embed":
            extra += ["--embeddings", "-b", str(spec.ctx), "-ub", str(spec.ctx)]
            if not facts.pooling:
                extra += ["--pooling", "mean"]
        elif spec.batch:
            extra += ["-b", str(spec.batch)]
        try:
            server = start_server(m.blob, host="127.0.0.1", port=0, ngl=spec.ngl, ctx=spec.ctx, threads=spec.threads,
                                  alias=m.short, extra=extra, log_file=log, parallel=spec.parallel,
                                  rpc=self.rpc, tensor_split=self.tensor_split)
        except TritpackError as e:
            raise ApiError(500, f"cannot load {m.short!r}: {e}") from None
        r = Runner((m.short.lower(), spec.mode), m, facts, spec, server,
                   watch=HelperWatch(list(server.rpc), self.rpc_stall_s))
        try:
            await asyncio.get_running_loop().run_in_executor(None, server.wait_ready, LOAD_TIMEOUT_S)
        except TritpackError as e:
            await asyncio.to_thread(server.stop, grace=5)
            told = await asyncio.to_thread(r.watch.explain, e)
            raise ApiError(500, f"cannot load {m.short!r}: {told}") from None
        except BaseException:  # the client left while it loaded: no child is left behind, and the
            # event loop serves the others meanwhile: a worker thread stops it (up to 5 s), to its end
            # though this task is cancelled; stop_all waits for it
            stopping = asyncio.get_running_loop().run_in_executor(None, partial(server.stop, grace=5))
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)
            raise
        r.loaded_at = r.last_used = time.monotonic()
        self._runners[r.key] = r
        return r

    async def _make_room(self) -> None:
        while len(self._runners) >= self.max_loaded:
            idle = [r for r in self._runners.values() if r.active == 0]
            if not idle:
                return
            await self._stop(min(idle, key=lambda r: r.last_used))

    async def _stop(self, r: Runner) -> None:
        if self._runners.get(r.key) is r:
            del self._runners[r.key]
        if r.server is not None and r.server.proc.poll() is None:
            await asyncio.get_running_loop().run_in_executor(None, r.server.stop)

    async def unload(self, name: str) -> bool:
        """Stop every runner of model `name` now (waiting for none); whether one was loaded."""
        rs = [r for k, r in list(self._runners.items()) if k[0] == name.lower()]
        for r in rs:
            await self._stop(r)
        return bool(rs)

    async def stop_all(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        await asyncio.gather(*(self._stop(r) for r in list(self._runners.values())), *self._stopping,
                             return_exceptions=True)

    # ------------------------------------------------------------------------------- keep_alive

    def start_reaper(self, interval: float = 0.25) -> None:
        async def reap() -> None:
            while True:
                await asyncio.sleep(interval)
                now = time.monotonic()
                for r in list(self._runners.values()):
                    try:
                        if r.active == 0 and (r.expires_at <= now or not r.alive()):
                            await self._stop(r)
                        elif r.active and r.watch and r.alive():
                            await self._check_helpers(r)
                    except Exception:  # the reaper must outlive any one runner's trouble
                        log.exception("stopping or checking the runner of %s", r.model.short)

        self._reaper = asyncio.get_running_loop().create_task(reap())

    async def _check_helpers(self, r: Runner) -> None:
        """A request is in flight on a split runner: llama-server moving (serve.making_progress) is
        progress; none for the watch's stall time stops the child (the request then fails with
        r.failure)."""
        assert r.server is not None
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, r.server.making_progress, 2.0):
            r.watch.progress()
        elif (e := r.watch.stalled("serving a request", r.model.short)) is not None:
            r.failure = e.message
            await self._stop(r)

    def ps(self) -> list[dict]:
        """One entry a loaded model (its generate and embed children together), most recently used first."""
        now_wall, now = time.time(), time.monotonic()
        out: dict[str, dict] = {}
        for r in sorted(self._runners.values(), key=lambda r: -r.last_used):
            exp = r.expires_at if r.active == 0 else now + r.keep_alive
            size = r.size()
            e = out.setdefault(r.model.short, {"name": r.model.short, "model": r.model.short, "size": 0,
                                               "digest": r.model.manifest_digest, "details": r.facts.details,
                                               "expires_at": -math.inf, "size_vram": 0, "context_length": r.spec.ctx})
            e["size"] += size
            e["size_vram"] += size if r.spec.ngl > 0 else 0
            e["expires_at"] = max(e["expires_at"], exp)
        for e in out.values():
            exp = e["expires_at"]
            e["expires_at"] = rfc3339(now_wall + 100 * 365 * 86400 if exp == FOREVER else now_wall + (exp - now))
        return list(out.values())

    def loaded(self) -> list[Runner]:
        return list(self._runners.values())
