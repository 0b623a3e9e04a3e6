"""Reference translation of virtio-net headers between the TUN device's convention and the
packet socket's (pyx/tun.pyx: vnet_from_tun / vnet_to_tun), one header at a time as dicts.

A TUN device (IFF_TUN) counts csum_start and hdr_len from the IP header; a packet socket
(PACKET_VNET_HDR) from the start of the frame, which has ``l2`` bytes of link header before
the IP header.  Everything else (flags, gso_type, gso_size, csum_offset) means the same on
both sides.  Written from the rules, not from the compiled code: offsets are plain integers
checked against the 16-bit field."""
from __future__ import annotations

NEEDS_CSUM = 1
FIELDS = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")


def from_tun(h: dict, l2: int) -> tuple[dict, bool]:
    """A header read from the TUN, for the frame with l2 bytes before its IP header.  Not ok
    when csum_start (a checksum to finish) or a non-zero hdr_len moved past 65535."""
    out = dict(h)
    if h["flags"] & NEEDS_CSUM:
        out["csum_start"] = h["csum_start"] + l2
    if h["hdr_len"] != 0:
        out["hdr_len"] = h["hdr_len"] + l2
    ok = out["csum_start"] <= 0xFFFF and out["hdr_len"] <= 0xFFFF
    return out, ok


def to_tun(h: dict, l2: int) -> tuple[dict, bool]:
    """A packet socket's header for a frame whose IP header is at l2, as the TUN wants it.
    Not ok when a checksum to finish starts inside the link header; a hdr_len that covers no
    more than the link header becomes 0 (no hint)."""
    out = dict(h)
    if h["flags"] & NEEDS_CSUM:
        if h["csum_start"] < l2:
            return out, False
        out["csum_start"] = h["csum_start"] - l2
    out["hdr_len"] = h["hdr_len"] - l2 if h["hdr_len"] > l2 else 0
    return out, True
