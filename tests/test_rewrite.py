"""Rewrite: compiled engine._rewrite against the per-frame reference (engine/ref/rewrite.py):
MACs, VLAN tags, hop limit / TTL with the IPv4 header checksum, and unfinished upper-layer
checksums (a sender's TX offload) finished; the reference recomputes every checksum from
scratch, the compiled stage completes them."""
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import framegen as g
from engine import _parse, _rewrite
from engine import constants as C
from engine.frames import pack_frames
from engine.ref.rewrite import ipv4_checksum, ones_sum, rewrite_frame
from test_forward import offload_frame, vnet_array

MACS_SRC = np.array([[2, 0, 0, 0, 0, k] for k in range(1, 4)], np.uint8)
MACS_DST = np.array([[2, 0, 0, 0, 1, k] for k in range(1, 4)], np.uint8)


def test_compiled_rewrite_is_loaded():
    assert _rewrite.__file__.endswith(".so")


def run(frames, vnets, src, dst, hop=True, gso_too=False):
    buf, off, ln = pack_frames(frames)
    buf = np.array(buf, np.uint8)            # writable: rewrite works in place
    n = len(frames)
    rows = np.zeros(n, C.ROW_DTYPE)
    _parse.parse_batch(buf, off, ln, rows, 0x3E, np.zeros(C.N_REASONS, np.uint64))
    va = vnet_array(vnets)
    before = va.copy()
    verdict = np.zeros(n, np.uint8)
    off2, ln2 = off.copy(), ln.copy()
    hops = _rewrite.rewrite(buf, off2, ln2, rows, src, MACS_SRC, dst, MACS_DST, verdict, n, vnet=va, hop=hop,
                            gso_too=gso_too)
    return buf, off2, ln2, rows, va, before, verdict, hops


@settings(max_examples=300, deadline=None)
@given(st.lists(g.valid_frame(), min_size=1, max_size=20), st.data())
def test_compiled_matches_reference(frames, data):
    n = len(frames)
    buf, off, ln = pack_frames(frames)
    rows = np.zeros(n, C.ROW_DTYPE)
    _parse.parse_batch(np.array(buf), off, ln, rows, 0x3E, np.zeros(C.N_REASONS, np.uint64))
    ok = rows["reason"] == 0
    src = np.array([data.draw(st.integers(0, 2)) if ok[i] else -1 for i in range(n)], np.int16)
    dst = np.array([data.draw(st.integers(0, 2)) for _ in range(n)], np.int16)
    buf, off2, ln2, rows, va, _, verdict, hops = run(frames, [{}] * n, src, dst)
    assert hops == int((verdict == 1).sum())
    for i in range(n):
        if src[i] < 0:
            assert verdict[i] == 0 and bytes(buf[off2[i]:off2[i] + ln2[i]]) == frames[i]
            continue
        want, v, _ = rewrite_frame(frames[i], rows[i], bytes(MACS_SRC[src[i]]), bytes(MACS_DST[dst[i]]))
        assert verdict[i] == v
        got = bytes(buf[off2[i]:off2[i] + ln2[i]])
        if v == 0:
            assert got == want
            if rows[i]["family"] == 4:       # the incremental checksum equals a full recount
                ihl = (got[14] & 0x0F) * 4
                assert int.from_bytes(got[24:26], "big") == ipv4_checksum(got[14:14 + ihl])
        else:
            assert got == frames[i]          # left alone for the time exceeded answer


@settings(max_examples=400, deadline=None)
@given(st.lists(offload_frame(), min_size=1, max_size=16), st.booleans(), st.booleans())
def test_unfinished_checksums_match_reference(batch, hop, gso_too):
    """Frames with NEEDS_CSUM (IPv4/IPv6; TCP, UDP, ICMPv6; VLAN-tagged or not), super-frames
    and bad requests: the completed checksum equals the reference's full computation, the
    virtio-net header follows the frame (shifted with a removed tag, DATA_VALID once done)."""
    frames, vnets = [f for f, _ in batch], [v for _, v in batch]
    n = len(frames)
    src = np.zeros(n, np.int16)
    buf, off2, ln2, rows, va, before, verdict, _ = run(frames, vnets, src, src.copy(), hop=hop, gso_too=gso_too)
    for i in range(n):
        want, v, vafter = rewrite_frame(frames[i], rows[i], bytes(MACS_SRC[0]), bytes(MACS_DST[0]), before[i],
                                        hop=hop, gso_too=gso_too)
        assert verdict[i] == v, i
        if v == 0:
            assert bytes(buf[off2[i]:off2[i] + ln2[i]]) == want, i
            assert {k: int(va[i][k]) for k in vafter} == vafter, i


def test_finished_checksum_verifies_at_the_receiver():
    """IPv4 TCP and IPv6 UDP with a partial checksum: after mmr the receiver's sum over the
    pseudo-header and the segment is 0xFFFF, and the frame's Ethernet padding is not summed."""
    from test_forward import partial

    v4 = g.eth(g.ipv4(g.tcp(1, 2, b"abc"), 6, src="192.0.2.10", dst="198.51.100.1"), 0x0800)
    f4, vn4 = partial(v4, 14, 34, 6, 4)
    f4 += bytes(6)                                # Ethernet padding after the IP packet
    v6 = g.eth(g.ipv6(g.udp(1, 2, b"odd!x"), 17))
    f6, vn6 = partial(v6, 14, 54, 17, 6)
    src = np.zeros(2, np.int16)
    buf, off2, ln2, rows, va, _, verdict, _ = run([f4, f6], [vn4, vn6], src, src.copy())
    assert verdict.tolist() == [0, 0]
    a = bytes(buf[off2[0]:off2[0] + ln2[0]])
    assert ones_sum(a[26:34] + struct.pack("!xBH", 6, 23) + a[34:57]) == 0xFFFF
    b = bytes(buf[off2[1]:off2[1] + ln2[1]])
    assert ones_sum(b[22:54] + struct.pack("!I3xB", len(b) - 54, 17) + b[54:]) == 0xFFFF
    assert va["flags"].tolist() == [2, 2]


def test_internet_checksum_matches_rfc1071():
    from engine.inet import checksum

    for n in range(1, 70):
        data = bytes((7 * k + n) & 0xFF for k in range(n))
        assert _rewrite.internet_checksum(np.frombuffer(data, np.uint8)) == checksum(data)
