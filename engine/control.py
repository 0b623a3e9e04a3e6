"""The control socket of ``mmr run`` and its client (``mmr status``, ``mmr flows``, ``mmr reload``).

One JSON request line in, one JSON answer line out, then the connection closes.  The socket is
a Unix stream socket: ``@name`` is an abstract address (one per network namespace, so a
router in each namespace has its own), anything else a path created with mode 0600.  Either
way only root (uid 0, checked with SO_PEERCRED) is answered.
"""
from __future__ import annotations

import json
import os
import socket
import struct

from engine.errors import UserError

MAX_REQUEST = 65536


def _address(addr: str) -> str:
    return "\0" + addr[1:] if addr.startswith("@") else addr


class ControlServer:
    def __init__(self, addr: str, handler):
        self.addr, self.handler = addr, handler
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if not addr.startswith("@"):
            os.makedirs(os.path.dirname(addr) or ".", mode=0o700, exist_ok=True)
            if os.path.exists(addr):
                try:                       # a live router answers; a stale file does not
                    request(addr, {"cmd": "ping"}, timeout=0.5)
                    raise UserError(f"another mmr run is listening on {addr}; stop it or set "
                                    f"monitor.control_socket to another path")
                except (OSError, RuntimeError):
                    os.unlink(addr)
        try:
            self.sock.bind(_address(addr))
        except OSError as exc:
            self.sock.close()
            raise UserError(f"cannot open the control socket {addr} ({exc.strerror}); another "
                            f"mmr run in this network namespace? set monitor.control_socket") from None
        if not addr.startswith("@"):
            os.chmod(addr, 0o600)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_one(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.settimeout(1.0)
            try:
                _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                if uid != 0:
                    conn.sendall(json.dumps({"ok": False, "error": "only root may control mmr"}).encode() + b"\n")
                    return
                data = b""
                while b"\n" not in data and len(data) < MAX_REQUEST:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                try:
                    req = json.loads(data.decode() or "{}")
                    answer = self.handler(req)
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": f"bad request: {exc}"}
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                pass                        # the client went away; nothing to do

    def close(self) -> None:
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
        s.sendall(json.dumps(req).encode() + b"\n")
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
        raise RuntimeError(f"mmr run answered something that is not JSON on {addr}") from None


def ask(addr: str, req: dict) -> dict:
    """request() for the CLI: a missing router is one clear sentence."""
    try:
        return request(addr, req)
    except (FileNotFoundError, ConnectionRefusedError):
        raise UserError(f"no mmr run is listening on {addr} in this network namespace; start "
                        f"'mmr run' (or use 'ip netns exec NS mmr ...' for a router in a namespace)") from None
    except PermissionError:
        raise UserError(f"not allowed to open {addr}; run as root") from None
    except socket.timeout:
        raise RuntimeError(f"mmr run did not answer on {addr} within 5 s") from None
