"""NAPT66 (pyx/nat.pyx Nat66) against its reference (engine/ref/nat.py Nat66Ref) byte for
byte, and against checksums computed from scratch (the ICMPv6 checksum covers the
pseudo-header): a packet whose checksums were right before translation is right after it, in
both directions, with extension headers, ICMPv6 errors and fragments."""
import ipaddress
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import _nat
from engine.inet import ones_sum as _sum
from engine.ref.nat import Nat66Ref

A = lambda s: ipaddress.ip_address(s).packed  # noqa: E731
LAN1, LAN2 = A("fd00:1::10"), A("fd00:1::11")
EXT0, EXT1 = A("2001:db8:1::2"), A("2001:db8:2::2")
REM, REM2 = A("2001:db8:ff::1"), A("2001:db8:ff::2")
ROUTER = A("2001:db8:1::1")


def test_the_compiled_module_runs():
    assert _nat.__file__.endswith(".so")
    assert type(_nat.Nat66(1)).__module__ == "engine._nat"


def csum(data: bytes) -> int:
    return ~_sum(data) & 0xFFFF


def ipv6(src, dst, nh, payload, hbh=False, frag=None):
    """frag: (offset in 8-byte units, more, identification) for a fragment header."""
    if frag is not None:
        off, more, ident = frag
        payload = struct.pack("!BBHI", nh, 0, (off << 3) | more, ident) + payload
        nh = 44
    if hbh:                               # a hop-by-hop header carrying mmr's own option
        payload = bytes([nh, 0, 0x3E, 3, 0, 0, 3, 0]) + payload
        nh = 0
    return struct.pack("!IHBB", 6 << 28, len(payload), nh, 64) + src + dst + payload


def seg_sum(src, dst, proto, seg):
    return csum(src + dst + struct.pack("!I3xB", len(seg), proto) + seg)


def tcp6(src, dst, sport, dport, flags=0x02, data=b"", **kw):
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + data
    return ipv6(src, dst, 6, seg[:16] + struct.pack("!H", seg_sum(src, dst, 6, seg)) + seg[18:], **kw)


def udp6(src, dst, sport, dport, data=b"six", **kw):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    return ipv6(src, dst, 17, seg[:6] + struct.pack("!H", seg_sum(src, dst, 17, seg) or 0xFFFF) + seg[8:], **kw)


def icmp6(src, dst, typ, rest: bytes, body: bytes, **kw):
    m = struct.pack("!BBH", typ, 0, 0) + rest + body
    return ipv6(src, dst, 58, m[:2] + struct.pack("!H", seg_sum(src, dst, 58, m)) + m[4:], **kw)


def echo6(src, dst, ident, typ=128, **kw):
    return icmp6(src, dst, typ, struct.pack("!HH", ident, 1), b"ping-data", **kw)


def error6(src, dst, quoted: bytes, typ=3, keep=None):
    return icmp6(src, dst, typ, bytes(4), quoted[:keep] if keep else quoted)


def upper(pkt: bytes):
    off, nh = 40, pkt[6]
    while nh in (0, 60, 43, 44):
        nh, off = pkt[off], off + (8 if nh == 44 else (pkt[off + 1] + 1) * 8)
    return nh, off


def valid(pkt: bytes) -> bool:
    """The upper-layer checksum over the pseudo-header (ICMPv6's too)."""
    nh, off = upper(pkt)
    seg = pkt[off:]
    return _sum(pkt[8:40] + struct.pack("!I3xB", len(seg), nh) + seg) == 0xFFFF


def pair(n_up=2, capacity=1024, seed=7, **kw):
    c, r = _nat.Nat66(n_up, capacity, seed=seed, **kw), Nat66Ref(n_up, capacity, seed=seed, **kw)
    for nat in (c, r):
        nat.set_address(0, EXT0)
        nat.set_address(1, EXT1)
    return c, r


def both(c, r, direction, pkt, u, now, pending=False):
    a, b = bytearray(pkt), bytearray(pkt)
    ca = getattr(c, f"{direction}_packet")(a, u, now, pending)
    cb = getattr(r, f"{direction}_packet")(b, u, now, pending)
    assert (ca, bytes(a)) == (cb, bytes(b)), (direction, pkt.hex())
    return ca, bytes(a)


def test_tcp_round_trip_with_mmrs_hop_by_hop_option():
    c, r = pair()
    code, out = both(c, r, "out", tcp6(LAN1, REM, 40000, 443, data=b"x" * 33, hbh=True), 0, 1.0)
    nh, off = upper(out)
    assert code == "ok" and out[8:24] == EXT0 and out[off:off + 2] == struct.pack("!H", 40000) and valid(out)
    assert out[40:48] == bytes([6, 0, 0x3E, 3, 0, 0, 3, 0])            # the option untouched
    code, back = both(c, r, "in", tcp6(REM, EXT0, 443, 40000, flags=0x12, data=b"y" * 7), 0, 1.1)
    assert code == "ok" and back[24:40] == LAN1 and valid(back)
    assert c.mapping(6, LAN1, 40000, REM, 443, 0) == 40000


def test_clashing_ports_and_unsolicited_replies():
    c, r = pair()
    both(c, r, "out", udp6(LAN1, REM, 5000, 53), 0, 1.0)
    code, out = both(c, r, "out", udp6(LAN2, REM, 5000, 53), 0, 1.0)
    port = struct.unpack("!H", out[40:42])[0]
    assert code == "ok" and port != 5000 and valid(out)
    assert both(c, r, "in", udp6(REM, EXT0, 53, port), 0, 2.0)[1][24:40] == LAN2
    assert both(c, r, "in", udp6(REM2, EXT0, 53, port), 0, 2.0)[0] == "unknown"      # another remote
    assert both(c, r, "in", udp6(REM, EXT0, 53, 7777), 0, 2.0)[0] == "unknown"       # no mapping
    assert both(c, r, "in", udp6(REM, ROUTER, 53, port), 0, 2.0)[0] == "pass"        # not the address
    assert both(c, r, "in", udp6(REM, EXT0, 53, 80), 0, 2.0)[0] == "pass"            # the router's port


def test_icmpv6_echo_and_what_is_not_translated():
    c, r = pair()
    code, out = both(c, r, "out", echo6(LAN1, REM, 7), 0, 1.0)
    assert code == "ok" and out[8:24] == EXT0 and valid(out)
    ext_id = struct.unpack("!H", out[44:46])[0]
    code, back = both(c, r, "in", echo6(REM, EXT0, ext_id, typ=129), 0, 1.1)
    assert code == "ok" and back[24:40] == LAN1 and back[44:46] == struct.pack("!H", 7) and valid(back)
    assert both(c, r, "in", echo6(REM, EXT0, ext_id), 0, 1.2)[0] == "pass"          # a request: the router's
    assert both(c, r, "out", icmp6(LAN1, REM, 135, bytes(4), bytes(16)), 0, 1.2)[0] == "unsupported"
    assert both(c, r, "out", ipv6(LAN1, REM, 50, bytes(16)), 0, 1.2)[0] == "unsupported"
    routed = ipv6(LAN1, REM, 43, bytes([17, 0, 0, 1]) + bytes(4) + bytes(8))
    assert both(c, r, "out", routed, 0, 1.2)[0] == "unsupported"                    # segments left


def test_icmpv6_errors_both_ways_carry_the_quote_along():
    c, r = pair()
    sent = bytearray(udp6(LAN1, REM, 5000, 53, data=b"q" * 20))
    assert c.out_packet(sent, 0, 1.0) == "ok"
    assert r.out_packet(bytearray(udp6(LAN1, REM, 5000, 53, data=b"q" * 20)), 0, 1.0) == "ok"
    for typ in (1, 2, 3, 4):
        assert both(c, r, "in", error6(ROUTER, EXT0, bytes(sent), typ=typ, keep=44), 0, 1.1)[0] == "malformed"
        for keep in (None, 48):
            code, back = both(c, r, "in", error6(ROUTER, EXT0, bytes(sent), typ=typ, keep=keep), 0, 1.1)
            assert code == "ok" and back[24:40] == LAN1 and back[48 + 8:48 + 24] == LAN1 and valid(back)
            if keep is None:
                assert back[48:] == udp6(LAN1, REM, 5000, 53, data=b"q" * 20)      # the quote as it left
    # a LAN host's error about a reply that came in: the quote as the remote sent it
    reply = udp6(REM, EXT0, 53, 5000, data=b"r" * 9)
    arrived = bytearray(reply)
    assert c.in_packet(arrived, 0, 1.2) == "ok" and r.in_packet(bytearray(reply), 0, 1.2) == "ok"
    code, out = both(c, r, "out", error6(LAN1, REM, bytes(arrived), typ=1), 0, 1.3)
    assert code == "ok" and out[8:24] == EXT0 and out[48:] == reply and valid(out)
    assert both(c, r, "out", error6(LAN1, REM, udp6(REM2, LAN1, 53, 5000)), 0, 1.3)[0] == "unknown"
    assert both(c, r, "in", error6(ROUTER, EXT0, udp6(EXT0, REM, 9999, 53)), 0, 1.3)[0] == "unknown"


def test_fragments_follow_their_first_by_identification():
    c, r = pair()
    code, first = both(c, r, "out", udp6(LAN1, REM, 5000, 53, data=b"a" * 24, frag=(0, 1, 99)), 0, 1.0)
    assert code == "ok" and first[8:24] == EXT0
    later = ipv6(LAN1, REM, 17, b"b" * 16, frag=(4, 0, 99))
    assert both(c, r, "out", later, 0, 1.0)[1][8:24] == EXT0
    # inbound: the first carries the ports, the later one is unseen until its first came
    lone = ipv6(REM, EXT0, 17, b"c" * 16, frag=(4, 0, 5))
    assert both(c, r, "in", lone, 0, 1.1)[0] == "pass"
    code, back = both(c, r, "in", udp6(REM, EXT0, 53, 5000, data=b"d" * 24, frag=(0, 1, 5)), 0, 1.1)
    assert code == "ok" and back[24:40] == LAN1
    code, back = both(c, r, "in", lone, 0, 1.2)
    assert code == "ok" and back[24:40] == LAN1
    assert c.expire(100.0) == r.expire(100.0)
    assert both(c, r, "in", lone, 0, 100.0)[0] == "pass"                           # its record expired


def test_exhaustion_expiry_pending_sums_and_no_address():
    c, r = pair(capacity=2, port_range=(2000, 2001))
    for i, port in enumerate((1000, 1001)):
        assert both(c, r, "out", udp6(LAN1, REM, port, 53), 0, float(i))[0] == "ok"
    assert both(c, r, "out", udp6(LAN1, REM, 1002, 53), 0, 2.0)[0] == "exhausted"
    assert c.exhausted == r.exhausted == 1 and c.stats()["exhausted"] == 1
    assert c.expire(40.0) == r.expire(40.0) == 2 and len(c) == len(r) == 0
    pkt = bytearray(udp6(LAN1, REM, 1000, 53))
    nh, off = upper(pkt)
    pseudo = _sum(pkt[8:40] + struct.pack("!I3xB", len(pkt) - off, 17))
    pkt[off + 6:off + 8] = struct.pack("!H", pseudo)                        # a pending checksum
    code, out = both(c, r, "out", bytes(pkt), 0, 50.0, pending=True)
    assert code == "ok" and struct.unpack("!H", out[off + 6:off + 8])[0] == _sum(
        out[8:40] + struct.pack("!I3xB", len(out) - off, 17))
    for nat in (c, r):
        nat.set_address(1, None, hold=True)
    assert both(c, r, "out", udp6(LAN1, REM, 1000, 53), 1, 51.0)[0] == "no_address"
    for nat in (c, r):
        nat.set_address(1, None)
    assert both(c, r, "out", udp6(LAN1, REM, 1000, 53), 1, 51.0)[0] == "pass"      # not translating
    assert c.address(0) == EXT0 and c.address(1) is None


def test_moved_flows_are_counted():
    c, r = pair()
    both(c, r, "out", udp6(LAN1, REM, 4000, 443), 0, 1.0)
    both(c, r, "out", udp6(LAN1, REM, 4000, 443), 1, 2.0)
    assert c.moved == r.moved == 1


# ---------------------------------------------------------------------- properties
def whole(pkt: bytes) -> bool:
    """Not a fragment, and its headers all there (junk may be neither)."""
    try:
        off, nh = 40, pkt[6]
        while nh in (0, 60, 43):
            nh, off = pkt[off], off + (pkt[off + 1] + 1) * 8
        return nh != 44 and off + 8 <= len(pkt)
    except IndexError:
        return False


ADDRS = [LAN1, LAN2, REM, REM2, EXT0, EXT1, ROUTER]


@st.composite
def packets(draw):
    kind = draw(st.sampled_from(["tcp", "udp", "echo", "reply", "err", "frag", "junk"]))
    s, d = draw(st.sampled_from(ADDRS)), draw(st.sampled_from(ADDRS))
    sp, dp = draw(st.sampled_from([53, 80, 1024, 5000, 40000, 65535])), draw(st.sampled_from([53, 80, 5000]))
    kw = {"hbh": draw(st.booleans())}
    if kind == "tcp":
        return tcp6(s, d, sp, dp, draw(st.sampled_from([0x02, 0x12, 0x10, 0x11, 0x04])), b"t" * draw(st.integers(0, 30)), **kw)
    if kind == "udp":
        return udp6(s, d, sp, dp, b"u" * draw(st.integers(0, 30)), **kw)
    if kind in ("echo", "reply"):
        return echo6(s, d, sp, typ=128 if kind == "echo" else 129, **kw)
    if kind == "err":
        return error6(s, d, draw(packets()), typ=draw(st.sampled_from([1, 2, 3, 4])),
                      keep=draw(st.sampled_from([None, 48, 44, 40, 30])))
    if kind == "frag":
        first = draw(st.booleans())
        if first:
            return udp6(s, d, sp, dp, b"f" * 16, frag=(0, 1, draw(st.integers(0, 3))), **kw)
        return ipv6(s, d, draw(st.sampled_from([6, 17, 58, 47])), b"f" * 16,
                    frag=(draw(st.integers(1, 3)), draw(st.integers(0, 1)), draw(st.integers(0, 3))), **kw)
    return draw(st.binary(min_size=0, max_size=100))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["out", "in"]), packets(), st.integers(0, 2),
                          st.floats(0, 200), st.booleans()), max_size=40),
       st.booleans())
def test_compiled_and_reference_agree_on_every_packet(ops, mutate):
    """Random traffic both ways (uplink 2 does not exist: pass), junk, mutated headers: the
    same codes, the same bytes, the same tables; and right checksums stay right."""
    c, r = pair(capacity=8)
    now = 0.0
    for direction, pkt, u, dt, flip in ops:
        now += dt
        if mutate and flip and len(pkt) > 50:
            pkt = pkt[:45] + bytes([pkt[45] ^ 0x5A]) + pkt[46:]
        code, out = both(c, r, direction, pkt, u, now)
        if code == "ok" and whole(pkt) and valid(pkt):
            assert valid(out), (direction, pkt.hex(), out.hex())
        if dt > 100:
            assert c.expire(now) == r.expire(now)
        assert len(c) == len(r)
        assert c.exhausted == r.exhausted and c.moved == r.moved


def test_the_uplinks_address_is_a_stable_global_one():
    """NAPT66 translates to the device's global address: a stable one before a privacy
    (temporary) or deprecated one, a global one before a unique local one; none: None."""
    from engine.netlink import IFA_F_DEPRECATED, IFA_F_TEMPORARY, State

    s = State()
    s.addrs[3] = {A("fe80::1"): (64, None), A("2001:db8:1::aaaa"): (64, None), A("2001:db8:1::2"): (64, None),
                  A("2001:db8:1::1"): (64, None), A("fd00:9::1"): (64, None)}
    s.aflags[(3, A("2001:db8:1::1"))] = IFA_F_TEMPORARY
    s.aflags[(3, A("2001:db8:1::2"))] = IFA_F_DEPRECATED
    assert str(s.address6(3)) == "2001:db8:1::aaaa"
    s.addrs[3].pop(A("2001:db8:1::aaaa"))
    assert str(s.address6(3)) == "fd00:9::1"             # stable (a ULA) before temporary or deprecated
    s.addrs[3] = {A("fe80::1"): (64, None)}
    assert s.address6(3) is None and s.address6(4) is None
