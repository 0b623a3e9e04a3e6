"""Tagging on the mobile node without changing the application: ``mmr tag``.

The kernel matches, mmr inserts.  An nftables table ``inet mmrtag`` at the output hook
sends the IPv6 packets a ``[[tag]]`` rule matches (socket owner uid/gid, cgroup v2 path of a
systemd unit or slice, protocol, ports, destination prefix) to NFQUEUE ``queue_base + i``
(``i``: the rule's index, so the queue number *is* the rule: no classification in user
space).  mmr reads the queues over nfnetlink (NETLINK_NETFILTER, NFQNL_* messages written
here with struct; ``recvmmsg`` reads up to ``batch`` packets per system call and one
``send`` returns all their verdicts), puts the traffic control option into each packet (an
8-byte hop-by-hop header, or 8 more bytes in the one the packet has), fixes the payload
length and the next-header chain and gives it back with NF_ACCEPT and the new payload.

Kernels without the nftables queue statement (CONFIG_NFT_QUEUE unset, as on this project's
lab kernel) but with nft_compat: the rule marks the packet with its number instead and a
second owned table, ``ip6 mmrtagq``, written here as nf_tables netlink messages, queues by
mark with the xtables NFQUEUE target (``--queue-bypass``); see XtQueueTable.

Safety:

* ``queue ... bypass`` and NFQA_CFG_F_FAIL_OPEN: with no mmr on a queue, or a full queue,
  packets flow untagged; the table is created with ``flags owner`` by an ``nft -i`` child
  (the pattern of engine/guard.py) and vanishes when mmr dies, however it dies.
* NFQA_CFG_F_GSO: a TCP super-frame comes whole, is tagged once and segmented by the kernel
  (which recomputes each segment's checksum).  A checksum the stack left for the device
  (NFQA_SKB_CSUMNOTREADY) is finished here: a mangled packet loses CHECKSUM_PARTIAL.
  A UDP super-frame (UDP_SEGMENT) passes untagged (counted ``gso_udp``).
* The 8 bytes: the incoming SYN-ACK of a tagged TCP connection gets its MSS clamped to
  MTU - 68 (40 IPv6 + 20 TCP + 8), which bounds the segments *we* send; only connections
  whose SYN the table saw are tagged (older ones were not clamped).  Any other packet that
  would grow past its egress device's MTU is sent untagged and counted (``too_big``).
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

from engine import constants as C
from engine import nftowned
from engine.errors import UserError

TABLE = "mmrtag"
QUEUE_BASE = 0x3E00           # 15872: rule i uses queue QUEUE_BASE + i
MAX_TAGS = 255                # the xt fallback marks packets with the rule number + 1 in 8 bits
FLOW_TIMEOUT = "1h"           # an idle tagged TCP connection leaves the table's flow set after this
IPV6_TCP_OVERHEAD = 40 + 20 + 8   # IPv6 header + TCP header + our hop-by-hop header

# ------------------------------------------------------------------------------ [[tag]]
TAG_MATCH = ("user", "group", "cgroup", "proto", "sport", "dport", "dst")
TAG_SET = ("service", "preference")
TAG_PROTOS = {"tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132, "udplite": 136}
PORT_PROTOS = (6, 17, 132, 136)


@dataclass
class TagRule:
    index: int
    uid: int | None = None
    gid: int | None = None
    cgroup: str | None = None        # relative to the cgroup v2 root, e.g. "system.slice/x.service"
    proto: int | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    dst: ipaddress.IPv6Network | None = None
    service: int = C.SERVICE_DATA
    preference: int = C.PREF_NONE
    text: dict = field(default_factory=dict)   # as written, for messages and `mmr tag --show`


def cgroup2_root() -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup on a unified system,
    /sys/fs/cgroup/unified on a hybrid one)."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return "/sys/fs/cgroup"


def nft_cgroup_path(rel: str) -> str:
    """nft resolves a cgroupv2 path under /sys/fs/cgroup; the v2 root may be below it."""
    full = os.path.join(cgroup2_root(), rel)
    return os.path.relpath(full, "/sys/fs/cgroup") if full.startswith("/sys/fs/cgroup/") else rel


def load_tags(loader, raw: dict) -> list[TagRule]:
    """Validate ``[[tag]]`` tables (``loader``: engine.config._Loader, for its one-sentence
    errors); returns the rules in file order."""
    tags = raw.get("tag", [])
    if not isinstance(tags, list):
        loader.err("tag", "must be an array of tables", "write each tagging rule as [[tag]]")
    if len(tags) > MAX_TAGS:
        loader.err("tag", f"{len(tags)} tagging rules is more than mmr takes", f"keep at most {MAX_TAGS}")
    out = []
    for i, t in enumerate(tags):
        where = f"tag[{i}]"
        if not isinstance(t, dict):
            loader.err(where, "must be a table", "write each tagging rule as [[tag]]")
        loader.unknown(t, TAG_MATCH + TAG_SET, where)
        if not any(k in t for k in TAG_MATCH):
            loader.err(where, "matches nothing", "add user, group, cgroup, proto, sport, dport or dst")
        if not any(k in t for k in TAG_SET):
            loader.err(where, "sets nothing", "add service and/or preference")
        r = TagRule(i, text=dict(t))
        for k, db, idkey in (("user", "pwd", "uid"), ("group", "grp", "gid")):
            if k not in t:
                continue
            v = t[k]
            mod = __import__(db)
            look = mod.getpwnam if k == "user" else mod.getgrnam
            byid = mod.getpwuid if k == "user" else mod.getgrgid
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 32 - 1:
                try:
                    byid(v)
                except KeyError:
                    loader.err(f"{where}.{k}", f"there is no {k} with id {v} on this system",
                               f"name an existing {k} (getent {'passwd' if k == 'user' else 'group'})")
                setattr(r, idkey, v)
            elif isinstance(v, str) and v:
                try:
                    ent = look(v)
                except (KeyError, ValueError):
                    loader.err(f"{where}.{k}", f"there is no {k} {v[:40]!r} on this system",
                               f"create it ({'useradd' if k == 'user' else 'groupadd'}) or name an existing {k}")
                setattr(r, idkey, ent.pw_uid if k == "user" else ent.gr_gid)
            else:
                loader.err(f"{where}.{k}", f"{str(v)[:40]!r} is not a {k}", f"write a {k} name or a numeric id")
        if "cgroup" in t:
            v = t["cgroup"]
            root = cgroup2_root()
            if not isinstance(v, str) or not v.strip("/") or "\x00" in v or '"' in v or ".." in v.split("/"):
                loader.err(f"{where}.cgroup", f"{str(v)[:40]!r} is not a cgroup path",
                           'write a path under the cgroup v2 root, e.g. "system.slice/nginx.service" '
                           "(systemctl show -p ControlGroup UNIT)")
            rel = v.strip("/")
            if not os.path.isdir(os.path.join(root, rel)):
                loader.err(f"{where}.cgroup", f"there is no cgroup {rel!r} under {root}",
                           "start the unit first or write its path as 'systemctl show -p ControlGroup UNIT' "
                           "prints it")
            r.cgroup = rel
        if "proto" in t:
            p = t["proto"]
            if isinstance(p, str) and p.lower() in TAG_PROTOS:
                r.proto = TAG_PROTOS[p.lower()]
            elif isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 255 and p not in (0, 1, 43, 44, 60):
                r.proto = p
            else:
                loader.err(f"{where}.proto", f"{str(p)[:40]!r} is not an IPv6 upper-layer protocol",
                           "write tcp, udp, icmpv6, sctp, udplite or a number")
        for k in ("sport", "dport"):
            if k in t:
                setattr(r, k, loader.port_range(f"{where}.{k}", t[k]))
                if r.proto is not None and r.proto not in PORT_PROTOS:
                    loader.err(f"{where}.{k}", f"protocol {t['proto']} has no ports",
                               "match ports with proto tcp, udp, sctp or udplite (or leave proto out)")
        if "dst" in t:
            net = loader.prefix(f"{where}.dst", t["dst"])
            if net.version != 6:
                loader.err(f"{where}.dst", f"{t['dst']} is an IPv4 prefix and the traffic control option "
                           "is an IPv6 hop-by-hop option", "write an IPv6 prefix such as \"2001:db8::/32\"")
            r.dst = net
        loader.service_and_preference(where, t, r)
        out.append(r)
    return out


@dataclass
class TagConfig:
    path: str
    option_type: int
    tags: list[TagRule]


def load_tag_config(path: str | None) -> TagConfig:
    """The policy file for ``mmr tag``: its ``[[tag]]`` rules and ``[engine] option_type``.
    A mobile node's file may hold only those (no [[uplink]]); a full policy file (that of
    ``mmr host``) is validated whole."""
    from engine.config import _Loader, load_config, ENGINE_KEYS, MAX_FILE
    import tomllib

    if path is None:
        raise UserError("give the policy file with the [[tag]] rules: mmr tag --config FILE")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
        raw = tomllib.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        load_config(path)       # the loader's own sentence for an unreadable or broken file
        raise
    if "uplink" in raw:
        cfg = load_config(path)
        tags = getattr(cfg, "tags", None)
        if tags is None:           # a config.py without [[tag]] support: validate here
            tags = load_tags(_Loader(path), raw)
        return TagConfig(path, cfg.option_type, tags)
    ld = _Loader(path)
    ld.unknown(raw, ("engine", "tag"), "")
    eng = raw.get("engine", {})
    if not isinstance(eng, dict):
        ld.err("engine", "must be a table", "write [engine] with keys")
    ld.unknown(eng, ("option_type",), "engine")
    ot = ld.value("engine.option_type", ENGINE_KEYS["option_type"], eng.get("option_type", C.DEFAULT_OPTION_TYPE))
    tags = load_tags(ld, raw)
    if not tags:
        ld.err("tag", "no [[tag]] table", "add at least one [[tag]] rule (mmr tag --help shows examples)")
    return TagConfig(path, ot, tags)


# ------------------------------------------------------------------------------ the packet
def option_body(service: int, preference: int, option_type: int = C.DEFAULT_OPTION_TYPE) -> bytes:
    """The 5 bytes of the option: type, length 3, service, preference."""
    return struct.pack("!BBBH", option_type, C.OPTION_DATA_LEN, service, preference)


def _csum_fold(data: bytes) -> int:
    """The one's-complement sum of data as 16-bit words, folded (1..0xFFFF).  The integer of
    the bytes is congruent to the sum of its words modulo 0xFFFF (2**16 = 1 mod 0xFFFF)."""
    if len(data) & 1:
        data += b"\0"
    r = int.from_bytes(data, "big") % 0xFFFF
    return r or 0xFFFF


# results of tag_packet besides a new packet
TAGGED, ALREADY, TOO_BIG, CANNOT = "tagged", "already_tagged", "too_big", "cannot"


def tag_packet(pkt: bytes, opt: bytes, option_type: int, finish_csum: bool = False,
               mtu: int = 0) -> tuple[bytes | None, str]:
    """The packet with the option (a new 8-byte hop-by-hop header, or the option + PadN
    appended to the one it has), or (None, why not).  ``finish_csum``: the upper-layer
    checksum is unfinished (CHECKSUM_PARTIAL): finish it.  ``mtu``: refuse (TOO_BIG) when
    the tagged packet would be larger."""
    n = len(pkt)
    if n < 40 or pkt[0] >> 4 != 6:
        return None, CANNOT
    plen = (pkt[4] << 8) | pkt[5]
    # jumbogram, truncated or padded copy, too long: the tagged packet must fit the IPv6
    # payload length and the 16-bit netlink attribute that carries it back (65,531 bytes)
    if plen == 0 or plen + 40 != n or plen + 8 > 0xFFFF or n + 8 > 0xFFFF - 4:
        return None, CANNOT
    if mtu and n + 8 > mtu:
        return None, TOO_BIG
    nh = pkt[6]
    if nh == C.IPPROTO_HOPOPTS:
        if n < 48:
            return None, CANNOT
        end = 40 + (pkt[41] + 1) * 8
        if end > n or end + 8 > 40 + 2048:
            return None, CANNOT
        i = 42
        while i < end:                      # is our option there already?
            t = pkt[i]
            if t == 0:
                i += 1
                continue
            if i + 1 >= end:
                return None, CANNOT
            if t == option_type:
                return None, ALREADY
            i += 2 + pkt[i + 1]
        new = bytearray(pkt[:end] + opt + b"\x01\x01\x00" + pkt[end:])
        new[41] += 1
    else:
        new = bytearray(pkt[:40] + bytes((nh, 0)) + opt + b"\x00" + pkt[40:])
        new[6] = C.IPPROTO_HOPOPTS
    plen += 8
    new[4], new[5] = plen >> 8, plen & 0xFF
    if finish_csum and not _finish_checksum(new):
        return None, CANNOT
    return bytes(new), TAGGED


def _finish_checksum(p: bytearray) -> bool:
    """Complete the TCP/UDP/ICMPv6 checksum of an IPv6 packet in place."""
    nh, off, n = p[6], 40, len(p)
    while nh in (C.IPPROTO_HOPOPTS, C.IPPROTO_DSTOPTS):
        if off + 2 > n:
            return False
        nh, off = p[off], off + (p[off + 1] + 1) * 8
    where = {C.IPPROTO_TCP: 16, C.IPPROTO_UDP: 6, C.IPPROTO_ICMPV6: 2}.get(nh)
    if where is None or off + where + 2 > n:
        return False                 # a routing header changes the pseudo-header; rare: untagged
    p[off + where] = p[off + where + 1] = 0
    ulen = n - off
    s = _csum_fold(bytes(p[8:40]) + struct.pack("!IxxxB", ulen, nh) + bytes(p[off:]))
    c = ~s & 0xFFFF
    if nh == C.IPPROTO_UDP and c == 0:
        c = 0xFFFF
    p[off + where], p[off + where + 1] = c >> 8, c & 0xFF
    return True


# ------------------------------------------------------------------------------ nftables
def _ports(r) -> str:
    return f"{r[0]}" if r[0] == r[1] else f"{r[0]}-{r[1]}"


def rule_match(r: TagRule) -> str:
    m = []
    if r.uid is not None:
        m.append(f"meta skuid {r.uid}")
    if r.gid is not None:
        m.append(f"meta skgid {r.gid}")
    if r.cgroup is not None:      # nft names it from /sys/fs/cgroup (hybrid systems: "unified/...")
        m.append(f'socket cgroupv2 level {len(r.cgroup.split("/"))} "{nft_cgroup_path(r.cgroup)}"')
    if r.proto is not None:
        m.append(f"meta l4proto {r.proto}")
    elif r.sport or r.dport:
        m.append("meta l4proto { tcp, udp, sctp, udplite }")
    if r.sport:
        m.append(f"th sport {_ports(r.sport)}")
    if r.dport:
        m.append(f"th dport {_ports(r.dport)}")
    if r.dst is not None:
        m.append(f"ip6 daddr {r.dst}")
    return " ".join(m)


def table_text(tags: list[TagRule], base: int, mss: dict[int, int], owner: bool = True, xt: bool = False) -> str:
    """The whole table.  Per rule i: chain t<i> (queue i; for TCP only connections whose SYN
    went through it, remembered in set f<i>), and in prerouting the SYN-ACK MSS clamp of
    those connections to mss[i].  ``xt``: mark the packet with i + 1 (in MARK_MASK) for
    XtQueueTable to queue instead, and clear the mark again after it."""
    flags = "flags owner; " if owner else ""
    key = "type ipv6_addr . inet_service . inet_service; flags dynamic,timeout; " \
          f"timeout {FLOW_TIMEOUT}; size 65536; "
    out_rules, in_rules, chains, sets = [], [], [], []
    for r in tags:
        i, q = r.index, base + r.index
        qv = (f"meta mark set meta mark & 0x{~MARK_MASK & 0xFFFFFFFF:08x} | 0x{(i + 1) << MARK_SHIFT:08x} accept"
              if xt else f"queue num {q} bypass")
        tcp_possible = r.proto in (None, C.IPPROTO_TCP)
        out_rules.append(f"{rule_match(r)} jump t{i}")
        body = []
        if tcp_possible:
            sets.append(f"set f{i} {{ {key}}}; ")
            upd = f"update @f{i} {{ ip6 daddr . th dport . th sport }}"
            body += [f"meta l4proto tcp tcp flags & (syn | ack) == syn {upd} {qv}",
                     f"meta l4proto tcp ip6 daddr . th dport . th sport @f{i} {upd} {qv}",
                     "meta l4proto tcp accept"]
            in_rules.append(f"meta l4proto tcp tcp flags & (syn | ack) == syn | ack "
                            f"ip6 saddr . th sport . th dport @f{i} "
                            f"tcp option maxseg size > {mss[i]} tcp option maxseg size set {mss[i]}")
        body.append(qv)
        chains.append(f"chain t{i} {{ {'; '.join(body)}; }}; ")
    ins = "".join(f"{x}; " for x in in_rules)
    outs = "".join(f"{x}; " for x in out_rules)
    return (f"table inet {TABLE} {{ {flags}{''.join(sets)}{''.join(chains)}"
            + (f"chain clear {{ type filter hook output priority filter + 10; policy accept; "
               f"meta mark & 0x{MARK_MASK:08x} != 0 meta mark set meta mark & 0x{~MARK_MASK & 0xFFFFFFFF:08x}; }}; "
               if xt else "") +
            f"chain out {{ type filter hook output priority filter; policy accept; "
            f"meta nfproto != ipv6 accept; oifname \"lo\" accept; {outs}}}; "
            f"chain in {{ type filter hook prerouting priority mangle; policy accept; "
            f"meta nfproto != ipv6 accept; {ins}}}; }}")


class OwnedTable(nftowned.OwnedTable):
    """mmr tag's table (engine/nftowned.py): one mmr tag per network namespace, and the rules
    checked with ``nft -c`` first so that a kernel without a feature gets a sentence."""

    def __init__(self, family: str, name: str, log):
        if shutil.which("nft") is None:
            raise UserError("nftables ('nft') is not installed; mmr tag matches packets with it "
                            "(apt-get install nftables)")
        super().__init__(family, name, log, "chain out")

    def install(self, owned_text: str, plain_text: str) -> None:
        left = self.listing()
        if left:
            if "flags owner" in left:
                raise UserError(f"table {self.ident} belongs to a running mmr tag; stop it "
                                f"first (one mmr tag per network namespace)")
            subprocess.run(["nft", "delete", "table", self.family, self.name], capture_output=True)
        check = subprocess.run(["nft", "-c", "-f", "-"], input=plain_text + "\n", capture_output=True, text=True)
        if check.returncode != 0:
            why = " ".join(check.stderr.strip().splitlines()[:1]) or "no reason given"
            if "Operation not permitted" in check.stderr:
                raise UserError("mmr tag needs root or CAP_NET_ADMIN (nftables and NFQUEUE)")
            raise UserError(f"nftables refused the tagging rules ({why}); check that the kernel has "
                            f"nft_queue, nft_socket and nfnetlink_queue")
        super().install(owned_text, plain_text, f"{self.ident} of the tagging rules")


def route_mtu(dst: ipaddress.IPv6Network | None) -> int:
    """The MTU toward dst (its first address; no dst: a global address): the route's mtu
    metric, else its device's MTU; 1280 when there is no route."""
    addr = str(dst.network_address) if dst is not None else "2000::"
    p = subprocess.run(["ip", "-6", "-j", "route", "get", addr], capture_output=True, text=True)
    try:
        r = json.loads(p.stdout)[0]
    except (ValueError, IndexError, KeyError):
        return 1280
    for m in r.get("metrics", []) or []:
        if isinstance(m, dict) and "mtu" in m:
            return int(m["mtu"])
    try:
        return device_mtu(r["dev"])
    except (OSError, KeyError, ValueError):
        return 1280


def device_mtu(name: str) -> int:
    """A device's MTU from the kernel (SIOCGIFMTU: right in this network namespace whatever
    /sys shows)."""
    import fcntl
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        res = fcntl.ioctl(s.fileno(), 0x8921, struct.pack("16si12x", name.encode()[:15], 0))
    return struct.unpack_from("i", res, 16)[0]


# ------------------------------------------------------------------------------ nfnetlink
NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO = 1, 4
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_IFINDEX_OUTDEV, NFQA_PAYLOAD, NFQA_CAP_LEN, NFQA_SKB_INFO = 1, 2, 6, 10, 13, 14
NFQA_SKB_CSUMNOTREADY, NFQA_SKB_GSO = 1, 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NETLINK_NO_ENOBUFS = 5
SOL_NETLINK = 270
MSG_DONTWAIT = 0x40
COPY_RANGE = 0xFFFF
RCVBUF = 64 << 20
SNDBUF = 4 << 20              # > the 1 MiB of verdicts sent at once
_HDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


def _nla(t: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return _NLA.pack(n, t) + data + b"\0" * (-n & 3)


class _iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _msghdr), ("len", ctypes.c_uint)]


class NfQueue:
    """Queues bound on one NETLINK_NETFILTER socket; ``read()`` returns up to ``batch``
    packets per system call (recvmmsg), ``verdicts()`` sends a batch of verdicts at once."""

    BUF = COPY_RANGE + 4096

    def __init__(self, queues: list[int], batch: int = 64, maxlen: int = 4096):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        # room for a burst of super-frames: with a full buffer the queue fails open (untagged)
        for opt, val in ((33, RCVBUF), (socket.SO_RCVBUF, RCVBUF)):   # SO_RCVBUFFORCE as root, else capped
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, val)
                break
            except OSError:
                continue
        for opt, val in ((32, SNDBUF), (socket.SO_SNDBUF, SNDBUF)):   # verdicts carry whole super-frames
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, val)
                break
            except OSError:
                continue
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.seq = 0
        self.bound: list[int] = []
        self.batch = batch
        self._bufs = [ctypes.create_string_buffer(self.BUF) for _ in range(batch)]
        self._iov = (_iovec * batch)()
        self._msgs = (_mmsghdr * batch)()
        for k in range(batch):
            self._iov[k].base = ctypes.addressof(self._bufs[k])
            self._iov[k].len = self.BUF
            self._msgs[k].hdr.iov = ctypes.pointer(self._iov[k])
            self._msgs[k].hdr.iovlen = 1
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_mmsghdr), ctypes.c_uint, ctypes.c_int,
                                        ctypes.c_void_p]
        try:
            for q in queues:
                self._config(q, _nla(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)), bind=True)
                self.bound.append(q)
                self._config(q, _nla(NFQA_CFG_PARAMS, struct.pack("!IB", COPY_RANGE, NFQNL_COPY_PACKET))
                             + _nla(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
                             + _nla(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO))
                             + _nla(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO)))
        except BaseException:
            self.close()
            raise

    def _msg(self, mtype: int, queue: int, body: bytes, flags: int = NLM_F_REQUEST) -> bytes:
        self.seq += 1
        payload = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + body
        return _HDR.pack(16 + len(payload), (NFNL_SUBSYS_QUEUE << 8) | mtype, flags, self.seq, 0) + payload

    def _config(self, queue: int, attrs: bytes, bind: bool = False) -> None:
        self.sock.send(self._msg(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
        seq = self.seq
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                ln, t, _, s, _ = _HDR.unpack_from(data, off)
                if t == NLMSG_ERROR and s == seq:
                    code = -struct.unpack_from("=i", data, off + 16)[0]
                    if code == 0:
                        return
                    if bind and code in (errno.EBUSY, errno.EEXIST, errno.EPERM) and _has_net_admin():
                        raise UserError(f"NFQUEUE {queue} is already bound by another program (a second "
                                        f"mmr tag, suricata, snort, ...); stop it or choose other queues "
                                        f"with --queue-base")
                    if code == errno.EPERM:
                        raise UserError("mmr tag needs root or CAP_NET_ADMIN to read NFQUEUE")
                    raise OSError(code, f"NFQUEUE {queue} configuration failed: {os.strerror(code)}")
                off += max(16, (ln + 3) & ~3)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[tuple[int, int, bytes, int, int, int]]:
        """Pending packets, without waiting: (queue, id, payload, skb_info flags, outdev,
        cap_len or 0)."""
        n = self._libc.recvmmsg(self.sock.fileno(), self._msgs, self.batch, MSG_DONTWAIT, None)
        if n < 0:
            e = ctypes.get_errno()
            if e in (errno.EAGAIN, errno.EINTR, errno.ENOBUFS):
                return []
            raise OSError(e, os.strerror(e))
        out = []
        for k in range(n):
            data = ctypes.string_at(self._bufs[k], self._msgs[k].len)
            off = 0
            while off + 20 <= len(data):
                ln, t, _, _, _ = _HDR.unpack_from(data, off)
                if ln < 16:
                    break
                if t == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    queue = struct.unpack_from("!H", data, off + 18)[0]
                    pid = info = outdev = cap = 0
                    payload = b""
                    a, end = off + 20, min(off + ln, len(data))     # never past what arrived
                    while a + 4 <= end:
                        alen, atype = _NLA.unpack_from(data, a)
                        if alen < 4 or a + alen > end:
                            break
                        if alen < 8 and (atype & 0x3FFF) != NFQA_PAYLOAD:
                            a += 4
                            continue
                        atype &= 0x3FFF
                        if atype == NFQA_PACKET_HDR:
                            pid = struct.unpack_from("!I", data, a + 4)[0]
                        elif atype == NFQA_PAYLOAD:
                            payload = data[a + 4:a + alen]
                        elif atype == NFQA_SKB_INFO:
                            info = struct.unpack_from("!I", data, a + 4)[0]
                        elif atype == NFQA_IFINDEX_OUTDEV:
                            outdev = struct.unpack_from("!I", data, a + 4)[0]
                        elif atype == NFQA_CAP_LEN:
                            cap = struct.unpack_from("!I", data, a + 4)[0]
                        a += (alen + 3) & ~3
                    out.append((queue, pid, payload, info, outdev, cap))
                off += (ln + 3) & ~3
        return out

    def verdicts(self, items: list[tuple[int, int, bytes | None]]) -> None:
        """NF_ACCEPT for each (queue, id, new payload or None: unchanged), one send."""
        msgs = []
        for queue, pid, payload in items:
            body = _nla(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pid))
            if payload is not None:
                body += _nla(NFQA_PAYLOAD, payload)
            msgs.append(self._msg(NFQNL_MSG_VERDICT, queue, body))
        chunk, size = [], 0        # a netlink datagram carries many messages: one send per MiB
        for m in msgs:
            if chunk and size + len(m) > 1 << 20:
                self.sock.send(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(m)
            size += len(m)
        if chunk:
            self.sock.send(b"".join(chunk))

    def close(self) -> None:
        for q in self.bound:
            try:
                self.sock.send(self._msg(NFQNL_MSG_CONFIG, q, _nla(NFQA_CFG_CMD,
                                                                  struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0))))
            except OSError:
                pass
        self.bound = []
        self.sock.close()


def _has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 12 & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


# ------------------------------------------------------------------------------ the loop
COUNTERS = ("packets", "tagged", "already_tagged", "too_big", "gso_udp", "cannot", "batches")


class Tagger:
    def __init__(self, cfg: TagConfig, log, queue_base: int = QUEUE_BASE, batch: int = 64):
        if queue_base < 0 or queue_base + len(cfg.tags) > 65536:
            raise UserError(f"--queue-base {queue_base}: the queues must fit in 0..65535 "
                            f"({len(cfg.tags)} rules need {len(cfg.tags)} queues)")
        self.cfg, self.log, self.base, self.batch = cfg, log, queue_base, batch
        self.opts = {queue_base + r.index: option_body(r.service, r.preference, cfg.option_type)
                     for r in cfg.tags}
        self.count = dict.fromkeys(COUNTERS, 0)
        self.busy_s = 0.0             # mmr's own work (parse, insert, checksum)
        self.verdict_s = 0.0          # the verdict system calls: the kernel's output path runs in them
        self.stop = False
        self._mtu: dict[int, int] = {}
        self._mtu_at = 0.0
        self.table: OwnedTable | None = None
        self.q: NfQueue | None = None
        self.mss: dict[int, int] = {}
        self.xt = False
        self.xtq: XtQueueTable | None = None

    def mtu(self, ifindex: int) -> int:
        m = self._mtu.get(ifindex)
        if m is None:
            try:
                m = device_mtu(socket.if_indextoname(ifindex))
            except OSError:
                m = 1280
            self._mtu[ifindex] = m
        return m

    def start(self) -> None:
        self.q = NfQueue([self.base + r.index for r in self.cfg.tags], batch=self.batch)
        self.mss = {r.index: route_mtu(r.dst) - IPV6_TCP_OVERHEAD for r in self.cfg.tags}
        self.table = OwnedTable("inet", TABLE, self.log)
        try:
            self.xt = not nft_queue_supported()
            if self.xt:
                self.log.info("this kernel has no nftables queue statement (nft_queue): queueing with the "
                              "xtables NFQUEUE target by packet mark instead")
                self.xtq = XtQueueTable([self.base + r.index for r in self.cfg.tags])
            self.table.install(table_text(self.cfg.tags, self.base, self.mss, True, self.xt),
                               table_text(self.cfg.tags, self.base, self.mss, False, self.xt))
        except BaseException:
            self.close()
            raise

    def handle(self, pkts) -> list:
        """Verdicts for a batch of packets from NfQueue.read()."""
        out = []
        c = self.count
        for queue, pid, payload, info, outdev, cap in pkts:
            c["packets"] += 1
            opt = self.opts.get(queue)
            if opt is None or (cap and cap != len(payload)):
                c["cannot"] += 1
                out.append((queue, pid, None))
                continue
            gso = info & NFQA_SKB_GSO
            if gso and len(payload) > 48 and (payload[40] if payload[6] == C.IPPROTO_HOPOPTS
                                               else payload[6]) != C.IPPROTO_TCP:
                c["gso_udp"] += 1
                out.append((queue, pid, None))
                continue
            new, why = tag_packet(payload, opt, self.cfg.option_type,
                                  finish_csum=bool(info & NFQA_SKB_CSUMNOTREADY) and not gso,
                                  mtu=0 if gso else self.mtu(outdev) if outdev else 0)
            c[why] += 1
            out.append((queue, pid, new))
        return out

    def run(self, duration: float | None = None, stats_interval: float = 60.0) -> None:
        end = None if duration is None else time.monotonic() + duration
        poll = select.poll()
        poll.register(self.q.fileno(), select.POLLIN)
        next_stats = time.monotonic() + stats_interval if stats_interval > 0 else None
        while not self.stop:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            if next_stats is not None and now >= next_stats:
                self.log.info(self.summary())
                next_stats = now + stats_interval
            if now - self._mtu_at > 1.0:          # MTUs change rarely: re-read once a second
                self._mtu.clear()
                self._mtu_at = now
            try:
                ready = poll.poll(200)
            except InterruptedError:
                continue
            if not ready:
                continue
            while True:
                pkts = self.q.read()
                if not pkts:
                    break
                t0 = time.perf_counter()
                v = self.handle(pkts)
                t1 = time.perf_counter()
                self.q.verdicts(v)       # the kernel sends each packet on inside this call
                self.busy_s += t1 - t0
                self.verdict_s += time.perf_counter() - t1
                self.count["batches"] += 1
                if len(pkts) < self.batch:
                    break

    def summary(self) -> str:
        c = self.count
        n = c["packets"] or 1
        return ("tag: " + " ".join(f"{k}={v}" for k, v in c.items())
                + f" us_per_packet={self.busy_s / n * 1e6:.2f} verdict_us_per_packet={self.verdict_s / n * 1e6:.2f}")

    def close(self) -> None:
        if self.table is not None:
            self.table.close()
            self.table = None
        if self.xtq is not None:
            self.xtq.close()
            self.xtq = None
        if self.q is not None:
            self.q.close()
            self.q = None


def run_tagger(cfg: TagConfig, log, queue_base: int, batch: int, duration: float | None,
               stats_interval: float) -> Tagger:
    t = Tagger(cfg, log, queue_base, batch)

    def _stop(*_):
        t.stop = True
    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    started = False
    try:
        t.start()
        started = True
        qs = f"{t.base}" if len(cfg.tags) == 1 else f"{t.base}-{t.base + len(cfg.tags) - 1}"
        log.info(f"tagging: {len(cfg.tags)} rule(s) on NFQUEUE {qs}, table inet {TABLE}"
                 f"{' (owned: removed when mmr exits)' if t.table.owned else ''}, TCP MSS clamp "
                 + ", ".join(f"tag[{i}]={m}" for i, m in sorted(t.mss.items())))
        t.run(duration, stats_interval)
    finally:
        t.close()
        for s, h in old.items():
            signal.signal(s, h)
        if started:
            log.info(t.summary())
    return t


# ------------------------------------------------------------------------------ xt NFQUEUE
# Kernels built without nft_queue (CONFIG_NFT_QUEUE unset) but with nft_compat and the
# xtables NFQUEUE target: the rules of 'inet mmrtag' mark the packet instead (a rule number
# in MARK_MASK) and a second table, 'ip6 mmrtagq', owned by mmr's own nf_tables socket (so
# it too goes when mmr dies), queues by mark with the xt target NFQUEUE --queue-bypass.
MARK_MASK = 0x00FF0000
MARK_SHIFT = 16
QTABLE = "mmrtagq"
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE = 0, 3, 6
NFPROTO_IPV6 = 10
NLM_F_CREATE, NLM_F_APPEND = 0x400, 0x800
NFT_TABLE_F_OWNER = 2
NF_INET_LOCAL_OUT = 3
NFT_META_MARK = 3
NFT_REG_1 = 1
NLA_F_NESTED = 0x8000


def nft_queue_supported() -> bool:
    """Does this kernel have the nftables queue statement (nft_queue)?"""
    text = ("table ip6 mmrtagprobe { chain o { type filter hook output priority 0; "
            "queue num 0 bypass; }; }\n")
    return subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True).returncode == 0


def _s(t: int, text: str) -> bytes:
    return _nla(t, text.encode() + b"\0")


def _nest(t: int, *parts: bytes) -> bytes:
    return _nla(t | NLA_F_NESTED, b"".join(parts))


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(1, _s(1, name), _nest(2, *attrs))     # NFTA_LIST_ELEM { NAME, DATA }


class XtQueueTable:
    """``table ip6 mmrtagq`` with one output chain (priority filter + 5): for rule i,
    ``meta mark & MARK_MASK == (i + 1) << 16  xt NFQUEUE --queue-num base + i --queue-bypass``.
    Written as nf_tables netlink messages (nft cannot write an xt target); owned by this
    socket."""

    def __init__(self, queues: list[int]):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.seq = int(time.time()) & 0xFFFFFF
        msgs = [self._batch(NFNL_MSG_BATCH_BEGIN),
                self._m(NFT_MSG_NEWTABLE, NLM_F_CREATE, _s(1, QTABLE) + _nla(2, struct.pack("!I", NFT_TABLE_F_OWNER))),
                self._m(NFT_MSG_NEWCHAIN, NLM_F_CREATE,
                        _s(1, QTABLE) + _s(3, "out")
                        + _nest(4, _nla(1, struct.pack("!I", NF_INET_LOCAL_OUT)), _nla(2, struct.pack("!i", 5)))
                        + _nla(5, struct.pack("!I", NF_ACCEPT)) + _s(7, "filter"))]
        for i, q in enumerate(queues):
            exprs = (_expr("meta", _nla(1, struct.pack("!I", NFT_REG_1)), _nla(2, struct.pack("!I", NFT_META_MARK)))
                     + _expr("bitwise", _nla(1, struct.pack("!I", NFT_REG_1)), _nla(2, struct.pack("!I", NFT_REG_1)),
                             _nla(3, struct.pack("!I", 4)),
                             _nest(4, _nla(1, struct.pack("=I", MARK_MASK))), _nest(5, _nla(1, struct.pack("=I", 0))))
                     + _expr("cmp", _nla(1, struct.pack("!I", NFT_REG_1)), _nla(2, struct.pack("!I", 0)),
                             _nest(3, _nla(1, struct.pack("=I", (i + 1) << MARK_SHIFT))))
                     + _expr("target", _s(1, "NFQUEUE"), _nla(2, struct.pack("!I", 3)),
                             _nla(3, struct.pack("=HHHxx", q, 1, 1))))
            msgs.append(self._m(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                                _s(1, QTABLE) + _s(2, "out") + _nest(4, exprs)))
        msgs.append(self._batch(NFNL_MSG_BATCH_END))
        self.sock.send(b"".join(msgs))
        want = {struct.unpack_from("=I", m, 8)[0] for m in msgs[1:-1]}
        while want:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                ln, t, _, s, _ = _HDR.unpack_from(data, off)
                if t == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, off + 16)[0]
                    if code:
                        self.sock.close()
                        if code == errno.EPERM:
                            raise UserError("mmr tag needs root or CAP_NET_ADMIN (nftables, NFQUEUE)")
                        if code == errno.EEXIST or code == errno.EBUSY:
                            raise UserError(f"table ip6 {QTABLE} belongs to a running mmr tag; stop it first")
                        raise UserError(f"this kernel has neither the nftables queue statement nor the xtables "
                                        f"NFQUEUE target through nft_compat ({os.strerror(code)}); mmr tag "
                                        f"needs one of them")
                    want.discard(s)
                off += max(16, (ln + 3) & ~3)

    def _batch(self, t: int) -> bytes:
        self.seq += 1
        return _HDR.pack(20, t, NLM_F_REQUEST, self.seq, 0) + struct.pack("!BBH", 0, 0, NFNL_SUBSYS_NFTABLES)

    def _m(self, t: int, flags: int, attrs: bytes) -> bytes:
        self.seq += 1
        body = struct.pack("!BBH", NFPROTO_IPV6, 0, 0) + attrs
        return _HDR.pack(16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | t, NLM_F_REQUEST | NLM_F_ACK | flags,
                         self.seq, 0) + body

    def close(self) -> None:
        self.sock.close()         # the owned table goes with the socket
