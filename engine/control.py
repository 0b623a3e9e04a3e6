"""The control socket of ``mmr run`` / ``mmr host`` and its client (``mmr status``, ``mmr
flows``, ``mmr reload``, ``mmr uplink``).

One JSON request line in, one JSON answer line out, then the connection closes.  The socket is
a Unix stream socket: ``@name`` is an abstract address (one per network namespace, so a
router in each namespace has its own), anything else a path created with mode 0600 (0660
with a read group, see below).  Either way root (uid 0, checked with SO_PEERCRED) is answered
in full.

``monitor.control_read_group`` names a group whose members may use the read-only commands
(``READ_ONLY``: ping, status, flows, config) and nothing else; a command that changes state
(reload, uplink) from them is answered with a "read-only" sentence.  Membership is judged by
what the kernel recorded when the peer called connect(): its primary group (SO_PEERCRED) and
its supplementary groups (SO_PEERGROUPS).  Neither /proc/<pid>/status nor getgrouplist() is
used: the first is read after the fact (the peer may have exited and its pid been reused by
another process, or changed its groups since), the second says what the group database
grants the peer's *user*, not what the peer process holds (a process that gave up its groups,
e.g. a sandboxed agent, would still pass) and is an NSS lookup (LDAP, ...) that could make the
engine's loop wait.  An abstract address has no permission bits, so the check above is all
there is; a path socket is also given the group and mode 0660 (its directory, when mmr
creates it, 0750), so the kernel turns others away at connect() as well.

The server never waits: every socket is non-blocking and lives in the engine's poll set;
a connection gets a buffer for its request (at most 64 KiB), a deadline (2 s from accept to
the last byte of the answer) and a slot among at most 16, of which the read group may hold 12
(it cannot lock root out by keeping idle connections open).  A request is a JSON object with a
known ``cmd`` and typed arguments; anything else, and any error inside a handler, is an error
answer, never an exception in the engine.
"""
from __future__ import annotations

import errno
import grp
import json
import os
import platform
import select
import socket
import struct
import time

from engine.errors import UserError

MAX_REQUEST = 65536
MAX_CONNECTIONS = 16
MAX_READERS = 12          # the read group's share: it cannot take root's last slots
DEADLINE_S = 2.0
ADMIN_MODES = ("down", "up", "auto")
# cmd -> {argument: type}; a tuple is the set of strings allowed
COMMANDS = {"ping": {}, "status": {}, "reload": {}, "config": {}, "flows": {"uplink": str, "limit": int},
            "uplink": {"name": str, "mode": ADMIN_MODES}}
REQUIRED = {"uplink": ("name", "mode")}
READ_ONLY = frozenset({"ping", "status", "flows", "config"})    # what control_read_group may ask
# Python 3.11 does not name it; 59 is asm-generic's (x86, arm, riscv, powerpc, s390); the
# architectures with their own numbering get primary-group checks only
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", None if platform.machine().startswith(
    ("mips", "sparc", "parisc", "alpha")) else 59)


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
        raise ValueError(f"unknown command {cmd!r} (status, flows, config, reload, uplink, ping)")
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
        if isinstance(args[k], tuple) and (not isinstance(v, str) or v not in args[k]):
            raise ValueError(f"{k} must be one of {', '.join(args[k])}")
    missing = [k for k in REQUIRED.get(cmd, ()) if req.get(k) is None]
    if missing:
        raise ValueError(f"{cmd} needs {' and '.join(missing)}")
    return req


def peer_credentials(conn: socket.socket) -> tuple[int, int, tuple[int, ...]]:
    """(uid, gid, supplementary gids) of a Unix socket's peer as the kernel recorded them at
    connect() (SO_PEERCRED, SO_PEERGROUPS).  A kernel without SO_PEERGROUPS (before 4.13)
    gives no supplementary groups: only the primary group counts then."""
    _, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    raw = b""
    # ERANGE: more groups than the first buffer holds; CPython's getsockopt takes at most
    # 1024 bytes, so 256 groups are seen (a peer with more counts by its primary group)
    for size in (4 * 32, 1024) if SO_PEERGROUPS is not None else ():
        try:
            raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
            break
        except OSError as exc:
            if exc.errno != errno.ERANGE:
                break
    return uid, gid, struct.unpack(f"{len(raw) // 4}I", raw[:len(raw) // 4 * 4])


def group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        raise UserError(f"there is no group {name!r} for monitor.control_read_group; create it with "
                        f"groupadd or name an existing group") from None


def config_document(cfg) -> dict:
    """The running, validated policy as a policy file's tables, every default filled in (what
    ``mmr status --config`` prints; loading it again gives the same policy)."""
    import ipaddress

    from engine import constants as C
    from engine.config import ENGINE_KEYS, PIN_BASE, PROTO_NAMES

    def prefix(net) -> str:                    # rules keep IPv4 as IPv4-mapped IPv6: give it back
        mapped = ipaddress.ip_network("::ffff:0:0/96")
        if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(mapped):
            return f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}"
        return str(net)

    eng = {k: getattr(cfg, k) for k in ENGINE_KEYS if getattr(cfg, k) is not None}   # workers: unset = auto
    eng["lan_prefixes"] = [str(p) for p in cfg.lan_prefixes]
    eng["routed_prefixes"] = [str(p) for p in cfg.routed_prefixes]
    eng["nat_ports"] = "auto" if cfg.nat_ports is None else f"{cfg.nat_ports[0]}-{cfg.nat_ports[1]}"
    uplinks = []
    for u in cfg.uplinks:
        if u.empty:                             # a free uplink slot of the running engine
            continue
        t = {"name": u.name, "device": u.device}
        if u.gateway:
            t["gateway"] = u.gateway
        for fam, g in ((4, u.gateway4), (6, u.gateway6)):
            if g != u.gateway:              # a family's own next hop (None: auto)
                t[f"gateway{fam}"] = g or "auto"
        if u.gateway_mac:
            t["gateway_mac"] = u.gateway_mac
        if u.dns:
            t["dns"] = list(u.dns)
        t.update({key: u.chars[name] for name, key, _ in C.CHARACTERISTICS})
        t.update(metric=u.metric, usable=u.usable, qdisc_bypass=u.qdisc_bypass, probe_targets=list(u.probe_targets))
        t["reliability"] = u.reliability
        t["strip_option"] = u.strip_option
        t["nat"], t["nat6"] = u.nat, u.nat6
        t["edge"] = u.edge
        if u.npt_prefix is not None:
            t["npt_prefix"] = str(u.npt_prefix)
        elif u.nat6 == "npt":
            t["npt_prefix"] = "auto"
        if u.weight is not None:
            t["weight"] = u.weight
        t.update(u.overrides)                     # the [monitor] keys this uplink sets itself
        uplinks.append(t)
    classes = {k: dict(zip(C.SERVICE_NAMES, v)) for k, v in sorted(cfg.classes.items())}
    policies = {str(n): {"name": p.name, "network": list(p.network), "flow": list(p.flow)}
                for n, p in sorted(cfg.policies.items()) if n >= 4 and p.pin is None}
    proto_names = {v: k for k, v in PROTO_NAMES.items()}
    rules = []
    for r in cfg.rules:
        t = {}
        if r.proto is not None:
            t["proto"] = proto_names.get(r.proto, r.proto)
        for k in ("sport", "dport"):
            v = getattr(r, k)
            if v is not None:
                t[k] = v[0] if v[0] == v[1] else f"{v[0]}-{v[1]}"
        for k in ("src", "dst"):
            if getattr(r, k) is not None:
                t[k] = prefix(getattr(r, k))
        if r.dscp is not None:
            t["dscp"] = r.dscp
        if r.service is not None:
            t["service"] = C.SERVICE_NAMES[r.service]
        if r.pin:
            t["uplink"] = cfg.uplinks[PIN_BASE - r.preference].name
        elif r.preference is not None:
            t["preference"] = r.preference
        rules.append(t)
    trust = [{"src": str(t.src), "services": [C.SERVICE_NAMES[s] for s in t.services],
              "preferences": [lo if lo == hi else f"{lo}-{hi}" for lo, hi in t.preferences]}
             for t in cfg.trust]
    forwards = [{"proto": proto_names[f.proto], "port": f.ports[0] if f.ports[0] == f.ports[1] else
                 f"{f.ports[0]}-{f.ports[1]}", "to": str(f.to), "to_port": f.to_port,
                 "uplinks": [cfg.uplinks[u].name for u in f.uplinks]} for f in cfg.forwards]
    doc = {"engine": eng, "uplink": uplinks, "classes": classes, "policy": policies, "rule": rules,
           "trust": trust, "forward": forwards,
           # "" and None: a key left out (a policy file may not write them)
           "monitor": {k: v for k, v in cfg.monitor.items() if v not in ("", None)},
           "select": dict(cfg.select),
           "host": {k: v for k, v in cfg.host.items() if v not in ("", None)}}
    return {k: v for k, v in doc.items() if v != [] and v != {}}


class _Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "deadline", "read_only", "access")

    def __init__(self, sock, deadline):
        self.sock, self.inbuf, self.outbuf, self.deadline = sock, b"", None, deadline
        self.read_only = True
        self.access = None


class ControlServer:
    """``poller``: an object with register(fd, events, callback) / unregister(fd) (the
    engine's poll set); ``handler(req) -> dict``; ``read_group``: a group name whose members
    may ask what ``READ_ONLY`` lists, or None (root only)."""

    def __init__(self, addr: str, handler, poller, log, read_group: str | None = None):
        self.addr, self.handler, self.poller, self.log = addr, handler, poller, log
        self.conns: dict[int, _Conn] = {}
        self.refused = 0
        self.read_group, self.read_gid = read_group or None, group_id(read_group) if read_group else None
        self.made_dir = None
        if not addr.startswith("@"):
            d = os.path.dirname(addr) or "."
            if not os.path.isdir(d):
                os.makedirs(d, mode=0o700)
                self.made_dir = d
            if os.path.exists(addr):
                try:                       # a live router answers; a stale file does not
                    request(addr, {"cmd": "ping"}, timeout=0.5)
                    raise UserError(f"another mmr is listening on {addr}; stop it or set "
                                    f"monitor.control_socket to another path")
                except (OSError, RuntimeError):
                    os.unlink(addr)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(_address(addr))
        except OSError as exc:
            self.sock.close()
            raise UserError(f"cannot open the control socket {addr} ({exc.strerror}); another "
                            f"mmr in this network namespace? set monitor.control_socket") from None
        try:
            self._set_mode(self.read_gid)
        except UserError:
            self.sock.close()
            os.unlink(addr)
            raise
        self.sock.listen(16)
        self.sock.setblocking(False)
        poller.register(self.sock.fileno(), select.POLLIN, self._accept)

    def _set_mode(self, gid: int | None) -> None:
        """A path socket (and the directory mmr made for it): its owner's alone, or also the
        read group's (the kernel then refuses everyone else at connect()).  The group is
        given only when the file does not have it already (a user without CAP_CHOWN may give
        a file only to a group it is in)."""
        if self.addr.startswith("@"):
            return
        try:
            for path, mode in ((self.made_dir, 0o750 if gid is not None else 0o700),
                               (self.addr, 0o660 if gid is not None else 0o600)):
                if not path:
                    continue
                if gid is not None and os.stat(path).st_gid != gid:
                    os.chown(path, -1, gid)
                os.chmod(path, mode)
        except OSError as exc:
            raise UserError(f"cannot give the control socket {self.addr} to the group {self.read_group or gid} "
                            f"({exc.strerror}); run mmr as a member of that group (systemd: "
                            f"SupplementaryGroups=) or use an abstract socket such as \"@mmr\"") from None

    def set_read_group(self, name: str | None) -> None:
        """A reload's monitor.control_read_group: connections accepted from now on.  The file's
        group and mode change first; the new group counts only once they did."""
        gid = group_id(name) if name else None
        self._set_mode(gid)
        self.read_group, self.read_gid = name or None, gid

    def access(self, conn: socket.socket) -> str | None:
        """"full" for root, "read" for a member of the read group, None for anyone else."""
        uid, gid, groups = peer_credentials(conn)
        if uid == 0:
            return "full"
        if self.read_gid is not None and (gid == self.read_gid or self.read_gid in groups):
            return "read"
        return None

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
            access = self.access(conn)
            if access == "read" and sum(x.access == "read" for x in self.conns.values()) >= MAX_READERS:
                self.refused += 1
                conn.close()
                continue
            c = _Conn(conn, now + DEADLINE_S)
            c.read_only = access != "full"
            c.access = access
            self.conns[conn.fileno()] = c
            if access is None:  # credentials first: nobody else may make mmr read
                self._answer(c, {"ok": False, "error": "only root may control mmr" if self.read_gid is None else
                                 f"only root, or the group {self.read_group} for reading, may use mmr's "
                                 f"control socket"})
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
        if c.read_only and req["cmd"] not in READ_ONLY:
            self._answer(c, {"ok": False, "error": f"the control socket is read-only for the group "
                                                   f"{self.read_group}: {req['cmd']} needs root"})
            return
        try:
            answer = self.handler(req)
        except Exception as exc:            # a handler's fault is an answer, not a stopped router
            self.log(f"control: {req.get('cmd')} failed: {type(exc).__name__}: {exc}")
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
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:      # refused unread: mmr closed with our request unread
                if not data:
                    raise
                break
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
        raise UserError(f"not allowed to open {addr}; run as root (or, to read, as a member of the "
                        f"group named by monitor.control_read_group)") from None
    except socket.timeout:
        raise RuntimeError(f"mmr did not answer on {addr} within 5 s") from None
