"""The stateful edge (pyx/edge.pyx) against its reference (engine/ref/edge.py): the same
verdict for every packet, the same flows, states and expiry, whatever the order of packets,
times and table size; and the rules one by one (replies, ICMP errors quoting a flow, echo)."""
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import _edge
from engine.ref.edge import RefEdge
from engine.ref.parse import parse_frame
from tests.framegen import eth, icmp4_echo, icmpv6, icmpv6_echo, ipv4, ipv6, udp

LAN6, REM6, REM6B = "2001:db8:1::10", "2001:db8:ff::1", "2001:db8:ff::2"
LAN6B = "2001:db8:1::11"
LAN4, REM4 = "192.0.2.10", "198.51.100.1"
OK, UNSOLICITED, FULL = 0, 1, 2


def test_the_compiled_module_runs():
    assert _edge.__file__.endswith(".so")
    assert type(_edge.Edge(16)).__module__ == "engine._edge"


def tcp(sport, dport, flags=0x10):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)


def frame6(payload, nh, src, dst):
    return eth(ipv6(payload, nh, src=src, dst=dst))


def frame4(payload, proto, src, dst):
    return eth(ipv4(payload, proto, src=src, dst=dst), 0x0800)


def row(f):
    r = parse_frame(f)
    assert r["reason"] in (0, 11), r
    return {k: (bytes(v) if isinstance(v, (bytes, bytearray)) else v) for k, v in r.items()}


def both(capacity=64):
    return _edge.Edge(capacity, seed=1), RefEdge(capacity)


def out(edges, f, now, tcp_flags=0):
    codes = {e.outbound(row(f), tcp_flags, now) for e in edges}
    assert len(codes) == 1, codes
    return codes.pop()


def inn(edges, f, now):
    codes = {e.inbound(row(f), f, now) for e in edges}
    assert len(codes) == 1, codes
    return codes.pop()


def test_a_reply_gets_in_and_nothing_else():
    e = both()
    assert out(e, frame6(udp(5000, 53), 17, LAN6, REM6), 1.0) == OK
    assert inn(e, frame6(udp(53, 5000), 17, REM6, LAN6), 1.1) == OK
    assert inn(e, frame6(udp(54, 5000), 17, REM6, LAN6), 1.1) == UNSOLICITED     # another port
    assert inn(e, frame6(udp(53, 5000), 17, REM6B, LAN6), 1.1) == UNSOLICITED    # another address
    assert inn(e, frame6(udp(53, 5000), 17, REM6, LAN6B), 1.1) == UNSOLICITED    # another LAN host
    assert inn(e, frame6(tcp(53, 5000), 6, REM6, LAN6), 1.1) == UNSOLICITED      # another protocol
    assert inn(e, frame4(udp(53, 5000), 17, REM4, LAN4), 1.1) == UNSOLICITED
    assert out(e, frame4(udp(5000, 53), 17, LAN4, REM4), 1.2) == OK
    assert inn(e, frame4(udp(53, 5000), 17, REM4, LAN4), 1.3) == OK
    assert len(e[0]) == len(e[1]) == 2


def test_echo_requests_open_echo_and_inbound_requests_follow_rfc_4890():
    e = both()
    assert inn(e, frame6(icmpv6_echo(7, req=False), 58, REM6, LAN6), 1.0) == UNSOLICITED
    assert out(e, frame6(icmpv6_echo(7), 58, LAN6, REM6), 1.0) == OK
    assert inn(e, frame6(icmpv6_echo(7, req=False), 58, REM6, LAN6), 1.1) == OK
    assert inn(e, frame6(icmpv6_echo(8, req=False), 58, REM6, LAN6), 1.1) == UNSOLICITED
    # an echo request from outside reaches an IPv6 host (RFC 4890 4.3.1), not an IPv4 one
    assert inn(e, frame6(icmpv6_echo(9), 58, REM6B, LAN6), 1.1) == OK
    assert inn(e, frame4(icmp4_echo(9), 1, REM4, LAN4), 1.1) == UNSOLICITED
    assert out(e, frame4(icmp4_echo(9), 1, LAN4, REM4), 1.2) == OK
    assert inn(e, frame4(icmp4_echo(9, req=False), 1, REM4, LAN4), 1.3) == OK
    # what the LAN answers makes no flow; other informational ICMPv6 stays out
    assert out(e, frame6(icmpv6_echo(10, req=False), 58, LAN6, REM6), 1.4) == OK
    assert inn(e, frame6(icmpv6_echo(10), 58, REM6, LAN6), 1.5) == OK
    assert inn(e, frame6(icmpv6(139, 0, bytes(12)), 58, REM6, LAN6), 1.5) == UNSOLICITED
    assert len(e[0]) == len(e[1]) == 2


def too_big(quoted: bytes, to=LAN6, mtu=1280):
    return frame6(icmpv6(2, 0, struct.pack("!I", mtu) + quoted), 58, "2001:db8:a1::1", to)


def test_errors_pass_when_they_quote_a_flow_of_their_destination():
    e = both()
    sent = ipv6(udp(5000, 443, b"q" * 40), 17, src=LAN6, dst=REM6)
    assert inn(e, too_big(sent), 1.0) == UNSOLICITED                   # no flow yet: forged
    assert out(e, eth(sent), 1.0) == OK
    assert inn(e, too_big(sent), 1.1) == OK
    assert inn(e, too_big(sent[:44]), 1.1) == OK                       # the ports are enough
    assert inn(e, too_big(sent[:41]), 1.1) == UNSOLICITED              # cut before the ports
    assert inn(e, too_big(sent, to=LAN6B), 1.1) == UNSOLICITED         # to another host
    other = ipv6(udp(5001, 443), 17, src=LAN6, dst=REM6)
    assert inn(e, too_big(other), 1.1) == UNSOLICITED                  # another flow of the host
    # a quote behind extension headers; a later fragment quoted has no ports
    from tests.framegen import dstopts, frag6
    ext = ipv6(dstopts(17) + udp(5000, 443), 60, src=LAN6, dst=REM6)
    assert inn(e, too_big(ext), 1.1) == OK
    later = ipv6(frag6(17, offset=8) + udp(5000, 443), 44, src=LAN6, dst=REM6)
    assert inn(e, too_big(later), 1.1) == UNSOLICITED
    # time exceeded and destination unreachable, IPv4 too
    for t in (1, 3, 4):
        assert inn(e, frame6(icmpv6(t, 0, bytes(4) + sent), 58, "2001:db8:a1::1", LAN6), 1.2) == OK
    sent4 = ipv4(udp(5000, 443), 17, src=LAN4, dst=REM4)
    err4 = frame4(struct.pack("!BBHHH", 3, 4, 0, 0, 1400) + sent4[:28], 1, "198.18.1.1", LAN4)
    assert inn(e, err4, 1.3) == UNSOLICITED
    assert out(e, eth(sent4, 0x0800), 1.3) == OK
    assert inn(e, err4, 1.4) == OK
    # an error about an echo request
    ping = ipv6(icmpv6_echo(77), 58, src=LAN6, dst=REM6)
    assert inn(e, too_big(ping), 1.5) == UNSOLICITED
    assert out(e, eth(ping), 1.5) == OK
    assert inn(e, too_big(ping), 1.6) == OK


def test_a_full_table_refuses_new_flows_and_keeps_the_old():
    e = both(capacity=4)
    for k in range(4):
        assert out(e, frame6(udp(5000 + k, 53), 17, LAN6, REM6), 1.0) == OK
    assert out(e, frame6(udp(6000, 53), 17, LAN6, REM6), 1.0) == FULL
    assert e[0].full == e[1].full == 1
    assert out(e, frame6(udp(5000, 53), 17, LAN6, REM6), 2.0) == OK          # an old one: refreshed
    assert inn(e, frame6(udp(53, 5003), 17, REM6, LAN6), 2.0) == OK
    assert [x.expire(31.5) for x in e] == [2, 2]                               # 5001, 5002 idle 30.5 s
    assert out(e, frame6(udp(6000, 53), 17, LAN6, REM6), 32.0) == OK


def test_idle_timeouts_follow_conntrack():
    e = both()
    assert out(e, frame6(udp(1, 2), 17, LAN6, REM6), 0.0) == OK               # UDP unreplied: 30 s
    assert out(e, frame6(udp(3, 4), 17, LAN6, REM6), 0.0) == OK
    assert inn(e, frame6(udp(4, 3), 17, REM6, LAN6), 0.0) == OK                # replied: 120 s
    assert out(e, frame6(tcp(5, 6, 0x02), 6, LAN6, REM6), 0.0, 0x02) == OK    # SYN: 120 s
    assert out(e, frame6(tcp(7, 8, 0x02), 6, LAN6, REM6), 0.0, 0x02) == OK
    assert inn(e, frame6(tcp(8, 7, 0x12), 6, REM6, LAN6), 0.0) == OK           # established: 5 days
    assert out(e, frame6(tcp(9, 10, 0x04), 6, LAN6, REM6), 0.0, 0x04) == OK   # RST: 10 s
    assert [x.expire(11.0) for x in e] == [1, 1]
    assert [x.expire(31.0) for x in e] == [1, 1]
    assert [x.expire(121.0) for x in e] == [2, 2]
    assert [len(x) for x in e] == [1, 1]
    assert [x.expire(432001.0) for x in e] == [1, 1]


# ---------------------------------------------------------------- property: compiled == reference
HOSTS6 = [LAN6, LAN6B]
REMS6 = [REM6, REM6B]


@st.composite
def packets(draw):
    """A frame going out (LAN -> remote) or coming in (remote -> LAN) over a small space of
    addresses, ports and kinds, so flows meet."""
    v6 = draw(st.booleans())
    lan = draw(st.sampled_from(HOSTS6 if v6 else [LAN4, "192.0.2.11"]))
    rem = draw(st.sampled_from(REMS6 if v6 else [REM4, "198.51.100.2"]))
    lp, rp = draw(st.sampled_from([1000, 1001])), draw(st.sampled_from([53, 80]))
    kind = draw(st.sampled_from(["udp", "tcp", "echo", "echo_reply", "error", "esp", "truncated_error"]))
    direction = draw(st.sampled_from(["out", "in"]))
    flags = draw(st.sampled_from([0x02, 0x12, 0x10, 0x11, 0x04]))
    src, dst = (lan, rem) if direction == "out" else (rem, lan)
    sp, dp = (lp, rp) if direction == "out" else (rp, lp)
    mk = (lambda p, nh, s, d: frame6(p, nh, s, d)) if v6 else (lambda p, nh, s, d: frame4(p, nh, s, d))
    icmp = 58 if v6 else 1
    if kind == "udp":
        f = mk(udp(sp, dp), 17, src, dst)
    elif kind == "tcp":
        f = mk(tcp(sp, dp, flags), 6, src, dst)
    elif kind in ("echo", "echo_reply"):
        body = icmpv6_echo(lp, req=kind == "echo") if v6 else icmp4_echo(lp, req=kind == "echo")
        f = mk(body, icmp, src, dst)
    elif kind == "esp":
        f = mk(bytes(16), 50, src, dst)
    else:
        quoted_l4 = draw(st.sampled_from(["udp", "echo"]))
        ql = udp(lp, rp) if quoted_l4 == "udp" else (icmpv6_echo(lp) if v6 else icmp4_echo(lp))
        qp = 17 if quoted_l4 == "udp" else icmp
        quoted = (ipv6(ql, qp, src=lan, dst=rem) if v6 else ipv4(ql, qp, src=lan, dst=rem))
        if kind == "truncated_error":
            quoted = quoted[:draw(st.integers(0, len(quoted)))]
        t = draw(st.sampled_from([1, 2, 3, 4] if v6 else [3, 11, 12]))
        f = mk(struct.pack("!BBHI", t, 0, 0, 1280) + quoted, icmp, "2001:db8:a1::1" if v6 else "198.18.1.1", dst)
        if direction == "out":
            f = mk(struct.pack("!BBHI", t, 0, 0, 1280) + quoted, icmp, lan, rem)
    return direction, f, flags if kind == "tcp" else 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(packets(), st.floats(0, 200), st.booleans()), min_size=1, max_size=60),
       st.integers(1, 12))
def test_compiled_matches_reference(events, capacity):
    c, r = _edge.Edge(capacity), RefEdge(capacity)
    now = 0.0
    for (direction, f, tcp_flags), dt, expire in events:
        now += dt
        rw = row(f)
        if direction == "out":
            got, want = c.outbound(rw, tcp_flags, now), r.outbound(rw, tcp_flags, now)
        else:
            got, want = c.inbound(rw, f, now), r.inbound(rw, f, now)
        assert got == want, (direction, rw)
        if expire:
            assert c.expire(now) == r.expire(now)
        assert sorted(c.entries()) == r.entries()
        assert c.full == r.full


def test_bytes_per_flow():
    assert _edge.Edge(16).bytes_per_flow == 68
