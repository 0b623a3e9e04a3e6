"""Reference rewrite: one frame at a time; the IPv4 header checksum and every finished
upper-layer checksum are recomputed from scratch (pseudo-header and all), not completed
incrementally as the compiled stage does, so the two are independent."""
from __future__ import annotations

import struct

from engine import constants as C
from engine.inet import ones_sum

NEEDS_CSUM, DATA_VALID = 1, 2            # virtio-net header flags (RFC-level values, typed here)


def ipv4_checksum(header: bytes) -> int:
    h = header[:10] + b"\0\0" + header[12:]
    return ~ones_sum(h) & 0xFFFF


def ip_end(frame: bytes, l3: int, family: int) -> int:
    """Where the IP packet ends (Ethernet padding excluded)."""
    if family == 4:
        return min(len(frame), l3 + int.from_bytes(frame[l3 + 2:l3 + 4], "big"))
    plen = int.from_bytes(frame[l3 + 4:l3 + 6], "big")
    return len(frame) if plen == 0 else min(len(frame), l3 + 40 + plen)


def l4_checksum(frame: bytes, l3: int, family: int, start: int, at: int, end: int) -> int:
    """The checksum of the upper-layer data frame[start:end] with its field (at) as zero,
    over the pseudo-header of RFC 8200 8.1 / RFC 793 (none for ICMP over IPv4)."""
    data = frame[start:at] + b"\0\0" + frame[at + 2:end]
    if family == 6:
        nh = _upper_proto6(frame, l3, start)
        pseudo = frame[l3 + 8:l3 + 40] + struct.pack("!I3xB", end - start, nh)
    else:
        proto = frame[l3 + 9]
        pseudo = b"" if proto == C.IPPROTO_ICMP else frame[l3 + 12:l3 + 20] + struct.pack("!xBH", proto, end - start)
    c = ~ones_sum(pseudo + data) & 0xFFFF
    return c or 0xFFFF


def _upper_proto6(frame: bytes, l3: int, start: int) -> int:
    """The next-header value that leads to the header at ``start``."""
    nh, pos = frame[l3 + 6], l3 + 40
    while pos < start:
        if nh == 51:
            hl = (frame[pos + 1] + 2) * 4
        elif nh == 44:
            hl = 8
        else:
            hl = (frame[pos + 1] + 1) * 8
        nh, pos = frame[pos], pos + hl
    return nh


def finish_checksum(frame: bytes, row, vnet: dict, gso_too: bool) -> tuple[bytes, dict, int]:
    """(frame, vnet, verdict) with a NEEDS_CSUM request completed from scratch."""
    if not vnet["flags"] & NEEDS_CSUM or (vnet["gso_type"] and not gso_too):
        return frame, vnet, 0
    l3, fam = int(row["l3_off"]), int(row["family"])
    end = ip_end(frame, l3, fam)
    start, at = vnet["csum_start"], vnet["csum_start"] + vnet["csum_offset"]
    if start >= end or at + 2 > end:
        return frame, vnet, 2
    c = l4_checksum(frame, l3, fam, start, at, end)
    frame = frame[:at] + struct.pack("!H", c) + frame[at + 2:]
    return frame, dict(flags=DATA_VALID, gso_type=0, hdr_len=vnet["hdr_len"], gso_size=0, csum_start=0,
                       csum_offset=0), 0


def _pad(n: int) -> bytes:
    return b"" if n == 0 else b"\x00" if n == 1 else bytes([1, n - 2]) + bytes(n - 2)


def strip_option(frame: bytes, row, option_type: int) -> tuple[bytes, int]:
    """(frame, bytes removed): the traffic control option taken out of the hop-by-hop header
    (pyx/rewrite.pyx's docstring: the whole header when nothing else is in it, else the other
    options kept at their offsets modulo 8 and the header cut by whole 8-byte units)."""
    l3 = int(row["l3_off"])
    q = l3 + 40
    if row["family"] != 6 or not row["has_opt"] or q + 8 > len(frame) or frame[l3 + 6] != 0:
        return frame, 0
    hl = (frame[q + 1] + 1) * 8
    if q + hl > len(frame):
        return frame, 0
    opts, i = [], 2                      # (offset in the header, type, whole option)
    hdr = frame[q:q + hl]
    while i < hl:
        if hdr[i] == 0:
            i += 1
            continue
        if i + 2 > hl or i + 2 + hdr[i + 1] > hl:
            return frame, 0
        opts.append((i, hdr[i], hdr[i:i + 2 + hdr[i + 1]]))
        i += 2 + hdr[i + 1]
    if not any(t == option_type for _, t, _ in opts):
        return frame, 0
    kept = [(o, body) for o, t, body in opts if t not in (1, option_type)]
    ip = bytearray(frame[l3:l3 + 40])
    if not kept:
        new_hdr = b""
        ip[6] = hdr[0]
    else:
        out = bytearray(hdr[:2])
        for o, body in kept:
            out += _pad((o - len(out)) % 8) + body
        out += _pad(-len(out) % 8)
        out[1] = len(out) // 8 - 1
        new_hdr = bytes(out)
    removed = hl - len(new_hdr)
    plen = int.from_bytes(ip[4:6], "big")
    if plen:
        ip[4:6] = (plen - removed).to_bytes(2, "big")
    return frame[:l3] + bytes(ip) + new_hdr + frame[q + hl:], removed


def rewrite_frame(frame: bytes, row, src_mac: bytes, dst_mac: bytes, vnet: dict | None = None,
                  hop: bool = True, gso_too: bool = False, macs: bool = True, strip: int = 0):
    """(new frame, verdict, vnet after): verdict 1 = hop limit exhausted (frame None),
    2 = a checksum request outside the packet (frame None); ``strip``: an option type whose
    option is removed (0: none)."""
    keys = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")
    vnet = {k: 0 for k in keys} if vnet is None else {k: int(vnet[k]) for k in keys}
    l3 = int(row["l3_off"])
    fam = int(row["family"])
    f = bytearray(frame)
    if hop:
        if f[l3 + (7 if fam == 6 else 8)] <= 1:
            return None, 1, vnet
    done, vnet, v = finish_checksum(bytes(f), row, vnet, gso_too)
    if v:
        return None, v, vnet
    f = bytearray(done)
    if hop:
        if fam == 6:
            f[l3 + 7] -= 1
        else:
            f[l3 + 8] -= 1
            ihl = (f[l3] & 0x0F) * 4
            f[l3 + 10:l3 + 12] = struct.pack("!H", ipv4_checksum(bytes(f[l3:l3 + ihl])))
    if strip:
        stripped, removed = strip_option(bytes(f), row, strip)
        f = bytearray(stripped)
        if removed:
            if vnet["flags"] & NEEDS_CSUM:
                vnet["csum_start"] -= removed
            if vnet["hdr_len"] > removed:
                vnet["hdr_len"] -= removed
    shift = l3 - 14
    if shift:
        if vnet["flags"] & NEEDS_CSUM:
            vnet["csum_start"] -= shift
        if vnet["hdr_len"] > shift:
            vnet["hdr_len"] -= shift
    etype = b"\x86\xdd" if fam == 6 else b"\x08\x00"
    head = (dst_mac + src_mac) if macs else bytes(f[shift:shift + 12])
    return head + etype + bytes(f[l3:]), 0, vnet
