"""The control socket of ``mmr run`` / ``mmr host`` and its client (``mmr status``, ``mmr
flows``, ``mmr reload``).

One JSON request line in, one JSON answer line out, then the connection closes.  The socket is
a Unix stream socket: ``@name`` is an abstract address (one per network namespace, so a
router in each namespace has its own), anything else a path created with mode 0600.  Either
way only root (uid 0, checked with SO_PEERCRED) is answered.

The server never waits: every socket is non-blocking and lives in the engine's poll set;
a connection gets a buffer for its request (at most 64 KiB), a deadline (2 s from accept to
the last byte of the answer) and a slot among at most 16.  A request is a JSON object with a
known ``cmd`` and typed arguments; anything else, and any error inside a handler, is an error
answer, never an exception in the engine.
"""
from __future__ import annotations

import json
import os
import select
import socket
import struct
import time

from engine.errors import UserError

MAX_REQUEST = 65536
MAX_CONNECTIONS = 16
DEADLINE_S = 2.0
COMMANDS = {"ping": {}, "status": {}, "reload": {}, "flows": {"uplink": str, "limit": int}}


def _address(addr: str) -> str:
    return "\0" + addr[1:] if addr.startswith("@") else addr


def validate(raw: bytes) -> dict:
    """The request as a dict, or ValueError with the sentence to answer."""
    try:
        req = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("not a JSON request; send one line such as {\"cmd\": \"status\"}") from None
    if not isinstance(req, dict):
        raise ValueError("a request is a JSON object such as {\"cmd\": \"status\"}")
    cmd = req.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise ValueError(f"unknown command {cmd!r} (status, flows, reload, ping)")
    args = COMMANDS[cmd]
    for k, v in req.items():
        if k == "cmd":
            continue
        if k not in args:
            raise ValueError(f"{cmd} takes no argument {k!r}")
        if v is None:
            continue
        if args[k] is int and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 10_000_000):
            raise ValueError(f"{k} must be an integer from 0 to 10000000")
        if args[k] is str and (not isinstance(v, str) or len(v) > 64):
            raise ValueError(f"{k} must be a name")
    return req


class _Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "deadline")

    def __init__(self, sock, deadline):
        self.sock, self.inbuf, self.outbuf, self.deadline = sock, b"", None, deadline


class ControlServer:
    """``poller``: an object with register(fd, events, callback) / unregister(fd) (the
    engine's poll set); ``handler(req) -> dict``."""

    def __init__(self, addr: str, handler, poller, log):
        self.addr, self.handler, self.poller, self.log = addr, handler, poller, log
        self.conns: dict[int, _Conn] = {}
        self.refused = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if not addr.startswith("@"):
            os.makedirs(os.path.dirname(addr) or ".", mode=0o700, exist_ok=True)
            if os.path.exists(addr):
                try:                       # a live router answers; a stale file does not
                    request(addr, {"cmd": "ping"}, timeout=0.5)
                    raise UserError(f"another mmr is listening on {addr}; stop it or set "
                                    f"monitor.control_socket to another path")
                except (OSError, RuntimeError):
                    os.unlink(addr)
        try:
            self.sock.bind(_address(addr))
        except OSError as exc:
            self.sock.close()
            raise UserError(f"cannot open the control socket {addr} ({exc.strerror}); another "
                            f"mmr in this network namespace? set monitor.control_socket") from None
        if not addr.startswith("@"):
            os.chmod(addr, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)
        poller.register(self.sock.fileno(), select.POLLIN, self._accept)

    def _accept(self, revents: int) -> None:
        now = time.monotonic()
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            if len(self.conns) >= MAX_CONNECTIONS:
                self.refused += 1
                conn.close()
                continue
            _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            c = _Conn(conn, now + DEADLINE_S)
            self.conns[conn.fileno()] = c
            if uid != 0:      # credentials first: nobody but root may make mmr read
                self._answer(c, {"ok": False, "error": "only root may control mmr"})
            else:
                self.poller.register(conn.fileno(), select.POLLIN, lambda ev, c=c: self._readable(c, ev))

    def _readable(self, c: _Conn, revents: int) -> None:
        try:
            chunk = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            if c.inbuf.strip():
                self._serve(c)
            else:
                self._close(c)
            return
        c.inbuf += chunk
        if b"\n" in c.inbuf:
            self._serve(c)
        elif len(c.inbuf) > MAX_REQUEST:
            self._answer(c, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})

    def _serve(self, c: _Conn) -> None:
        line = c.inbuf.split(b"\n", 1)[0]
        try:
            req = validate(line)
        except ValueError as exc:
            self._answer(c, {"ok": False, "error": f"bad request: {exc}"})
            return
        try:
            answer = self.handler(req)
        except Exception as exc:            # a handler's fault is an answer, not a stopped router
            self.log(f"mmr: control: {req.get('cmd')} failed: {type(exc).__name__}: {exc}")
            answer = {"ok": False, "error": f"{req.get('cmd')} failed inside mmr: {type(exc).__name__}"}
        self._answer(c, answer)

    def _answer(self, c: _Conn, answer: dict) -> None:
        c.outbuf = json.dumps(answer).encode() + b"\n"
        fd = c.sock.fileno()
        self.poller.unregister(fd)
        self.poller.register(fd, select.POLLOUT, lambda ev, c=c: self._writable(c, ev))
        self._writable(c, 0)

    def _writable(self, c: _Conn, revents: int) -> None:
        try:
            k = c.sock.send(c.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        c.outbuf = c.outbuf[k:]
        if not c.outbuf:
            self._close(c)

    def _close(self, c: _Conn) -> None:
        fd = c.sock.fileno()
        if fd >= 0:
            self.poller.unregister(fd)
            self.conns.pop(fd, None)
        c.sock.close()

    def next_due(self, now: float) -> float:
        return min((c.deadline for c in self.conns.values()), default=now + 1.0)

    def tick(self, now: float) -> None:
        """Close connections past their deadline (slow or silent clients)."""
        for c in [c for c in self.conns.values() if now > c.deadline]:
            self._close(c)

    def close(self) -> None:
        for c in list(self.conns.values()):
            self._close(c)
        self.poller.unregister(self.sock.fileno())
        self.sock.close()
        if not self.addr.startswith("@"):
            try:
                os.unlink(self.addr)
            except OSError:
                pass


def request(addr: str, req: dict, timeout: float = 5.0) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(_address(addr))
        try:
            s.sendall(json.dumps(req).encode() + b"\n")
        except BrokenPipeError:
            pass                              # closed early: its answer is still there to read
        data = b""
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    try:
        return json.loads(data.decode())
    except ValueError:
        raise RuntimeError(f"mmr answered something that is not JSON on {addr}") from None


def ask(addr: str, req: dict) -> dict:
    """request() for the CLI: a missing router is one clear sentence."""
    try:
        return request(addr, req)
    except (FileNotFoundError, ConnectionRefusedError):
        raise UserError(f"no mmr run or mmr host is listening on {addr} in this network namespace; "
                        f"start one (or use 'ip netns exec NS mmr ...' for one in a namespace)") from None
    except PermissionError:
        raise UserError(f"not allowed to open {addr}; run as root") from None
    except socket.timeout:
        raise RuntimeError(f"mmr did not answer on {addr} within 5 s") from None
