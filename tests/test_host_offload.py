"""Host mode with the TUN's offloads (issue 14 item 2): vi0 carries a virtio-net header, the
stack hands it 64 KiB super-frames, mmr sends them whole on the interface's packet socket
for the kernel to segment, and GRO/TSO super-frames from the interfaces reach the stack
whole.  The header translation (TUN: offsets from the IP header; packet socket: from the
frame start) against its pure-Python reference (engine/ref/vnet.py); live transfers in the
host testbed (default offloads), hash-checked, in both directions and both families, and
failing if the super-frame path was not taken (the engine's super_frames counter); UDP
segmentation offload; the plain TUN (MMR_TUN_OFFLOADS=0, as a kernel without the header)."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.constants import VNET_DTYPE
from engine.ref import vnet as ref
from engine.testbed import HOST, HOST_VI_ADDR, HOST_VI_ADDR4, PEER_ADDR, PEER_ADDR4
from netlab import ROOT, in_ns, make_testbed, running_mmr, start_peer

XFER = "tests/tcpxfer.py"


def test_compiled_tun_is_loaded():
    from engine import _tun

    assert _tun.__file__.endswith(".so")
    assert _tun.Tun.__module__ == "engine._tun" and callable(_tun.vnet_tun_to_packet)


# ------------------------------------------------------------------ the translation
u16 = st.integers(0, 0xFFFF)
header = st.fixed_dictionaries({
    "flags": st.sampled_from([0, 1, 2, 3]) | st.integers(0, 255),
    "gso_type": st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84]) | st.integers(0, 255),
    "hdr_len": st.sampled_from([0, 1, 13, 14, 15, 54, 74, 86, 0xFFF1, 0xFFFF]) | u16,
    "gso_size": u16,
    "csum_start": st.sampled_from([0, 13, 14, 20, 34, 40, 54, 0xFFF1, 0xFFFF]) | u16,
    "csum_offset": st.sampled_from([6, 16]) | u16,
})


def as_array(hs):
    a = np.zeros(len(hs), VNET_DTYPE)
    for i, h in enumerate(hs):
        for f in ref.FIELDS:
            a[i][f] = h[f]
    return a


def as_dicts(a):
    return [{f: int(x[f]) for f in ref.FIELDS} for x in a]


@settings(max_examples=500, deadline=None)
@given(st.lists(header, min_size=1, max_size=16), st.sampled_from([14, 18, 22, 0]) | st.integers(0, 300))
def test_translation_matches_reference(hs, l2):
    from engine import _tun

    a = as_array(hs)
    got, ok = _tun.vnet_tun_to_packet(a, l2)
    back, ok2 = _tun.vnet_packet_to_tun(a, l2)
    for h, g, k, b, k2 in zip(hs, as_dicts(got), ok, as_dicts(back), ok2):
        want, wok = ref.from_tun(h, l2)
        assert bool(k) == wok, (h, l2)
        if wok:
            assert g == want, (h, l2)
        want, wok = ref.to_tun(h, l2)
        assert bool(k2) == wok, (h, l2)
        if wok:
            assert b == want, (h, l2)
    assert as_dicts(a) == hs                       # the input is not touched


@settings(max_examples=300, deadline=None)
@given(st.lists(header, min_size=1, max_size=8), st.sampled_from([14, 18, 22]))
def test_translation_round_trip(hs, l2):
    """What the TUN hands over comes back to it unchanged (a super-frame read from vi0 and
    one written to it use the same header, 14 bytes of Ethernet apart)."""
    from engine import _tun

    a = as_array(hs)
    there, ok = _tun.vnet_tun_to_packet(a, l2)
    back, ok2 = _tun.vnet_packet_to_tun(there, l2)
    for h, k, k2, b in zip(hs, ok, ok2, as_dicts(back)):
        if k:
            assert k2 and b == h


def test_translation_examples():
    """A TCP/IPv6 super-frame as the stack hands it to vi0, and as a packet socket gives it."""
    from engine import _tun

    tun = as_array([{"flags": 1, "gso_type": 4, "hdr_len": 74, "gso_size": 1428, "csum_start": 40,
                     "csum_offset": 16}])
    pkt, ok = _tun.vnet_tun_to_packet(tun)
    assert ok[0] and as_dicts(pkt)[0] == {"flags": 1, "gso_type": 4, "hdr_len": 88, "gso_size": 1428,
                                          "csum_start": 54, "csum_offset": 16}
    back, ok = _tun.vnet_packet_to_tun(pkt)
    assert ok[0] and as_dicts(back) == as_dicts(tun)
    bad = as_array([{"flags": 1, "gso_type": 0, "hdr_len": 0, "gso_size": 0, "csum_start": 10,
                     "csum_offset": 6}])
    assert not _tun.vnet_packet_to_tun(bad)[1][0]        # a checksum that starts in the MAC header


# ------------------------------------------------------------------ live
@pytest.fixture(scope="module")
def bed():
    with make_testbed("ho", HOST) as tb:
        yield tb


def counters(tb):
    st_ = subprocess.run(in_ns(tb, "host", sys.executable, "-m", "engine", "status", "--json"),
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    return json.loads(st_.stdout)["counters"]


def transfer(tb, client, server, dst, port, nbytes, bind, src=None, listen=None):
    """A hash-checked TCP transfer client -> server (dst, bound to bind), the server on port
    listen when the path between maps port to another (a forward to another port)."""
    sink = subprocess.Popen(in_ns(tb, server, sys.executable, XFER, "sink", listen or port, bind),
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert sink.stdout.readline().strip() == "ready"
        r = subprocess.run(in_ns(tb, client, sys.executable, XFER, "send", dst, port, nbytes, *([src] if src else [])),
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
        sink.wait(timeout=30)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["answer"] == res["expect"]


def delta(after, before, *names):
    return {n: after[n] - before[n] for n in names}


NAMES = ("super_frames", "rx_inside", "tx_uplink", "rx_uplink", "tx_inside", "tx_errors", "bad_offload")


@pytest.mark.privileged
def test_super_frames_through_vi0_both_directions(bed):
    """20 MB each way, IPv6 and IPv4: every byte arrives (SHA-256), the data went as
    super-frames (far fewer packets than MTU-sized segments), nothing refused."""
    n = 20_000_000
    with running_mmr(bed, "host", "host", "vi0 up") as (p, lines):
        ready = lines[-1]
        assert "offloads csum,tso4,tso6" in ready, ready
        cases = [("host", "peer", PEER_ADDR, "::", None), ("host", "peer", PEER_ADDR4, "0.0.0.0", None),
                 ("peer", "host", HOST_VI_ADDR, HOST_VI_ADDR, PEER_ADDR),
                 ("peer", "host", HOST_VI_ADDR4, HOST_VI_ADDR4, PEER_ADDR4)]
        for k, (client, server, dst, bind, src) in enumerate(cases):
            before = counters(bed)
            transfer(bed, client, server, dst, 5500 + k, n, bind, src)
            d = delta(counters(bed), before, *NAMES)
            print(client, "->", server, dst, d)
            assert d["tx_errors"] == 0 and d["bad_offload"] == 0, d
            if client == "host":        # out of vi0: read as super-frames, sent whole
                assert d["super_frames"] >= n // 65536 // 4, d
                assert d["rx_inside"] < n // 1400 // 4, d
            else:                       # into vi0: written as super-frames
                assert d["super_frames"] >= n // 65536 // 4, d
                assert d["tx_inside"] < n // 1400 // 4, d


def udp_segmented(tb, port, rounds, segs, size):
    """UDP_SEGMENT sends host -> peer (from the VI's address); the peer's count."""
    sink = start_peer(tb, "peer", "udp-count", port, 10)
    r = subprocess.run(in_ns(tb, "host", sys.executable, XFER, "usend", PEER_ADDR, port, size, segs, rounds),
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    time.sleep(0.3)
    sink.terminate()
    return json.loads(sink.communicate(timeout=10)[0].strip().splitlines()[-1])


@pytest.mark.privileged
def test_udp_segmentation_offload_through_vi0(bed):
    """UDP_SEGMENT sends from the VI: with USO taken, vi0 hands over one super-frame per send
    and the peer receives every segment as its own datagram; without it the stack segments
    before vi0.  Either way every datagram arrives whole."""
    rounds, segs, size = 40, 8, 1000
    with running_mmr(bed, "host", "host", "vi0 up") as (p, lines):
        uso = "uso4,uso6" in lines[-1]
        before = counters(bed)
        got = udp_segmented(bed, 9911, rounds, segs, size)
        d = delta(counters(bed), before, *NAMES)
    assert (got["datagrams"], got["bytes"]) == (rounds * segs, rounds * segs * size), got
    if uso:
        assert d["super_frames"] >= rounds // 2 and d["rx_inside"] < rounds * segs // 2, d


@pytest.mark.privileged
def test_plain_tun_still_works(bed, monkeypatch):
    """A TUN without the virtio-net header (MMR_TUN_OFFLOADS=0, as on a kernel that refuses
    it): said once at start, and TCP still carries every byte both ways, as MTU-sized
    packets out of vi0."""
    monkeypatch.setenv("MMR_TUN_OFFLOADS", "0")
    n = 5_000_000
    with running_mmr(bed, "host", "host", "vi0 up") as (p, lines):
        text = "".join(lines)
        assert "offloads none" in lines[-1] and text.count("without offloads") == 1, text
        before = counters(bed)
        transfer(bed, "host", "peer", PEER_ADDR, 5510, n, "::")
        d = delta(counters(bed), before, *NAMES)
        assert d["super_frames"] == 0 and d["rx_inside"] >= n // 1500, d
        transfer(bed, "peer", "host", HOST_VI_ADDR, 5511, n, HOST_VI_ADDR, PEER_ADDR)


@pytest.mark.privileged
def test_super_frames_leave_through_interfaces_without_offloads(bed):
    """Interfaces with segmentation and checksum offload off: mmr still reads super-frames
    from vi0 and hands them over whole; the kernel segments and checksums them for the
    device (software GSO), nothing is dropped and every byte arrives."""
    devs = ("i1", "i2")
    for dev in devs:
        bed.run("host", "ethtool", "-K", dev, "tso", "off", "gso", "off", "tx", "off")
    try:
        with running_mmr(bed, "host", "host", "vi0 up"):
            before = counters(bed)
            transfer(bed, "host", "peer", PEER_ADDR, 5520, 10_000_000, "::")
            transfer(bed, "host", "peer", PEER_ADDR4, 5521, 10_000_000, "0.0.0.0")
            got = udp_segmented(bed, 9912, 20, 8, 1000)
            d = delta(counters(bed), before, *NAMES)
        assert d["super_frames"] >= 2 * 10_000_000 // 65536 // 4, d
        assert d["tx_errors"] == 0 and d["bad_offload"] == 0, d
        assert (got["datagrams"], got["bytes"]) == (20 * 8, 20 * 8 * 1000), got
    finally:
        for dev in devs:
            bed.run("host", "ethtool", "-K", dev, "tso", "on", "gso", "on", "tx", "on")
