"""The forwarding decisions: compiled engine._forward against the per-frame reference
(engine/ref/forward.py), offline, on framegen frames; the address table against a dict."""
import ipaddress
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import framegen as g
from engine import _forward, _pipeline
from engine import constants as C
from engine import counters as CT
from engine.config import load_config, to_mapped
from engine.frames import pack_frames
from engine.ref.forward import RefForwarder
from engine.ref.rewrite import ones_sum

CFG = load_config(None)
UP_MAC = [bytes.fromhex("0200000001" + f"{k:02x}") for k in range(1, 3)]
GW_MAC = [bytes.fromhex("0200000002" + f"{k:02x}") for k in range(1, 3)]
GW4_MAC = [bytes.fromhex("0200000004" + f"{k:02x}") for k in range(1, 3)]    # a DHCP router's, apart
HOST_MAC = bytes.fromhex("020000000301")


def test_compiled_forward_is_loaded():
    assert _forward.__file__.endswith(".so")
    assert _pipeline.__file__.endswith(".so")


def pair(router=True, mtus=(1500, 1500), gw_known=(True, True), local=(), hosts=(), in_mtu=1500,
         t_start=0.0, t_end=float("inf"), kernel_nets=()):
    """A compiled Forwarder and a RefForwarder with the same tables; gw_known[u] True/False
    (one next hop for both families) or (IPv4 known, IPv6 known): then IPv4's is GW4_MAC."""
    fw = _forward.Forwarder(_pipeline.Pipeline(CFG, batch=64), router, 2, 64)
    ref = RefForwarder(CFG, router, 2)
    fw.in_mac[0] = list(g.MAC_B)
    ref.in_mac = g.MAC_B
    nets = [to_mapped(n) for n in CFG.lan_prefixes]
    fw.set_lan_prefixes([(n.network_address.packed, n.netmask.packed) for n in nets])
    ref.lan_nets = [(n.network_address.packed, n.netmask.packed) for n in nets]
    knets = [to_mapped(ipaddress.ip_network(n)) for n in kernel_nets]
    fw.set_kernel_prefixes([(n.network_address.packed, n.netmask.packed) for n in knets])
    ref.kernel_nets = [(n.network_address.packed, n.netmask.packed) for n in knets]
    for u in range(2):
        fw.up_mac[u] = list(UP_MAC[u])
        if isinstance(gw_known[u], tuple):
            fw.gw_mac[u, 0] = list(GW4_MAC[u]) if gw_known[u][0] else [0] * 6
            fw.gw_mac[u, 1] = list(GW_MAC[u]) if gw_known[u][1] else [0] * 6
        else:
            fw.gw_mac[u] = list(GW_MAC[u]) if gw_known[u] else [0] * 6
        fw.up_mtu[u] = mtus[u]
    ref.up_mac = list(UP_MAC)
    ref.gw_mac = [(GW4_MAC[u] if gw_known[u][0] else bytes(6), GW_MAC[u] if gw_known[u][1] else bytes(6))
                  if isinstance(gw_known[u], tuple) else GW_MAC[u] if gw_known[u] else bytes(6) for u in range(2)]
    ref.up_mtu = list(mtus)
    fw.in_mtu = ref.in_mtu = in_mtu
    for a in local:
        fw.local.set(a, 1)
        ref.local.add(a)
    for k, a in enumerate(hosts):
        fw.host_mac[k] = list(HOST_MAC)
        fw.hosts.set(a, k)
        ref.hosts[a] = HOST_MAC
    fw.t_start, fw.t_end = ref.t_start, ref.t_end = t_start, t_end
    return fw, ref


def vnet_array(vs):
    a = np.zeros(max(1, len(vs)), C.VNET_DTYPE)
    for i, v in enumerate(vs):
        for k, x in v.items():
            a[i][k] = x
    return a


def compare(fw, ref, frames, vnets, ts, direction, u=0):
    buf, off, ln = pack_frames(frames)
    buf = np.array(buf, np.uint8)
    va = vnet_array(vnets)
    rva = va.copy()                      # the compiled stage rewrites va in place
    if direction == "out":
        out, off2, ln2 = fw.outbound(buf, off, ln, va, ts)
        rout, sent, rows = ref.outbound(frames, rva, ts)
    else:
        out, off2, ln2 = fw.inbound(u, buf, off, ln, va, ts)
        rout, sent, rows = ref.inbound(u, frames, rva, ts)
    assert out.tolist() == rout.tolist()
    assert fw.pipe.rows["reason"][:len(frames)].tolist() == rows["reason"].tolist()
    for i in range(len(frames)):
        if sent[i] is None:
            continue
        f, v = sent[i]
        assert bytes(buf[off2[i]:off2[i] + ln2[i]]) == f, i
        assert {k: int(va[i][k]) for k in v} == v, i
    kinds = sorted(int(k) for k in fw.take_punts()["kind"])
    assert kinds == sorted(k for k, _ in ref.punts)
    ref.punts.clear()
    table = fw.counters
    for name in ("kernel", "handover", "csum_finished", "super_frames", "no_uplink", "hop_limit", "oversize",
                 "no_neighbour", "bad_offload", "nat_unsolicited", "nat_exhausted", "nat_untranslatable",
                 "nat_no_address", "edge_unsolicited", "edge_full"):
        assert int(table[CT.INDEX[name]]) == ref.counters.get(name, 0), name
    return out


# ------------------------------------------------------------------ frames with offloads
def partial(frame: bytes, l3: int, l4: int, proto: int, family: int) -> tuple[bytes, dict]:
    """A frame whose checksum a sender left to the device: the right checksum replaced by the
    pseudo-header sum (folded, not complemented), as the kernel leaves it with NEEDS_CSUM."""
    at = l4 + {6: 16, 17: 6, 58: 2}[proto]
    end = len(frame)
    if family == 6:
        pseudo = frame[l3 + 8:l3 + 40] + struct.pack("!I3xB", end - l4, proto)
    else:
        pseudo = frame[l3 + 12:l3 + 20] + struct.pack("!xBH", proto, end - l4)
    f = frame[:at] + struct.pack("!H", ones_sum(pseudo)) + frame[at + 2:]
    return f, dict(flags=1, gso_type=0, hdr_len=0, gso_size=0, csum_start=l4, csum_offset=at - l4)


@st.composite
def offload_frame(draw):
    """(frame, vnet): finished, unfinished, a super-frame, or a bad request."""
    family = draw(st.sampled_from([4, 6]))
    proto = draw(st.sampled_from([6, 17] + ([58] if family == 6 else [])))
    size = draw(st.integers(0, 3000))
    payload = bytes(draw(st.integers(0, 255)) for _ in range(min(size, 8))) + bytes(size)
    sp, dp = draw(g.port), draw(g.port)
    l4 = g.tcp(sp, dp, payload) if proto == 6 else g.udp(sp, dp, payload) if proto == 17 else \
        g.icmpv6_echo(ident=sp, payload=payload)
    vlans = tuple(draw(st.lists(st.integers(1, 4094), max_size=1)))
    hl = draw(st.integers(1, 255))
    if family == 6:
        ip = g.ipv6(l4, proto, src="2001:db8:1::10", dst=draw(g.addr6), hlim=hl)
        frame, l3 = g.eth(ip, vlans=vlans), 14 + 4 * len(vlans)
        l4off = l3 + 40
    else:
        ip = g.ipv4(l4, proto, src="192.0.2.10", dst=draw(g.addr4), ttl=hl)
        frame, l3 = g.eth(ip, 0x0800, vlans=vlans), 14 + 4 * len(vlans)
        l4off = l3 + 20
    kind = draw(st.sampled_from(["finished", "partial", "partial", "gso", "bad"]))
    if kind == "finished":
        return frame, {}
    frame, v = partial(frame, l3, l4off, proto, family)
    if kind == "gso":
        v.update(gso_type={(4, 6): 1, (6, 6): 4}.get((family, proto), 5), gso_size=draw(st.integers(1, 1500)),
                 hdr_len=l4off + (20 if proto == 6 else 8))
    elif kind == "bad":
        v["csum_start"] = draw(st.integers(len(frame) - 1, 65535))
    return frame, v


@settings(max_examples=200, deadline=None)
@given(st.lists(offload_frame(), min_size=1, max_size=24), st.sampled_from([(1500, 1500), (1280, 600)]),
       st.booleans())
def test_outbound_matches_reference(batch, mtus, gw1):
    frames = [f for f, _ in batch]
    fw, ref = pair(router=True, mtus=mtus, gw_known=(True, gw1))
    compare(fw, ref, frames, [v for _, v in batch], np.full(len(frames), 100.0), "out")


@settings(max_examples=200, deadline=None)
@given(st.lists(offload_frame(), min_size=1, max_size=24),
       st.tuples(st.booleans(), st.booleans()), st.tuples(st.booleans(), st.booleans()))
def test_outbound_per_family_next_hops_match_reference(batch, gw0, gw1):
    """gateway4 / gateway6: each family leaves for its own next hop's MAC; a family without
    one on the chosen uplink is dropped (no_neighbour) while the other goes on."""
    frames = [f for f, _ in batch]
    fw, ref = pair(router=True, gw_known=(gw0, gw1))
    compare(fw, ref, frames, [v for _, v in batch], np.full(len(frames), 100.0), "out")


def test_each_family_goes_to_its_own_next_hop():
    """The same uplink, an IPv4 and an IPv6 datagram: the IPv4 one to the IPv4 router's MAC,
    the IPv6 one to the IPv6 router's; with IPv4's unknown only IPv4 is dropped."""
    v6 = g.eth(g.ipv6(g.udp(4000, 5000, b"six"), 17, src="2001:db8:1::10", dst="2001:db8:ff::1"))
    v4 = g.eth(g.ipv4(g.udp(4000, 5000, b"four"), 17, src="192.0.2.10", dst="198.51.100.1"), 0x0800)
    for known4 in (True, False):
        fw, ref = pair(router=True, gw_known=((known4, True), (known4, True)))
        out = compare(fw, ref, [v4, v6], [{}, {}], np.full(2, 100.0), "out")
        u = int(out[1])
        assert u >= 0 and bytes(fw.gw_mac[u, 1]) == GW_MAC[u]
        buf, off, ln = pack_frames([v4, v6])
        buf = np.array(buf, np.uint8)
        fw2, _ = pair(router=True, gw_known=((known4, True), (known4, True)))
        out2, off2, _ = fw2.outbound(buf, off, ln, vnet_array([{}, {}]), np.full(2, 100.0))
        assert bytes(buf[off2[1]:off2[1] + 6]) == GW_MAC[int(out2[1])]
        if known4:
            assert bytes(buf[off2[0]:off2[0] + 6]) == GW4_MAC[int(out2[0])]
        else:
            assert out2[0] < 0 and int(fw2.counters[CT.INDEX["no_neighbour"]]) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(g.valid_frame(), g.mutated_frame()), min_size=1, max_size=24), st.data())
def test_outbound_arbitrary_frames_match_reference(frames, data):
    """Any frame, with some destinations the router's own, some link-local or multicast,
    some for another MAC, a handover window cutting the batch."""
    local = [bytes(16 - 4) + b"\xc6\x33\x64\x01"]
    frames = [f if data.draw(st.integers(0, 5)) else g.MAC_A + f[6:] for f in frames]
    ts = np.array([data.draw(st.sampled_from([50.0, 100.0, 150.0])) for _ in frames])
    fw, ref = pair(router=True, local=local, t_start=60.0, t_end=140.0,
                   kernel_nets=["2001:db8:1::/64", "192.0.2.0/24", "8000::/2", "10.0.0.0/8"])
    compare(fw, ref, frames, [{}] * len(frames), ts, "out")


@st.composite
def inbound_frame(draw):
    """(frame, vnet) arriving on uplink 0: to a LAN host known or not, to the router, to
    elsewhere, to another MAC; partial checksums and super-frames too."""
    f, v = draw(offload_frame())
    f = bytearray(f)
    dst_kind = draw(st.sampled_from(["lan-known", "lan-unknown", "router", "elsewhere"]))
    l3 = 14 + (4 if f[12:14] == b"\x81\x00" else 0)
    if f[l3] >> 4 == 6:
        dst = {"lan-known": g.a6("2001:db8:1::10"), "lan-unknown": g.a6("2001:db8:1::99"),
               "router": g.a6("2001:db8:a1::2"), "elsewhere": g.a6("2001:db8:77::1")}[dst_kind]
        f[l3 + 24:l3 + 40] = dst
    else:
        dst = {"lan-known": g.a4("192.0.2.10"), "lan-unknown": g.a4("192.0.2.99"),
               "router": g.a4("198.18.1.2"), "elsewhere": g.a4("203.0.113.5")}[dst_kind]
        f[l3 + 16:l3 + 20] = dst
        hdr = bytes(f[l3:l3 + 20])
        f[l3 + 10:l3 + 12] = struct.pack("!H", g.checksum(hdr[:10] + b"\0\0" + hdr[12:]))
    f[:6] = UP_MAC[0] if draw(st.integers(0, 5)) else g.MAC_A
    if v.get("flags"):          # the pseudo-header changed with the destination: partial again
        fam = 6 if f[l3] >> 4 == 6 else 4
        proto = f[l3 + 6] if fam == 6 else f[l3 + 9]
        start = v["csum_start"]
        if start < len(f):
            g2, v2 = partial(bytes(f), l3, l3 + (40 if fam == 6 else 20), proto, fam)
            v2.update({k: v[k] for k in ("gso_type", "gso_size", "hdr_len", "csum_start") if k in v})
            return g2, v2
    return bytes(f), v


LOCAL = [g.a6("2001:db8:a1::2"), bytes(10) + b"\xff\xff" + g.a4("198.18.1.2")]
HOSTS = [g.a6("2001:db8:1::10"), bytes(10) + b"\xff\xff" + g.a4("192.0.2.10")]


@settings(max_examples=200, deadline=None)
@given(st.lists(inbound_frame(), min_size=1, max_size=24), st.sampled_from([1500, 900]))
def test_inbound_router_matches_reference(batch, in_mtu):
    fw, ref = pair(router=True, local=LOCAL, hosts=HOSTS, in_mtu=in_mtu)
    compare(fw, ref, [f for f, _ in batch], [v for _, v in batch], np.full(len(batch), 100.0), "in", u=0)


@settings(max_examples=150, deadline=None)
@given(st.lists(inbound_frame(), min_size=1, max_size=24))
def test_inbound_host_mode_matches_reference(batch):
    """Host mode: frames for the VI's addresses go in whole, super-frames' checksums finished
    too (the stack takes them as one packet), no hop, no MACs."""
    fw, ref = pair(router=False, local=HOSTS, in_mtu=65535)
    compare(fw, ref, [f for f, _ in batch], [v for _, v in batch], np.full(len(batch), 100.0), "in", u=0)


def test_checksums_are_finished_correctly():
    """An unfinished UDP checksum leaves finished: the receiver's check (sum incl. the
    pseudo-header = 0xFFFF) holds; a super-frame keeps its request for the kernel."""
    frame = g.eth(g.ipv6(g.udp(5, 6, b"hello world!"), 17, src="2001:db8:1::10", dst="2001:db8:ff::1"))
    f, v = partial(frame, 14, 54, 17, 6)
    fw, _ = pair()
    buf, off, ln = pack_frames([f])
    buf = np.array(buf, np.uint8)
    va = vnet_array([v])
    out, off2, ln2 = fw.outbound(buf, off, ln, va, np.full(1, 100.0))
    assert out.tolist() == [1]
    sent = bytes(buf[off2[0]:off2[0] + ln2[0]])
    pseudo = sent[22:54] + struct.pack("!I3xB", len(sent) - 54, 17)
    assert ones_sum(pseudo + sent[54:]) == 0xFFFF
    assert int(va[0]["flags"]) == 2 and int(fw.counters[CT.INDEX["csum_finished"]]) == 1


def test_punts_are_rate_limited():
    """A flood of hop-limit-1 packets costs at most the ICMP budget in Python work."""
    fw, _ = pair()
    frames = [g.eth(g.ipv6(g.udp(k, 6), 17, src="2001:db8:1::10", hlim=1)) for k in range(64)]
    buf, off, ln = pack_frames(frames)
    total = 0
    for _ in range(4):
        fw.outbound(np.array(buf, np.uint8), off, ln, None, np.full(64, 100.0))
        total += len(fw.take_punts())
    assert total == 50                                       # the burst; no time passed
    assert int(fw.counters[CT.INDEX["icmp_limited"]]) == 4 * 64 - 50
    assert int(fw.counters[CT.INDEX["hop_limit"]]) == 4 * 64


# ------------------------------------------------------------------ the address table
@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "remove"]), st.integers(0, 40), st.integers(0, 1000)),
                max_size=300))
def test_addr_table_against_a_dict(ops):
    t = _forward.AddrTable(64)
    model = {}
    keys = [bytes([k]) * 16 for k in range(41)]
    for op, k, v in ops:
        if op == "set":
            ok = t.set(keys[k], v)
            if k in model or len(model) < 64:
                assert ok
                model[k] = v
            else:
                assert not ok
        else:
            assert t.remove(keys[k]) == model.pop(k, -1)
        assert len(t) == len(model)
    for k in range(41):
        assert t.get(keys[k]) == model.get(k, -1)
    assert sorted(v for _, v in t.items()) == sorted(model.values())


def test_addr_table_ipv4_is_mapped():
    t = _forward.AddrTable(8)
    t.set(bytes([192, 0, 2, 1]), 3)
    assert t.get(bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])) == 3
    with pytest.raises(ValueError):
        t.set(b"\x01\x02", 1)


def test_every_outbound_verdict_is_exercised():
    """One batch with one frame per outcome, compared with the reference and with what a
    router must do with each."""
    src = dict(src="2001:db8:1::10")
    big = g.eth(g.ipv6(g.udp(1, 2, bytes(1400)), 17, dst="2001:db8:ff::9", **src))
    ok_frame, ok_v = partial(g.eth(g.ipv6(g.udp(7, 8, b"x" * 30), 17, dst="2001:db8:ff::1", **src)), 14, 54, 17, 6)
    gso_frame, gso_v = partial(g.eth(g.ipv6(g.tcp(9, 80, bytes(4000)), 6, dst="2001:db8:ff::2", **src)), 14, 54, 6, 6)
    gso_v.update(gso_type=4, gso_size=1200, hdr_len=74)         # segments of 1260 bytes fit 1280
    bad_frame, bad_v = partial(g.eth(g.ipv6(g.udp(3, 4), 17, dst="2001:db8:ff::3", **src)), 14, 54, 17, 6)
    bad_v["csum_start"] = 4000
    cases = [       # untagged flows are load balanced 20:50: the first to ar2 (1), the next to ar1 (0)
        ("forward, checksum finished", ok_frame, ok_v, 1),
        ("super-frame: the kernel segments it", gso_frame, gso_v, 0),
        ("multicast", g.eth(g.ipv6(g.udp(), 17, dst="ff02::1", **src)), {}, -2),
        ("link-local destination", g.eth(g.ipv6(g.udp(), 17, dst="fe80::1", **src)), {}, -2),
        ("the router's own address", g.eth(g.ipv6(g.udp(), 17, dst="2001:db8:a1::2", **src)), {}, -2),
        ("another MAC", g.eth(g.ipv6(g.udp(), 17, **src), dst=g.MAC_A), {}, -2),
        ("a network the kernel routes (a DMZ)", g.eth(g.ipv6(g.udp(), 17, dst="2001:db8:d::5", **src)), {}, -2),
        ("the LAN's own prefix (hairpin)", g.eth(g.ipv6(g.udp(), 17, dst="2001:db8:1::77", **src)), {}, -2),
        ("ARP", g.eth(bytes(28), 0x0806), {}, -2),
        ("hop limit 1", g.eth(g.ipv6(g.udp(5, 5), 17, dst="2001:db8:ff::4", hlim=1, **src)), {}, -3),
        ("over the MTU", big, {}, -3),
        ("checksum request outside the packet", bad_frame, bad_v, -3),
        ("malformed", g.eth(g.ipv6(b"", 17, plen=900, **src)), {}, -3),
    ]
    fw, ref = pair(mtus=(1500, 1280), local=[g.a6("2001:db8:a1::2")],
                   kernel_nets=["2001:db8:d::/64", "2001:db8:1::/64"])
    out = compare(fw, ref, [c[1] for c in cases], [c[2] for c in cases], np.full(len(cases), 100.0), "out")
    assert [int(x) for x in out] == [c[3] for c in cases], list(zip([c[0] for c in cases], out))
    reasons = [C.REASON_NAMES[r] for r in fw.pipe.rows["reason"][:len(cases)]]
    assert reasons[-4:] == ["hop_limit", "oversize", "bad_offload", "truncated_l3"]


# ------------------------------------------------------------------ source translation
from engine import _nat  # noqa: E402
from engine.ref.nat import Nat44Ref, Npt66Ref  # noqa: E402

EXT = [g.a4("198.18.1.2"), g.a4("198.18.2.2")]
LAN_HOST4 = to_mapped(ipaddress.ip_network("192.0.2.10/32")).network_address.packed
LAN_HOST6 = g.a6("2001:db8:1::10")
NPT_OUT = ipaddress.ip_network("2001:db8:a1:100::/64")


def nat_pair(modes=(2, 2), npt=True, capacity=64):
    fw, ref = pair(hosts=[LAN_HOST4, LAN_HOST6])
    c, r = _nat.Nat44(2, capacity, seed=3), Nat44Ref(2, capacity, seed=3)
    n6, r6 = _nat.Npt66(2), Npt66Ref(2)
    for u in range(2):
        c.set_address(u, EXT[u])
        r.set_address(u, EXT[u])
    if npt:
        for x in (n6, r6):
            x.set_prefixes(0, ipaddress.ip_network("2001:db8:1::/64"), NPT_OUT)
    fw.set_nat(c, list(modes), n6 if npt else None)
    ref.set_nat(r, list(modes), r6 if npt else None)
    return fw, ref


def sent_frames(fw, frames, direction="out", u=0, vnets=None):
    buf, off, ln = pack_frames(frames)
    buf = np.array(buf, np.uint8)
    va = vnet_array(vnets or [{}] * len(frames))
    if direction == "out":
        out, off2, ln2 = fw.outbound(buf, off, ln, va, np.full(len(frames), 10.0))
    else:
        out, off2, ln2 = fw.inbound(u, buf, off, ln, va, np.full(len(frames), 10.0))
    return out, [bytes(buf[off2[i]:off2[i] + ln2[i]]) for i in range(len(frames))]


def test_ipv4_flows_leave_translated_and_replies_come_back():
    fw, ref = nat_pair()
    f = g.eth(g.ipv4(g.udp(5000, 53), 17), 0x0800)
    ts = np.full(1, 10.0)
    out = compare(fw, ref, [f], [{}], ts, "out")
    u = int(out[0])
    fw2, _ = nat_pair()
    out2, [sent] = sent_frames(fw2, [f])
    assert int(out2[0]) == u and sent[26:30] == EXT[u] and sent[34:36] == struct.pack("!H", 5000)
    reply = g.eth(g.ipv4(g.udp(53, 5000), 17, src="198.51.100.1", dst=str(ipaddress.ip_address(EXT[u]))),
                  0x0800, dst=UP_MAC[u])
    assert compare(fw, ref, [reply], [{}], ts, "in", u).tolist() == [0]
    out3, [back] = sent_frames(fw2, [reply], "in", u)
    assert out3.tolist() == [0] and back[30:34] == g.a4("192.0.2.10") and back[:6] == HOST_MAC
    stranger = g.eth(g.ipv4(g.udp(53, 5001), 17, src="198.51.100.1", dst=str(ipaddress.ip_address(EXT[u]))),
                     0x0800, dst=UP_MAC[u])
    assert compare(fw, ref, [stranger], [{}], ts, "in", u).tolist() == [-3]
    assert fw.counters[CT.INDEX["nat_unsolicited"]] == 1


def test_private_only_leaves_public_lan_sources_alone():
    fw, ref = nat_pair(modes=(1, 1))
    f = g.eth(g.ipv4(g.udp(5000, 53), 17), 0x0800)               # 192.0.2.10: not private
    out = compare(fw, ref, [f], [{}], np.full(1, 10.0), "out")
    fw2, _ = nat_pair(modes=(1, 1))
    _, [sent] = sent_frames(fw2, [f])
    assert int(out[0]) >= 0 and sent[26:30] == g.a4("192.0.2.10")


def test_nptv6_on_one_uplink():
    fw, ref = nat_pair()
    frames = [g.eth(g.ipv6(g.udp(4000 + k, 53), 17, src="2001:db8:1::10")) for k in range(16)]
    out = compare(fw, ref, frames, [{}] * 16, np.full(16, 10.0), "out")
    fw2, _ = nat_pair()
    out2, sent = sent_frames(fw2, frames)
    for u, f in zip(out2.tolist(), sent):
        if u == 0:
            assert ipaddress.ip_address(f[22:38]) in NPT_OUT
        elif u == 1:
            assert f[22:38] == LAN_HOST6
    assert out.tolist() == out2.tolist()


def test_nat_reasons_without_an_address_or_ports():
    fw, ref = nat_pair(capacity=2)
    for x in (fw.nat,):
        x.set_address(1, None)
    ref.nat.set_address(1, None)
    frames = [g.eth(g.ipv4(g.udp(6000 + k, 53 + k), 17), 0x0800) for k in range(12)]
    out = compare(fw, ref, frames, [{}] * 12, np.full(12, 10.0), "out")
    reasons = {C.REASON_NAMES[x] for x in fw.pipe.rows["reason"][:12].tolist()}
    assert {"nat_exhausted", "nat_no_address"} & reasons, (out, reasons)


@settings(max_examples=150, deadline=None)
@given(st.lists(g.valid_frame(), min_size=1, max_size=16), st.lists(g.valid_frame(), min_size=1, max_size=16),
       st.integers(0, 1), st.sampled_from([(2, 2), (1, 1), (2, 0), (0, 1)]))
def test_translation_agrees_with_the_reference(outs, ins, u, modes):
    """Random frames out, then random frames and the translated ones' replies in: the same
    verdicts, bytes and counters as the reference."""
    fw, ref = nat_pair(modes=modes)
    ts = np.full(len(outs), 10.0)
    compare(fw, ref, outs, [{}] * len(outs), ts, "out")
    back = []
    for f in ins:
        f = bytearray(f)
        f[:6] = UP_MAC[u]
        if len(f) >= 34 and f[12:14] == b"\x08\x00":
            f[30:34] = EXT[u]                              # to the uplink's address (checksum off)
        back.append(bytes(f))
    compare(fw, ref, back, [{}] * len(back), np.full(len(back), 11.0), "in", u)


# ------------------------------------------------------------------ host mode translation
VI4 = to_mapped(ipaddress.ip_network("198.18.99.10/32")).network_address.packed
KERNEL_PORTS = (32768, 60999)               # ip_local_port_range: the host's own sockets


def host_nat_pair(capacity=64):
    """mmr host: the VI's address is the only inside one, every IPv4 source translated."""
    fw, ref = pair(router=False, local=[VI4], in_mtu=65535)
    c = _nat.Nat44(2, capacity, seed=5, avoid=KERNEL_PORTS)
    r = Nat44Ref(2, capacity, seed=5, avoid=KERNEL_PORTS)
    for u in range(2):
        c.set_address(u, EXT[u])
        r.set_address(u, EXT[u])
    fw.set_nat(c, [2, 2], None)
    ref.set_nat(r, [2, 2], None)
    return fw, ref


def to_uplink(u, proto_l4, proto, src="198.51.100.9"):
    return g.eth(g.ipv4(proto_l4, proto, src=src, dst=str(ipaddress.ip_address(EXT[u]))), 0x0800, dst=UP_MAC[u])


def test_host_mode_translates_the_vi_and_leaves_the_hosts_own_ports_to_the_kernel():
    fw, ref = host_nat_pair()
    fw2, _ = host_nat_pair()
    ts = np.full(1, 10.0)
    f = g.eth(g.ipv4(g.udp(40000, 53), 17, src="198.18.99.10", dst="198.51.100.9"), 0x0800)
    u = int(compare(fw, ref, [f], [{}], ts, "out")[0])
    out, [sent] = sent_frames(fw2, [f])
    assert u >= 0 and int(out[0]) == u and sent[26:30] == EXT[u]
    port = struct.unpack("!H", sent[34:36])[0]
    assert not KERNEL_PORTS[0] <= port <= KERNEL_PORTS[1]      # never a port the kernel's sockets take
    reply = to_uplink(u, g.udp(53, port), 17)
    assert compare(fw, ref, [reply], [{}], ts, "in", u).tolist() == [0]
    out, [back] = sent_frames(fw2, [reply], "in", u)
    assert out.tolist() == [0] and back[30:34] == g.a4("198.18.99.10") and back[36:38] == struct.pack("!H", 40000)
    # to the interface's address: a mapping's port without a mapping is dropped and counted;
    # the host's own sockets (ports of the kernel's range) and pings to it are the kernel's;
    # a reply from another remote than the mapping's is unsolicited
    others = [to_uplink(u, g.udp(53, port + 1), 17), to_uplink(u, g.udp(53, 40001), 17),
              to_uplink(u, g.tcp(80, 45000), 6), to_uplink(u, g.icmp4_echo(ident=port), 1),
              to_uplink(u, g.udp(53, port), 17, src="198.51.100.10")]
    assert compare(fw, ref, others, [{}] * 5, np.full(5, 10.0), "in", u).tolist() == [-3, -2, -2, -2, -3]
    assert fw.counters[CT.INDEX["nat_unsolicited"]] == 2


def test_host_mode_sends_the_hosts_own_packets_by_their_interface_untranslated():
    """What the host's kernel routes via vi0 from an interface's own address (a reset of a
    closed port, a server's answer) leaves by that interface as it is, whatever the flow's
    choice; the VI's own packets are still translated."""
    fw, ref = host_nat_pair()
    fw2, _ = host_nat_pair()
    for x in (fw, fw2):
        for u in range(2):
            x.own.set(bytes(10) + b"\xff\xff" + EXT[u], u)
    ref.own = {bytes(10) + b"\xff\xff" + EXT[u]: u for u in range(2)}
    frames = [g.eth(g.ipv4(g.tcp(45000 + k, 80), 6, src=str(ipaddress.ip_address(EXT[k % 2]))), 0x0800)
              for k in range(8)] + [g.eth(g.ipv4(g.udp(40000, 53), 17, src="198.18.99.10"), 0x0800)]
    out = compare(fw, ref, frames, [{}] * 9, np.full(9, 10.0), "out")
    assert out.tolist()[:8] == [k % 2 for k in range(8)]
    out2, sent = sent_frames(fw2, frames)
    assert out2.tolist() == out.tolist()
    for k in range(8):
        assert sent[k][14:] == frames[k][14:] and sent[k][:6] == GW_MAC[k % 2]   # addresses, ports as they were
    assert sent[8][26:30] == EXT[int(out[8])]
    assert len(fw2.nat) == 1                                    # a mapping for the VI's flow only


def from_vi(f: bytes) -> bytes:
    """An IPv4 frame's source made the VI's address (the header checksum made right again;
    the upper layer's is left off: compiled and reference see the same bytes)."""
    l3 = 14
    while f[l3 - 2:l3] in (b"\x81\x00", b"\x88\xa8") and len(f) >= l3 + 4:
        l3 += 4
    ihl = (f[l3] & 15) * 4 if len(f) > l3 else 0
    if f[l3 - 2:l3] != b"\x08\x00" or ihl < 20 or len(f) < l3 + ihl:
        return f
    h = bytearray(f[l3:l3 + ihl])
    h[12:16] = g.a4("198.18.99.10")
    h[10:12] = b"\0\0"
    h[10:12] = struct.pack("!H", g.checksum(bytes(h)))
    return f[:l3] + bytes(h) + f[l3 + ihl:]


@settings(max_examples=150, deadline=None)
@given(st.lists(g.valid_frame(), min_size=1, max_size=16), st.lists(g.valid_frame(), min_size=1, max_size=16),
       st.integers(0, 1))
def test_host_mode_translation_agrees_with_the_reference(outs, ins, u):
    """Random frames out of the VI, then random frames to the interface's address (and the
    translated ones' replies) in: the same verdicts, bytes and counters as the reference."""
    outs = [from_vi(f) for f in outs]
    fw, ref = host_nat_pair()
    compare(fw, ref, outs, [{}] * len(outs), np.full(len(outs), 10.0), "out")
    fw2, _ = host_nat_pair()                    # the same seed: the same mappings
    out2, sent = sent_frames(fw2, outs)
    back = [to_uplink(u, g.udp(*struct.unpack("!HH", f[36:38] + f[34:36])), 17,
                      src=str(ipaddress.ip_address(f[30:34])))
            for v, f in zip(out2.tolist(), sent) if v == u and f[12:14] == b"\x08\x00" and f[14] == 0x45
            and f[23] == 17 and not struct.unpack("!H", f[20:22])[0] & 0x3FFF]
    for f in ins:
        f = bytearray(f)
        f[:6] = UP_MAC[u]
        if len(f) >= 34 and f[12:14] == b"\x08\x00":
            f[30:34] = EXT[u]
        back.append(bytes(f))
    compare(fw, ref, back, [{}] * len(back), np.full(len(back), 11.0), "in", u)
# ------------------------------------------------------------------ the stateful edge
def edge_pair(modes=(1, 1), routed=(), nat_modes=(0, 0), capacity=64, forwards=()):
    """nat_pair without NPTv6 (replies go to the LAN addresses themselves) and with an edge."""
    from engine import _edge
    from engine.ref.edge import RefEdge

    fw, ref = nat_pair(modes=nat_modes, npt=False)
    fw.set_edge(_edge.Edge(capacity, seed=5), list(modes))
    ref.set_edge(RefEdge(capacity), list(modes))
    nets = [to_mapped(ipaddress.ip_network(n)) for n in routed]
    for x in (fw, ref):
        x.set_routed_prefixes([(n.network_address.packed, n.netmask.packed) for n in nets])
        x.set_forwards([(to_mapped(ipaddress.ip_network(a)).network_address.packed, p, lo, hi, ups)
                        for a, p, lo, hi, ups in forwards])
    return fw, ref


def reply_of(frame: bytes, u: int) -> bytes:
    """The frame's addresses and ports swapped, to uplink u's MAC (the IPv4 header checksum
    does not change: the same words)."""
    from engine.ref.parse import parse_frame

    r = parse_frame(frame)
    f = bytearray(frame)
    f[:6] = UP_MAC[u]
    l3 = r["l3_off"]
    if r["family"] == 6:
        f[l3 + 8:l3 + 24], f[l3 + 24:l3 + 40] = frame[l3 + 24:l3 + 40], frame[l3 + 8:l3 + 24]
    else:
        f[l3 + 12:l3 + 16], f[l3 + 16:l3 + 20] = frame[l3 + 16:l3 + 20], frame[l3 + 12:l3 + 16]
    if r["flags"] & C.F_L4 and not r["flags"] & C.F_ECHO and r["proto"] in (6, 17, 132, 136, 33):
        l4 = r["l4_off"]
        f[l4:l4 + 2], f[l4 + 2:l4 + 4] = frame[l4 + 2:l4 + 4], frame[l4:l4 + 2]
    if r["flags"] & C.F_ECHO:
        f[r["l4_off"]] = {128: 129, 8: 0}.get(frame[r["l4_off"]], frame[r["l4_off"]])
    return bytes(f)


def test_edge_lets_replies_in_and_drops_the_rest():
    fw, ref = edge_pair()
    ts = np.full(1, 10.0)
    out6 = g.eth(g.ipv6(g.udp(5000, 53), 17, src="2001:db8:1::10"))
    out4 = g.eth(g.ipv4(g.udp(5000, 53), 17), 0x0800)
    sent = compare(fw, ref, [out6, out4], [{}] * 2, np.full(2, 10.0), "out").tolist()
    assert all(u >= 0 for u in sent)
    assert len(fw.edge) == len(ref.edge) == 2
    replies = [reply_of(out6, sent[0]), reply_of(out4, sent[1])]
    assert compare(fw, ref, replies[:1], [{}], ts, "in", sent[0]).tolist() == [0]
    assert compare(fw, ref, replies[1:], [{}], ts, "in", sent[1]).tolist() == [0]
    stranger = g.eth(g.ipv6(g.udp(53, 5001), 17, src="2001:db8:ff::1", dst="2001:db8:1::10"), dst=UP_MAC[0])
    assert compare(fw, ref, [stranger], [{}], ts, "in", 0).tolist() == [-3]
    assert fw.counters[CT.INDEX["edge_unsolicited"]] == 1
    # multicast, link-local and the router's own stay the kernel's, the edge never sees them
    nd = g.eth(g.ipv6(g.icmpv6(135, 0, bytes(20)), 58, src="fe80::1", dst="ff02::1:ff00:10", hlim=255),
               dst=UP_MAC[0])
    assert compare(fw, ref, [nd], [{}], ts, "in", 0).tolist() == [-2]
    assert fw.counters[CT.INDEX["edge_unsolicited"]] == 1


def test_edge_open_uplinks_and_routed_prefixes():
    ts = np.full(1, 10.0)
    stranger = g.eth(g.ipv6(g.udp(53, 5001), 17, src="2001:db8:ff::1", dst="2001:db8:1::10"), dst=UP_MAC[1])
    fw, ref = edge_pair(modes=(1, 0))
    assert compare(fw, ref, [stranger], [{}], ts, "in", 1).tolist() == [0]      # uplink 1 open
    to0 = g.eth(g.ipv6(g.udp(53, 5001), 17, src="2001:db8:ff::1", dst="2001:db8:1::10"), dst=UP_MAC[0])
    assert compare(fw, ref, [to0], [{}], ts, "in", 0).tolist() == [-3]          # uplink 0 stateful
    fw, ref = edge_pair(routed=["2001:db8:1::/120"])
    assert compare(fw, ref, [stranger], [{}], ts, "in", 1).tolist() == [0]      # routed open
    fw, ref = edge_pair(routed=["2001:db8:1::100/120"])
    assert compare(fw, ref, [stranger], [{}], ts, "in", 1).tolist() == [-3]


def test_a_forward_opens_new_connections_to_its_host_and_ports_only():
    fw, ref = edge_pair(forwards=[("2001:db8:1::10", 6, 8080, 8081, (0,)), ("192.0.2.10", 17, 5000, 5000, (0, 1))])
    ts = np.full(1, 10.0)

    def syn(dst, dport, proto=6, u=0, fam=6):
        l4 = g.tcp(40000, dport) if proto == 6 else g.udp(40000, dport)
        if fam == 6:
            return g.eth(g.ipv6(l4, proto, src="2001:db8:ff::1", dst=dst), dst=UP_MAC[u])
        return g.eth(g.ipv4(l4, proto, src="198.51.100.1", dst=dst), 0x0800, dst=UP_MAC[u])
    assert compare(fw, ref, [syn("2001:db8:1::10", 8080)], [{}], ts, "in", 0).tolist() == [0]
    assert compare(fw, ref, [syn("2001:db8:1::10", 8081)], [{}], ts, "in", 0).tolist() == [0]
    assert compare(fw, ref, [syn("2001:db8:1::10", 8082)], [{}], ts, "in", 0).tolist() == [-3]   # other port
    assert compare(fw, ref, [syn("2001:db8:1::10", 8080, 17)], [{}], ts, "in", 0).tolist() == [-3]  # udp
    assert compare(fw, ref, [syn("2001:db8:1::10", 8080, u=1)], [{}], ts, "in", 1).tolist() == [-3]  # uplink
    assert compare(fw, ref, [syn("192.0.2.10", 5000, 17, 1, 4)], [{}], ts, "in", 1).tolist() == [0]
    assert fw.counters[CT.INDEX["edge_unsolicited"]] == 3
    # the server's answer makes the flow; what follows matches it like any reply
    answer = g.eth(g.ipv6(g.tcp(8080, 40000), 6, src="2001:db8:1::10", dst="2001:db8:ff::1"))
    compare(fw, ref, [answer], [{}], ts, "out")
    assert len(fw.edge) == len(ref.edge) == 1


def test_edge_does_not_track_what_napt_translated():
    fw, ref = edge_pair(nat_modes=(2, 2))
    f = g.eth(g.ipv4(g.udp(5000, 53), 17), 0x0800)
    compare(fw, ref, [f], [{}], np.full(1, 10.0), "out")
    assert len(fw.edge) == len(ref.edge) == 0                  # NAPT44's mapping is its edge
    assert len(fw.nat) == 1


def test_edge_full_drops_new_flows():
    fw, ref = edge_pair(capacity=2)
    frames = [g.eth(g.ipv6(g.udp(4000 + k, 53), 17, src="2001:db8:1::10")) for k in range(4)]
    out = compare(fw, ref, frames, [{}] * 4, np.full(4, 10.0), "out").tolist()
    assert out[2:] == [-3, -3] and fw.counters[CT.INDEX["edge_full"]] == 2


@settings(max_examples=150, deadline=None)
@given(st.lists(g.valid_frame(), min_size=1, max_size=16), st.lists(g.valid_frame(), max_size=8),
       st.sampled_from([(1, 1), (1, 0)]), st.sampled_from([(0, 0), (2, 2), (1, 1)]), st.booleans())
def test_edge_agrees_with_the_reference(outs, strangers, modes, nat_modes, routed):
    """Random frames out, then their replies (on the uplink they left by) and random frames
    to the LAN hosts in: the same verdicts, bytes, counters and flows as the reference."""
    fw, ref = edge_pair(modes, ["2001:db8:1::10/128"] if routed else (), nat_modes,
                        forwards=[("2001:db8:1::10", 17, 1000, 2000, (0,)), ("192.0.2.10", 6, 1, 100, (0, 1))])
    out = compare(fw, ref, outs, [{}] * len(outs), np.full(len(outs), 10.0), "out").tolist()
    assert sorted(fw.edge.entries()) == ref.edge.entries()
    for u in range(2):
        back = [reply_of(f, u) for f, k in zip(outs, out) if k == u and fw.nat_mode[u] == 0]
        for f in strangers:
            f = bytearray(f)
            f[:6] = UP_MAC[u]
            back.append(bytes(f))
        if back:
            compare(fw, ref, back, [{}] * len(back), np.full(len(back), 11.0), "in", u)
    assert sorted(fw.edge.entries()) == ref.edge.entries()



def napt66_pair():
    from engine.ref.nat import Nat66Ref

    fw, ref = pair(hosts=[LAN_HOST4, LAN_HOST6])
    c6, r6 = _nat.Nat66(2, 64, seed=3), Nat66Ref(2, 64, seed=3)
    n6, p6 = _nat.Npt66(2), Npt66Ref(2)
    for x in (c6, r6):
        x.set_address(0, EXT6)
    for x in (n6, p6):
        x.set_prefixes(1, ipaddress.ip_network("2001:db8:1::/64"), NPT_OUT)
    fw.set_nat(None, [0, 0], n6, c6)
    ref.set_nat(None, [0, 0], p6, r6)
    return fw, ref


EXT6 = g.a6("2001:db8:a1::2")


def test_napt66_on_the_uplink_that_masquerades():
    """nat6 = "masquerade" on uplink 0, NPTv6 on uplink 1: each uplink's IPv6 takes its own
    translation in the compiled forwarder as in its reference; a reply comes back to the LAN
    host; one from a stranger to a mapping's port is dropped (nat_unsolicited)."""
    frames = [g.eth(g.ipv6(g.udp(5000 + k, 53), 17)) for k in range(32)]
    ts = np.full(len(frames), 10.0)
    fw, ref = napt66_pair()
    out = [int(u) for u in compare(fw, ref, frames, [{}] * len(frames), ts, "out")]
    fw2, _ = napt66_pair()
    out2, sent = sent_frames(fw2, frames)
    assert out2.tolist() == out and 0 in out
    for u, f in zip(out, sent):
        assert f[22:38] == EXT6 if u == 0 else ipaddress.IPv6Address(f[22:38]) in NPT_OUT
    k = out.index(0)
    port = struct.unpack("!H", sent[k][54:56])[0]
    reply = g.eth(g.ipv6(g.udp(53, port), 17, src="2001:db8:ff::1", dst="2001:db8:a1::2"), dst=UP_MAC[0])
    assert compare(fw, ref, [reply], [{}], ts[:1], "in", 0).tolist() == [0]
    out3, [back] = sent_frames(fw2, [reply], "in", 0)
    assert out3.tolist() == [0] and back[38:54] == LAN_HOST6 and back[:6] == HOST_MAC
    stranger = g.eth(g.ipv6(g.udp(53, port), 17, src="2001:db8:ff::9", dst="2001:db8:a1::2"), dst=UP_MAC[0])
    assert compare(fw, ref, [stranger], [{}], ts[:1], "in", 0).tolist() == [-3]
    assert fw.counters[CT.INDEX["nat_unsolicited"]] == 1


# ------------------------------------------------------------------ a flow's remembered mapping
EXT6B = g.a6("2001:db8:a2::2")


def hint_pair(capacity=64):
    """NAPT44 and NAPT66 on both uplinks: every flow a translated one, so every later packet
    of a flow may take its mapping from the flow's memory (Forwarder.nat_hint)."""
    from engine.ref.nat import Nat66Ref

    fw, ref = pair(hosts=[LAN_HOST4, LAN_HOST6])
    c, r = _nat.Nat44(2, capacity, seed=3), Nat44Ref(2, capacity, seed=3)
    c6, r6 = _nat.Nat66(2, capacity, seed=4), Nat66Ref(2, capacity, seed=4)
    for u in range(2):
        for x in (c, r):
            x.set_address(u, EXT[u])
        for x in (c6, r6):
            x.set_address(u, (EXT6, EXT6B)[u])
    fw.set_nat(c, [2, 2], None, c6)
    ref.set_nat(r, [2, 2], None, r6)
    return fw, ref


def flow_frame(k):
    """Flow k of 12: UDP and TCP over IPv4 and over IPv6."""
    port = 5000 + k
    kind = k % 4
    if kind == 0:
        return g.eth(g.ipv4(g.udp(port, 53), 17), 0x0800)
    if kind == 1:
        return g.eth(g.ipv4(g.tcp(port, 443), 6), 0x0800)
    if kind == 2:
        return g.eth(g.ipv6(g.udp(port, 53), 17))
    return g.eth(g.ipv6(g.tcp(port, 443), 6))


def same_mappings(fw, ref):
    """The translators' tables hold the same mappings (and moves) in both."""
    for c, r, lan, rem in ((fw.nat, ref.nat, g.a4("192.0.2.10"), g.a4("198.51.100.1")),
                           (fw.nat6, ref.nat6, LAN_HOST6, g.a6("2001:db8:ff::1"))):
        assert len(c) == len(r) and c.moved == r.moved
        for k in range(12):
            for u in range(2):
                key = (17 if k % 2 == 0 else 6, lan, 5000 + k, rem, 53 if k % 2 == 0 else 443, u)
                assert c.mapping(*key) == r.mapping(*key), (k, u)


def replay(fw, ref, ops, check, flush, expire) -> int:
    """ops (HINT_OPS or EDGE_OPS) on both forwarders, a second apart: "out" sends flows
    flow_frame(k) (the bytes compared, then check(fw, ref) on the tables), "flush" calls
    flush(uplink), "rebind" moves flows between uplinks on both, "expire" lets more time pass
    and calls expire(now).  Returns how many frames were sent."""
    now = 10.0
    sent = 0
    for op in ops:
        now += 1.0
        if op[0] == "out":
            frames = [flow_frame(k) for k in op[1]]
            compare(fw, ref, frames, [{}] * len(frames), np.full(len(frames), now), "out")
            sent += len(frames)
            check(fw, ref)
        elif op[0] == "flush":
            flush(op[1])
        elif op[0] == "rebind":
            fw.pipe.flows.rebind(op[1], op[2])
            ref.pipe.flows.rebind(op[1], op[2])
        else:
            now += op[1]
            expire(now)
    return sent


HINT_OPS = st.one_of(
    st.tuples(st.just("out"), st.lists(st.integers(0, 11), min_size=1, max_size=12)),
    st.tuples(st.just("flush"), st.integers(0, 1)),
    st.tuples(st.just("rebind"), st.integers(0, 1), st.integers(0, 1)),
    st.tuples(st.just("expire"), st.floats(0, 400)),
)


@settings(max_examples=120, deadline=None)
@given(st.lists(HINT_OPS, min_size=1, max_size=14))
def test_a_flows_remembered_mapping_never_changes_what_is_sent(ops):
    """Flows sent again and again while their mappings are flushed, expired and reused by
    other flows, and while the flows move between uplinks: the compiled forwarder (which
    takes a flow's mapping from its memory when the key still matches) sends the bytes the
    reference (which always hashes and probes) sends."""
    fw, ref = hint_pair(capacity=8)
    nats = (fw.nat, ref.nat, fw.nat6, ref.nat6)

    def flush(u):
        for x in nats:
            x.flush_uplink(u)

    def expire(now):
        for x in nats:
            x.expire(now)

    sent = replay(fw, ref, ops, same_mappings, flush, expire)
    assert fw.nat.hinted + fw.nat6.hinted <= sent


def test_a_flows_later_packets_take_its_mapping_from_its_memory():
    """The second batch of the same flows finds every mapping through the flows' memory (no
    hash, no probe: counted in hinted); a memory gone stale (the mapping flushed and its
    record taken by another flow, or the flow moved to the other uplink) is not used: each
    flow gets its own mapping, and the move is counted."""
    fw, ref = hint_pair(capacity=8)
    frames = [flow_frame(k) for k in range(8)]
    compare(fw, ref, frames, [{}] * 8, np.full(8, 10.0), "out")
    assert fw.nat.hinted == 0 and fw.nat6.hinted == 0
    compare(fw, ref, frames, [{}] * 8, np.full(8, 11.0), "out")
    assert fw.nat.hinted == 4 and fw.nat6.hinted == 4
    assert (fw.nat_hint >= 0).sum() == 8                       # one memory per flow record
    # flushed, then other flows take the freed records first: the old memories point at them
    for x in (fw.nat, ref.nat, fw.nat6, ref.nat6):
        for u in range(2):
            x.flush_uplink(u)
    others = [flow_frame(k) for k in range(8, 12)]
    compare(fw, ref, others, [{}] * 4, np.full(4, 12.0), "out")
    _, again = sent_frames(fw, frames[:1])   # flow 0 (IPv4 UDP) once more, on the compiled side
    assert fw.nat.hinted == 4                                   # its memory was stale: not used
    u0 = int(fw.pipe.out[0])
    port = struct.unpack("!H", again[0][34:36])[0]
    assert again[0][26:30] == EXT[u0] and port == fw.nat.mapping(17, g.a4("192.0.2.10"), 5000,
                                                                  g.a4("198.51.100.1"), 53, u0)
    # the flow moves: its memory names a mapping of the old uplink
    moved = fw.nat.moved
    fw.pipe.flows.rebind(u0, 1 - u0)
    _, there = sent_frames(fw, frames[:1])
    assert int(fw.pipe.out[0]) == 1 - u0 and there[0][26:30] == EXT[1 - u0]
    assert fw.nat.moved == moved + 1 and fw.nat.hinted == 4


EDGE_OPS = st.one_of(
    st.tuples(st.just("out"), st.lists(st.integers(0, 11), min_size=1, max_size=12)),
    st.tuples(st.just("rebind"), st.integers(0, 1), st.integers(0, 1)),
    st.tuples(st.just("expire"), st.floats(0, 400)),
)


@settings(max_examples=120, deadline=None)
@given(st.lists(EDGE_OPS, min_size=1, max_size=14))
def test_a_flows_remembered_edge_record_never_changes_the_edge(ops):
    """The edge's records of flows sent again and again while records expire, are taken by
    other flows (a table of 6 for 12 flows) and flows move between uplinks: the compiled
    forwarder (which takes a flow's record from its memory when the key still matches)
    keeps the reference's records, verdicts and bytes."""
    fw, ref = edge_pair(capacity=6)

    def same_records(fw, ref):
        assert sorted(fw.edge.entries()) == ref.edge.entries()

    def expire(now):
        assert fw.edge.expire(now) == ref.edge.expire(now)

    sent = replay(fw, ref, ops, same_records, None, expire)      # EDGE_OPS flush nothing
    assert fw.edge.hinted <= sent


def test_a_flows_later_packets_take_its_edge_record_from_its_memory():
    fw, ref = edge_pair(capacity=16)
    frames = [flow_frame(k) for k in range(8)]
    compare(fw, ref, frames, [{}] * 8, np.full(8, 10.0), "out")
    assert fw.edge.hinted == 0
    compare(fw, ref, frames, [{}] * 8, np.full(8, 11.0), "out")
    assert fw.edge.hinted == 8 and (fw.edge_hint >= 0).sum() == 8
    fw.edge.expire(10_000.0)                  # every record gone: the memories are stale
    ref.edge.expire(10_000.0)
    compare(fw, ref, frames, [{}] * 8, np.full(8, 10_001.0), "out")
    assert fw.edge.hinted == 8 and sorted(fw.edge.entries()) == ref.edge.entries()
