"""NAPT44 (pyx/nat.pyx) against its reference (engine/ref/nat.py) and against checksums
computed from scratch: a packet whose checksums were right before translation is right after
it, in both directions, ICMP errors and fragments included."""
import ipaddress
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import _nat
from engine.inet import ones_sum as _sum
from engine.ref.nat import Nat44Ref

LAN1, LAN2 = ipaddress.ip_address("192.168.1.10").packed, ipaddress.ip_address("192.168.1.11").packed
EXT0, EXT1 = ipaddress.ip_address("198.18.1.2").packed, ipaddress.ip_address("198.18.2.2").packed
REM, REM2 = ipaddress.ip_address("198.51.100.1").packed, ipaddress.ip_address("198.51.100.2").packed
ROUTER = ipaddress.ip_address("198.18.1.1").packed


def test_the_compiled_module_runs():
    assert _nat.__file__.endswith(".so")
    assert type(_nat.Nat44(1)).__module__ == "engine._nat"


def csum(data: bytes) -> int:
    return ~_sum(data) & 0xFFFF


def ipv4(src, dst, proto, payload, ident=1, frag=0, ttl=64, tot=None):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot or 20 + len(payload), ident, frag, ttl, proto, 0, src, dst)
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload


def l4sum(src, dst, proto, seg: bytes) -> int:
    return csum(src + dst + struct.pack("!xBH", proto, len(seg)) + seg)


def tcp(src, dst, sport, dport, flags=0x02, data=b""):
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + data
    c = l4sum(src, dst, 6, seg)
    return ipv4(src, dst, 6, seg[:16] + struct.pack("!H", c) + seg[18:])


def udp(src, dst, sport, dport, data=b"hello", zero=False):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = 0 if zero else (l4sum(src, dst, 17, seg) or 0xFFFF)
    return ipv4(src, dst, 17, seg[:6] + struct.pack("!H", c) + seg[8:])


def icmp(src, dst, typ, code, rest: bytes, body: bytes):
    m = struct.pack("!BBH", typ, code, 0) + rest + body
    return ipv4(src, dst, 1, m[:2] + struct.pack("!H", csum(m)) + m[4:])


def echo(src, dst, ident, typ=8):
    return icmp(src, dst, typ, 0, struct.pack("!HH", ident, 1), b"ping-data")


def error(src, dst, quoted: bytes, typ=11, code=0, keep=None):
    return icmp(src, dst, typ, code, bytes(4), quoted[:keep] if keep else quoted)


def valid(pkt: bytes, full_l4=True) -> bool:
    """The IPv4 header checksum, and the upper layer's when the packet is whole."""
    if _sum(pkt[:20]) != 0xFFFF:
        return False
    proto, src, dst, seg = pkt[9], pkt[12:16], pkt[16:20], pkt[20:]
    if not full_l4:
        return True
    if proto == 1:
        return _sum(seg) == 0xFFFF
    if proto == 17 and seg[6:8] == b"\0\0":
        return True
    return _sum(src + dst + struct.pack("!xBH", proto, len(seg)) + seg) == 0xFFFF


def pair(n_up=2, capacity=1024, seed=7, **kw):
    c, r = _nat.Nat44(n_up, capacity, seed=seed, **kw), Nat44Ref(n_up, capacity, seed=seed, **kw)
    for nat in (c, r):
        nat.set_address(0, EXT0)
        nat.set_address(1, EXT1)
    return c, r


def both(c, r, direction, pkt, u, now, pending=False):
    """Translate with both; they must agree on the code and every byte."""
    a, b = bytearray(pkt), bytearray(pkt)
    ca = getattr(c, f"{direction}_packet")(a, u, now, pending)
    cb = getattr(r, f"{direction}_packet")(b, u, now, pending)
    assert (ca, bytes(a)) == (cb, bytes(b)), (direction, pkt.hex())
    return ca, bytes(a)


def test_a_forward_sends_its_port_to_the_lan_host_and_its_answers_back():
    c, r = pair()
    for nat in (c, r):
        nat.set_forward(0, 6, 8443, 8443, LAN2)
    code, inn = both(c, r, "in", tcp(REM, EXT0, 40000, 8443, data=b"s" * 21), 0, 1.0)
    assert code == "ok" and inn[16:20] == LAN2 and inn[22:24] == struct.pack("!H", 8443) and valid(inn)
    code, back = both(c, r, "out", tcp(LAN2, REM, 8443, 40000, flags=0x12, data=b"a" * 5), 0, 1.1)
    assert code == "ok" and back[12:16] == EXT0 and back[20:22] == struct.pack("!H", 8443) and valid(back)
    assert len(c) == len(r) == 0                                  # no mapping: the forward is static
    # another uplink, another protocol, another host answering from that port: not the forward's
    assert both(c, r, "in", tcp(REM, EXT1, 40000, 8443), 1, 1.2)[0] == "unknown"
    assert both(c, r, "in", udp(REM, EXT0, 40000, 8443), 0, 1.2)[0] == "unknown"
    code, other = both(c, r, "out", tcp(LAN1, REM, 8443, 40000), 0, 1.3)
    assert code == "ok" and other[20:22] != struct.pack("!H", 8443)          # a mapping of its own
    # an error about the forwarded connection (a router on the client's path) reaches the
    # host with its quote put back as the host sent it
    big = tcp(EXT0, REM, 8443, 40000, flags=0x10, data=b"b" * 40)
    code, err = both(c, r, "in", error(ROUTER, EXT0, big, typ=3, code=4), 0, 1.25)
    assert code == "ok" and err[16:20] == LAN2 and err[40:44] == LAN2 and valid(err), err.hex()
    # no dynamic mapping takes a forward's port, even when the LAN port asks for it
    for k in range(5):
        code, out = both(c, r, "out", tcp(LAN1, REM2, 8443, 1000 + k), 0, 1.4)
        assert code == "ok" and out[20:22] != struct.pack("!H", 8443)


def port(pkt: bytes, at: int) -> int:
    return struct.unpack("!H", pkt[at:at + 2])[0]


def test_a_forward_to_another_port_rewrites_the_port_both_ways():
    """External 8080 -> LAN2:80 (TCP), 6000-6009 -> LAN1:7000-7009 (UDP): in, the address and
    the port; the host's answers from its port leave from the external one; every checksum
    right (UDP without one stays without)."""
    c, r = pair()
    for nat in (c, r):
        nat.set_forward(0, 6, 8080, 8080, LAN2, 80)
        nat.set_forward(0, 17, 6000, 6009, LAN1, 7000)
    code, inn = both(c, r, "in", tcp(REM, EXT0, 40000, 8080, data=b"s" * 21), 0, 1.0)
    assert code == "ok" and inn[16:20] == LAN2 and port(inn, 22) == 80 and port(inn, 20) == 40000 and valid(inn)
    code, back = both(c, r, "out", tcp(LAN2, REM, 80, 40000, flags=0x12, data=b"a" * 5), 0, 1.1)
    assert code == "ok" and back[12:16] == EXT0 and port(back, 20) == 8080 and valid(back)
    for ext, zero in ((6000, False), (6007, True)):
        code, inn = both(c, r, "in", udp(REM2, EXT0, 999, ext, b"q" * 9, zero=zero), 0, 1.2)
        assert code == "ok" and inn[16:20] == LAN1 and port(inn, 22) == 7000 + ext - 6000 and valid(inn)
        assert (inn[26:28] == b"\0\0") == zero
        code, back = both(c, r, "out", udp(LAN1, REM2, 7000 + ext - 6000, 999, zero=zero), 0, 1.3)
        assert code == "ok" and back[12:16] == EXT0 and port(back, 20) == ext and valid(back)
        assert (back[26:28] == b"\0\0") == zero
    assert len(c) == len(r) == 0                                  # static: no mapping
    # the LAN host's other ports, and the external port itself on the LAN host, are not the forward's
    code, other = both(c, r, "out", tcp(LAN2, REM, 8080, 40000), 0, 1.4)
    assert code == "ok" and len(c) == len(r) == 1 and port(other, 20) != 8080
    assert both(c, r, "in", tcp(REM, EXT0, 40000, 80), 0, 1.5)[0] == "pass"      # the router's own port 80
    assert both(c, r, "in", tcp(REM, EXT1, 40000, 8080), 1, 1.5)[0] == "unknown"   # not on uplink 1


def test_forwards_to_one_port_of_two_hosts_and_pending_checksums():
    """2222 -> LAN1:22 and 2223 -> LAN2:22: each host's answers leave from its own external
    port; a super-frame's pending checksum follows the pseudo-header only (the port is in the
    data the kernel sums)."""
    c, r = pair()
    for nat in (c, r):
        nat.set_forward(0, 6, 2222, 2222, LAN1, 22)
        nat.set_forward(0, 6, 2223, 2223, LAN2, 22)
    for lan, ext in ((LAN1, 2222), (LAN2, 2223)):
        code, inn = both(c, r, "in", tcp(REM, EXT0, 50000, ext), 0, 1.0)
        assert code == "ok" and inn[16:20] == lan and port(inn, 22) == 22 and valid(inn)
        code, back = both(c, r, "out", tcp(lan, REM, 22, 50000, flags=0x12), 0, 1.0)
        assert code == "ok" and port(back, 20) == ext and valid(back)
        seg = struct.pack("!HHIIBBHHH", 22, 50000, 1, 0, 5 << 4, 0x10, 65535, 0, 0) + b"p" * 100
        pseudo = _sum(lan + REM + struct.pack("!xBH", 6, len(seg)))
        code, out = both(c, r, "out", ipv4(lan, REM, 6, seg[:16] + struct.pack("!H", pseudo) + seg[18:]), 0, 1.0,
                         pending=True)
        assert code == "ok" and port(out, 20) == ext
        assert port(out, 36) == _sum(EXT0 + REM + struct.pack("!xBH", 6, len(seg)))
        seg = struct.pack("!HHIIBBHHH", 50000, ext, 1, 0, 5 << 4, 0x10, 65535, 0, 0) + b"p" * 100
        pseudo = _sum(REM + EXT0 + struct.pack("!xBH", 6, len(seg)))
        code, inn = both(c, r, "in", ipv4(REM, EXT0, 6, seg[:16] + struct.pack("!H", pseudo) + seg[18:]), 0, 1.0,
                         pending=True)
        assert code == "ok" and port(inn, 22) == 22
        assert port(inn, 36) == _sum(REM + lan + struct.pack("!xBH", 6, len(seg)))


def quoted(err: bytes, keep) -> bytes:
    """The packet an ICMPv4 error quotes, its IPv4 header checksum checked and, when it is
    quoted whole (keep None), its transport checksum too."""
    q = err[28:]
    assert _sum(q[:20]) == 0xFFFF
    if keep is None:
        assert valid(q)
    return q


@pytest.mark.parametrize("make", [lambda s, d, sp, dp: udp(s, d, sp, dp, b"z" * 40),
                                  lambda s, d, sp, dp: tcp(s, d, sp, dp, flags=0x10, data=b"q" * 40)])
@pytest.mark.parametrize("keep", [None, 28])
def test_icmp_errors_about_a_forward_to_another_port_carry_the_ports_translated(make, keep):
    """PMTU discovery of a forwarded server: a router's "fragmentation needed" about what the
    server sent (quoted from the external port) reaches it quoting its own port; the server's
    own error about a packet the forward delivered leaves quoting the external port."""
    c, r = pair()
    proto = 17 if make(LAN1, REM, 1, 2)[9] == 17 else 6
    for nat in (c, r):
        nat.set_forward(0, proto, 8080, 8081, LAN1, 80)
    _, sent = both(c, r, "out", make(LAN1, REM, 81, 40000), 0, 1.0)
    assert port(sent, 20) == 8081
    code, err = both(c, r, "in", error(ROUTER, EXT0, sent, typ=3, code=4, keep=keep), 0, 1.0)
    assert code == "ok" and err[16:20] == LAN1 and valid(err)
    q = quoted(err, keep)
    assert q[12:16] == LAN1 and port(q, 20) == 81 and port(q, 22) == 40000
    _, delivered = both(c, r, "in", make(REM, EXT0, 40000, 8080), 0, 1.0)
    assert port(delivered, 22) == 80
    code, out = both(c, r, "out", error(LAN1, REM, delivered, typ=3, code=3, keep=keep), 0, 1.0)
    assert code == "ok" and out[12:16] == EXT0 and valid(out)
    q = quoted(out, keep)
    assert q[16:20] == EXT0 and port(q, 22) == 8080 and port(q, 20) == 40000
    # about a packet to another of the host's ports: no forward's, no mapping's
    assert both(c, r, "out", error(LAN1, REM, make(REM, LAN1, 40000, 82)), 0, 1.0)[0] == "unknown"


def test_forwards_that_would_be_ambiguous_are_refused():
    for nat in pair():
        nat.set_forward(0, 6, 8080, 8089, LAN1, 80)
        with pytest.raises(ValueError):
            nat.set_forward(0, 6, 8089, 8090, LAN2, 80)      # an external port taken
        with pytest.raises(ValueError):
            nat.set_forward(0, 6, 9000, 9000, LAN1, 85)      # LAN1:85 answers for 8085 already
        with pytest.raises(ValueError):
            nat.set_forward(0, 6, 9000, 9001, LAN2, 65535)   # past the last port
        nat.set_forward(0, 6, 9000, 9000, LAN2, 85)          # another host's 85: fine
        nat.set_forward(1, 6, 9000, 9000, LAN1, 85)          # another uplink: fine
        nat.set_forward(0, 17, 8080, 8080, LAN1, 80)         # another protocol: fine
        assert nat.in_packet(bytearray(tcp(REM, EXT0, 1, 9000)), 0, 1.0) == "ok"


def test_tcp_round_trip_keeps_the_lan_port_and_every_checksum():
    c, r = pair()
    code, out = both(c, r, "out", tcp(LAN1, REM, 40000, 443, data=b"x" * 33), 0, 1.0)
    assert code == "ok" and out[12:16] == EXT0 and out[20:22] == struct.pack("!H", 40000) and valid(out)
    code, back = both(c, r, "in", tcp(REM, EXT0, 443, 40000, flags=0x12, data=b"y" * 7), 0, 1.1)
    assert code == "ok" and back[16:20] == LAN1 and back[22:24] == struct.pack("!H", 40000) and valid(back)
    assert c.mapping(6, LAN1, 40000, REM, 443, 0) == 40000


def test_clashing_and_low_ports_get_ports_of_their_own():
    c, r = pair()
    _, a = both(c, r, "out", udp(LAN1, REM, 5000, 53), 0, 1.0)
    _, b = both(c, r, "out", udp(LAN2, REM, 5000, 53), 0, 1.0)
    _, low = both(c, r, "out", udp(LAN2, REM, 123, 123), 0, 1.0)
    pa, pb, pl = (struct.unpack("!H", x[20:22])[0] for x in (a, b, low))
    assert pa == 5000 and pb != 5000 and pb >= 1024 and pl >= 1024 and len({pa, pb, pl}) == 3
    assert all(valid(x) for x in (a, b, low))
    for port, lan, lport in ((pa, LAN1, 5000), (pb, LAN2, 5000), (pl, LAN2, 123)):
        code, back = both(c, r, "in", udp(REM, EXT0, 53 if lport == 5000 else 123, port), 0, 2.0)
        assert code == "ok" and back[16:20] == lan and struct.unpack("!H", back[22:24])[0] == lport
        assert valid(back)


def test_only_replies_from_the_remote_get_in():
    """The stateful edge: to a mapping's port, another remote, another remote port, an
    unsolicited SYN, a port never mapped: unknown (dropped); what is outside the mappings'
    ports (the router's own ssh, its own pings) or to another address is not the NAT's."""
    c, r = pair(port_range=(1024, 32767))
    both(c, r, "out", udp(LAN1, REM, 5000, 53), 0, 1.0)
    assert both(c, r, "in", udp(REM2, EXT0, 53, 5000), 0, 1.0)[0] == "unknown"
    assert both(c, r, "in", udp(REM, EXT0, 54, 5000), 0, 1.0)[0] == "unknown"
    assert both(c, r, "in", tcp(REM, EXT0, 999, 8080), 0, 1.0)[0] == "unknown"
    assert both(c, r, "in", udp(REM, EXT1, 53, 5000), 1, 1.0)[0] == "unknown"    # other uplink
    assert both(c, r, "in", udp(REM, LAN1, 53, 5000), 0, 1.0)[0] == "pass"
    assert both(c, r, "in", tcp(REM, EXT0, 999, 22), 0, 1.0)[0] == "pass"         # the router's ssh
    assert both(c, r, "in", tcp(REM, EXT0, 443, 40000), 0, 1.0)[0] == "pass"      # its own connection
    assert both(c, r, "in", echo(REM, EXT0, 9, typ=0), 0, 1.0)[0] == "pass"       # its own ping


def test_udp_without_checksum_stays_without():
    c, r = pair()
    _, out = both(c, r, "out", udp(LAN1, REM, 6000, 7, zero=True), 0, 1.0)
    assert out[26:28] == b"\0\0" and valid(out)
    _, back = both(c, r, "in", udp(REM, EXT0, 7, 6000, zero=True), 0, 1.0)
    assert back[26:28] == b"\0\0" and back[16:20] == LAN1 and valid(back)


def test_icmp_echo_translates_the_identifier():
    c, r = pair()
    both(c, r, "out", echo(LAN1, REM, 77), 0, 1.0)
    _, out2 = both(c, r, "out", echo(LAN2, REM, 77), 0, 1.0)         # same id: another one
    ident2 = struct.unpack("!H", out2[24:26])[0]
    assert ident2 != 77 and valid(out2)
    code, back = both(c, r, "in", echo(REM, EXT0, ident2, typ=0), 0, 1.0)
    assert code == "ok" and back[16:20] == LAN2 and back[24:26] == struct.pack("!H", 77) and valid(back)
    assert both(c, r, "in", echo(REM, EXT0, 77, typ=8), 0, 1.0)[0] == "pass"      # a request: the router's


@pytest.mark.parametrize("make", [lambda s, d, sp, dp: udp(s, d, sp, dp, b"z" * 40),
                                  lambda s, d, sp, dp: tcp(s, d, sp, dp, data=b"q" * 40)])
@pytest.mark.parametrize("keep", [None, 28])
def test_icmp_errors_coming_back_are_put_back_for_the_lan_host(make, keep):
    """Time exceeded from a router on the way quotes the translated packet: the quote is
    restored (inner address, port, IPv4 checksum, and the upper checksum when quoted whole),
    the error goes to the LAN host, and its ICMP checksum is right."""
    c, r = pair()
    _, sent = both(c, r, "out", make(LAN1, REM, 40001, 33434), 0, 1.0)
    err = error(ROUTER, EXT0, sent, keep=keep)
    code, back = both(c, r, "in", err, 0, 1.0)
    assert code == "ok" and back[16:20] == LAN1 and valid(back)
    q = quoted(back, keep)
    assert q[12:16] == LAN1 and q[20:22] == struct.pack("!H", 40001)
    forged = error(ROUTER, EXT0, make(EXT0, REM2, 40001, 33434))     # not our remote
    assert both(c, r, "in", forged, 0, 1.0)[0] == "unknown"
    own = error(ROUTER, EXT0, make(EXT0, REM2, 443, 33434))          # the router's own packet
    assert both(c, r, "in", own, 0, 1.0)[0] == "pass"


def test_icmp_errors_from_the_lan_about_inbound_packets():
    c, r = pair()
    both(c, r, "out", udp(LAN2, REM, 123, 53), 0, 1.0)
    port = c.mapping(17, LAN2, 123, REM, 53, 0)
    _, delivered = both(c, r, "in", udp(REM, EXT0, 53, port, b"answer"), 0, 1.0)
    unreach = error(LAN2, REM, delivered, typ=3, code=3)
    code, out = both(c, r, "out", unreach, 0, 1.0)
    assert code == "ok" and out[12:16] == EXT0 and valid(out)
    q = out[28:]
    assert q[16:20] == EXT0 and struct.unpack("!H", q[22:24])[0] == port and valid(q)


def test_fragments_follow_their_first():
    c, r = pair()
    first = bytearray(udp(LAN1, REM, 7000, 9, b"a" * 64))
    first[6:8] = struct.pack("!H", 0x2000)                # MF, offset 0 (checksum fixed below)
    first[10:12] = b"\0\0"
    first[10:12] = struct.pack("!H", csum(bytes(first[:20])))
    code, out = both(c, r, "out", bytes(first), 0, 1.0)
    assert code == "ok" and out[20:22] == struct.pack("!H", 7000)
    later = ipv4(LAN1, REM, 17, b"b" * 32, ident=1, frag=9)           # offset 72 bytes
    code, out2 = both(c, r, "out", later, 0, 1.0)
    assert code == "ok" and out2[12:16] == EXT0 and _sum(out2[:20]) == 0xFFFF and out2[20:] == b"b" * 32
    # inbound: a later fragment before its first is not known (the router's own, for its
    # kernel to reassemble); after it, it follows
    in_later = ipv4(REM, EXT0, 17, b"c" * 32, ident=5, frag=9)
    assert both(c, r, "in", in_later, 0, 1.0)[0] == "pass"
    in_first = bytearray(udp(REM, EXT0, 9, 7000, b"d" * 64))
    in_first[4:6] = struct.pack("!H", 5)
    in_first[6:8] = struct.pack("!H", 0x2000)
    in_first[10:12] = b"\0\0"
    in_first[10:12] = struct.pack("!H", csum(bytes(in_first[:20])))
    assert both(c, r, "in", bytes(in_first), 0, 1.0)[0] == "ok"
    code, back = both(c, r, "in", in_later, 0, 1.0)
    assert code == "ok" and back[16:20] == LAN1 and _sum(back[:20]) == 0xFFFF


def test_table_and_port_exhaustion_are_reported():
    c, r = pair(capacity=5)
    codes = [both(c, r, "out", udp(LAN1, REM, 2000 + i, 53), 0, 1.0)[0] for i in range(6)]
    assert codes == ["ok"] * 5 + ["exhausted"] and c.exhausted == r.exhausted == 1
    assert c.stats()["mappings"] == 5
    # every port of one uplink and protocol: 64,512 flows, then none
    big = _nat.Nat44(1, 70000, seed=1)
    big.set_address(0, EXT0)
    n = 64513
    pkts = [udp(LAN1, REM, 1024 + (i % 64000), 10000 + i // 64000 * 7 + i % 3) for i in range(n)]
    buf = np.frombuffer(b"".join(pkts), np.uint8).copy()
    lens = np.array([len(p) for p in pkts], np.int64)
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    codes = big.out_batch(buf, offs, lens, np.zeros(n, np.int32), 1.0)
    assert (codes[:64512] == 0).all() and codes[64512] == _nat.CODES["exhausted"]
    assert big.stats()["uplinks"][0]["udp"] == 64512 and big.exhausted == 1


def test_idle_mappings_expire_as_conntrack_defaults_say():
    c, r = pair()
    both(c, r, "out", udp(LAN1, REM, 5000, 53), 0, 0.0)               # unreplied: 30 s
    both(c, r, "out", udp(LAN1, REM, 5001, 53), 0, 0.0)
    both(c, r, "in", udp(REM, EXT0, 53, 5001), 0, 0.0)                # replied: 120 s
    both(c, r, "out", tcp(LAN1, REM, 5002, 80), 0, 0.0)               # SYN only: 120 s
    both(c, r, "out", tcp(LAN1, REM, 5003, 80), 0, 0.0)
    both(c, r, "in", tcp(REM, EXT0, 80, 5003, flags=0x12), 0, 0.0)    # established: 5 days
    assert c.expire(31.0) == r.expire(31.0) == 1
    assert c.expire(121.0) == r.expire(121.0) == 2
    assert len(c) == len(r) == 1
    both(c, r, "out", tcp(LAN1, REM, 5003, 80, flags=0x04), 0, 200.0)  # RST: 10 s
    assert c.expire(211.0) == r.expire(211.0) == 1 and len(c) == 0
    assert both(c, r, "in", udp(REM, EXT0, 53, 5001), 0, 300.0)[0] == "unknown"
    assert c.stats()["uplinks"][0] == {"tcp": 0, "udp": 0, "icmp": 0}


def test_a_new_address_drops_the_old_mappings():
    c, r = pair()
    both(c, r, "out", udp(LAN1, REM, 5000, 53), 0, 0.0)
    for nat in (c, r):
        nat.set_address(0, ipaddress.ip_address("198.18.1.99"))
    assert len(c) == len(r) == 0
    assert both(c, r, "in", udp(REM, EXT0, 53, 5000), 0, 1.0)[0] == "pass"
    c.set_address(1, None)
    assert c.out_packet(bytearray(udp(LAN1, REM, 5, 5)), 1, 1.0) == "no_address"


def test_pending_checksums_move_with_the_pseudo_header():
    """A super-frame or an offloaded checksum holds the pseudo-header sum; after translation
    it holds the sum for the new addresses (the port is in the data the kernel sums)."""
    c, r = pair()
    seg = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, 0x10, 65535, 0, 0) + b"p" * 100
    pseudo = _sum(LAN1 + REM + struct.pack("!xBH", 6, len(seg)))
    pkt = ipv4(LAN1, REM, 6, seg[:16] + struct.pack("!H", pseudo) + seg[18:])
    code, out = both(c, r, "out", pkt, 0, 1.0, pending=True)
    assert code == "ok"
    assert struct.unpack("!H", out[36:38])[0] == _sum(EXT0 + REM + struct.pack("!xBH", 6, len(seg)))


def test_batch_entry_points_refuse_packets_outside_the_buffer():
    c = _nat.Nat44(1)
    buf = np.zeros(100, np.uint8)
    one = np.zeros(1, np.int32)
    for off, ln in ((90, 20), (-1, 10), (2 ** 62, 10), (0, 2 ** 62)):
        with pytest.raises(ValueError):
            c.out_batch(buf, np.array([off], np.int64), np.array([ln], np.int64), one, 0.0)
    with pytest.raises(ValueError):
        c.in_batch(buf, np.zeros(2, np.int64), np.zeros(2, np.int64), one, 0.0)
    with pytest.raises(ValueError):
        _nat.Nat44(0)


# ---------------------------------------------------------------------- properties
ADDRS = [LAN1, LAN2, REM, REM2, EXT0, EXT1, ROUTER]
# the property test's forwards to another port: (uplink, protocol, external range, LAN host,
# its first port): two hosts behind one port of theirs (8080), a range shifted
OTHER_PORT = [(0, 6, 80, 80, LAN1, 8080), (0, 6, 8080, 8080, LAN2, 8080), (0, 17, 5000, 5000, LAN2, 53),
              (0, 17, 53, 53, LAN1, 5000), (1, 17, 53, 80, LAN1, 96), (1, 6, 5000, 5000, LAN2, 80)]


@st.composite
def packets(draw):
    kind = draw(st.sampled_from(["tcp", "udp", "udp0", "echo", "reply", "err", "frag", "junk", "fwd"]))
    if kind == "fwd":           # a packet of a forwarded connection: in, answered, or as quoted
        u, proto, lo, hi, to, to_lo = draw(st.sampled_from(OTHER_PORT))
        i, rem, rp = draw(st.integers(0, hi - lo)), draw(st.sampled_from([REM, REM2])), draw(st.sampled_from([53, 40000]))
        ext = (EXT0, EXT1)[u]
        s, d, sp, dp = draw(st.sampled_from([(rem, ext, rp, lo + i), (to, rem, to_lo + i, rp),
                                             (ext, rem, lo + i, rp), (rem, to, rp, to_lo + i)]))
        if proto == 6:
            pkt = tcp(s, d, sp, dp, draw(st.sampled_from([0x02, 0x12, 0x10])), b"t" * draw(st.integers(0, 30)))
        else:
            pkt = udp(s, d, sp, dp, b"u" * draw(st.integers(0, 30)), zero=draw(st.booleans()))
        if s == ext or d == to:     # as an error quotes it: a router's to the uplink, the host's own
            if draw(st.booleans()):
                keep = draw(st.sampled_from([None, 28, 24]))
                typ = draw(st.sampled_from([3, 11]))
                return error(ROUTER, ext, pkt, typ=typ, keep=keep) if s == ext else error(to, rem, pkt, typ=typ, keep=keep)
        return pkt
    s, d = draw(st.sampled_from(ADDRS)), draw(st.sampled_from(ADDRS))
    sp = draw(st.sampled_from([53, 80, 123, 1024, 5000, 8080, 40000, 65535]))
    dp = draw(st.sampled_from([53, 80, 5000, 8080]))
    if kind == "tcp":
        return tcp(s, d, sp, dp, draw(st.sampled_from([0x02, 0x12, 0x10, 0x11, 0x04])), b"t" * draw(st.integers(0, 30)))
    if kind in ("udp", "udp0"):
        return udp(s, d, sp, dp, b"u" * draw(st.integers(0, 30)), zero=kind == "udp0")
    if kind in ("echo", "reply"):
        return echo(s, d, sp, typ=8 if kind == "echo" else 0)
    if kind == "err":
        inner = draw(packets())
        return error(s, d, inner, typ=draw(st.sampled_from([3, 11, 12])), keep=draw(st.sampled_from([None, 28, 24, 20])))
    if kind == "frag":
        return ipv4(s, d, draw(st.sampled_from([6, 17, 1, 47])), b"f" * 16, ident=draw(st.integers(0, 3)),
                    frag=draw(st.sampled_from([0x2000, 0x0004, 0x2004])))
    return draw(st.binary(min_size=0, max_size=80))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["out", "in"]), packets(), st.integers(0, 2),
                          st.floats(0, 200), st.booleans()), max_size=40),
       st.booleans(), st.sampled_from(["none", "same port", "other port"]))
def test_compiled_and_reference_agree_on_every_packet(ops, mutate, forwards):
    """Random traffic both ways (uplink 2 does not exist: pass), junk, mutated headers, with
    and without port forwards (to the same port, to another: two hosts behind one port of
    theirs, a range shifted): the same codes, the same bytes, the same tables; and right
    checksums stay right."""
    c, r = pair(capacity=8)
    for nat in (c, r):
        if forwards == "same port":
            nat.set_forward(0, 6, 80, 80, LAN1)
            nat.set_forward(0, 17, 5000, 5000, LAN2)
            nat.set_forward(1, 17, 53, 5000, LAN1)
        elif forwards == "other port":
            for f in OTHER_PORT:
                nat.set_forward(*f)
    now = 0.0
    for direction, pkt, u, dt, flip in ops:
        now += dt
        if mutate and flip and len(pkt) > 30:
            pkt = pkt[:25] + bytes([pkt[25] ^ 0x5A]) + pkt[26:]
        code, out = both(c, r, direction, pkt, u, now)
        if code == "ok" and len(pkt) >= 20 and valid(pkt) and not (pkt[6] & 0x3F or pkt[7]) and pkt[9] != 1:
            assert valid(out), (direction, pkt.hex(), out.hex())
        if dt > 100:
            assert c.expire(now) == r.expire(now)
        assert len(c) == len(r)


# ---------------------------------------------------------------------- NPTv6
from engine.ref.nat import Npt66Ref  # noqa: E402

ULA = ipaddress.ip_network("fd01:203:405::/48")
PUB = ipaddress.ip_network("2001:db8:1::/48")
CN6 = ipaddress.ip_address("2001:db8:ff::1").packed


def ipv6(src, dst, nh, payload, hbh=False):
    if hbh:                               # a hop-by-hop header with the traffic control option
        payload = bytes([nh, 0, 0x3E, 3, 0, 0, 3, 0]) + payload
        nh = 0
    return struct.pack("!IHBB", 6 << 28, len(payload), nh, 64) + src + dst + payload


def udp6(src, dst, sport, dport, data=b"six", hbh=False):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = csum(src + dst + struct.pack("!I3xB", len(seg), 17) + seg) or 0xFFFF
    return ipv6(src, dst, 17, seg[:6] + struct.pack("!H", c) + seg[8:], hbh)


def icmp6_error(src, dst, quoted, typ=3):
    m = struct.pack("!BBHI", typ, 0, 0, 0) + quoted
    c = csum(src + dst + struct.pack("!I3xB", len(m), 58) + m)
    return ipv6(src, dst, 58, m[:2] + struct.pack("!H", c) + m[4:])


def upper_ok(pkt: bytes) -> bool:
    off, nh = 40, pkt[6]
    if nh == 0:
        nh, off = pkt[40], 40 + (pkt[41] + 1) * 8
    seg = pkt[off:]
    return _sum(pkt[8:40] + struct.pack("!I3xB", len(seg), nh) + seg) == 0xFFFF


def test_nptv6_maps_as_rfc_6296_appendix_b_and_back():
    n, r = _nat.Npt66(1), Npt66Ref(1)
    for x in (n, r):
        x.set_prefixes(0, ULA, PUB)
    inside = ipaddress.ip_address("fd01:203:405:1::1234").packed
    pkt = udp6(inside, CN6, 5000, 53, hbh=True)
    a, b = bytearray(pkt), bytearray(pkt)
    assert n.out_packet(a, 0) == r.out_packet(b, 0) == "ok" and a == b
    assert ipaddress.ip_address(bytes(a[8:24])) == ipaddress.ip_address("2001:db8:1:d550::1234")
    assert upper_ok(bytes(a))                           # checksum-neutral: UDP untouched and right
    back = bytearray(udp6(CN6, bytes(a[8:24]), 53, 5000))
    assert n.in_packet(back, 0) == "ok" and bytes(back[24:40]) == inside and upper_ok(bytes(back))
    assert n.out_packet(bytearray(udp6(CN6, CN6, 1, 2)), 0) == "pass"          # not from the LAN


def test_nptv6_icmp_errors_carry_the_quoted_address_along():
    n = _nat.Npt66(1)
    n.set_prefixes(0, ULA, PUB)
    inside = ipaddress.ip_address("fd01:203:405:7::9").packed
    sent = bytearray(udp6(inside, CN6, 4000, 33434))
    assert n.out_packet(sent, 0) == "ok"
    err = bytearray(icmp6_error(ipaddress.ip_address("2001:db8:c1::1").packed, bytes(sent[8:24]), bytes(sent), typ=3))
    assert n.in_packet(err, 0) == "ok"
    assert bytes(err[24:40]) == inside and bytes(err[48 + 8:48 + 24]) == inside and upper_ok(bytes(err))


def test_nptv6_refuses_what_it_cannot_map():
    n = _nat.Npt66(2)
    n.set_prefixes(0, ULA, PUB)
    n.set_prefixes(1, ipaddress.ip_network("fd00:1::/64"), ipaddress.ip_network("2001:db8:a1:100::/64"))
    bad48 = ipaddress.ip_address("fd01:203:405:ffff::1").packed
    assert n.out_packet(bytearray(udp6(bad48, CN6, 1, 2)), 0) == "unsupported"
    all_ones = ipaddress.ip_address("fd00:1::ffff:ffff:ffff:ffff").packed
    assert n.out_packet(bytearray(udp6(all_ones, CN6, 1, 2)), 1) == "unsupported"
    with pytest.raises(ValueError):
        n.set_prefixes(0, ipaddress.ip_network("fd00::/48"), ipaddress.ip_network("2001:db8::/56"))
    with pytest.raises(ValueError):
        n.set_prefixes(0, ipaddress.ip_network("fd00::/96"), ipaddress.ip_network("2001:db8::/96"))


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 64), st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
       st.binary(min_size=16, max_size=16), st.booleans())
def test_nptv6_is_checksum_neutral_reversible_and_agrees_with_its_reference(plen, inner, outer, host, hbh):
    inner = ipaddress.ip_network((inner, plen), strict=False)
    outer = ipaddress.ip_network((outer, plen), strict=False)
    mask = int(inner.netmask)
    addr = ((int(inner.network_address) & mask) | (int.from_bytes(host, "big") & ~mask & ((1 << 128) - 1)))
    addr = addr.to_bytes(16, "big")
    n, r = _nat.Npt66(1), Npt66Ref(1)
    for x in (n, r):
        x.set_prefixes(0, inner, outer)
    pkt = udp6(addr, CN6, 1000, 2000, hbh=hbh)
    a, b = bytearray(pkt), bytearray(pkt)
    code = n.out_packet(a, 0)
    assert code == r.out_packet(b, 0) and a == b
    if code == "unsupported":
        return
    assert code == "ok" and ipaddress.ip_address(bytes(a[8:24])) in outer
    assert _sum(bytes(a[8:24])) % 0xFFFF == _sum(addr) % 0xFFFF and upper_ok(bytes(a))
    back = bytearray(udp6(CN6, bytes(a[8:24]), 2000, 1000, hbh=hbh))
    c2 = bytearray(back)
    assert n.in_packet(back, 0) == r.in_packet(c2, 0) == "ok" and back == c2
    assert bytes(back[24:40]) == addr


def test_nptv6_keeps_clear_of_the_addresses_in_use_on_the_uplinks_link():
    """npt_prefix "auto" maps onto the uplink's on-link prefix: a LAN host whose translation
    is the router's own or the gateway's is not translated (untranslatable), and a packet
    to the router's own address there is not the LAN's (pass: its kernel's)."""
    lan, own = ipaddress.ip_network("fd00:1::/64"), ipaddress.ip_network("2001:db8:a1::/64")
    n, r = _nat.Npt66(1), Npt66Ref(1)
    probe = _nat.Npt66(1)
    probe.set_prefixes(0, lan, own)
    host = ipaddress.ip_address("fd00:1::10")
    clash = probe.address(0, host, True)                 # what the host would become
    router = ipaddress.ip_address("2001:db8:a1::2")
    for x in (n, r):
        x.set_prefixes(0, lan, own, avoid=[router, clash])
    a, b = bytearray(udp6(host.packed, CN6, 1, 2)), bytearray(udp6(host.packed, CN6, 1, 2))
    assert n.out_packet(a, 0) == r.out_packet(b, 0) == "unsupported"
    assert n.address(0, host, True) is None is r.address(0, host, True)
    other = ipaddress.ip_address("fd00:1::11")
    assert n.address(0, other, True) == r.address(0, other, True) != None          # noqa: E711
    to_router = bytearray(udp6(CN6, router.packed, 2, 1))
    assert n.in_packet(to_router, 0) == "pass" and bytes(to_router[24:40]) == router.packed
    assert n.address(0, router, False) is None
    with pytest.raises(ValueError):
        n.set_prefixes(0, lan, own, avoid=[router] * 17)


def test_nptv6_leaves_neighbour_discovery_to_a_translated_address_alone():
    """An ISP router's unicast solicitation (unreachability detection) of a translated
    address is the proxy's to answer: not translated into the LAN (the host would drop it,
    its hop limit spent); an echo to the same address is translated."""
    lan, own = ipaddress.ip_network("fd00:1::/64"), ipaddress.ip_network("2001:db8:a1::/64")
    n, r = _nat.Npt66(1), Npt66Ref(1)
    for x in (n, r):
        x.set_prefixes(0, lan, own)
    out = n.address(0, "fd00:1::10", True).packed
    isp = ipaddress.ip_address("2001:db8:a1::1").packed
    for typ in (133, 134, 135, 136, 137):
        a, b = bytearray(icmp6_error(isp, out, bytes(24), typ)), bytearray(icmp6_error(isp, out, bytes(24), typ))
        assert n.in_packet(a, 0) == r.in_packet(b, 0) == "pass" and bytes(a[24:40]) == out, typ
    a, b = bytearray(icmp6_error(isp, out, bytes(24), 128)), bytearray(icmp6_error(isp, out, bytes(24), 128))
    assert n.in_packet(a, 0) == r.in_packet(b, 0) == "ok" and a == b


def test_nptv6_held_drops_lan_sources_until_the_uplink_has_a_prefix():
    lan = ipaddress.ip_network("fd00:1::/64")
    n, r = _nat.Npt66(1), Npt66Ref(1)
    for x in (n, r):
        x.hold(0, lan)
    assert n.out_packet(bytearray(udp6(ipaddress.ip_address("fd00:1::10").packed, CN6, 1, 2)), 0) == \
        r.out_packet(bytearray(udp6(ipaddress.ip_address("fd00:1::10").packed, CN6, 1, 2)), 0) == "no_address"
    assert n.out_packet(bytearray(udp6(CN6, CN6, 1, 2)), 0) == "pass"      # not the LAN's: as before
    assert n.in_packet(bytearray(udp6(CN6, ipaddress.ip_address("fd00:1::10").packed, 1, 2)), 0) == "pass"
    assert n.address(0, "fd00:1::10", True) is None
    n.set_prefixes(0, lan, ipaddress.ip_network("2001:db8:a1::/64"))           # the prefix came
    assert n.out_packet(bytearray(udp6(ipaddress.ip_address("fd00:1::10").packed, CN6, 1, 2)), 0) == "ok"


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 64), st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
       st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=4), st.integers(0, 16),
       st.booleans())
def test_nptv6_with_addresses_to_avoid_agrees_with_its_reference(plen, inner, outer, hosts, n_avoid, take_clash):
    inner = ipaddress.ip_network((inner, plen), strict=False)
    outer = ipaddress.ip_network((outer, plen), strict=False)
    mask = int(inner.netmask)
    def inside(h, net):
        return ((int(net.network_address) & mask) | (int.from_bytes(h, "big") & ~mask & ((1 << 128) - 1))
                ).to_bytes(16, "big")
    lan_hosts = [inside(h, inner) for h in hosts]
    probe = Npt66Ref(1)
    probe.set_prefixes(0, inner, outer)
    avoid = [inside(h, outer) for h in hosts][:n_avoid]
    clash = probe.address(0, lan_hosts[0], True)
    if take_clash and clash is not None:
        avoid = (avoid + [clash.packed])[-16:]
    n, r = _nat.Npt66(1), Npt66Ref(1)
    for x in (n, r):
        x.set_prefixes(0, inner, outer, avoid=avoid)
    for h in lan_hosts + avoid:
        for out in (True, False):
            assert n.address(0, h, out) == r.address(0, h, out)
        a, b = bytearray(udp6(h, CN6, 1, 2)), bytearray(udp6(h, CN6, 1, 2))
        assert n.out_packet(a, 0) == r.out_packet(b, 0) and a == b
        a, b = bytearray(udp6(CN6, h, 2, 1)), bytearray(udp6(CN6, h, 2, 1))
        assert n.in_packet(a, 0) == r.in_packet(b, 0) and a == b
        m = n.address(0, h, True)
        if m is not None:
            assert m.packed not in avoid and n.address(0, m, False) == ipaddress.ip_address(h)


def test_mappings_keep_to_their_port_range_and_out_of_the_kernels():
    """nat ports: a range without the kernel's ip_local_port_range, so the router's own
    connections on the uplink address never share a port with a mapping."""
    c, r = pair(port_range=(2000, 2009), avoid=(2003, 2005))
    codes, ports = [], []
    for i in range(8):
        code, out = both(c, r, "out", udp(LAN1, REM, 2003 + i % 2, 53 + i), 0, 1.0)
        codes.append(code)
        if code == "ok":
            ports.append(struct.unpack("!H", out[20:22])[0])
    assert codes == ["ok"] * 7 + ["exhausted"]
    assert sorted(ports) == [2000, 2001, 2002, 2006, 2007, 2008, 2009]
    assert c.stats()["ports"] == 7
    with pytest.raises(ValueError):
        _nat.Nat44(1, port_range=(2000, 2001), avoid=(1000, 3000))


def test_a_flow_moved_to_another_uplink_is_translated_anew_and_counted():
    c, r = pair()
    _, a = both(c, r, "out", udp(LAN1, REM, 5000, 53), 0, 1.0)
    _, b = both(c, r, "out", udp(LAN1, REM, 5000, 53), 1, 2.0)        # failover: now via uplink 1
    assert a[12:16] == EXT0 and b[12:16] == EXT1 and c.moved == r.moved == 1
    both(c, r, "out", udp(LAN1, REM, 5000, 53), 1, 3.0)
    assert c.moved == 1 and c.stats()["moved"] == 1
