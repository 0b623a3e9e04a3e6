"""The ICMP errors mmr sends as a router: checked field by field and by checksum with dpkt,
an independent decoder."""
import dpkt
import pytest

from engine.icmperr import packet_too_big, time_exceeded
from framegen import MAC_A, MAC_B, a4, a6, eth, ipv4, ipv6, udp

ROUTER_MAC = b"\x02\x00\x00\x00\x00\x01"
R6, R4 = a6("2001:db8:1::1"), a4("192.0.2.1")


def _v6_frame(size=100):
    return eth(ipv6(udp(payload=b"p" * size), 17), dst=MAC_B, src=MAC_A)


def _icmp6_ok(reply):
    e = dpkt.ethernet.Ethernet(reply)
    ip = e.data
    raw = reply[14 + 40:]          # as sent (dpkt re-serialises ICMPv6 bodies differently)
    pseudo = bytes(ip.src) + bytes(ip.dst) + len(raw).to_bytes(4, "big") + b"\0\0\0\x3a"
    data = pseudo + raw
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return e, ip, raw, s == 0xFFFF


def test_time_exceeded_v6():
    fr = _v6_frame()
    e, ip, raw, ok = _icmp6_ok(time_exceeded(fr, 14, 6, ROUTER_MAC, R6, R4))
    assert ok and e.dst == MAC_A and e.src == ROUTER_MAC
    assert ip.src == R6 and ip.dst == a6("2001:db8:1::10") and ip.nxt == 58 and ip.hlim == 255
    assert (raw[0], raw[1]) == (3, 0) and raw[8:] == fr[14:]


@pytest.mark.parametrize("size", [100, 2000])
def test_packet_too_big_v6_carries_mtu_and_fits_1280(size):
    fr = _v6_frame(size)
    reply = packet_too_big(fr, 14, 6, ROUTER_MAC, 1500, R6, R4)
    e, ip, b, ok = _icmp6_ok(reply)
    assert ok and (b[0], b[1]) == (2, 0) and int.from_bytes(b[4:8], "big") == 1500
    assert len(reply) - 14 <= 1280 and b[8:] == fr[14:14 + len(b) - 8]


def test_fragmentation_needed_v4():
    fr = eth(ipv4(udp(payload=b"q" * 50), 17), ethertype=0x0800, dst=MAC_B, src=MAC_A)
    e = dpkt.ethernet.Ethernet(packet_too_big(fr, 14, 4, ROUTER_MAC, 1400, R6, R4))
    ip = e.data
    icmp = bytes(ip.data)
    assert ip.src == R4 and ip.p == 1 and icmp[0] == 3 and icmp[1] == 4
    assert int.from_bytes(icmp[6:8], "big") == 1400
    assert dpkt.in_cksum(icmp) == 0 and dpkt.in_cksum(bytes(ip)[:20]) == 0
    assert icmp[8:8 + 28] == fr[14:14 + 28]


def test_no_address_of_that_family_means_no_reply():
    assert time_exceeded(_v6_frame(), 14, 6, ROUTER_MAC, None, R4) is None
