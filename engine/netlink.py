"""What the kernel knows about links, addresses and neighbours, kept current from rtnetlink
events: the engine's picture of the machine, read without a subprocess or a full dump in the
forwarding loop.

    start:   one dump of links, addresses, neighbours (blocking; before the loop runs)
    loop:    the same socket, subscribed to link, address and neighbour groups, is in the
             engine's poll set; ``read()`` parses what arrived (non-blocking) and updates
             ``State``; a lost event (ENOBUFS) asks for a fresh dump, whose answers arrive on
             the same socket like events, so nothing ever waits for the kernel
    queries: ``State`` answers link flags, MTUs, MACs, addresses and neighbour MACs from
             memory; ``request_qdisc(ifindex)`` asks for a device's qdisc statistics, which
             come back as a ``("qdisc", ...)`` event

Messages are parsed with struct, header sizes and numbers from the kernel headers
(engine._kernel).
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from engine import _kernel as K

IFA_F_TEMPORARY, IFA_F_DEPRECATED = 0x01, 0x20      # linux/if_addr.h

NLMSG = struct.Struct("=IHHII")          # struct nlmsghdr
IFINFO = struct.Struct("=BxHiII")        # struct ifinfomsg
IFADDR = struct.Struct("=BBBBI")         # struct ifaddrmsg
NDMSG = struct.Struct("=BxxxiHBB")       # struct ndmsg
TCMSG = struct.Struct("=BxxxiIII")       # struct tcmsg
RTMSG = struct.Struct("=BBBBBBBBI")      # struct rtmsg
RTNH = struct.Struct("=HBBi")            # struct rtnexthop
RTA = struct.Struct("=HH")               # struct rtattr
assert (IFINFO.size, IFADDR.size, NDMSG.size, TCMSG.size, RTMSG.size) == (
    K.SIZEOF_IFINFOMSG, K.SIZEOF_IFADDRMSG, K.SIZEOF_NDMSG, K.SIZEOF_TCMSG, K.SIZEOF_RTMSG)

NUD_VALID = (K.NUD_REACHABLE | K.NUD_STALE | K.NUD_DELAY | K.NUD_PROBE | K.NUD_PERMANENT
             | K.NUD_NOARP)
GROUPS = (K.RTMGRP_LINK | K.RTMGRP_NEIGH | K.RTMGRP_IPV4_IFADDR | K.RTMGRP_IPV6_IFADDR
          | K.RTMGRP_IPV4_ROUTE | K.RTMGRP_IPV6_ROUTE
          | 1 << (K.RTNLGRP_ND_USEROPT - 1))   # RA options for userspace: RDNSS (RFC 8106)
NDUSEROPT = struct.Struct("=BxHixxxxxxxx")  # struct nduseroptmsg: family, options' length, ifindex
assert NDUSEROPT.size == K.SIZEOF_NDUSEROPTMSG
ND_OPT_RDNSS = 25                           # RFC 8106 5.1
ND_RA = 134


def rdnss_servers(opts: bytes) -> list[tuple[bytes, int]]:
    """[(address, lifetime s)] of the RDNSS options among a router advertisement's options
    (what the kernel passes on; a router on the uplink wrote them: every length checked)."""
    out = []
    k = 0
    while k + 8 <= len(opts):
        typ, units = opts[k], opts[k + 1]
        if units == 0 or k + 8 * units > len(opts):
            break
        if typ == ND_OPT_RDNSS and units >= 3 and units % 2:
            life = struct.unpack_from("!I", opts, k + 4)[0]
            for a in range(k + 8, k + 8 * units, 16):
                out.append((bytes(opts[a:a + 16]), life))
        k += 8 * units
    return out


def _attrs(data: bytes, off: int, end: int) -> dict[int, bytes]:
    out = {}
    while off + 4 <= end:
        ln, typ = RTA.unpack_from(data, off)
        if ln < 4:
            break
        out[typ & 0x3FFF] = data[off + 4:off + ln]
        off += (ln + 3) & ~3
    return out


def addr16(packed: bytes) -> bytes:
    """The row form of an address: IPv6 as is, IPv4 as IPv4-mapped."""
    return bytes(10) + b"\xff\xff" + packed if len(packed) == 4 else packed


@dataclass
class Link:
    index: int
    name: str
    flags: int = 0
    mtu: int = 0
    mac: bytes = b""

    @property
    def up(self) -> bool:
        return bool(self.flags & K.IFF_UP) and bool(self.flags & K.IFF_LOWER_UP)


@dataclass
class State:
    """The machine as the last events described it."""
    links: dict[int, Link] = field(default_factory=dict)
    addrs: dict[int, dict[bytes, tuple[int, bytes | None]]] = field(default_factory=dict)
    neigh: dict[tuple[int, bytes], bytes] = field(default_factory=dict)
    aflags: dict[tuple[int, bytes], int] = field(default_factory=dict)   # (index, address): IFA_F_*
    routes: set = field(default_factory=set)     # (dst, plen, table, oifs, gateway, priority): unicast routes

    def index(self, name: str) -> int | None:
        for link in self.links.values():
            if link.name == name:
                return link.index
        return None

    def link(self, name: str) -> Link | None:
        i = self.index(name)
        return None if i is None else self.links[i]

    def addresses(self, index: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address(a) for a in self.addrs.get(index, {})]

    def address6(self, index: int) -> ipaddress.IPv6Address | None:
        """The device's global IPv6 address for NAPT66: a stable one (not a privacy address,
        not deprecated) before others, a global one before a unique local one, then the lowest."""
        cands = [ipaddress.IPv6Address(a) for a in self.addrs.get(index, {}) if len(a) == 16]
        cands = [a for a in cands if not (a.is_link_local or a.is_multicast or a.is_loopback)]
        return min(cands, key=lambda a: (bool(self.aflags.get((index, a.packed), 0) & (IFA_F_TEMPORARY | IFA_F_DEPRECATED)),
                                         a in ipaddress.IPv6Network("fc00::/7"), a), default=None)

    def has_address(self, index: int) -> bool:
        """An address beyond link-local: the device's own on its network."""
        return any(not a.is_link_local for a in self.addresses(index))

    def networks(self, index: int) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The networks the device's addresses are on, link-local ones left out (sorted,
        IPv6 first; a /32 or /128 address counts as its own network)."""
        nets = set()
        for a, (plen, _) in self.addrs.get(index, {}).items():
            net = ipaddress.ip_network((a, plen), strict=False)
            if not net.network_address.is_link_local:
                nets.add(net)
        return sorted(nets, key=lambda n: (-n.version, n))

    def local16(self) -> set[bytes]:
        """Every address of this machine (every device) and every IPv4 broadcast address of
        its subnets, in the row form."""
        out = set()
        for per in self.addrs.values():
            for a, (plen, brd) in per.items():
                out.add(addr16(a))
                if brd:
                    out.add(addr16(brd))
                if len(a) == 4 and plen < 31:      # the subnet's broadcast, set or not
                    net = ipaddress.IPv4Network((a, plen), strict=False)
                    out.add(addr16(net.broadcast_address.packed))
        return out

    def default_gateway(self, index: int, family: int | None = None) -> bytes | None:
        """The next hop of the main table's best default route out of device index (what DHCP,
        an RA or a PPP peer installed) for family 4 or 6 (by the route's own family: the RA
        router for IPv6, the DHCP one for IPv4); family None: IPv6's, else IPv4's.  None
        without one."""
        best = {}
        for dst, plen, table, oifs, gw, prio in self.routes:
            if plen == 0 and table == K.RT_TABLE_MAIN and oifs == (index,) and gw:
                fam = 6 if len(dst) == 16 else 4
                if fam not in best or prio < best[fam][0]:
                    best[fam] = (prio, gw)
        for fam in ((6, 4) if family is None else (family,)):
            if fam in best:
                return best[fam][1]
        return None

    def neighbour(self, index: int, addr: bytes) -> bytes | None:
        return self.neigh.get((index, addr))

    def routed_elsewhere(self, devices: set[int]) -> list[tuple[bytes, int]]:
        """(prefix in the row form, length over 128 bits) of the main table's unicast routes
        (not default ones) that leave through none of ``devices``: the networks this
        machine's kernel reaches by itself (a DMZ, a VPN, a subnet behind a LAN router)."""
        out = set()
        for dst, plen, table, oifs, *_ in self.routes:
            if table != K.RT_TABLE_MAIN or plen == 0 or not oifs or set(oifs) & devices:
                continue
            out.add((addr16(dst), plen + (96 if len(dst) == 4 else 0)))
        return sorted(out)


NLM_F_REPLACE = 0x100


class Netlink:
    """One rtnetlink socket: dumps at start, then events (non-blocking) in the poll loop.

    Requests go out one at a time and each answer is matched by its sequence number; a
    request the kernel refuses as busy is sent again.  After lost events (ENOBUFS) links,
    addresses and neighbours are dumped again, and every entry the dump no longer shows is
    removed (mark and sweep): the state never keeps a device or an address that is gone."""

    DUMPS = {K.RTM_GETLINK: IFINFO.pack(0, 0, 0, 0, 0), K.RTM_GETADDR: IFADDR.pack(0, 0, 0, 0, 0),
             K.RTM_GETNEIGH: NDMSG.pack(0, 0, 0, 0, 0), K.RTM_GETROUTE: RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0)}
    SWEPT = {K.RTM_GETLINK: "links", K.RTM_GETADDR: "addrs", K.RTM_GETNEIGH: "neigh", K.RTM_GETROUTE: "routes"}

    def __init__(self, groups: int = GROUPS):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, K.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, groups))
        self.sock.setblocking(False)
        self.seq = 0
        self.state = State()
        self.qdisc: dict[int, int] = {}            # ifindex -> root qdisc backlog (bytes)
        self.lost = 0
        self.queue: list[tuple[int, bytes]] = []   # requests waiting their turn
        self.inflight: tuple[int, int, bytes] | None = None     # (seq, type, body)
        self.seen: dict[str, set] | None = None    # keys a sweeping dump has shown

    def fileno(self) -> int:
        return self.sock.fileno()

    def _ask(self, mtype: int, body: bytes) -> None:
        if (mtype, body) not in self.queue and not (self.inflight and self.inflight[1:] == (mtype, body)):
            self.queue.append((mtype, body))
        self._pump()

    def _pump(self) -> None:
        if self.inflight is not None or not self.queue:
            return
        mtype, body = self.queue.pop(0)
        self.seq += 1
        try:
            self.sock.send(NLMSG.pack(NLMSG.size + len(body), mtype, K.NLM_F_REQUEST | K.NLM_F_DUMP,
                                      self.seq, 0) + body)
        except OSError:
            return
        self.inflight = (self.seq, mtype, body)
        if mtype in self.SWEPT:
            self.seen = {"links": set(), "addrs": set(), "neigh": set(), "routes": set()}

    def request_qdisc(self, index: int = 0) -> None:
        """Ask for the qdisc statistics (answered as ("qdisc", ...) events)."""
        self._ask(K.RTM_GETQDISC, TCMSG.pack(0, index, 0, 0, 0))

    def resync(self) -> None:
        for mtype, body in self.DUMPS.items():
            self._ask(mtype, body)

    def sync(self) -> State:
        """Blocking dumps of links, addresses and neighbours (at start only)."""
        self.resync()
        self.sock.setblocking(True)
        try:
            while self.inflight is not None:
                for _ in self._parse(self.sock.recv(1 << 20)):
                    pass
        finally:
            self.sock.setblocking(False)
        return self.state

    def read(self) -> list[tuple]:
        """Everything that arrived, applied to ``state``; returns the events:
        ("link", index), ("gone", index), ("addr", index), ("neigh", index, addr),
        ("qdisc", index, backlog), ("rdnss", index, [(address, lifetime)], router),
        ("resync",) when events were lost."""
        out = []
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:                    # ENOBUFS: events lost; ask for the whole picture
                self.lost += 1
                out.append(("resync",))
                self.resync()
                continue
            out.extend(self._parse(data))

    def _done(self, seq: int, error: int):
        """The answer to a request is complete (or refused): sweep, next request."""
        if self.inflight is None or seq != self.inflight[0]:
            return
        _, mtype, body = self.inflight
        self.inflight = None
        if error == -errno.EBUSY:              # a dump was already running: again
            self.queue.insert(0, (mtype, body))
        elif mtype in self.SWEPT and self.seen is not None and error == 0:
            yield from self._sweep(self.SWEPT[mtype], self.seen[self.SWEPT[mtype]])
        self.seen = None if mtype in self.SWEPT else self.seen
        self._pump()

    def _sweep(self, what: str, seen: set):
        st = self.state
        if what == "links":
            for index in [i for i in st.links if i not in seen]:
                del st.links[index]
                st.addrs.pop(index, None)
                yield ("gone", index)
        elif what == "addrs":
            for index, per in st.addrs.items():
                stale = [a for a in per if (index, a) not in seen]
                for a in stale:
                    del per[a]
                if stale:
                    yield ("addr", index)
        elif what == "routes":
            stale = st.routes - seen
            if stale:
                st.routes -= stale
                yield ("route",)
        else:
            for key in [k for k in st.neigh if k not in seen]:
                del st.neigh[key]
                yield ("neigh", key[0], key[1])

    def _mark(self, what: str, key) -> None:
        if self.seen is not None:
            self.seen[what].add(key)

    def _parse(self, data: bytes):
        off = 0
        st = self.state
        while off + NLMSG.size <= len(data):
            length, mtype, flags, seq, _ = NLMSG.unpack_from(data, off)
            if length < NLMSG.size or off + length > len(data):
                break
            body, end = off + NLMSG.size, off + length
            off += (length + 3) & ~3
            if mtype == K.NLMSG_DONE or mtype == K.NLMSG_ERROR:
                error = struct.unpack_from("=i", data, body)[0] if mtype == K.NLMSG_ERROR and body + 4 <= end else 0
                yield from self._done(seq, error)
                continue
            if mtype in (K.RTM_NEWLINK, K.RTM_DELLINK) and body + IFINFO.size <= end:
                _, _, index, iflags, _ = IFINFO.unpack_from(data, body)
                at = _attrs(data, body + IFINFO.size, end)
                if mtype == K.RTM_DELLINK:
                    st.links.pop(index, None)
                    st.addrs.pop(index, None)
                    for key in [k for k in st.neigh if k[0] == index]:
                        del st.neigh[key]
                    st.routes -= {r for r in st.routes if index in r[3]}
                    yield ("gone", index)
                    continue
                if not iflags & K.IFF_UP:
                    # IPv4 drops a device's routes when it goes down, without RTM_DELROUTE
                    st.routes -= {r for r in st.routes if len(r[0]) == 4 and r[3] == (index,)}
                self._mark("links", index)
                name = at.get(K.IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
                link = st.links.get(index) or Link(index, name)
                link.name = name or link.name
                link.flags = iflags
                if K.IFLA_MTU in at:
                    link.mtu = struct.unpack("=I", at[K.IFLA_MTU][:4])[0]
                if K.IFLA_ADDRESS in at:
                    link.mac = at[K.IFLA_ADDRESS]
                st.links[index] = link
                yield ("link", index)
            elif mtype in (K.RTM_NEWADDR, K.RTM_DELADDR) and body + IFADDR.size <= end:
                family, plen, aflags, _, index = IFADDR.unpack_from(data, body)
                at = _attrs(data, body + IFADDR.size, end)
                a = at.get(K.IFA_LOCAL) or at.get(K.IFA_ADDRESS)
                if not a or len(a) not in (4, 16):
                    continue
                if K.IFA_FLAGS in at:
                    aflags = struct.unpack("=I", at[K.IFA_FLAGS][:4])[0]
                per = st.addrs.setdefault(index, {})
                if mtype == K.RTM_DELADDR or aflags & (K.IFA_F_TENTATIVE | K.IFA_F_DADFAILED):
                    per.pop(bytes(a), None)
                    if len(a) == 4:
                        # IPv4 drops, without RTM_DELROUTE, the routes whose gateway no longer
                        # lies on one of the device's subnets
                        nets = [ipaddress.ip_network((x, pl), strict=False) for x, (pl, _) in per.items() if len(x) == 4]
                        st.routes -= {r for r in st.routes if len(r[0]) == 4 and r[3] == (index,) and r[4]
                                      and not any(ipaddress.ip_address(r[4]) in n for n in nets)}
                else:
                    brd = at.get(K.IFA_BROADCAST)
                    per[bytes(a)] = (plen, bytes(brd) if brd else None)
                    st.aflags[(index, bytes(a))] = aflags
                    self._mark("addrs", (index, bytes(a)))
                yield ("addr", index)
            elif mtype in (K.RTM_NEWNEIGH, K.RTM_DELNEIGH) and body + NDMSG.size <= end:
                _, index, state, _, _ = NDMSG.unpack_from(data, body)
                at = _attrs(data, body + NDMSG.size, end)
                dst, mac = at.get(K.NDA_DST), at.get(K.NDA_LLADDR)
                if not dst or len(dst) not in (4, 16):
                    continue
                key = (index, bytes(dst))
                if mtype == K.RTM_NEWNEIGH and mac and len(mac) == 6 and state & NUD_VALID:
                    st.neigh[key] = bytes(mac)
                    self._mark("neigh", key)
                else:
                    st.neigh.pop(key, None)
                yield ("neigh", index, bytes(dst))
            elif mtype in (K.RTM_NEWROUTE, K.RTM_DELROUTE) and body + RTMSG.size <= end:
                family, dlen, _, _, table, _, _, rtype, _ = RTMSG.unpack_from(data, body)
                at = _attrs(data, body + RTMSG.size, end)
                if rtype != K.RTN_UNICAST or family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                if K.RTA_TABLE in at:
                    table = struct.unpack("=I", at[K.RTA_TABLE][:4])[0]
                dst = at.get(K.RTA_DST, bytes(4 if family == socket.AF_INET else 16))
                oifs = []
                if K.RTA_OIF in at:
                    oifs.append(struct.unpack("=i", at[K.RTA_OIF][:4])[0])
                mp = at.get(K.RTA_MULTIPATH, b"")
                k = 0
                while k + RTNH.size <= len(mp):
                    ln, _, _, oif = RTNH.unpack_from(mp, k)
                    if ln < RTNH.size:
                        break
                    oifs.append(oif)
                    k += (ln + 3) & ~3
                gw = bytes(at.get(K.RTA_GATEWAY, b""))
                prio = struct.unpack("=I", at[K.RTA_PRIORITY][:4])[0] if len(at.get(K.RTA_PRIORITY, b"")) >= 4 else 0
                key = (bytes(dst), dlen, table, tuple(sorted(oifs)), gw if len(gw) in (4, 16) else b"", prio)
                if mtype == K.RTM_NEWROUTE:
                    if flags & NLM_F_REPLACE:         # the route it replaces sends no RTM_DELROUTE
                        st.routes -= {r for r in st.routes if r[:3] == key[:3] and r[5] == key[5]
                                      and len(r[0]) == len(key[0])}
                    st.routes.add(key)
                    self._mark("routes", key)
                else:
                    st.routes.discard(key)
                yield ("route",)
            elif mtype == K.RTM_NEWNDUSEROPT and body + NDUSEROPT.size <= end:
                family, opts_len, index = NDUSEROPT.unpack_from(data, body)
                icmp_type = data[body + 8]
                opts_end = body + NDUSEROPT.size + opts_len
                if family != socket.AF_INET6 or icmp_type != ND_RA or opts_end > end:
                    continue
                at = _attrs(data, (opts_end + 3) & ~3, end)
                router = at.get(K.NDUSEROPT_SRCADDR, b"")
                servers = rdnss_servers(data[body + NDUSEROPT.size:opts_end])
                if servers:
                    yield ("rdnss", index, servers, bytes(router) if len(router) == 16 else None)
            elif mtype == K.RTM_NEWQDISC and body + TCMSG.size <= end:
                _, index, _, parent, _ = TCMSG.unpack_from(data, body)
                if parent != K.TC_H_ROOT:
                    continue
                at = _attrs(data, body + TCMSG.size, end)
                backlog = None
                if K.TCA_STATS2 in at:
                    inner = _attrs(at[K.TCA_STATS2], 0, len(at[K.TCA_STATS2]))
                    q = inner.get(K.TCA_STATS_QUEUE)
                    if q and len(q) >= 8:
                        backlog = struct.unpack_from("=II", q)[1]
                if backlog is None and K.TCA_STATS in at and len(at[K.TCA_STATS]) >= 36:
                    backlog = struct.unpack_from("=QIIIIIII", at[K.TCA_STATS])[-1]
                if backlog is not None:
                    self.qdisc[index] = backlog
                    yield ("qdisc", index, backlog)

    def close(self) -> None:
        self.sock.close()
