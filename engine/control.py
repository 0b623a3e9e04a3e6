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
import time

from engine import constants as C
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
                # credentials first: nobody but root can make the data path wait on a read
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
        raise RuntimeError(f"mmr run answered something that is not JSON on {addr}") from None


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
        raise RuntimeError(f"mmr run did not answer on {addr} within 5 s") from None


class ControlledEngine:
    """What ``mmr run`` and ``mmr host`` share for runtime control: status, flows, reload.
    The engine provides cfg, pipeline, conn (ConnectionManager), counters, log, started,
    reloads, mode and default_policy."""

    mode = "router"
    default_policy = "default.toml"

    def say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    def install_signals(self) -> dict:
        """SIGINT/SIGTERM: stop at the end of the current batch; SIGHUP: reload there."""
        import signal

        def on_stop(signum, frame):
            self.stop = True

        def on_hup(signum, frame):
            self.reload_requested = True

        old = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
        return old

    @staticmethod
    def restore_signals(old: dict) -> None:
        import signal

        for s, h in old.items():
            signal.signal(s, h)

    def reload(self) -> dict:
        """Re-read the policy file.  A valid file replaces classification and selection at
        once and keeps the flowbase; an invalid one is rejected and the old policy runs on."""
        from engine import _classify, _select
        from engine.config import load_config
        from engine.errors import ConfigError

        path = None if self.cfg.path.startswith("<") else self.cfg.path
        try:
            new = load_config(path, default=self.default_policy)
        except ConfigError as exc:
            return {"ok": False, "message": f"rejected, the old policy keeps running: {exc}"}
        old = self.cfg
        same = (new.lan == old.lan and [(u.name, u.device) for u in new.uplinks] ==
                [(u.name, u.device) for u in old.uplinks] and new.option_type == old.option_type
                and new.host == old.host)
        if not same:
            return {"ok": False, "message": "rejected, the old policy keeps running: the LAN device, the "
                                            "uplinks (names, devices, order), the option type or [host] "
                                            "changed; those need a restart"}
        pipe = self.pipeline
        pipe.cfg = new
        pipe.classifier = _classify.Classifier(new)
        pipe.selector = _select.Selector(new)
        self.cfg = new
        self.conn.cfg = new
        self.conn.m.update({k: v for k, v in new.monitor.items()
                            if k not in ("control_socket", "probes", "window")})
        self.conn.apply(initial=True)     # usable mask and measurements into the new selector
        self.reloads += 1
        return {"ok": True, "message": f"policy reloaded from {new.path} ({len(pipe.flows)} flows kept)"}

    def snapshot(self) -> dict:
        names = [u.name for u in self.cfg.uplinks]
        return {"uplinks": self.conn.status(), "flows": len(self.pipeline.flows),
                "counters": {k: int(v) for k, v in self.counters.items()},
                "drops": {C.REASON_NAMES[k]: int(v) for k, v in enumerate(self.pipeline.reasons)
                          if v and C.REASON_ACTION[k] == "drop"},
                "uplink_packets": {n: int(self.pipeline.uplink_packets[i]) for i, n in enumerate(names)},
                "uplink_bytes": {n: int(self.pipeline.uplink_bytes[i]) for i, n in enumerate(names)}}

    def handle_control(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "ping":
            return {"ok": True}
        if cmd == "status":
            return {"ok": True, "policy": self.cfg.path, "uptime_s": round(time.time() - self.started, 1),
                    "reloads": self.reloads, "flows": len(self.pipeline.flows),
                    "uplinks": self.conn.status(), "failovers": self.conn.moves,
                    "mode": self.mode, "counters": {k: int(v) for k, v in self.counters.items()},
                    "drops": {C.REASON_NAMES[k]: int(v) for k, v in enumerate(self.pipeline.reasons)
                              if v and C.REASON_ACTION[k] == "drop"}}
        if cmd == "flows":
            from engine.replay import address_text

            names = [u.name for u in self.cfg.uplinks]
            want = req.get("uplink")
            if want is not None and want not in names:
                return {"ok": False, "error": f"no uplink named {want!r}; the uplinks are {', '.join(names)}"}
            recs = self.pipeline.flows.dump()
            if want is not None:
                recs = recs[recs["uplink"] == names.index(want)]
            limit = int(req.get("limit", 1000))
            out = [{"src": address_text(r["src"]), "dst": address_text(r["dst"]), "proto": int(r["proto"]),
                    "sport": int(r["sport"]), "dport": int(r["dport"]),
                    "service": C.SERVICE_NAMES[min(int(r["service"]), 3)], "preference": int(r["preference"]),
                    "uplink": names[int(r["uplink"])] if int(r["uplink"]) < len(names) else None,
                    "packets": int(r["packets"]), "bytes": int(r["bytes"])} for r in recs[:limit]]
            return {"ok": True, "total": int(len(recs)), "flows": out}
        if cmd == "reload":
            res = self.reload()
            self.say(f"mmr: reload: {res['message']}")
            return res
        return {"ok": False, "error": f"unknown command {cmd!r} (status, flows, reload)"}

