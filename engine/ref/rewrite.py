"""Reference rewrite: one frame at a time, the IPv4 checksum recomputed from scratch."""
from __future__ import annotations

import struct


def ipv4_checksum(header: bytes) -> int:
    h = header[:10] + b"\0\0" + header[12:]
    s = sum(struct.unpack(f"!{len(h) // 2}H", h))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def rewrite_frame(frame: bytes, row, src_mac: bytes, dst_mac: bytes) -> tuple[bytes | None, int]:
    """(new frame, verdict): verdict 1 = hop limit exhausted (frame None)."""
    l3 = int(row["l3_off"])
    fam = int(row["family"])
    f = bytearray(frame)
    if fam == 6:
        if f[l3 + 7] <= 1:
            return None, 1
        f[l3 + 7] -= 1
        etype = b"\x86\xdd"
    else:
        if f[l3 + 8] <= 1:
            return None, 1
        f[l3 + 8] -= 1
        ihl = (f[l3] & 0x0F) * 4
        f[l3 + 10:l3 + 12] = struct.pack("!H", ipv4_checksum(bytes(f[l3:l3 + ihl])))
        etype = b"\x08\x00"
    return dst_mac + src_mac + etype + bytes(f[l3:]), 0
