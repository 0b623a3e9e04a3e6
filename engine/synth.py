"""Synthetic traces: a deterministic, realistic mix of the draft's four traffic classes.

    flows (class, family, tag, DSCP, sizes, start, pace) --heap by time--> frames --dpkt--> pcap

* VoIP: small constant packets (172-byte RTP payload every 20 ms), UDP.
* video: large variable packets (800-1400 bytes), bursty frames, UDP; some datagrams are
  larger than the MTU and go out as fragments (IPv6 fragment header / IPv4 MF+offset).
* data: TCP-like segments, heavy-tailed flow sizes (Pareto), a few elephants.
* control: ICMPv6 echo, neighbour and router solicitations; ICMP echo for IPv4.

A share of the IPv6 flows carry the hop-by-hop traffic control option on every packet
(service = the flow's class, a few reserved values; preferences 0..3 and a few undefined
ones), some after Pad1/PadN; untagged flows carry the DSCP typical of their class.  Sources
are on the default LAN prefixes (2001:db8:1::/64, 192.0.2.0/24).  Every checksum is valid:
IPv4 header, ICMP, and UDP/TCP/ICMPv6 over their pseudo-header (computed on the whole datagram
before it is fragmented).  The same arguments give the same bytes.
"""
from __future__ import annotations

import contextlib
import heapq
import math
import random
import struct
import sys

from engine import constants as C
from engine.errors import UserError
from engine.inet import checksum

ROUTER_MAC = bytes.fromhex("020000000001")
CLASS_WEIGHTS = [("data", 0.55), ("voip", 0.15), ("video", 0.10), ("control", 0.20)]
PREFS = [0, 1, 2, 3, 7]
PREF_WEIGHTS = [0.15, 0.25, 0.3, 0.25, 0.05]
DSCP = {"voip": 46, "video": 34, "control": 48, "data": 0}
MTU_PAYLOAD = 1448  # fragment payload (multiple of 8), fits a 1500-byte MTU with headers


class Flow:
    __slots__ = ("fid", "cls", "v6", "tagged", "service", "pref", "hbh", "src", "dst", "mac",
                 "sport", "dport", "proto", "left", "gap", "dscp", "seq", "ident", "icmp")


def _hbh(service: int, pref: int, layout: int, option_type: int) -> bytes:
    """HBH option area (after next-header/length), layouts keep padding runs <= 7 bytes."""
    opt = struct.pack("!BBBH", option_type, 3, service, pref)
    if layout == 0:
        body = opt + b"\x00"                           # option, Pad1
    elif layout == 1:
        body = b"\x00" + opt                           # Pad1, option
    elif layout == 2:
        body = b"\x01\x01\x00" + opt + b"\x01\x04" + bytes(4)   # PadN(3), option, PadN(6)
    else:
        body = bytes([0x1E, 0]) + opt + b"\x01\x05" + bytes(5)  # other option, option, PadN(7)
    return body


def _make_flows(rng: random.Random, flows: int, ipv4_share: float, tagged_share: float,
                option_type: int, duration: float):
    classes = [c for c, _ in CLASS_WEIGHTS]
    weights = [w for _, w in CLASS_WEIGHTS]
    out = []
    for fid in range(flows):
        f = Flow()
        f.fid = fid
        f.cls = rng.choices(classes, weights)[0]
        f.v6 = rng.random() >= ipv4_share
        f.tagged = f.v6 and rng.random() < tagged_share
        f.service = C.SERVICE_CODE[f.cls]
        if f.tagged and rng.random() < 0.02:
            f.service = rng.randrange(4, 256)       # reserved service types
        f.pref = rng.choices(PREFS, PREF_WEIGHTS)[0]
        f.hbh = _hbh(f.service, f.pref, rng.randrange(4), option_type) if f.tagged else b""
        host = rng.randrange(1, 200)
        f.mac = bytes([2, 0, 0, 1, host >> 8, host & 0xFF])
        if f.v6:
            f.src = bytes.fromhex("20010db8000100000000000000000000")[:14] + struct.pack("!H", host)
            f.dst = struct.pack("!HHHHHHHH", 0x2001, 0xDB8, 0xF000 | rng.randrange(0x1000),
                                rng.randrange(65536), 0, 0, 0, rng.randrange(1, 65536))
        else:
            f.src = bytes([192, 0, 2, host])
            net = rng.choice((bytes([198, 51, 100]), bytes([203, 0, 113])))
            f.dst = net + bytes([rng.randrange(1, 255)])
        f.sport = rng.randrange(1024, 65536)
        f.seq = 0
        f.ident = rng.randrange(65536)
        f.dscp = 0 if f.tagged else DSCP[f.cls]
        if f.cls == "data" and not f.tagged and rng.random() < 0.3:
            f.dscp = 10                                  # AF11
        if f.cls == "control" and not f.tagged and rng.random() < 0.5:
            f.dscp = 0
        if f.cls == "voip":
            f.proto, f.dport, f.gap = 17, rng.choice((5004, 16384 + rng.randrange(1000))), 0.020
            f.left = max(5, int(rng.lognormvariate(math.log(150), 0.6)))
        elif f.cls == "video":
            f.proto, f.dport, f.gap = 17, rng.choice((5006, 1935, 554)), 0.008
            f.left = max(20, int(rng.lognormvariate(math.log(400), 0.7)))
        elif f.cls == "data":
            f.proto, f.dport, f.gap = 6, rng.choice((443, 80, 22, 8080, 993)), 0.002
            f.left = max(2, int(rng.paretovariate(1.1) * 8))
            if rng.random() < 0.01:
                f.left *= 50                              # elephants
        else:
            f.proto = 58 if f.v6 else 1
            f.dport, f.gap = 0, 1.0
            f.icmp = rng.choices((128, 135, 133), (0.8, 0.15, 0.05))[0] if f.v6 else 8
            f.left = rng.randrange(1, 12) if f.icmp == 128 or not f.v6 else 1
        out.append((rng.uniform(0, duration), f))
    return out


def _l4(f: Flow, rng: random.Random) -> tuple[bytes, int]:
    """(upper-layer bytes, size) of the next packet of a flow; fragments decided by caller."""
    f.seq += 1
    if f.cls == "voip":
        payload = 172
    elif f.cls == "video":
        payload = rng.randint(800, 1400) if rng.random() > 0.04 else rng.randint(2000, 4000)
    elif f.cls == "data":
        payload = 1400 if rng.random() < 0.7 else rng.randint(0, 600)
    else:
        payload = 48
    if f.proto == 17:
        return struct.pack("!HHHH", f.sport, f.dport, 8 + payload, 0) + bytes(payload), payload
    if f.proto == 6:
        hdr = struct.pack("!HHIIBBHHH", f.sport, f.dport, f.seq * 1400, 1, 5 << 4, 0x18, 65535, 0, 0)
        return hdr + bytes(payload), payload
    if f.proto == 58:
        if f.icmp == 128:
            return struct.pack("!BBHHH", 128, 0, 0, f.ident, f.seq) + bytes(payload), payload
        if f.icmp == 135:
            return struct.pack("!BBHI", 135, 0, 0, 0) + f.dst, 20
        return struct.pack("!BBHI", 133, 0, 0, 0), 8
    body = struct.pack("!BBHHH", 8, 0, 0, f.ident, f.seq) + bytes(payload)
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:], payload


CSUM_AT = {17: 6, 6: 16, 58: 2}     # where the checksum sits in the UDP, TCP, ICMPv6 header


def _with_checksum(l4: bytes, proto: int, src: bytes, dst: bytes) -> bytes:
    """l4 (its checksum field zero) with its checksum over the pseudo-header (RFC 768, 793,
    8200 section 8.1): sum(16-bit words) mod 0xFFFF is int.from_bytes(...) mod 0xFFFF, as
    2**16 = 1 (mod 0xFFFF), and the pseudo-header is never all zero, so the folded one's
    complement sum is that remainder, or 0xFFFF for 0."""
    at = CSUM_AT.get(proto)
    if at is None:
        return l4                                  # ICMP (IPv4): summed in _l4, no pseudo-header
    if len(src) == 16:
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), proto)
    else:
        pseudo = src + dst + struct.pack("!xBH", proto, len(l4))
    data = pseudo + l4 + (b"\0" if len(l4) % 2 else b"")
    total = int.from_bytes(data, "big") % 0xFFFF or 0xFFFF
    csum = 0xFFFF - total
    if csum == 0 and proto == 17:
        csum = 0xFFFF                              # UDP: 0 would mean "no checksum"
    return l4[:at] + struct.pack("!H", csum) + l4[at + 2:]


def _frames(f: Flow, l4: bytes, frag_ident: int) -> list[bytes]:
    """Ethernet frames carrying l4 for flow f, fragmented when it does not fit."""
    dst_mac = ROUTER_MAC
    if f.v6:
        eth = dst_mac + f.mac + b"\x86\xdd"
        vtf = struct.pack("!I", (6 << 28) | (f.dscp << 22))
        if f.cls == "control" and f.icmp == 135:
            dst = bytes.fromhex("ff0200000000000000000001ff") + f.dst[13:]
            dmac = b"\x33\x33\xff" + f.dst[13:]
            eth = dmac + f.mac + b"\x86\xdd"
        else:
            dst = f.dst
        l4 = _with_checksum(l4, f.proto, f.src, dst)
        hbh = f.hbh
        first_nh = 0 if hbh else f.proto
        if len(l4) <= MTU_PAYLOAD:
            ext = bytes([f.proto, (2 + len(hbh)) // 8 - 1]) + hbh if hbh else b""
            body = ext + l4
            hl = 255 if f.cls == "control" and f.icmp in (133, 135) else 64
            return [eth + vtf + struct.pack("!HBB", len(body), first_nh, hl) + f.src + dst + body]
        out = []
        off = 0
        while off < len(l4):
            chunk = l4[off:off + MTU_PAYLOAD]
            more = off + len(chunk) < len(l4)
            fh = struct.pack("!BBHI", f.proto, 0, (off // 8) << 3 | int(more), frag_ident)
            ext = (bytes([44, (2 + len(hbh)) // 8 - 1]) + hbh if hbh else b"") + fh
            body = ext + chunk
            out.append(eth + vtf + struct.pack("!HBB", len(body), 0 if hbh else 44, 64)
                       + f.src + dst + body)
            off += len(chunk)
        return out
    eth = dst_mac + f.mac + b"\x08\x00"
    l4 = _with_checksum(l4, f.proto, f.src, f.dst)
    out = []
    off = 0
    while True:
        chunk = l4[off:off + MTU_PAYLOAD]
        more = off + len(chunk) < len(l4)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, f.dscp << 2, 20 + len(chunk), frag_ident & 0xFFFF,
                          (0x2000 if more else 0) | (off // 8), 64, f.proto, 0, f.src, f.dst)
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        out.append(eth + hdr + chunk)
        off += len(chunk)
        if not more:
            return out


def generate(path, packets=100_000, flows=2_000, seed=1, ipv4_share=0.2, tagged_share=0.5,
             option_type=C.DEFAULT_OPTION_TYPE, start_time=1.7e9) -> dict:
    """Write the trace to path ("-": standard output, not a terminal); returns a summary of
    what was written."""
    import dpkt

    if packets < 1:
        raise UserError(f"--packets {packets}: must be at least 1")
    if flows < 1:
        raise UserError(f"--flows {flows}: must be at least 1")
    for name, v in (("--ipv4-share", ipv4_share), ("--tagged-share", tagged_share)):
        if not 0.0 <= v <= 1.0:
            raise UserError(f"{name} {v}: must be between 0 and 1")
    if not 0x20 <= option_type <= 0x3F:
        raise UserError(f"--option-type 0x{option_type:X}: must be of the form 001xxxxx (0x20..0x3F)")
    rng = random.Random(seed)
    duration = max(1.0, packets / 20_000)
    heap = [(t, f.fid, f) for t, f in _make_flows(rng, flows, ipv4_share, tagged_share,
                                                   option_type, duration)]
    heapq.heapify(heap)
    summary = {"packets": 0, "flows": 0, "classes": {n: 0 for n in C.SERVICE_NAMES},
               "tagged": 0, "untagged": 0, "ipv4": 0, "fragments": 0}
    seen = set()
    last_t = 0.0
    frag_ident = rng.randrange(1 << 31)
    if path == "-":
        if sys.stdout.isatty():
            raise UserError("-: standard output is a terminal, and a capture is binary; "
                            "redirect it to a file or a pipe (mmr synth - > x.pcap), or give a path")
        fh = sys.stdout.buffer
        ctx = contextlib.nullcontext()          # flushed at the end, never closed
    else:
        try:
            fh = ctx = open(path, "wb")
        except OSError as exc:
            raise UserError(f"{path}: cannot write it ({exc.strerror}); "
                            "give a writable path, or - for standard output") from None
    with ctx:
        w = dpkt.pcap.Writer(fh, snaplen=65535)
        while heap and summary["packets"] < packets:
            t, fid, f = heapq.heappop(heap)
            l4, _ = _l4(f, rng)
            frag_ident += 1
            frames = _frames(f, l4, frag_ident)
            for fr in frames[: packets - summary["packets"]]:
                t = max(t, last_t)                 # timestamps never go backwards
                w.writepkt(fr, ts=start_time + t)
                last_t = t
                t += 1e-6
                summary["packets"] += 1
                summary["classes"][f.cls] += 1
                summary["tagged" if f.tagged else "untagged"] += 1
                summary["ipv4"] += 0 if f.v6 else 1
                summary["fragments"] += 1 if len(frames) > 1 else 0
            if fid not in seen:
                seen.add(fid)
            f.left -= 1
            if f.left > 0:
                gap = f.gap * (rng.expovariate(1.0) if f.cls in ("video", "data") else 1.0)
                heapq.heappush(heap, (t + gap, fid, f))
            if not heap and summary["packets"] < packets:
                # every flow ended early: start them again later (long traces, few flows)
                for t2, f2 in _make_flows(rng, flows, ipv4_share, tagged_share, option_type, duration):
                    f2.fid += len(seen)
                    heapq.heappush(heap, (t + t2, f2.fid, f2))
        fh.flush()
    summary["flows"] = len(seen)
    return summary
