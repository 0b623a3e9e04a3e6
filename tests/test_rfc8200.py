"""RFC 8200 section 4.2: unrecognised IPv6 options.  The two high-order bits of an
unrecognised option's type say what a node does: 00 skip, 01 discard, 10 discard and send an
ICMPv6 parameter problem (code 2, pointer at the option type) even to a multicast
destination, 11 the same but not to a multicast destination.  mmr acts on the hop-by-hop
header (every node on the path processes it), never on destination options (for the
destination, which mmr never is for what it forwards), and not in host mode.

Golden bytes (exact reason codes and pointers), compiled == reference everywhere, and the
parameter problem a router emits checked with dpkt, an independent decoder."""
import struct

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framegen as g
from engine import _forward, _parse, _pipeline
from engine import constants as C
from engine import counters as CT
from engine.frames import new_rows, pack_frames
from engine.icmperr import parameter_problem
from engine.ref import parse as ref
from engine.ref.forward import PARAM_PROBLEM
from test_forward import compare, pair

R = C.REASON_CODE
OK, DISCARD, ICMP = R["ok"], R["opt_unknown_discard"], R["opt_unknown_icmp"]
# RFC 4727 experimental option types, one per action class (none is the traffic control option)
SKIP, DROP, ERR, ERR_UNI = 0x1E, 0x5E, 0x9E, 0xDE
UNI, MULTI = "2001:db8:ff::1", "ff0e::101"
MCAST_MAC = bytes.fromhex("333300000101")


def opt(t, n=2):
    return bytes([t, n]) + bytes(n)


def rows_of(frames, honour=True, option_type=0x3E):
    """Compiled rows, checked byte for byte against the reference, counters too."""
    buf, off, ln = pack_frames(frames)
    a, b = new_rows(len(frames)), new_rows(len(frames))
    ca, cb = np.zeros(C.N_REASONS, np.uint64), np.zeros(C.N_REASONS, np.uint64)
    _parse.parse_batch(buf, off, ln, a, option_type, ca, honour)
    ref.parse_batch(buf, off, ln, b, option_type, cb, honour)
    for i, f in enumerate(frames):
        assert a[i].tobytes() == b[i].tobytes(), (i, f.hex(), a[i], b[i])
    assert (ca == cb).all()
    return a


def hbh_frame(*options, dst=UNI, l4=None, nh=17, vlans=(), src="2001:db8:1::10", mac=g.MAC_B):
    l4 = g.udp(5000, 6000) if l4 is None else l4
    return g.eth(g.ipv6(g.hbh(nh, *options) + l4, 0, dst=dst, src=src), vlans=vlans, dst=mac)


def do_frame(*options, dst=UNI):
    return g.eth(g.ipv6(g.dstopts(17, *options) + g.udp(5000, 6000), 60, dst=dst))


def test_compiled_modules_are_loaded():
    for m in (_parse, _forward, _pipeline):
        assert m.__file__.endswith(".so"), m
    assert _parse.parse_batch is not ref.parse_batch


def test_reason_table():
    assert C.REASON_ACTION[DISCARD] == C.REASON_ACTION[ICMP] == "drop"
    assert "opt_unknown_icmp" in CT.DROP_REASONS and "opt_unknown_discard" in CT.DROP_REASONS
    assert C.ROW_DTYPE.fields["opt_off"][1] == 57 and C.ROW_DTYPE.itemsize == 64


# ------------------------------------------------------------------ golden parse cases
# (options in the header, destination, expected reason, expected pointer).  The IPv6 header
# is 40 bytes and the options header's own two: after a Pad1 the type byte is at 43, after
# the traffic control option (5 bytes) at 47.
GOLDEN = [
    ((g.pad1(), opt(SKIP)), UNI, OK, 0),
    ((g.pad1(), opt(SKIP)), MULTI, OK, 0),
    ((g.pad1(), opt(DROP)), UNI, DISCARD, 43),
    ((g.pad1(), opt(DROP)), MULTI, DISCARD, 43),
    ((g.pad1(), opt(ERR)), UNI, ICMP, 43),
    ((g.pad1(), opt(ERR)), MULTI, ICMP, 43),            # 10: even to multicast
    ((g.pad1(), opt(ERR_UNI)), UNI, ICMP, 43),
    ((g.pad1(), opt(ERR_UNI)), MULTI, DISCARD, 43),     # 11: not to multicast
    ((g.tc_option(3, 2), opt(ERR)), UNI, ICMP, 47),
    ((g.tc_option(3, 2), opt(DROP)), MULTI, DISCARD, 47),
    ((opt(SKIP, 3), opt(ERR)), UNI, ICMP, 47),          # skipped first: the second decides
    ((opt(DROP), opt(ERR)), UNI, DISCARD, 42),          # the first acted on decides
    ((opt(ERR), opt(DROP)), UNI, ICMP, 42),
    ((bytes([0x05, 2, 0, 0]),), UNI, OK, 0),            # router alert (RFC 2711): recognised
    ((bytes([0xC2, 4]) + bytes(4),), UNI, OK, 0),       # jumbo payload (RFC 2675): recognised
    ((bytes([0x63, 4]) + bytes(4),), UNI, DISCARD, 42),  # RPL (RFC 6553): not run, 01
    ((bytes([0xFF, 0]),), UNI, ICMP, 42),
    ((bytes([0x80, 0]),), MULTI, ICMP, 42),
]


@pytest.mark.parametrize("options,dst,reason,pointer", GOLDEN)
@pytest.mark.parametrize("vlans", [(), (7,)])
def test_hop_by_hop_unknown_options(options, dst, reason, pointer, vlans):
    r = rows_of([hbh_frame(*options, dst=dst, vlans=vlans)])[0]
    assert (C.REASON_NAMES[r["reason"]], int(r["opt_off"])) == (C.REASON_NAMES[reason], pointer)
    # the row is filled as for a good frame: the forwarder sees what the packet carries
    assert (r["proto"], r["sport"], r["dport"], r["l3_off"]) == (17, 5000, 6000, 14 + 4 * len(vlans))
    assert r["has_opt"] == (options[0][0] == 0x3E)


@pytest.mark.parametrize("t", [SKIP, DROP, ERR, ERR_UNI])
@pytest.mark.parametrize("dst", [UNI, MULTI])
def test_destination_options_are_not_acted_on(t, dst):
    """RFC 8200 4.1/4.6: destination options are the destination's; mmr walks them for their
    length (and the RFC 8504 limits) only."""
    r = rows_of([do_frame(g.pad1(), opt(t), dst=dst)])[0]
    assert r["reason"] == OK and r["opt_off"] == 0 and r["sport"] == 5000
    # after a hop-by-hop header that is fine, too
    f = g.eth(g.ipv6(g.hbh(60, opt(SKIP)) + g.dstopts(17, opt(t)) + g.udp(), 0, dst=dst))
    assert rows_of([f])[0]["reason"] == OK


@pytest.mark.parametrize("t", [DROP, ERR, ERR_UNI])
def test_host_mode_skips_unknown_options(t):
    """honour=False (host mode): every unknown option skipped, as before."""
    r = rows_of([hbh_frame(opt(t))], honour=False)[0]
    assert r["reason"] == OK and r["opt_off"] == 0 and r["proto"] == 17


def test_our_option_type_is_recognised_whatever_its_bits():
    f = hbh_frame(g.tc_option(2, 1, option_type=ERR))
    assert rows_of([f])[0]["reason"] == ICMP                     # not ours by default
    r = rows_of([f], option_type=ERR)[0]
    assert r["reason"] == OK and r["has_opt"] == 1 and r["opt_off"] == 0


def test_a_later_malformation_wins_and_unknown_nh_does_not():
    cut = hbh_frame(opt(ERR), l4=g.udp()[:5])                       # UDP header cut short
    r = rows_of([cut])[0]
    assert r["reason"] == R["truncated_l4"] and r["opt_off"] == 42    # opt_off: set when met
    nine = b"".join(opt(SKIP, 0) for _ in range(8)) + opt(ERR, 0)   # 9 options: too many
    assert rows_of([hbh_frame(opt(ERR), nine[:-2])])[0]["reason"] == R["too_many_opts"]
    r = rows_of([hbh_frame(opt(ERR), l4=b"\0" * 8, nh=253)])[0]     # unknown next header: a note
    assert r["reason"] == ICMP and r["proto"] == 253
    frag = hbh_frame(opt(ERR_UNI), l4=g.frag6(17, 100) + b"z" * 16, nh=44)
    r = rows_of([frag])[0]
    assert r["reason"] == ICMP and r["flags"] & C.F_FRAGMENT and r["opt_off"] == 42


def test_counted_by_reason():
    frames = [hbh_frame(opt(t), dst=d) for t in (SKIP, DROP, ERR, ERR_UNI) for d in (UNI, MULTI)]
    cnt = np.zeros(C.N_REASONS, np.uint64)
    buf, off, ln = pack_frames(frames)
    _parse.parse_batch(buf, off, ln, new_rows(len(frames)), 0x3E, cnt)
    assert (int(cnt[OK]), int(cnt[DISCARD]), int(cnt[ICMP])) == (2, 3, 3)


@st.composite
def option_frame(draw):
    """Hop-by-hop and destination options of any type, lengths right, in any order."""
    def header(nh):
        opts = b"".join(bytes([draw(st.integers(0, 255).filter(lambda t: t != 0)), n]) + bytes(n)
                        for n in draw(st.lists(st.integers(0, 6), max_size=4)))
        return g.opts_header(nh, opts)
    dst = draw(st.sampled_from([UNI, MULTI, "ff02::1", "fe80::1"]))
    payload, nh = g.udp(1, 2), 17
    if draw(st.booleans()):
        payload, nh = header(nh) + payload, 60
    if draw(st.booleans()):
        payload, nh = header(nh) + payload, 0
    return g.eth(g.ipv6(payload, nh, dst=dst), vlans=tuple(draw(st.lists(st.integers(1, 4094), max_size=1))))


def expected(frame):
    """The reason and pointer from RFC 8200 4.2 itself, walking the hop-by-hop header."""
    l3 = 18 if frame[12:14] == b"\x81\x00" else 14
    if frame[l3 + 6] != 0:
        return OK, 0
    end = l3 + 40 + (frame[l3 + 41] + 1) * 8
    i = l3 + 42
    multicast = frame[l3 + 24] == 0xFF
    while i < end:
        t = frame[i]
        if t == 0:
            i += 1
            continue
        if t not in (1, 0x3E, 0x05, 0xC2) and t >> 6:
            return (DISCARD if t >> 6 == 1 or (t >> 6 == 3 and multicast) else ICMP), i - l3
        i += 2 + frame[i + 1]
    return OK, 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(option_frame(), min_size=1, max_size=10), st.booleans())
def test_any_options_compiled_equals_reference_equals_rfc(frames, honour):
    rows = rows_of(frames, honour=honour)
    for f, r in zip(frames, rows):
        want = expected(f) if honour else (OK, 0)
        if r["reason"] in (R["too_many_opts"], R["pad_excess"], R["bad_opt_len"]):
            continue                                 # RFC 8504 limits, our option's length: elsewhere
        assert (int(r["reason"]), int(r["opt_off"])) == want, f.hex()


# ------------------------------------------------------------------ the forwarder
OUT_CASES = [
    # (name, frame, punted?)
    ("10 to unicast", hbh_frame(g.pad1(), opt(ERR)), True),
    ("11 to unicast", hbh_frame(g.pad1(), opt(ERR_UNI)), True),
    ("10 to multicast", hbh_frame(g.pad1(), opt(ERR), dst=MULTI, mac=MCAST_MAC), True),
    ("11 to multicast", hbh_frame(g.pad1(), opt(ERR_UNI), dst=MULTI, mac=MCAST_MAC), False),
    ("01 to unicast", hbh_frame(g.pad1(), opt(DROP)), False),
    ("10 to multicast, broadcast MAC", hbh_frame(opt(ERR), dst=MULTI, mac=b"\xff" * 6), False),
    ("10 to unicast, another MAC", hbh_frame(opt(ERR), mac=g.MAC_A), False),
    ("10 from ::", hbh_frame(opt(ERR), src="::"), False),
    ("10 from multicast", hbh_frame(opt(ERR), src="ff02::1"), False),
    ("10 on an ICMPv6 error", hbh_frame(opt(ERR), l4=g.icmpv6(1), nh=58), False),
    ("10 on a redirect", hbh_frame(opt(ERR), l4=g.icmpv6(137), nh=58), False),
    ("10 on an echo request", hbh_frame(opt(ERR), l4=g.icmpv6_echo(), nh=58), True),
    ("10 in destination options", do_frame(opt(ERR)), False),
]


@pytest.mark.parametrize("name,frame,punted", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_outbound_parameter_problem_decision(name, frame, punted):
    fw, rf = pair()
    out = compare(fw, rf, [frame], [{}], np.full(1, 100.0), "out")
    # compare() checked the punt kinds against the reference and took the compiled punts;
    # do it once more on a fresh pair to look at the record itself
    fw, _ = pair()
    buf, off, ln = pack_frames([frame])
    fw.outbound(np.array(buf, np.uint8), off, ln, None, np.full(1, 100.0))
    p = fw.take_punts()
    assert len(p) == int(punted), name
    if "destination options" in name:
        assert int(out[0]) >= 0                       # forwarded
        return
    assert int(out[0]) == -3
    reason = C.REASON_NAMES[fw.pipe.rows["reason"][0]]
    assert reason in ("opt_unknown_icmp", "opt_unknown_discard")
    assert int(fw.counters[CT.INDEX[reason]]) == 1
    if punted:
        assert (int(p[0]["kind"]), int(p[0]["side"]), int(p[0]["mtu"])) == (_forward.KIND_PARAM_PROBLEM, 0,
                                                                            int(fw.pipe.rows["opt_off"][0]))
        assert bytes(p[0]["data"][:p[0]["caplen"]]) == frame


def test_outbound_mixed_batch_and_window():
    """One batch of every class, compared with the reference; outside the handover window
    the kernel has the frames: no parameter problem from mmr."""
    frames = [c[1] for c in OUT_CASES]
    fw, rf = pair()
    compare(fw, rf, frames, [{}] * len(frames), np.full(len(frames), 100.0), "out")
    assert int(fw.counters[CT.INDEX["opt_unknown_icmp"]]) == 10
    assert int(fw.counters[CT.INDEX["opt_unknown_discard"]]) == 2
    fw, rf = pair(t_start=200.0)
    compare(fw, rf, frames, [{}] * len(frames), np.full(len(frames), 100.0), "out")
    buf, off, ln = pack_frames(frames)
    fw.outbound(np.array(buf, np.uint8), off, ln, None, np.full(len(frames), 100.0))
    assert len(fw.take_punts()) == 0


def test_parameter_problems_can_be_left_to_the_kernel():
    """param_problems False: dropped and counted all the same, nothing punted."""
    frames = [c[1] for c in OUT_CASES]
    fw, rf = pair()
    fw.param_problems = rf.param_problems = False
    compare(fw, rf, frames, [{}] * len(frames), np.full(len(frames), 100.0), "out")
    buf, off, ln = pack_frames(frames)
    fw.outbound(np.array(buf, np.uint8), off, ln, None, np.full(len(frames), 100.0))
    assert len(fw.take_punts()) == 0 and int(fw.counters[CT.INDEX["opt_unknown_icmp"]]) == 20


def test_host_mode_passes_unknown_options():
    """mmr host: the VI's own packets go out as they are (mmr is no hop there), and the
    kernel behind the VI acts on the options of those coming in."""
    frames = [hbh_frame(opt(t)) for t in (DROP, ERR, ERR_UNI)]
    fw, rf = pair(router=False)
    out = compare(fw, rf, frames, [{}] * 3, np.full(3, 100.0), "out")
    assert all(int(x) >= 0 for x in out)
    inb = [hbh_frame(opt(t), dst="2001:db8:1::10", mac=g.MAC_B) for t in (DROP, ERR)]
    fw, rf = pair(router=False, local=[g.a6("2001:db8:1::10")], in_mtu=65535)
    out = compare(fw, rf, inb, [{}] * 2, np.full(2, 100.0), "in", u=0)
    assert out.tolist() == [0, 0]


def test_inbound_router_answers_out_of_the_uplink():
    from test_forward import HOSTS, LOCAL, UP_MAC

    f = hbh_frame(g.pad1(), opt(ERR), dst="2001:db8:1::10", mac=UP_MAC[1])
    fw, rf = pair(local=LOCAL, hosts=HOSTS)
    out = compare(fw, rf, [f], [{}], np.full(1, 100.0), "in", u=1)
    assert out.tolist() == [-3]
    fw, _ = pair(local=LOCAL, hosts=HOSTS)
    buf, off, ln = pack_frames([f])
    fw.inbound(1, np.array(buf, np.uint8), off, ln, None, np.full(1, 100.0))
    p = fw.take_punts()
    assert [(int(x["kind"]), int(x["side"]), int(x["uplink"]), int(x["mtu"])) for x in p] == \
        [(_forward.KIND_PARAM_PROBLEM, 1, 1, 43)]
    # to the other uplink's MAC: not for this one
    fw, rf = pair(local=LOCAL, hosts=HOSTS)
    compare(fw, rf, [f], [{}], np.full(1, 100.0), "in", u=0)


def test_parameter_problems_are_rate_limited():
    fw, _ = pair()
    frames = [hbh_frame(opt(ERR), l4=g.udp(k, 6)) for k in range(64)]
    buf, off, ln = pack_frames(frames)
    total = 0
    for _ in range(2):
        fw.outbound(np.array(buf, np.uint8), off, ln, None, np.full(64, 100.0))
        total += len(fw.take_punts())
    assert total == 50                                  # the ICMP burst, shared with the others
    assert int(fw.counters[CT.INDEX["icmp_limited"]]) == 2 * 64 - 50
    assert int(fw.counters[CT.INDEX["opt_unknown_icmp"]]) == 2 * 64


@st.composite
def forward_frame(draw):
    f = bytearray(draw(option_frame()))
    l3 = 18 if f[12:14] == b"\x81\x00" else 14
    if f[l3 + 24] == 0xFF and draw(st.booleans()):
        f[:6] = b"\x33\x33" + bytes(f[l3 + 36:l3 + 40])
    if draw(st.integers(0, 4)) == 0:
        f[:6] = g.MAC_A
    return bytes(f)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(forward_frame(), min_size=1, max_size=24), st.sampled_from([50.0, 100.0]))
def test_forwarder_matches_reference_on_unknown_options(frames, ts):
    fw, rf = pair(t_start=60.0)
    compare(fw, rf, frames, [{}] * len(frames), np.full(len(frames), ts), "out")
    fw, rf = pair(t_start=60.0)
    compare(fw, rf, frames, [{}] * len(frames), np.full(len(frames), ts), "in", u=0)


# ------------------------------------------------------------------ the bytes sent
ROUTER_MAC = bytes.fromhex("020000000009")
R6 = g.a6("2001:db8:1::1")


@pytest.mark.parametrize("dst,mac,vlans", [(UNI, g.MAC_B, ()), (MULTI, MCAST_MAC, ()), (UNI, g.MAC_B, (7,))])
def test_parameter_problem_bytes(dst, mac, vlans):
    """What the punt turns into: ICMPv6 type 4 code 2, the pointer at the option type, the
    invoking packet quoted from its IPv6 header on, checksum right; decoded by dpkt."""
    frame = hbh_frame(g.tc_option(1, 1), opt(ERR_UNI if dst == UNI else ERR), dst=dst, mac=mac, vlans=vlans)
    fw, _ = pair()
    buf, off, ln = pack_frames([frame])
    fw.outbound(np.array(buf, np.uint8), off, ln, None, np.full(1, 100.0))
    (p,) = fw.take_punts()
    assert p["kind"] == _forward.KIND_PARAM_PROBLEM
    data, l3 = bytes(p["data"][:p["caplen"]]), int(p["l3_off"])
    reply = parameter_problem(data, l3, int(p["family"]), ROUTER_MAC, int(p["mtu"]), R6)
    e = dpkt.ethernet.Ethernet(reply)
    assert e.dst == g.MAC_A and e.src == ROUTER_MAC and e.type == 0x86DD
    ip = e.data
    assert isinstance(ip, dpkt.ip6.IP6)
    assert ip.src == R6 and ip.dst == g.a6("2001:db8:1::10") and ip.nxt == 58 and ip.hlim == 255
    assert ip.plen == len(reply) - 14 - 40
    icmp = ip.data
    assert isinstance(icmp, dpkt.icmp6.ICMP6)
    assert (icmp.type, icmp.code) == (4, 2)
    assert icmp.data.ptr == 47                                 # 40 + 2 + the 5-byte traffic control option
    raw = reply[14 + 40:]
    assert raw[8:] == frame[l3:]                               # the invoking packet, whole (< 1232 bytes)
    assert frame[l3 + icmp.data.ptr] in (ERR, ERR_UNI)         # the pointer names the option type byte
    pseudo = ip.src + ip.dst + struct.pack("!I3xB", len(raw), 58)
    assert dpkt.in_cksum(pseudo + raw) == 0 and icmp.sum != 0
    assert parameter_problem(data, l3, 4, ROUTER_MAC, 47, R6) is None
    assert parameter_problem(data, l3, 6, ROUTER_MAC, 47, None) is None


def test_parameter_problem_quotes_at_most_the_minimum_mtu():
    frame = hbh_frame(opt(ERR), l4=g.udp(1, 2, bytes(1400)))
    reply = parameter_problem(frame, 14, 6, ROUTER_MAC, 42, R6)
    assert len(reply) - 14 == 1280
    assert reply[14 + 48:] == frame[14:14 + 1280 - 48]


def test_punt_kind_constant():
    assert _forward.KIND_PARAM_PROBLEM == PARAM_PROBLEM == 4
    assert _forward.PUNT_KINDS[4] == "param_problem"


# ------------------------------------------------------------------ live: the draft's testbed
SEND_AND_LISTEN = r"""
import json, select, socket, struct, sys, time
dst, opt_type = sys.argv[1], int(sys.argv[2])
icmp = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
icmp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
hbh = bytes([0, 0, opt_type, 4, 0, 0, 0, 0])             # the option's type at IPv6 offset 42
got = []
for k in range(3):
    udp.sendmsg([b"rfc8200"], [(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, hbh)], 0, (dst, 7399))
    end = time.time() + 1.0
    while time.time() < end:
        if not select.select([icmp], [], [], max(0.0, end - time.time()))[0]:
            break
        data, anc, _, src = icmp.recvmsg(2000, 64)
        hl = [struct.unpack("i", d)[0] for l, t, d in anc if t == socket.IPV6_HOPLIMIT]
        if data[0] == 4:
            got.append({"src": src[0], "code": data[1], "ptr": struct.unpack("!I", data[4:8])[0],
                        "hlim": hl[0] if hl else -1, "quoted_opt": data[8 + 42] if len(data) > 50 else -1})
print(json.dumps(got))
"""


@pytest.mark.privileged
def test_live_parameter_problem_reaches_mn():
    """MN sends UDP to CN through ``mmr run`` with an unknown hop-by-hop option: with action
    10, MN gets parameter problems (code 2, pointer 42, the option quoted) and mmr counts
    opt_unknown_icmp and icmp_sent; with 01 it gets none and mmr counts opt_unknown_discard."""
    import json
    import subprocess
    import sys

    from engine.testbed import CN_ADDR
    from netlab import ROOT, in_ns, make_testbed, running_router

    with make_testbed("p") as tb, running_router(tb):
        def send(t):
            p = subprocess.run(in_ns(tb, "mn", sys.executable, "-c", SEND_AND_LISTEN, CN_ADDR, t),
                               capture_output=True, text=True, timeout=30)
            assert p.returncode == 0, p.stderr
            return json.loads(p.stdout.strip().splitlines()[-1])

        def counters():
            p = subprocess.run(in_ns(tb, "mmr", sys.executable, "-m", "engine", "status", "--json"),
                               capture_output=True, text=True, cwd=ROOT, timeout=30)
            assert p.returncode == 0, p.stderr
            return json.loads(p.stdout)["counters"]

        got = send(ERR)
        print("parameter problems for 10:", got)
        assert got and all((g_["code"], g_["ptr"], g_["quoted_opt"]) == (2, 42, ERR) for g_ in got)
        # the router's own kernel reads the hop-by-hop header before the guard's prerouting
        # hook and answers (hop limit 64, rate limited per source); mmr run leaves the answer
        # to it (Forwarder.param_problems False): one answer, never two for one packet
        assert len(got) <= 3 and all(g_["hlim"] == 64 for g_ in got), got
        c = counters()
        assert c["opt_unknown_icmp"] >= 3 and c["icmp_sent"] == 0 and c["tx_uplink"] == 0
        got = send(DROP)
        print("parameter problems for 01:", got)
        assert got == []
        assert counters()["opt_unknown_discard"] >= 3
