"""Proxy neighbour discovery for NPTv6 onto an uplink's on-link prefix (issue 11).

A typical ISP gives the router's uplink one on-link /64 and routes nothing else to it.  With
npt_prefix = "auto" the LAN prefix maps onto that /64 (engine/translate.py), and the ISP's
router resolves every translated address on the link, as it would a host's: a neighbour
solicitation for it, to its solicited-node group.  The kernel would answer only with
proxy_ndp (a sysctl per device plus an ``ip -6 neigh add proxy`` per address); mmr changes no
sysctl, so it answers itself: one AF_PACKET socket per such uplink, a classic BPF filter
that lets only ICMPv6 neighbour solicitations through, read by the control side (the loop's
side callbacks: a bounded batch per wake-up, never the packet path).

It answers (RFC 4861 7.2.8, a proxy: Override clear) only for targets that are the
translations of LAN hosts mmr knows (the kernel's LAN neighbour table, as the forwarder's
hosts), and never for the router's own addresses, the gateway's or anything else: the
translator refuses those (engine/_nat Npt66.address and its list to avoid).  A solicitation
for duplicate address detection (source ::) of a translated address is answered as RFC 4861
7.2.4 says for a target in use: to all-nodes, Solicited clear, so the newcomer gives it up.
Answers are rate-limited (a token bucket per uplink).  An L3 uplink (PPP, raw IP, a tunnel)
has no neighbour discovery: there the prefix is routed to the device and no proxy runs.
"""
from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
import time

from engine.inet import checksum

ETH_P_IPV6 = 0x86DD
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_ALLMULTI = 2
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
ND_NS, ND_NA = 135, 136
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = bytes.fromhex("333300000001")
UNSPECIFIED = bytes(16)
RATE, BURST = 100.0, 50          # answers per second per uplink, and the burst
BATCH = 64                       # solicitations read per wake-up, at most


def ns_filter() -> bytes:
    """The classic BPF program: IPv6 (no extension header: RFC 4861 neighbour solicitations
    carry none), ICMPv6, hop limit 255, type 135; everything else stays out of the socket."""
    ldh, ldb, jeq, ret = 0x28, 0x30, 0x15, 0x06
    prog = [
        (ldh, 0, 0, 12), (jeq, 0, 7, ETH_P_IPV6),      # ethertype
        (ldb, 0, 0, 20), (jeq, 0, 5, 58),              # next header: ICMPv6
        (ldb, 0, 0, 21), (jeq, 0, 3, 255),             # hop limit 255 (from the link itself)
        (ldb, 0, 0, 54), (jeq, 0, 1, ND_NS),           # ICMPv6 type
        (ret, 0, 0, 0xFFFF),
        (ret, 0, 0, 0),
    ]
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


def solicited_node(addr: bytes) -> bytes:
    return bytes.fromhex("ff0200000000000000000001ff") + addr[13:]


def parse_ns(frame: bytes):
    """(source MAC, source address, target) of a valid neighbour solicitation (RFC 4861
    7.1.1: hop limit 255, code 0, checksum right, at least 24 bytes, the target not
    multicast, options of non-zero length; from :: only to a solicited-node group and
    without a source link-layer address option), else None."""
    if len(frame) < 14 + 40 + 24 or frame[12:14] != b"\x86\xdd":
        return None
    ip = frame[14:]
    plen = struct.unpack_from("!H", ip, 4)[0]
    if ip[0] >> 4 != 6 or ip[6] != 58 or ip[7] != 255 or plen < 24 or 40 + plen > len(ip):
        return None
    icmp = ip[40:40 + plen]
    if icmp[0] != ND_NS or icmp[1] != 0:
        return None
    src, dst, target = ip[8:24], ip[24:40], icmp[8:24]
    if checksum(src + dst + struct.pack("!IxxxB", plen, 58) + icmp) != 0:
        return None
    if target[0] == 0xFF:
        return None
    off, slla = 24, False
    while off < plen:
        if off + 2 > plen or icmp[off + 1] == 0 or off + 8 * icmp[off + 1] > plen:
            return None
        slla = slla or icmp[off] == 1
        off += 8 * icmp[off + 1]
    if src == UNSPECIFIED and (dst != solicited_node(target) or slla):
        return None
    return frame[6:12], src, target


def build_na(our_mac: bytes, our_ip: bytes, dst_mac: bytes, dst_ip: bytes, target: bytes,
             solicited: bool) -> bytes:
    """A neighbour advertisement for target from a proxy (RFC 4861 4.4, 7.2.8): Router clear
    (the target is a LAN host, not a router), Solicited as asked, Override clear, a target
    link-layer address option with our MAC; the ICMPv6 checksum over the pseudo-header."""
    flags = 0x40000000 if solicited else 0
    body = struct.pack("!BBHI", ND_NA, 0, 0, flags) + target + bytes([2, 1]) + our_mac
    csum = checksum(our_ip + dst_ip + struct.pack("!IxxxB", len(body), 58) + body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    ip = struct.pack("!IHBB", 0x60000000, len(body), 58, 255) + our_ip + dst_ip
    return dst_mac + our_mac + b"\x86\xdd" + ip + body


class Bucket:
    """A token bucket: rate tokens a second, at most burst."""

    def __init__(self, rate: float = RATE, burst: int = BURST):
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), None

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Responder:
    """What one uplink's proxy answers.  lookup(target bytes) -> True when target is the
    translation of a LAN host mmr knows (the caller's; it stays current with the tables)."""

    def __init__(self, lookup):
        self.lookup = lookup
        self.mac = b""
        self.link_local: bytes | None = None
        self.bucket = Bucket()
        self.counts = {"answered": 0, "defended": 0, "ignored": 0, "limited": 0, "invalid": 0}

    def set_addresses(self, mac: bytes, link_local: bytes | None) -> None:
        """The uplink's MAC (the answer's link-layer address) and its link-local address
        (the answer's source: RFC 4861 7.2.4, an address of the interface)."""
        self.mac, self.link_local = bytes(mac), link_local

    def answer(self, frame: bytes, now: float | None = None) -> bytes | None:
        """The advertisement a solicitation gets (None: none)."""
        ns = parse_ns(frame)
        if ns is None:
            self.counts["invalid"] += 1
            return None
        src_mac, src, target = ns
        if len(self.mac) != 6 or not self.lookup(target):
            self.counts["ignored"] += 1
            return None
        if not self.bucket.take(now):
            self.counts["limited"] += 1
            return None
        our_ip = self.link_local or target
        if src == UNSPECIFIED:                     # duplicate address detection: defend it
            self.counts["defended"] += 1
            return build_na(self.mac, our_ip, ALL_NODES_MAC, ALL_NODES.packed, target, False)
        self.counts["answered"] += 1
        return build_na(self.mac, our_ip, src_mac, src, target, True)


class NdProxy(Responder):
    """The answering socket of one uplink."""

    def __init__(self, device: str, lookup, log):
        super().__init__(lookup)
        self.device, self.log = device, log
        # protocol 0 until the filter is on: no frame gets in unfiltered
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            prog = ns_filter()
            buf = ctypes.create_string_buffer(prog)
            fprog = struct.pack("HP", len(prog) // 8, ctypes.addressof(buf))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            self.sock.bind((device, ETH_P_IPV6))
            # the solicited-node groups of the translated addresses are no group the device
            # joined: a NIC's filter would drop them (all multicast comes to this socket only)
            index = socket.if_nametoindex(device)
            self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                                 struct.pack("iHH8s", index, PACKET_MR_ALLMULTI, 0, b""))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def readable(self, revents: int = 0) -> None:
        for _ in range(BATCH):
            try:
                frame, addr = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # the device went down (ENETDOWN): reading SO_ERROR clears it, or poll
                # would report it again and again; the socket answers once it is back
                try:
                    self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                except OSError:
                    pass
                return
            if addr[2] == PACKET_OUTGOING:         # the router's own solicitations going out
                continue
            self.handle(frame)

    def handle(self, frame: bytes) -> None:
        na = self.answer(frame)
        if na is not None:
            try:
                self.sock.send(na)
            except OSError:
                self.counts["limited"] += 1        # the device's queue is full: as over the limit

    def close(self) -> None:
        self.sock.close()
