"""Reference parser: the oracle for engine._parse, written plainly, one frame at a time.

Same semantics as pyx/parse.pyx (its docstring is the specification); readability first.
Protocol numbers and ethertypes are written here as the RFCs give them, on purpose: the
compiled parser takes them from the kernel headers, and an oracle typed independently
catches a wrong constant on either side.
"""
from __future__ import annotations

import numpy as np

from engine import constants as C

PORT_HEADER_LEN = {6: 20, 17: 8, 136: 8, 132: 12, 33: 12}
PORTLESS = {50, 47, 4, 41, 59, 89, 103, 112, 115, 135, 1, 58}
EXT_HEADERS = {0, 43, 44, 51, 60}

FIELDS = [f for f in C.ROW_DTYPE.names if f != "_pad"]


class _Stop(Exception):
    def __init__(self, reason):
        self.reason = reason


def _empty() -> dict:
    r = {f: 0 for f in FIELDS}
    r["src"] = bytes(16)
    r["dst"] = bytes(16)
    return r


RECOGNISED = {C.OPT_ROUTER_ALERT, C.OPT_JUMBO}      # besides Pad1, PadN and the option


def _options(data: bytes, hbh: bool, option_type: int, r: dict, base: int = 0,
             honour: bool = False, pending: list | None = None) -> None:
    """One options header's TLVs; base = the offset of data[0] from the IPv6 header.  In the
    hop-by-hop header (honour), the first unrecognised option whose action bits are not 00
    puts its reason in pending[0] and its offset in r["opt_off"] (RFC 8200 4.2)."""
    i = 0
    pad = 0
    nopts = 0
    while i < len(data):
        t = data[i]
        if t == 0:
            pad += 1
            if pad > C.MAX_PAD_BYTES:
                raise _Stop(C.REASON_PAD_EXCESS)
            i += 1
            continue
        if len(data) - i < 2:
            raise _Stop(C.REASON_OPT_OVERRUN)
        olen = data[i + 1]
        if olen > len(data) - i - 2:
            raise _Stop(C.REASON_OPT_OVERRUN)
        if t == 1:
            pad += 2 + olen
            if pad > C.MAX_PAD_BYTES:
                raise _Stop(C.REASON_PAD_EXCESS)
        else:
            pad = 0
            nopts += 1
            if nopts > C.MAX_OPTIONS:
                raise _Stop(C.REASON_TOO_MANY_OPTS)
            if hbh and t == option_type:
                if olen != C.OPTION_DATA_LEN:
                    raise _Stop(C.REASON_BAD_OPT_LEN)
                if not r["has_opt"]:
                    r["has_opt"] = 1
                    r["service"] = data[i + 2]
                    r["preference"] = int.from_bytes(data[i + 3:i + 5], "big")
            elif hbh and honour and not pending[0] and t not in RECOGNISED:
                action = t >> 6
                multicast = r["dst"][0] == 0xFF
                if action == 0b01 or (action == 0b11 and multicast):
                    pending[0] = C.REASON_OPT_UNKNOWN_DISCARD
                elif action in (0b10, 0b11):
                    pending[0] = C.REASON_OPT_UNKNOWN_ICMP
                if action:
                    r["opt_off"] = base + i
        i += 2 + olen


def _upper(pkt: bytes, off: int, proto: int, v6: bool, r: dict) -> None:
    """pkt is the IP packet's bytes up to its end; off the upper-layer header offset."""
    r["proto"] = proto
    avail = len(pkt) - off
    if proto in PORT_HEADER_LEN:
        if avail < PORT_HEADER_LEN[proto]:
            raise _Stop(C.REASON_TRUNCATED_L4)
        r["l4_off"] = off
        r["sport"] = int.from_bytes(pkt[off:off + 2], "big")
        r["dport"] = int.from_bytes(pkt[off + 2:off + 4], "big")
        r["flags"] |= C.F_L4
        return
    if (proto == 58 and v6) or (proto == 1 and not v6):
        if avail < 4:
            raise _Stop(C.REASON_TRUNCATED_L4)
        t = pkt[off]
        r["l4_off"] = off
        r["icmp_type"] = t
        r["flags"] |= C.F_L4
        echo = (128, 129) if v6 else (8, 0)
        if t in echo:
            if avail < 8:
                raise _Stop(C.REASON_TRUNCATED_L4)
            r["sport"] = int.from_bytes(pkt[off + 4:off + 6], "big")
            r["flags"] |= C.F_ECHO
        return
    if proto in PORTLESS:
        return
    raise _Stop(C.REASON_UNKNOWN_NH)


def _settle(pending: list) -> None:
    """The frame is otherwise good (ok or unknown_nh): an unknown option's discard decides."""
    if pending[0]:
        raise _Stop(pending[0])


def _ipv6(frame: bytes, off: int, option_type: int, r: dict, honour: bool = True) -> None:
    r["family"] = 6
    r["l3_off"] = off
    if len(frame) - off < 40:
        raise _Stop(C.REASON_TRUNCATED_L3)
    if frame[off] >> 4 != 6:
        raise _Stop(C.REASON_BAD_IP_HEADER)
    plen = int.from_bytes(frame[off + 4:off + 6], "big")
    if plen == 0:
        pkt = frame
    else:
        if off + 40 + plen > len(frame):
            raise _Stop(C.REASON_TRUNCATED_L3)
        pkt = frame[:off + 40 + plen]
    r["tclass"] = ((frame[off] & 0x0F) << 4) | (frame[off + 1] >> 4)
    r["hlim"] = frame[off + 7]
    r["src"] = frame[off + 8:off + 24]
    r["dst"] = frame[off + 24:off + 40]
    nh = frame[off + 6]
    pos = off + 40
    count = 0
    pending = [0]
    while nh in EXT_HEADERS:
        if nh == 0 and count != 0:
            raise _Stop(C.REASON_HBH_NOT_FIRST)
        count += 1
        if count > C.MAX_EXT_HEADERS:
            raise _Stop(C.REASON_TOO_MANY_EXT)
        avail = len(pkt) - pos
        if avail < 2 or (nh == 44 and avail < 8):
            raise _Stop(C.REASON_TRUNCATED_EXT)
        if nh == 44:
            r["flags"] |= C.F_FRAGMENT
            r["proto"] = pkt[pos]
            _settle(pending)
            return
        hl = (pkt[pos + 1] + 2) * 4 if nh == 51 else (pkt[pos + 1] + 1) * 8
        if hl > avail:
            raise _Stop(C.REASON_TRUNCATED_EXT)
        if nh in (0, 60):
            _options(pkt[pos + 2:pos + hl], nh == 0, option_type, r, pos + 2 - off, honour, pending)
        nh = pkt[pos]
        pos += hl
    try:
        _upper(pkt, pos, nh, True, r)
    except _Stop as stop:
        if stop.reason == C.REASON_UNKNOWN_NH:      # a note, not a malformation
            _settle(pending)
        raise
    _settle(pending)


def _ones_sum(data: bytes) -> int:
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _ipv4(frame: bytes, off: int, r: dict) -> None:
    r["family"] = 4
    r["l3_off"] = off
    if len(frame) - off < 20:
        raise _Stop(C.REASON_TRUNCATED_L3)
    if frame[off] >> 4 != 4:
        raise _Stop(C.REASON_BAD_IP_HEADER)
    ihl = (frame[off] & 0x0F) * 4
    total = int.from_bytes(frame[off + 2:off + 4], "big")
    if ihl < 20 or total < ihl:
        raise _Stop(C.REASON_BAD_IP_HEADER)
    if off + total > len(frame):
        raise _Stop(C.REASON_TRUNCATED_L3)
    if _ones_sum(frame[off:off + ihl]) != 0xFFFF:     # RFC 1812 5.2.2: a router checks it
        raise _Stop(C.REASON_BAD_IP_HEADER)
    pkt = frame[:off + total]
    r["tclass"] = frame[off + 1]
    r["hlim"] = frame[off + 8]
    r["src"] = bytes(10) + b"\xff\xff" + frame[off + 12:off + 16]
    r["dst"] = bytes(10) + b"\xff\xff" + frame[off + 16:off + 20]
    proto = frame[off + 9]
    if int.from_bytes(frame[off + 6:off + 8], "big") & 0x3FFF:
        r["flags"] |= C.F_FRAGMENT
        r["proto"] = proto
        return
    _upper(pkt, off + ihl, proto, False, r)


def parse_frame(frame: bytes, option_type: int = C.DEFAULT_OPTION_TYPE, honour: bool = True) -> dict:
    """One frame -> {field: value} (the ROW_DTYPE fields but _pad).  ``honour``: act on
    unknown hop-by-hop options (RFC 8200 4.2); False in host mode."""
    frame = bytes(frame)
    r = _empty()
    r["length"] = len(frame)
    try:
        if len(frame) < 14:
            raise _Stop(C.REASON_TRUNCATED_L2)
        etype = int.from_bytes(frame[12:14], "big")
        off = 14
        tags = 0
        while etype in (0x8100, 0x88A8) and tags < 2:
            if len(frame) < off + 4:
                raise _Stop(C.REASON_TRUNCATED_L2)
            if tags == 0:
                r["vlan"] = int.from_bytes(frame[off:off + 2], "big") & 0x0FFF
                r["flags"] |= C.F_VLAN
            etype = int.from_bytes(frame[off + 2:off + 4], "big")
            off += 4
            tags += 1
        if etype == 0x86DD:
            _ipv6(frame, off, option_type, r, honour)
        elif etype == 0x0800:
            _ipv4(frame, off, r)
        else:
            raise _Stop(C.REASON_NOT_IP)
        r["reason"] = C.REASON_OK
    except _Stop as stop:
        r["reason"] = stop.reason
    return r


def parse_batch(buf, offsets, lengths, out, option_type=C.DEFAULT_OPTION_TYPE, counters=None, honour=True):
    """Same contract as engine._parse.parse_batch, built on parse_frame."""
    data = bytes(memoryview(buf).cast("B")) if not isinstance(buf, bytes) else buf
    n = len(offsets)
    if len(lengths) != n:
        raise ValueError("offsets and lengths differ in length")
    if len(out) < n:
        raise ValueError("out is shorter than the batch")
    for i in range(n):
        o, ln = int(offsets[i]), int(lengths[i])
        if o < 0 or o + ln > len(data):
            raise ValueError(f"frame {i} runs past the buffer")
    for i in range(n):
        o, ln = int(offsets[i]), int(lengths[i])
        r = parse_frame(data[o:o + ln], option_type, honour)
        row = np.zeros(1, dtype=C.ROW_DTYPE)[0]
        for f in FIELDS:
            v = r[f]
            row[f] = np.frombuffer(v, dtype=np.uint8) if f in ("src", "dst") else v
        out[i] = row
        if counters is not None:
            counters[r["reason"]] += 1
    return n
