"""Reference NAPT44 (the oracle of pyx/nat.pyx): the same decisions written plainly, with
dicts for the tables and bytes slicing for the packets.  Checksums follow RFC 1624 eq. 3 in
Python integers; the tests check separately, from scratch, that a packet whose checksums were
right before translation has right checksums after it."""
from __future__ import annotations

import ipaddress
import os
import struct

from engine.inet import ones_sum

OK, PASS, UNKNOWN, EXHAUSTED, UNSUPPORTED, MALFORMED, NO_ADDRESS = (
    "ok", "pass", "unknown", "exhausted", "unsupported", "malformed", "no_address")
TIMEOUTS = {"tcp_syn": 120.0, "tcp_established": 432000.0, "tcp_fin": 120.0, "tcp_rst": 10.0,
            "udp": 30.0, "udp_replied": 120.0, "icmp": 30.0}
FRAG_SLOTS = 1024
FRAG_TIMEOUT = 30.0
PI = {6: 0, 17: 1, 1: 2}
M64 = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & M64


def siphash13(data: bytes, k0: int, k1: int) -> int:
    """SipHash-1-3 over whole 64-bit little-endian words; the low 32 bits."""
    v = [k0 ^ 0x736f6d6570736575, k1 ^ 0x646f72616e646f6d, k0 ^ 0x6c7967656e657261, k1 ^ 0x7465646279746573]

    def rnd():
        v[0] = (v[0] + v[1]) & M64; v[1] = _rotl(v[1], 13); v[1] ^= v[0]; v[0] = _rotl(v[0], 32)  # noqa: E702
        v[2] = (v[2] + v[3]) & M64; v[3] = _rotl(v[3], 16); v[3] ^= v[2]  # noqa: E702
        v[0] = (v[0] + v[3]) & M64; v[3] = _rotl(v[3], 21); v[3] ^= v[0]  # noqa: E702
        v[2] = (v[2] + v[1]) & M64; v[1] = _rotl(v[1], 17); v[1] ^= v[2]; v[2] = _rotl(v[2], 32)  # noqa: E702

    words = len(data) // 8
    for i in range(words + 1):
        m = int.from_bytes(data[8 * i:8 * i + 8], "little") if i < words else (8 * words) << 56
        v[3] ^= m
        rnd()
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(3):
        rnd()
    return (v[0] ^ v[1] ^ v[2] ^ v[3]) & 0xFFFFFFFF


def csum_update(hc: int, m: int, m2: int) -> int:
    s = (~hc & 0xFFFF) + (~m & 0xFFFF) + m2
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class _Pkt:
    """A bytearray with 16-bit word access."""

    def __init__(self, b: bytearray):
        self.b = b

    def w(self, at: int) -> int:
        return (self.b[at] << 8) | self.b[at + 1]

    def put(self, at: int, v: int) -> None:
        self.b[at:at + 2] = v.to_bytes(2, "big")

    def fix(self, field: int, m: int, m2: int, pending=False, udp=False) -> None:
        c = self.w(field)
        if udp and c == 0 and not pending:
            return
        if pending:
            c = ~csum_update(~c & 0xFFFF, m, m2) & 0xFFFF
        else:
            c = csum_update(c, m, m2)
            if udp and c == 0:
                c = 0xFFFF
        self.put(field, c)

    def set_word(self, at: int, v: int, sums=()) -> None:
        """sums: (field, pending, udp) of each checksum covering the word."""
        old = self.w(at)
        if old == v:
            return
        self.put(at, v)
        for field, pending, udp in sums:
            self.fix(field, old, v, pending, udp)

    def set_addr(self, at: int, a: bytes, sums=()) -> None:
        self.set_word(at, int.from_bytes(a[:2], "big"), sums)
        self.set_word(at + 2, int.from_bytes(a[2:], "big"), sums)


class Map:
    __slots__ = ("int_addr", "rem_addr", "int_port", "rem_port", "ext_port", "pi", "u", "state", "last")

    def __init__(self, int_addr, rem_addr, int_port, rem_port, ext_port, pi, u, now):
        self.int_addr, self.rem_addr, self.int_port, self.rem_port = int_addr, rem_addr, int_port, rem_port
        self.ext_port, self.pi, self.u, self.state, self.last = ext_port, pi, u, "new", now


class Nat44Ref:
    def __init__(self, n_uplinks: int, capacity: int = 65536, seed=None, timeouts=None,
                 port_range=(1024, 65535), avoid=None):
        lo, hi = port_range
        self.ports = [p for p in range(lo, hi + 1) if avoid is None or not avoid[0] <= p <= avoid[1]]
        self.port_set = set(self.ports)
        key = os.urandom(16) if seed is None else int(seed).to_bytes(16, "little")
        self.k0, self.k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
        self.n, self.capacity = n_uplinks, capacity
        self.addr = [None] * n_uplinks
        self.fwd: dict[tuple, Map] = {}
        self.rev: dict[tuple, Map] = {}          # (u, pi, ext_port)
        self.fwds: dict[tuple, tuple] = {}       # (u, pi, port): a [[forward]]'s (LAN host, its port)
        self.fwd_back: dict[tuple, int] = {}     # (u, pi, LAN host, its port): the external port
        self.n_fwd = 0
        self.frags: dict[int, tuple] = {}        # slot: (rem, ip_id, proto, u, int_addr, last)
        self.t = dict(TIMEOUTS, **(timeouts or {}))
        self.exhausted = 0
        self.moved = 0

    def set_address(self, u: int, address) -> None:
        a = None if address is None else bytes(address if isinstance(address, (bytes, bytearray)) else address.packed)
        if a != self.addr[u]:
            self.flush_uplink(u)
            self.addr[u] = a

    def set_forward(self, u: int, proto: int, lo: int, hi: int, to_addr, to_lo=None) -> None:
        if not 0 <= u < self.n:
            raise IndexError("uplink out of range")
        if proto not in (6, 17):
            raise ValueError("a forward is TCP (6) or UDP (17)")
        pi, to = PI[proto], bytes(to_addr)
        first = lo if to_lo is None else to_lo
        if not 1 <= lo <= hi <= 65535 or len(to) != 4:
            raise ValueError("ports 1..65535, low to high, and a 4-byte address")
        if not 1 <= first <= 65535 - (hi - lo):
            raise ValueError("the LAN host's ports 1..65535 for the whole range")
        if self.n_fwd >= 64:
            raise ValueError("at most 64 forwards")
        if any((u, pi, p) in self.fwds for p in range(lo, hi + 1)):
            raise ValueError("a port is another forward's on this uplink")
        if any((u, pi, to, first + i) in self.fwd_back for i in range(hi - lo + 1)):
            raise ValueError("a LAN host's port is another forward's on this uplink")
        self.n_fwd += 1
        for i, p in enumerate(range(lo, hi + 1)):
            m = self.rev.get((u, pi, p))
            if m is not None:
                self._release(m)
            self.fwds[(u, pi, p)] = (to, first + i)
            self.fwd_back[(u, pi, to, first + i)] = p

    def flush_uplink(self, u: int) -> int:
        gone = [m for m in self.fwd.values() if m.u == u]
        for m in gone:
            self._release(m)
        return len(gone)

    def _release(self, m: Map) -> None:
        del self.fwd[(m.int_addr, m.rem_addr, m.int_port, m.rem_port, m.pi, m.u)]
        del self.rev[(m.u, m.pi, m.ext_port)]

    def _hash(self, int_addr, rem_addr, int_port, rem_port, pi, u) -> int:
        k = int_addr + rem_addr + int_port.to_bytes(2, "big") + rem_port.to_bytes(2, "big") + bytes([pi, u, 0, 0])
        return siphash13(k, self.k0, self.k1)

    def _create(self, key, now) -> Map | None:
        int_addr, rem_addr, int_port, rem_port, pi, u = key
        in_use = sum(1 for (uu, p, _) in self.rev if uu == u and p == pi)
        if len(self.fwd) >= self.capacity or in_use >= len(self.ports):
            self.exhausted += 1
            return None
        if int_port in self.port_set and (u, pi, int_port) not in self.rev and (u, pi, int_port) not in self.fwds:
            port = int_port
        else:
            i = (self._hash(*key) >> 8) % len(self.ports)
            tries = 0
            while (u, pi, self.ports[i]) in self.rev or (u, pi, self.ports[i]) in self.fwds:
                i = (i + 1) % len(self.ports)
                tries += 1
                if tries >= len(self.ports):
                    self.exhausted += 1
                    return None
            port = self.ports[i]
        m = Map(int_addr, rem_addr, int_port, rem_port, port, pi, u, now)
        self.fwd[key] = m
        self.rev[(u, pi, port)] = m
        return m

    def _lookup(self, key, now) -> Map | None:
        """The key's mapping, or a new one (a flow another uplink carried before counts as
        moved); None: exhausted."""
        m = self.fwd.get(key)
        if m is None:
            m = self._create(key, now)
            if m is None:
                return None
            if any(key[:5] + (v,) in self.fwd for v in range(self.n) if v != key[5]):
                self.moved += 1
        m.last = now
        return m

    def _timeout(self, m: Map) -> float:
        if m.pi == 0:
            return {"est": self.t["tcp_established"], "fin": self.t["tcp_fin"], "rst": self.t["tcp_rst"]}.get(
                m.state, self.t["tcp_syn"])
        if m.pi == 1:
            return self.t["udp_replied"] if m.state == "est" else self.t["udp"]
        return self.t["icmp"]

    def expire(self, now: float) -> int:
        gone = [m for m in self.fwd.values() if now - m.last > self._timeout(m)]
        for m in gone:
            self._release(m)
        for k in [k for k, f in self.frags.items() if now - f[5] > FRAG_TIMEOUT]:
            del self.frags[k]
        return len(gone)

    @staticmethod
    def _tcp_state(m: Map, flags: int, reply: bool) -> None:
        if flags & 4:
            m.state = "rst"
        elif flags & 1:
            m.state = "fin"
        elif reply and m.state == "new":
            m.state = "est"

    def _frag_slot(self, rem, ip_id: bytes, proto, u) -> int:
        return siphash13(rem + ip_id + bytes([proto, u]), self.k0, self.k1) % FRAG_SLOTS

    @staticmethod
    def _header(b: bytearray):
        if len(b) < 20 or b[0] >> 4 != 4:
            return None
        ihl = (b[0] & 15) * 4
        tot = int.from_bytes(b[2:4], "big")
        if ihl < 20 or ihl > len(b) or tot < ihl:
            return None
        return ihl, min(len(b), tot)

    # ------------------------------------------------------------------ out
    def out_packet(self, b: bytearray, u: int, now: float, pending: bool = False) -> str:
        if not 0 <= u < self.n:
            return PASS
        ext = self.addr[u]
        if ext is None:
            return NO_ADDRESS
        h = self._header(b)
        if h is None:
            return MALFORMED
        l4, n = h
        p = _Pkt(b)
        proto = b[9]
        ipsum = [(10, False, False)]
        if p.w(6) & 0x1FFF:
            p.set_addr(12, ext, ipsum)
            return OK
        pi = PI.get(proto)
        if pi is None:
            return UNSUPPORTED
        if pi == 2:
            if l4 + 8 > n:
                return MALFORMED
            t = b[l4]
            if t in (3, 11, 12):
                return self._out_error(b, n, l4, u, ext)
            if t != 8:
                return UNSUPPORTED
            sport, dport = p.w(l4 + 4), 0
        else:
            if l4 + (20 if pi == 0 else 8) > n:
                return MALFORMED
            sport, dport = p.w(l4), p.w(l4 + 2)
            ext_port = self.fwd_back.get((u, pi, bytes(b[12:16]), sport))
            if ext_port is not None:             # a forwarded connection's host answering
                ck = l4 + (16 if pi == 0 else 6)
                p.set_addr(12, ext, ipsum + [(ck, pending, pi == 1)])
                p.set_word(l4, ext_port, [] if pending else [(ck, False, pi == 1)])
                return OK
        key = (bytes(b[12:16]), bytes(b[16:20]), sport, dport, pi, u)
        m = self._lookup(key, now)
        if m is None:
            return EXHAUSTED
        if pi == 0:
            self._tcp_state(m, b[l4 + 13], False)
            ck = l4 + 16
            p.set_addr(12, ext, ipsum + [(ck, pending, False)])
            p.set_word(l4, m.ext_port, [] if pending else [(ck, False, False)])
        elif pi == 1:
            ck = l4 + 6
            p.set_addr(12, ext, ipsum + [(ck, pending, True)])
            p.set_word(l4, m.ext_port, [] if pending else [(ck, False, True)])
        else:
            p.set_addr(12, ext, ipsum)
            p.set_word(l4 + 4, m.ext_port, [(l4 + 2, False, False)])
        return OK

    def _quote(self, b, n, l4):
        q = l4 + 8
        if n - q < 20 or b[q] >> 4 != 4:
            return None
        qihl = (b[q] & 15) * 4
        if qihl < 20 or qihl + 8 > n - q:
            return None
        return q, qihl

    def _quoted_sums(self, pi, q, qihl, n):
        if pi == 0:
            return (q + qihl + 16) if q + qihl + 18 <= n else None
        return q + qihl + (6 if pi == 1 else 2)

    def _rewrite_quote(self, p: _Pkt, ic: int, q: int, qihl: int, n: int, pi: int, addr_at: int, addr: bytes,
                       port_at: int, port: int) -> None:
        qck = self._quoted_sums(pi, q, qihl, n)
        watched = [q + addr_at, q + addr_at + 2, q + 10] + ([qck] if qck is not None else []) + [port_at]
        old = [p.w(a) for a in watched]
        iph = [(q + 10, False, False)]
        if pi == 1:
            p.set_addr(q + addr_at, addr, iph + [(qck, False, True)])
            p.set_word(port_at, port, [(qck, False, True)])
        elif pi == 0:
            p.set_addr(q + addr_at, addr, iph + ([(qck, False, False)] if qck is not None else []))
            p.set_word(port_at, port, [(qck, False, False)] if qck is not None else [])
        else:
            p.set_addr(q + addr_at, addr, iph)
            p.set_word(port_at, port, [(qck, False, False)])
        for a, o in zip(watched, old):
            p.fix(ic, o, p.w(a))

    def _out_error(self, b, n, l4, u, ext) -> str:
        qq = self._quote(b, n, l4)
        if qq is None:
            return MALFORMED
        q, qihl = qq
        p = _Pkt(b)
        pi = PI.get(b[q + 9])
        if pi is None:
            return UNSUPPORTED
        if pi == 2:
            if b[q + qihl] != 0:
                return UNSUPPORTED
            qsport, qdport = 0, p.w(q + qihl + 4)
        else:
            qsport, qdport = p.w(q + qihl), p.w(q + qihl + 2)
        ext_port = None
        if pi != 2:                              # about a packet a forward brought its host?
            ext_port = self.fwd_back.get((u, pi, bytes(b[q + 16:q + 20]), qdport))
        if ext_port is None:
            m = self.fwd.get((bytes(b[q + 16:q + 20]), bytes(b[q + 12:q + 16]), qdport, qsport, pi, u))
            if m is None:
                return UNKNOWN
            ext_port = m.ext_port
        self._rewrite_quote(p, l4 + 2, q, qihl, n, pi, 16, ext, q + qihl + (4 if pi == 2 else 2), ext_port)
        p.set_addr(12, ext, [(10, False, False)])
        return OK

    # ------------------------------------------------------------------ in
    def in_packet(self, b: bytearray, u: int, now: float, pending: bool = False) -> str:
        if not 0 <= u < self.n or self.addr[u] is None:
            return PASS
        h = self._header(b)
        if h is None:
            return MALFORMED
        l4, n = h
        if bytes(b[16:20]) != self.addr[u]:
            return PASS
        p = _Pkt(b)
        src, proto, ip_id = bytes(b[12:16]), b[9], bytes(b[4:6])
        ipsum = [(10, False, False)]
        frag = p.w(6)
        if frag & 0x1FFF:
            f = self.frags.get(self._frag_slot(src, ip_id, proto, u))
            if f is None or f[:4] != (src, ip_id, proto, u):
                return PASS
            self.frags[self._frag_slot(src, ip_id, proto, u)] = f[:5] + (now,)
            p.set_addr(16, f[4], ipsum)
            return OK
        pi = PI.get(proto)
        if pi is None:
            return PASS
        if pi == 2:
            if l4 + 8 > n:
                return MALFORMED
            t = b[l4]
            if t in (3, 11, 12):
                return self._in_error(b, n, l4, u)
            if t != 0:
                return PASS
            port, sport = p.w(l4 + 4), 0
        else:
            if l4 + (20 if pi == 0 else 8) > n:
                return MALFORMED
            port, sport = p.w(l4 + 2), p.w(l4)
            fw = self.fwds.get((u, pi, port))
            if fw is not None:                   # a forward's port: its LAN host and port
                to, to_port = fw
                ck = l4 + (16 if pi == 0 else 6)
                p.set_addr(16, to, ipsum + [(ck, pending, pi == 1)])
                p.set_word(l4 + 2, to_port, [] if pending else [(ck, False, pi == 1)])
                if frag & 0x2000:
                    self.frags[self._frag_slot(src, ip_id, proto, u)] = (src, ip_id, proto, u, to, now)
                return OK
        if port not in self.port_set:
            return PASS
        m = self.rev.get((u, pi, port))
        if m is None or m.rem_addr != src or m.rem_port != sport:
            return PASS if pi == 2 else UNKNOWN
        m.last = now
        if pi == 0:
            self._tcp_state(m, b[l4 + 13], True)
            ck = l4 + 16
            p.set_addr(16, m.int_addr, ipsum + [(ck, pending, False)])
            p.set_word(l4 + 2, m.int_port, [] if pending else [(ck, False, False)])
        elif pi == 1:
            m.state = "est"
            ck = l4 + 6
            p.set_addr(16, m.int_addr, ipsum + [(ck, pending, True)])
            p.set_word(l4 + 2, m.int_port, [] if pending else [(ck, False, True)])
        else:
            p.set_addr(16, m.int_addr, ipsum)
            p.set_word(l4 + 4, m.int_port, [(l4 + 2, False, False)])
        if frag & 0x2000:
            self.frags[self._frag_slot(src, ip_id, proto, u)] = (src, ip_id, proto, u, m.int_addr, now)
        return OK

    def _in_error(self, b, n, l4, u) -> str:
        qq = self._quote(b, n, l4)
        if qq is None:
            return MALFORMED
        q, qihl = qq
        p = _Pkt(b)
        pi = PI.get(b[q + 9])
        if pi is None or bytes(b[q + 12:q + 16]) != self.addr[u]:
            return PASS
        if pi == 2:
            if b[q + qihl] != 8:
                return PASS
            port, qdport = p.w(q + qihl + 4), 0
        else:
            port, qdport = p.w(q + qihl), p.w(q + qihl + 2)
            fw = self.fwds.get((u, pi, port))
            if fw is not None:                   # about a forwarded connection: its host and port
                to, to_port = fw
                self._rewrite_quote(p, l4 + 2, q, qihl, n, pi, 12, to, q + qihl, to_port)
                p.set_addr(16, to, [(10, False, False)])
                return OK
        if port not in self.port_set:
            return PASS
        m = self.rev.get((u, pi, port))
        if m is None or m.rem_addr != bytes(b[q + 16:q + 20]) or m.rem_port != qdport:
            return PASS if pi == 2 else UNKNOWN
        self._rewrite_quote(p, l4 + 2, q, qihl, n, pi, 12, m.int_addr, q + qihl + (4 if pi == 2 else 0), m.int_port)
        p.set_addr(16, m.int_addr, [(10, False, False)])
        return OK

    # ------------------------------------------------------------------ views
    def mapping(self, proto, int_addr, int_port, rem_addr, rem_port, u):
        m = self.fwd.get((bytes(int_addr), bytes(rem_addr), int_port, rem_port, PI.get(proto, -1), u))
        return None if m is None else m.ext_port

    def __len__(self) -> int:
        return len(self.fwd)


# ---------------------------------------------------------------------- NPTv6 (RFC 6296)
def npt_map(addr: bytes, frm, to) -> bytes | None:
    """addr (16 bytes, inside prefix frm) mapped into prefix to (an ipaddress.IPv6Network of
    frm's length): the prefix bits replaced, then one word set so that the address's one's
    complement sum is what it was (bits 48-63 for /48 or shorter, else the first interface
    identifier word that is not 0xFFFF); None when that word cannot be chosen."""
    words = list(struct.unpack("!8H", addr))
    if frm.prefixlen <= 48:
        w = 3 if words[3] != 0xFFFF else None
    else:
        w = next((i for i in range(4, 8) if words[i] != 0xFFFF), None)
    if w is None:
        return None
    before = ones_sum(addr)
    mask = int(frm.netmask)
    new = (int(to.network_address) & mask) | (int.from_bytes(addr, "big") & ~mask & ((1 << 128) - 1))
    words = list(struct.unpack("!8H", new.to_bytes(16, "big")))
    rest = ones_sum(struct.pack("!8H", *(words[:w] + [0] + words[w + 1:])))
    # the word that makes the sum `before` again: before - rest (one's complement), 0xFFFF as 0
    v = (before + (~rest & 0xFFFF)) % 0xFFFF
    words[w] = v
    return struct.pack("!8H", *words)


class Npt66Ref:
    def __init__(self, n_uplinks: int):
        self.maps = [None] * n_uplinks
        self.held = [None] * n_uplinks
        self.avoid = [frozenset()] * n_uplinks

    def set_prefixes(self, u, inner, outer, avoid=()) -> None:
        self.maps[u] = None if inner is None or outer is None else (inner, outer)
        self.held[u] = None
        self.avoid[u] = frozenset(ipaddress.IPv6Address(a).packed for a in avoid)

    def hold(self, u, inner) -> None:
        self.maps[u], self.held[u] = None, inner

    def address(self, u, addr, out: bool):
        if self.maps[u] is None:
            return None
        inner, outer = self.maps[u]
        frm, to = (inner, outer) if out else (outer, inner)
        a = ipaddress.IPv6Address(addr)
        if a not in frm or (not out and a.packed in self.avoid[u]):
            return None
        new = npt_map(a.packed, frm, to)
        return None if new is None or (out and new in self.avoid[u]) else ipaddress.IPv6Address(new)

    @staticmethod
    def _quoted(b: bytes) -> int:
        off, nh = 40, b[6]
        for _ in range(8):
            if nh == 58:
                return off + 8 if off + 48 <= len(b) and b[off] < 128 else 0
            if nh not in (0, 43, 60) or off + 8 > len(b):
                return 0
            nh, off = b[off], off + (b[off + 1] + 1) * 8
        return 0

    def _go(self, b: bytearray, u: int, out: bool) -> str:
        if not 0 <= u < len(self.maps) or (self.maps[u] is None and (self.held[u] is None or not out)):
            return PASS
        if len(b) < 40 or b[0] >> 4 != 6:
            return MALFORMED
        if self.maps[u] is None:            # held: no prefix to map onto yet
            return NO_ADDRESS if ipaddress.IPv6Address(bytes(b[8:24])) in self.held[u] else PASS
        inner, outer = self.maps[u]
        frm, to = (inner, outer) if out else (outer, inner)
        at = 8 if out else 24
        if ipaddress.IPv6Address(bytes(b[at:at + 16])) not in frm:
            return PASS
        if not out and bytes(b[at:at + 16]) in self.avoid[u]:
            return PASS                     # the router's own (or the gateway's): not the LAN's
        if not out and b[6] == 58 and len(b) > 40 and 133 <= b[40] <= 137:
            return PASS                     # neighbour discovery: the link's, never the LAN's
        new = npt_map(bytes(b[at:at + 16]), frm, to)
        if new is None or (out and new in self.avoid[u]):
            return UNSUPPORTED
        b[at:at + 16] = new
        q = self._quoted(b)
        qat = q + (24 if out else 8)
        if q and b[q] >> 4 == 6 and ipaddress.IPv6Address(bytes(b[qat:qat + 16])) in frm:
            new = npt_map(bytes(b[qat:qat + 16]), frm, to)
            if new is not None:
                b[qat:qat + 16] = new
        return OK

    def out_packet(self, b: bytearray, u: int) -> str:
        return self._go(b, u, True)

    def in_packet(self, b: bytearray, u: int) -> str:
        return self._go(b, u, False)


# ---------------------------------------------------------------------- NAPT66
PI6 = {6: 0, 17: 1, 58: 2}


def walk6(b, n: int):
    """(status, l4, proto, fragment header offset or 0) past the extension headers."""
    off, nh, fh = 40, b[6], 0
    for _ in range(9):
        if nh in (0, 60, 43):
            if off + 8 > n:
                return MALFORMED, 0, 0, 0
            if nh == 43 and b[off + 3] != 0:
                return UNSUPPORTED, 0, 0, 0
            nh, off = b[off], off + (b[off + 1] + 1) * 8
        elif nh == 44:
            if off + 8 > n or fh:
                return MALFORMED, 0, 0, 0
            fh, nh, off = off, b[off], off + 8
        else:
            if off > n:
                return MALFORMED, 0, 0, 0
            return OK, off, nh, fh
    return UNSUPPORTED, 0, 0, 0


class Nat66Ref(Nat44Ref):
    """NAPT66 as Nat44Ref, on IPv6: the keys hold the whole addresses, and so does the hash
    the port choice starts from (Nat44Ref._hash of the 40-byte key, as the compiled table's)."""

    def __init__(self, n_uplinks: int, *args, **kw):
        super().__init__(n_uplinks, *args, **kw)
        self.held = [False] * n_uplinks          # translating, no address yet

    def set_address(self, u: int, address, hold: bool = False) -> None:
        a = None if address is None else bytes(address if isinstance(address, (bytes, bytearray)) else address.packed)
        if a != self.addr[u] or (a is None and hold != self.held[u]):
            self.flush_uplink(u)
            self.addr[u] = a
        self.held[u] = a is None and hold

    def _fold(self, a: bytes) -> bytes:
        return siphash13(a, self.k1, self.k0).to_bytes(4, "little")

    def _frag_slot6(self, src: bytes, ident: bytes, proto: int, u: int) -> int:
        i = int.from_bytes(ident, "little")
        return self._frag_slot(self._fold(src), ((i ^ (i >> 16)) & 0xFFFF).to_bytes(2, "little"), proto, u)

    @staticmethod
    def _length(b) -> int | None:
        if len(b) < 40 or b[0] >> 4 != 6:
            return None
        return min(len(b), 40 + int.from_bytes(b[4:6], "big"))

    @staticmethod
    def _addr(p: _Pkt, at: int, a: bytes, sums) -> None:
        for i in range(0, 16, 2):
            p.set_word(at + i, int.from_bytes(a[i:i + 2], "big"), sums)

    def out_packet(self, b: bytearray, u: int, now: float, pending: bool = False) -> str:
        if not 0 <= u < self.n:
            return PASS
        ext = self.addr[u]
        if ext is None:
            return NO_ADDRESS if self.held[u] else PASS
        n = self._length(b)
        if n is None:
            return MALFORMED
        rc, l4, proto, fh = walk6(b, n)
        if rc != OK:
            return rc
        p = _Pkt(b)
        if fh and p.w(fh + 2) & 0xFFF8:
            b[8:24] = ext
            return OK
        pi = PI6.get(proto)
        if pi is None:
            return UNSUPPORTED
        if pi == 2:
            if l4 + 8 > n:
                return MALFORMED
            t = b[l4]
            if 1 <= t <= 4:
                return self._error(b, n, l4, u, True)
            if t != 128:
                return UNSUPPORTED
            sport, dport = p.w(l4 + 4), 0
        else:
            if l4 + (20 if pi == 0 else 8) > n:
                return MALFORMED
            sport, dport = p.w(l4), p.w(l4 + 2)
        key = (bytes(b[8:24]), bytes(b[24:40]), sport, dport, pi, u)
        m = self._lookup(key, now)
        if m is None:
            return EXHAUSTED
        if pi == 0:
            self._tcp_state(m, b[l4 + 13], False)
            ck = l4 + 16
            self._addr(p, 8, ext, [(ck, pending, False)])
            p.set_word(l4, m.ext_port, [] if pending else [(ck, False, False)])
        elif pi == 1:
            ck = l4 + 6
            self._addr(p, 8, ext, [(ck, pending, True)])
            p.set_word(l4, m.ext_port, [] if pending else [(ck, False, True)])
        else:
            self._addr(p, 8, ext, [(l4 + 2, False, False)])
            p.set_word(l4 + 4, m.ext_port, [(l4 + 2, False, False)])
        return OK

    def in_packet(self, b: bytearray, u: int, now: float, pending: bool = False) -> str:
        if not 0 <= u < self.n or self.addr[u] is None:
            return PASS
        n = self._length(b)
        if n is None:
            return MALFORMED
        if bytes(b[24:40]) != self.addr[u]:
            return PASS
        rc, l4, proto, fh = walk6(b, n)
        if rc != OK:
            return PASS if rc == UNSUPPORTED else rc
        p = _Pkt(b)
        src = bytes(b[8:24])
        fo = p.w(fh + 2) if fh else 0
        ident = bytes(b[fh + 4:fh + 8]) if fh else b""
        if fo & 0xFFF8:
            slot = self._frag_slot6(src, ident, proto, u)
            f = self.frags.get(slot)
            if f is None or f[:4] != (src, ident, proto, u):
                return PASS
            self.frags[slot] = f[:5] + (now,)
            b[24:40] = f[4]
            return OK
        pi = PI6.get(proto)
        if pi is None:
            return PASS
        if pi == 2:
            if l4 + 8 > n:
                return MALFORMED
            t = b[l4]
            if 1 <= t <= 4:
                return self._error(b, n, l4, u, False)
            if t != 129:
                return PASS
            port, sport = p.w(l4 + 4), 0
        else:
            if l4 + (20 if pi == 0 else 8) > n:
                return MALFORMED
            port, sport = p.w(l4 + 2), p.w(l4)
        if port not in self.port_set:
            return PASS
        m = self.rev.get((u, pi, port))
        if m is None or m.rem_addr != src or m.rem_port != sport:
            return PASS if pi == 2 else UNKNOWN
        m.last = now
        if pi == 0:
            self._tcp_state(m, b[l4 + 13], True)
            ck = l4 + 16
            self._addr(p, 24, m.int_addr, [(ck, pending, False)])
            p.set_word(l4 + 2, m.int_port, [] if pending else [(ck, False, False)])
        elif pi == 1:
            m.state = "est"
            ck = l4 + 6
            self._addr(p, 24, m.int_addr, [(ck, pending, True)])
            p.set_word(l4 + 2, m.int_port, [] if pending else [(ck, False, True)])
        else:
            self._addr(p, 24, m.int_addr, [(l4 + 2, False, False)])
            p.set_word(l4 + 4, m.int_port, [(l4 + 2, False, False)])
        if fh and fo & 1:
            self.frags[self._frag_slot6(src, ident, proto, u)] = (src, ident, proto, u, m.int_addr, now)
        return OK

    def _error(self, b, n, l4, u, out: bool) -> str:
        q = l4 + 8
        if n - q < 40 or b[q] >> 4 != 6:
            return MALFORMED
        quote = b[q:n]
        rc, ql4, qproto, qfh = walk6(quote, n - q)
        if rc != OK:
            return rc
        p = _Pkt(b)
        refuse = UNSUPPORTED if out else PASS
        if qfh and p.w(q + qfh + 2) & 0xFFF8:
            return refuse
        pi = PI6.get(qproto)
        if pi is None:
            return refuse
        if q + ql4 + 8 > n:
            return MALFORMED
        ql4 += q
        lan, rem = (q + 24, q + 8) if out else (q + 8, q + 24)
        if not out and bytes(b[lan:lan + 16]) != self.addr[u]:
            return PASS
        if pi == 2:
            if b[ql4] != (129 if out else 128):
                return refuse
            pw, rport, qck = ql4 + 4, 0, ql4 + 2
        else:
            pw, rport = ql4 + (2 if out else 0), p.w(ql4 + (0 if out else 2))
            qck = ql4 + 6 if pi == 1 else (ql4 + 16 if ql4 + 18 <= n else None)
        if out:
            m = self.fwd.get((bytes(b[lan:lan + 16]), bytes(b[rem:rem + 16]), p.w(pw), rport, pi, u))
            if m is None:
                return UNKNOWN
            addr, port = self.addr[u], m.ext_port
        else:
            if p.w(pw) not in self.port_set:
                return PASS
            m = self.rev.get((u, pi, p.w(pw)))
            if m is None or m.rem_port != rport or m.rem_addr != bytes(b[rem:rem + 16]):
                return PASS if pi == 2 else UNKNOWN
            addr, port = m.int_addr, m.int_port
        ic = l4 + 2
        sums = [(ic, False, False)] + ([(qck, False, pi == 1)] if qck is not None else [])
        old = p.w(qck) if qck is not None else 0
        self._addr(p, lan, addr, sums)
        p.set_word(pw, port, sums)
        if qck is not None:
            p.fix(ic, old, p.w(qck))
        if out:
            self._addr(p, 8, self.addr[u], [(ic, False, False)])
        else:
            self._addr(p, 24, m.int_addr, [(ic, False, False)])
        return OK
