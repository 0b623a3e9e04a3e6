"""ICMPv6 / ICMP errors a router sends: time exceeded (the hop limit ran out), packet
too big / fragmentation needed (the packet does not fit the egress MTU) and parameter
problem (an unrecognised hop-by-hop option whose type says so, RFC 8200 4.2).

A rare path (one reply per dropped packet, rate-limited by the caller): plain Python.
"""
from __future__ import annotations

import struct

from engine import _kernel as K
from engine.inet import checksum


def time_exceeded(frame: bytes, l3_off: int, family: int, router_mac: bytes,
                  router_ip6: bytes | None = None, router_ip4: bytes | None = None) -> bytes | None:
    """The Ethernet frame answering ``frame`` (ICMPv6 type 3 code 0, or ICMP type 11 code 0),
    sent back to the frame's source MAC; None when the router has no address of that family."""
    return icmp_error(frame, l3_off, family, router_mac, router_ip6, router_ip4, (K.ICMP6_TIME_EXCEEDED, 0),
                      (K.ICMP_TIME_EXCEEDED, 0), 0)


def packet_too_big(frame: bytes, l3_off: int, family: int, router_mac: bytes, mtu: int,
                   router_ip6: bytes | None = None, router_ip4: bytes | None = None) -> bytes | None:
    """ICMPv6 packet too big (type 2, the MTU in the 32-bit field; RFC 4443 3.2) or ICMP
    fragmentation needed (type 3 code 4, next-hop MTU in the low 16 bits; RFC 1191)."""
    return icmp_error(frame, l3_off, family, router_mac, router_ip6, router_ip4, (K.ICMP6_PACKET_TOO_BIG, 0),
                      (K.ICMP_DEST_UNREACH, K.ICMP_FRAG_NEEDED), mtu)


def parameter_problem(frame: bytes, l3_off: int, family: int, router_mac: bytes, pointer: int,
                      router_ip6: bytes | None = None) -> bytes | None:
    """ICMPv6 parameter problem, code 2 (unrecognised IPv6 option; RFC 4443 3.4), the pointer
    = the offset of the option's type byte from the start of the invoking packet.  IPv6 only
    (None otherwise, or without an IPv6 address)."""
    if family != 6:
        return None
    return icmp_error(frame, l3_off, family, router_mac, router_ip6, None,
                      (K.ICMP6_PARAM_PROB, K.ICMP6_PARAMPROB_OPTION), (0, 0), pointer)


def icmp_error(frame: bytes, l3_off: int, family: int, router_mac: bytes,
               router_ip6: bytes | None, router_ip4: bytes | None,
               v6: tuple[int, int], v4: tuple[int, int], word: int) -> bytes | None:
    src_mac = frame[6:12]
    ip = frame[l3_off:]
    if family == 6:
        if router_ip6 is None:
            return None
        invoking = ip[: 1280 - 40 - 8]          # RFC 4443: as much as fits in the minimum MTU
        dst = ip[8:24]
        icmp = struct.pack("!BBHI", v6[0], v6[1], 0, word) + invoking
        pseudo = router_ip6 + dst + struct.pack("!I3xB", len(icmp), K.IPPROTO_ICMPV6)
        icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
        hdr = struct.pack("!IHBB", 6 << 28, len(icmp), K.IPPROTO_ICMPV6, 255) + router_ip6 + dst
        return src_mac + router_mac + b"\x86\xdd" + hdr + icmp
    if router_ip4 is None:
        return None
    ihl = (ip[0] & 0x0F) * 4
    invoking = ip[: ihl + 8]                    # RFC 792: the header and 8 bytes of data
    dst = ip[12:16]
    icmp = struct.pack("!BBHI", v4[0], v4[1], 0, word & 0xFFFF) + invoking
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(icmp), 0, 0, 64, K.IPPROTO_ICMP, 0, router_ip4, dst)
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return src_mac + router_mac + b"\x08\x00" + hdr + icmp
