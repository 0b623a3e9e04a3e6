"""The Internet checksum (RFC 1071), for the rare paths built in Python: ICMP errors,
probes, synthetic traces, the benchmark's generator."""
from __future__ import annotations

import struct


def checksum(data: bytes) -> int:
    """One's complement of the one's complement sum of the 16-bit words (odd length: padded)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
