"""Proxy neighbour discovery (engine/ndproxy.py) and npt_prefix = "auto"'s choice of prefix
(engine/translate.py): the advertisements checked against dpkt's independent construction
(its own ICMPv6 checksum), the solicitations it must refuse, the prefix and the addresses
NPT keeps clear of, from a kernel state built by hand."""
import ipaddress

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ndproxy as nd
from engine.netlink import Link, State
from engine.translate import in_use, own_prefix

OUR_MAC = bytes.fromhex("02aa00000001")
ISP_MAC = bytes.fromhex("02bb00000001")
OUR_LL = ipaddress.IPv6Address("fe80::aa:1").packed
ISP_IP = ipaddress.IPv6Address("2001:db8:a1::1").packed
TARGET = ipaddress.IPv6Address("2001:db8:a1:0:cea7::10").packed


def a6(text):
    return ipaddress.IPv6Address(text).packed


def dpkt_ns(src, dst, target, src_mac=ISP_MAC, dst_mac=None, slla=True, hlim=255, code=0):
    """A neighbour solicitation built by dpkt (its checksum its own)."""
    opts = bytes([1, 1]) + src_mac if slla else b""
    icmp = dpkt.icmp6.ICMP6(type=135, code=code, data=bytes(4) + target + opts)
    ip = dpkt.ip6.IP6(src=src, dst=dst, nxt=58, hlim=hlim, plen=len(bytes(icmp)), data=icmp)
    dst_mac = dst_mac or b"\x33\x33" + dst[12:]
    return bytes(dpkt.ethernet.Ethernet(dst=dst_mac, src=src_mac, type=0x86DD, data=ip))


def dpkt_na(src_mac, src, dst_mac, dst, target, flags):
    icmp = dpkt.icmp6.ICMP6(type=136, code=0, data=flags.to_bytes(4, "big") + target + bytes([2, 1]) + src_mac)
    ip = dpkt.ip6.IP6(src=src, dst=dst, nxt=58, hlim=255, plen=len(bytes(icmp)), data=icmp)
    return bytes(dpkt.ethernet.Ethernet(dst=dst_mac, src=src_mac, type=0x86DD, data=ip))


def responder(known=(TARGET,)):
    r = nd.Responder(lambda t: t in known)
    r.set_addresses(OUR_MAC, OUR_LL)
    return r


def test_the_advertisement_is_what_dpkt_builds_solicited_override_clear():
    na = nd.build_na(OUR_MAC, OUR_LL, ISP_MAC, ISP_IP, TARGET, True)
    assert na == dpkt_na(OUR_MAC, OUR_LL, ISP_MAC, ISP_IP, TARGET, 0x40000000)
    eth = dpkt.ethernet.Ethernet(na)
    icmp = eth.data.data
    assert eth.data.hlim == 255 and icmp.type == 136 and icmp.code == 0
    flags = int.from_bytes(bytes(icmp.data)[:4], "big")
    assert flags >> 29 == 0b010                                   # R clear, S set, O clear (RFC 4861 7.2.8)
    # the checksum dpkt computes from scratch over the same message is the one we sent
    again = dpkt.ip6.IP6(bytes(eth.data))
    sent = again.data.sum
    again.data.sum = 0
    assert dpkt.ip6.IP6(bytes(again)).data.sum == sent


def test_a_solicitation_for_a_translated_host_gets_a_unicast_answer():
    r = responder()
    assert nd.solicited_node(TARGET) == a6("ff02::1:ff00:10")          # RFC 4291 2.7.1
    ns = dpkt_ns(ISP_IP, nd.solicited_node(TARGET), TARGET)
    assert nd.parse_ns(ns) == (ISP_MAC, ISP_IP, TARGET)
    na = r.answer(ns, now=0.0)
    assert na == dpkt_na(OUR_MAC, OUR_LL, ISP_MAC, ISP_IP, TARGET, 0x40000000)
    # unicast (neighbour unreachability detection): the same answer
    assert r.answer(dpkt_ns(ISP_IP, TARGET, TARGET, dst_mac=OUR_MAC), now=0.0) == na
    assert r.counts["answered"] == 2


def test_duplicate_address_detection_of_a_translated_address_is_defended_to_all_nodes():
    r = responder()
    dad = dpkt_ns(bytes(16), nd.solicited_node(TARGET), TARGET, src_mac=ISP_MAC, slla=False)
    na = r.answer(dad, now=0.0)
    assert na == dpkt_na(OUR_MAC, OUR_LL, nd.ALL_NODES_MAC, nd.ALL_NODES.packed, TARGET, 0)   # S, O clear
    assert r.counts["defended"] == 1


def test_no_answer_for_what_is_not_a_translation():
    r = responder()
    other = a6("2001:db8:a1::77")
    assert r.answer(dpkt_ns(ISP_IP, nd.solicited_node(other), other), now=0.0) is None
    assert r.counts["ignored"] == 1 and r.counts["answered"] == 0


@pytest.mark.parametrize("what", ["hop limit", "code", "checksum", "multicast target", "dad with slla",
                                  "dad to unicast", "short", "zero option"])
def test_invalid_solicitations_are_refused(what):
    r = responder(known=(TARGET, a6("ff02::1")))
    sn = nd.solicited_node(TARGET)
    ns = {"hop limit": lambda: dpkt_ns(ISP_IP, sn, TARGET, hlim=254),
          "code": lambda: dpkt_ns(ISP_IP, sn, TARGET, code=1),
          "checksum": lambda: (lambda b: b[:-1] + bytes([b[-1] ^ 1]))(dpkt_ns(ISP_IP, sn, TARGET)),
          "multicast target": lambda: dpkt_ns(ISP_IP, nd.solicited_node(a6("ff02::1")), a6("ff02::1")),
          "dad with slla": lambda: dpkt_ns(bytes(16), sn, TARGET, slla=True),
          "dad to unicast": lambda: dpkt_ns(bytes(16), TARGET, TARGET, slla=False),
          "short": lambda: dpkt_ns(ISP_IP, sn, TARGET)[:14 + 40 + 20],
          "zero option": lambda: dpkt_ns(ISP_IP, sn, TARGET)[:-8] + bytes([1, 0]) + OUR_MAC}[what]()
    assert r.answer(ns, now=0.0) is None and r.counts["invalid"] == 1


def test_answers_are_rate_limited_by_a_token_bucket():
    r = responder()
    ns = dpkt_ns(ISP_IP, nd.solicited_node(TARGET), TARGET)
    got = [r.answer(ns, now=5.0) is not None for _ in range(nd.BURST + 10)]
    assert got == [True] * nd.BURST + [False] * 10 and r.counts["limited"] == 10
    assert r.answer(ns, now=5.0 + 1.0 / nd.RATE * 1.5) is not None     # one token back later
    assert r.answer(ns, now=5.0 + 1.0 / nd.RATE * 1.5) is None


def test_no_answer_before_the_uplink_has_a_mac():
    r = nd.Responder(lambda t: True)
    assert r.answer(dpkt_ns(ISP_IP, nd.solicited_node(TARGET), TARGET), now=0.0) is None


def state(addrs, neigh=(), mac=OUR_MAC):
    s = State()
    s.links[5] = Link(5, "up1", mac=mac)
    s.addrs[5] = {ipaddress.ip_address(a).packed: (plen, None) for a, plen in addrs}
    for addr, m in neigh:
        s.neigh[(5, ipaddress.ip_address(addr).packed)] = m
    return s


def test_auto_takes_the_uplinks_own_prefix_of_the_lan_prefixs_length():
    st = state([("fe80::aa:1", 64), ("198.18.1.2", 24), ("2001:db8:a1::2", 64)])
    assert own_prefix(st, 5, 64) == (ipaddress.ip_network("2001:db8:a1::/64"), None)
    # a shorter on-link prefix: the /64 around the router's own address, still on the link
    st = state([("2001:db8:a1:7::2", 56)])
    assert own_prefix(st, 5, 64)[0] == ipaddress.ip_network("2001:db8:a1:7::/64")
    # a global address before a unique local one, whatever their order
    st = state([("fd99::2", 64), ("2001:db8:a1::2", 64)])
    assert own_prefix(st, 5, 64)[0] == ipaddress.ip_network("2001:db8:a1::/64")


def test_auto_refuses_what_it_cannot_map_in_one_sentence():
    net, why = own_prefix(state([("fe80::aa:1", 64), ("198.18.1.2", 24)]), 5, 64)
    assert net is None and "no global IPv6 address" in why
    net, why = own_prefix(state([("2001:db8:a1::2", 128)]), 5, 64)     # DHCPv6's /128 alone
    assert net is None and "/128" in why and "npt_prefix" in why


def test_a_dhcpv6_address_takes_the_on_link_route_around_it():
    """DHCPv6 gives a /128; the RA's on-link /64 is a route on the device (no gateway)."""
    from engine import _kernel as K

    st = state([("2001:db8:a1::99", 128)])
    st.routes.add((a6("2001:db8:a1::"), 64, K.RT_TABLE_MAIN, (5,), None, 256))
    st.routes.add((a6("2001:db8:77::"), 64, K.RT_TABLE_MAIN, (5,), None, 256))        # not around it
    st.routes.add((bytes(16), 0, K.RT_TABLE_MAIN, (5,), a6("fe80::1"), 1024))        # the default
    assert own_prefix(st, 5, 64) == (ipaddress.ip_network("2001:db8:a1::/64"), None)
    st = state([("2001:db8:a1::99", 128)])
    st.routes.add((a6("2001:db8:a1::"), 64, K.RT_TABLE_MAIN, (6,), None, 256))         # another device's
    assert own_prefix(st, 5, 64)[0] is None
    assert own_prefix(state([]), None, 64)[0] is None


def test_the_addresses_in_use_on_the_link_are_kept_clear_of():
    outer = ipaddress.ip_network("2001:db8:a1::/64")
    st = state([("2001:db8:a1::2", 64), ("fe80::aa:1", 64)],
               neigh=[("2001:db8:a1::1", ISP_MAC), ("2001:db8:a1::99", bytes.fromhex("02cc00000001")),
                      ("2001:db8:a1::50", OUR_MAC), ("2001:db8:ff::1", ISP_MAC), ("fe80::1", ISP_MAC)])
    got = in_use(st, 5, outer, [ISP_IP, a6("fe80::1")])
    assert got == tuple(map(ipaddress.IPv6Address, ("2001:db8:a1::2", "2001:db8:a1::1", "2001:db8:a1::99")))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 14 + 40 + 40), st.integers(0, 255)), max_size=6),
       st.integers(14 + 40, 14 + 40 + 48), st.booleans())
def test_hostile_solicitations_never_raise_and_are_answered_only_when_valid(edits, cut, dad):
    """Any byte changed, any length: an answer only for a well-formed solicitation of a
    known target, and then one dpkt reads as an advertisement for that target."""
    frame = bytearray(dpkt_ns(bytes(16) if dad else ISP_IP, nd.solicited_node(TARGET), TARGET, slla=not dad))
    for at, v in edits:
        if at < len(frame):
            frame[at] = v
    frame = bytes(frame[:cut])
    r = responder()
    na = r.answer(frame, now=0.0)
    if na is None:
        return
    ns = nd.parse_ns(frame)
    assert ns is not None and ns[2] == TARGET
    icmp = dpkt.ethernet.Ethernet(na).data.data
    assert icmp.type == 136 and bytes(icmp.data)[4:20] == TARGET


def test_the_gateway_is_kept_clear_of_before_the_kernel_knows_its_mac():
    outer = ipaddress.ip_network("2001:db8:a1::/64")
    got = in_use(state([("2001:db8:a1::2", 64)]), 5, outer, [a6("2001:db8:a1::fe"), a6("2001:db8:ff::1")])
    assert got == (ipaddress.IPv6Address("2001:db8:a1::2"), ipaddress.IPv6Address("2001:db8:a1::fe"))
