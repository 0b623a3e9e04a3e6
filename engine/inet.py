"""Small address and checksum helpers for the paths built in Python: the Internet checksum
(RFC 1071) of ICMP errors, probes, synthetic traces and the benchmark's generator, and the
IPv4-mapped form the row contract uses for addresses."""
from __future__ import annotations

import ipaddress
import struct


def mapped16(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The 16 address bytes of the row contract: IPv4 as IPv4-mapped (::ffff:a.b.c.d)."""
    return bytes(10) + b"\xff\xff" + ip.packed if ip.version == 4 else ip.packed


def ones_sum(data: bytes) -> int:
    """The one's complement sum of the 16-bit big-endian words (odd length: padded), folded."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data: bytes) -> int:
    """RFC 1071: the one's complement of the one's complement sum."""
    return ~ones_sum(data) & 0xFFFF
