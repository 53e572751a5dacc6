"""A TCP relay for ggml RPC connections that counts the bytes each way and can look at each command.

`Relay(target)` listens on a loopback port and forwards every connection to `target` (a
ggml-rpc-server), byte for byte. It counts the bytes in each direction (what a split model puts on
the network: bench/rpc_wire.py turns that into bytes per token for docs/distributed.md), and it
parses the client's side into commands (| cmd: 1 byte | size: 8 bytes | payload |, ggml-rpc.cpp), so
that `inspect(cmd, payload)` may rewrite a payload or end the connection (return None), the way a
server that refuses a command does; `frozen.set()` holds all traffic with the connections left open,
the way a host that lost power or network looks to its peer. The tests use that to stand in for servers that do not share
our type table without building a second llama.cpp.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Callable

RPC_TENSOR_SIZE = 296      # sizeof(rpc_tensor), packed: id, type, buffer, ne[4], nb[4], op, op_params[16], flags,
RPC_TENSOR_TYPE_AT = 8     # src[10], view_src, view_offs, data, name[64], use_count; type is a u32 at byte 8
CMD_NAMES = ["ALLOC_BUFFER", "GET_ALIGNMENT", "GET_MAX_SIZE", "BUFFER_GET_BASE", "FREE_BUFFER", "BUFFER_CLEAR",
             "SET_TENSOR", "SET_TENSOR_HASH", "GET_TENSOR", "COPY_TENSOR", "GRAPH_COMPUTE", "GET_DEVICE_MEMORY",
             "INIT_TENSOR", "GET_ALLOC_SIZE", "HELLO", "DEVICE_COUNT", "GRAPH_RECOMPUTE", "MEMSET_TENSOR"]
CMD = {name: i for i, name in enumerate(CMD_NAMES)}

Inspect = Callable[[int, bytes], "bytes | None"]


def tensor_types(cmd: int, payload: bytes) -> list[int]:
    """The ggml type ids of the serialized tensors a client command carries."""
    def at(off: int) -> list[int]:
        if off + RPC_TENSOR_SIZE > len(payload):
            return []
        return [struct.unpack_from("<I", payload, off + RPC_TENSOR_TYPE_AT)[0]]

    name = CMD_NAMES[cmd] if cmd < len(CMD_NAMES) else ""
    if name == "GET_ALLOC_SIZE":  # | device u32 | tensor | srcs[10] | (srcs with id 0 are empty)
        out = at(4)
        for i in range(10):
            off = 4 + RPC_TENSOR_SIZE * (1 + i)
            if off + 8 <= len(payload) and struct.unpack_from("<Q", payload, off)[0]:
                out += at(off)
        return out
    if name in ("SET_TENSOR", "SET_TENSOR_HASH", "GET_TENSOR", "INIT_TENSOR", "MEMSET_TENSOR"):
        return at(0)
    if name == "COPY_TENSOR":
        return at(0) + at(RPC_TENSOR_SIZE)
    if name == "GRAPH_COMPUTE":  # | device u32 | n_nodes u32 | nodes u64[n] | n_tensors u32 | tensors |
        if len(payload) < 8:
            return []
        n_nodes = struct.unpack_from("<I", payload, 4)[0]
        off = 8 + 8 * n_nodes
        if off + 4 > len(payload):
            return []
        n_t = struct.unpack_from("<I", payload, off)[0]
        return [t for i in range(n_t) for t in at(off + 4 + i * RPC_TENSOR_SIZE)]
    return []


class Relay:
    """Forward loopback connections to `target` ('HOST:PORT'); `endpoint` is where clients connect.
    Use as a context manager. `sent` / `received`: bytes client->server and server->client so far."""

    def __init__(self, target: str, inspect: Inspect | None = None, host: str = "127.0.0.1") -> None:
        th, _, tp = target.rpartition(":")
        self.target = (th, int(tp))
        self.inspect = inspect
        self.sent = 0
        self.received = 0
        self.commands: dict[str, int] = {}
        self.closed_by_inspect = 0
        self._lock = threading.Lock()
        self._srv = socket.create_server((host, 0))
        self.endpoint = f"{host}:{self._srv.getsockname()[1]}"
        self._stop = threading.Event()
        self.frozen = threading.Event()  # set: hold every byte, keep the connections open (a host gone silent)
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []

    def __enter__(self) -> "Relay":
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        try:  # wakes the accepting thread: a plain close leaves the port listening while accept() waits
            self._srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._srv.close()
        # shut down, not only closed: a thread blocked in recv() on a closed socket keeps the
        # connection open, and the server behind it then serves that ghost client forever
        self._shut(*list(self._socks))

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.sent, self.received

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks += [client, upstream]
            for fn, a, b in ((self._client_to_server, client, upstream), (self._server_to_client, upstream, client)):
                t = threading.Thread(target=fn, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    def _hold(self) -> None:
        while self.frozen.is_set() and not self._stop.is_set():
            self._stop.wait(0.05)

    @staticmethod
    def _recv_exact(s: socket.socket, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = s.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _shut(self, *socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def _client_to_server(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                head = self._recv_exact(src, 9)
                if head is None:
                    break
                cmd, size = struct.unpack("<BQ", head)
                payload = self._recv_exact(src, size) if size else b""
                if payload is None:
                    break
                name = CMD_NAMES[cmd] if cmd < len(CMD_NAMES) else str(cmd)
                self._hold()
                if self.inspect is not None:
                    new = self.inspect(cmd, payload)
                    if new is None:  # refuse, as a server does: close the connection
                        with self._lock:
                            self.closed_by_inspect += 1
                        break
                    payload = new
                with self._lock:
                    self.sent += 9 + len(payload)
                    self.commands[name] = self.commands.get(name, 0) + 1
                dst.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
        except OSError:
            pass
        self._shut(src, dst)

    def _server_to_client(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                chunk = src.recv(1 << 20)
                if not chunk:
                    break
                self._hold()
                with self._lock:
                    self.received += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        self._shut(src, dst)
