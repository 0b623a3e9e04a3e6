"""Frame builders for tests, written with struct (no scapy/dpkt here: those are oracles)."""
from __future__ import annotations

import ipaddress
import struct

from hypothesis import strategies as st

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def a6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def a4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def eth(payload: bytes, ethertype: int = 0x86DD, vlans=(), dst=MAC_B, src=MAC_A) -> bytes:
    tags = b""
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if (len(vlans) == 2 and i == 0) else 0x8100
        tags += struct.pack("!HH", tpid, vid)
    # tags (TPID, TCI) sit between the source MAC and the ethertype
    return dst + src + tags + struct.pack("!H", ethertype) + payload


def ipv6(payload: bytes, nh: int, src="2001:db8:1::10", dst="2001:db8:ff::1", hlim=64,
         tclass=0, flow=0, plen=None) -> bytes:
    v = (6 << 28) | (tclass << 20) | flow
    return struct.pack("!IHBB", v, len(payload) if plen is None else plen, nh, hlim) + \
        a6(src) + a6(dst) + payload


def ipv4(payload: bytes, proto: int, src="192.0.2.10", dst="198.51.100.1", ttl=64, tos=0,
         ident=1, flags_frag=0, options=b"") -> bytes:
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, tos, total, ident, flags_frag, ttl,
                      proto, 0, a4(src), a4(dst)) + options
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tc_option(service: int, preference: int, option_type: int = 0x3E) -> bytes:
    return struct.pack("!BBBH", option_type, 3, service, preference)


def pad1() -> bytes:
    return b"\x00"


def padn(n: int) -> bytes:
    """PadN occupying n >= 2 bytes in all."""
    return bytes([1, n - 2]) + bytes(n - 2)


def opts_header(nh: int, options: bytes, align=True) -> bytes:
    """A hop-by-hop or destination options header around raw option bytes."""
    body = options
    if align:
        need = (-(2 + len(body))) % 8
        if need == 1:
            body += pad1()
        elif need:
            body += padn(need)
    assert (2 + len(body)) % 8 == 0, "options header must be a multiple of 8 bytes"
    return bytes([nh, (2 + len(body)) // 8 - 1]) + body


def hbh(nh: int, *options: bytes) -> bytes:
    return opts_header(nh, b"".join(options))


def dstopts(nh: int, *options: bytes) -> bytes:
    return opts_header(nh, b"".join(options))


def routing(nh: int, segs=1) -> bytes:
    return bytes([nh, 2 * segs, 0, 0]) + bytes(4) + bytes(16 * segs)


def frag6(nh: int, offset=0, more=False, ident=0x1234) -> bytes:
    return struct.pack("!BBHI", nh, 0, (offset << 3) | int(more), ident)


def ah(nh: int, words=4) -> bytes:
    """AH header of (words+2)*4 bytes."""
    return bytes([nh, words, 0, 0]) + bytes((words + 2) * 4 - 4)


def udp(sport=1000, dport=2000, payload=b"x" * 8) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport=1000, dport=80, payload=b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x10, 65535, 0, 0) + payload


def icmpv6_echo(ident=7, seq=1, req=True, payload=b"ping") -> bytes:
    return struct.pack("!BBHHH", 128 if req else 129, 0, 0, ident, seq) + payload


def icmpv6(type_: int, code=0, body=b"\0" * 4) -> bytes:
    return struct.pack("!BBH", type_, code, 0) + body


def icmp4_echo(ident=9, seq=1, req=True) -> bytes:
    return struct.pack("!BBHHH", 8 if req else 0, 0, 0, ident, seq) + b"ping"


def tagged_udp(service=3, preference=2, sport=5004, dport=5004, option_type=0x3E,
               before=(), **ip) -> bytes:
    """Ethernet/IPv6/HBH(traffic control)/UDP."""
    h = hbh(17, *before, tc_option(service, preference, option_type))
    return eth(ipv6(h + udp(sport, dport), 0, **ip))


# ------------------------------------------------------------------ hypothesis strategies
addr6 = st.binary(min_size=16, max_size=16).map(lambda b: str(ipaddress.IPv6Address(b)))
addr4 = st.binary(min_size=4, max_size=4).map(lambda b: str(ipaddress.IPv4Address(b)))
port = st.integers(0, 65535)


@st.composite
def option_list(draw):
    """Valid option bytes for a hop-by-hop header: the traffic control option possibly after
    padding or other options.  Every padding run is followed by a non-padding option, so
    with the alignment padding no run exceeds 7 bytes."""

    def padding():
        k = draw(st.integers(0, 2))
        return b"" if k == 0 else pad1() if k == 1 else padn(draw(st.integers(2, 5)))

    parts = []
    for _ in range(draw(st.integers(0, 3))):
        # types a router passes: action bits 00 (skip when unrecognised, RFC 8200 4.2) or
        # recognised (router alert, jumbo payload); tests/test_rfc8200.py has the others
        t = draw(st.integers(2, 255).filter(lambda x: x != 0x3E and (x >> 6 == 0 or x in (0x05, 0xC2))))
        n = draw(st.integers(0, 6))
        parts.append(padding() + bytes([t, n]) + bytes(n))
    if draw(st.booleans()):
        parts.append(padding() + tc_option(draw(st.integers(0, 255)), draw(st.integers(0, 65535))))
    return b"".join(parts)


@st.composite
def valid_frame(draw):
    """A well-formed frame: IPv6 (optionally HBH, dstopts, routing, fragment) or IPv4, with
    TCP/UDP/ICMP, optionally VLAN-tagged."""
    l4_kind = draw(st.sampled_from(["udp", "tcp", "echo", "icmp"]))
    sp, dp = draw(port), draw(port)
    vlans = tuple(draw(st.lists(st.integers(0, 4095), max_size=2)))
    if draw(st.integers(0, 4)) == 0:
        if l4_kind in ("echo", "icmp"):
            l4, proto = icmp4_echo(ident=sp), 1
        elif l4_kind == "tcp":
            l4, proto = tcp(sp, dp), 6
        else:
            l4, proto = udp(sp, dp), 17
        ip = ipv4(l4, proto, src=draw(addr4), dst=draw(addr4), ttl=draw(st.integers(0, 255)),
                  tos=draw(st.integers(0, 255)))
        return eth(ip, 0x0800, vlans=vlans)
    if l4_kind == "udp":
        l4, proto = udp(sp, dp), 17
    elif l4_kind == "tcp":
        l4, proto = tcp(sp, dp), 6
    elif l4_kind == "echo":
        l4, proto = icmpv6_echo(ident=sp, req=draw(st.booleans())), 58
    else:
        l4, proto = icmpv6(draw(st.sampled_from([1, 2, 3, 4, 133, 134, 135, 136]))), 58
    chain = []  # (builder, ) innermost last
    if draw(st.booleans()):
        chain.append(("hbh", draw(option_list())))
    if draw(st.booleans()):
        chain.append(("dst", b""))
    if draw(st.booleans()):
        chain.append(("rt", b""))
    if draw(st.integers(0, 5)) == 0:
        chain.append(("frag", b""))
    payload, nh = l4, proto
    for kind, opts in reversed(chain):
        if kind == "hbh":
            payload, nh = opts_header(nh, opts) + payload, 0
        elif kind == "dst":
            payload, nh = dstopts(nh) + payload, 60
        elif kind == "rt":
            payload, nh = routing(nh) + payload, 43
        else:
            payload, nh = frag6(nh, offset=draw(st.integers(0, 100)), more=draw(st.booleans())) + payload, 44
    ip = ipv6(payload, nh, src=draw(addr6), dst=draw(addr6), hlim=draw(st.integers(0, 255)),
              tclass=draw(st.integers(0, 255)))
    return eth(ip, vlans=vlans)


@st.composite
def mutated_frame(draw):
    """A valid frame with random damage: flipped bytes, truncation, garbage appended."""
    f = bytearray(draw(valid_frame()))
    for _ in range(draw(st.integers(0, 4))):
        if not f:
            break
        i = draw(st.integers(0, len(f) - 1))
        f[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        f = f[: draw(st.integers(0, len(f)))]
    if draw(st.integers(0, 3)) == 0:
        f += draw(st.binary(max_size=24))
    return bytes(f)
