"""Who may ask for what: pins kept apart from the option's preference space, [[trust]] tables
per LAN source prefix, and [[uplink]] strip_option; compiled stages against the references,
golden bytes, and dpkt as an independent parser of the stripped packets."""
import ipaddress
import os
import struct

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framegen as g
from engine import _classify, _forward, _parse, _pipeline, _rewrite
from engine import constants as C
from engine import counters as CT
from engine.config import PIN_BASE, _Loader, load_config
from engine.errors import ConfigError
from engine.frames import pack_frames, parse_frames
from engine.ref.rewrite import rewrite_frame
from test_classify import classify
from test_forward import partial, vnet_array

HERE = os.path.dirname(os.path.abspath(__file__))

BASE = """
[engine]
lan_prefixes = ["2001:db8:1::/48", "192.0.2.0/24"]
default_preference = 3
[[uplink]]
name = "a"
device = "a0"
[[uplink]]
name = "b"
device = "b0"
"""
PIN = '[[rule]]\ndst = "2001:db8:ee::/48"\nuplink = "b"\n'
TRUST = """
[[trust]]
src = "2001:db8:1:99::/64"          # the guest network
services = ["data", "control"]
preferences = [0, 1, 3]
[[trust]]
src = "2001:db8:1:99:1::/80"        # inside it, a longer prefix: also video, 4-100
services = ["data", "video"]
preferences = ["4-100", 2]
[[trust]]
src = "2001:db8:1:77::/64"          # may not use the option at all
services = []
"""
RULES = """
[[rule]]
proto = "udp"
dport = 5004
service = "voip"
preference = 2
"""




# ------------------------------------------------------------------ 1. pins apart
def test_option_naming_a_pin_preference_gets_policy_0_and_is_counted():
    pin_b = PIN_BASE - 1
    res, cnt = classify([g.tagged_udp(service=0, preference=pin_b, dst="2001:db8:5::1"),  # names b's pin
                         g.tagged_udp(service=3, preference=PIN_BASE, dst="2001:db8:5::1"),  # a's: no pin, kept
                         g.tagged_udp(service=3, preference=pin_b, dst="2001:db8:ee::1"),  # the pin rule still holds
                         g.eth(g.ipv6(g.udp(1, 9), 17, dst="2001:db8:ee::2"))],           # untagged: pinned
                        BASE + PIN)
    assert res == [(0, 0), (3, PIN_BASE), (3, pin_b), (0, pin_b)]
    assert cnt["reserved_preference"] == 2 and cnt["tagged"] == 3 and cnt["rule_hits"] == [2]


def test_default_host_policy_explain_says_the_pin_is_out_of_reach():
    from engine.commands.config import explain

    cfg = load_config(None, default="default-host.toml")
    text = explain(cfg, C.SERVICE_DATA, PIN_BASE - 1)
    assert "reserved for the pin to i2" in text and "cannot reach the pin" in text
    assert "winner: i1" in text                          # policy 0: the primary, not the pin
    c = _classify.Classifier(cfg)
    rows = parse_frames([g.tagged_udp(service=0, preference=PIN_BASE - 1, dst="2001:db8:ee:1::1")])
    s, p = np.zeros(1, np.uint8), np.zeros(1, np.uint16)
    c.classify(rows, s, p)
    assert p[0] == 0 and c.counters()["reserved_preference"] == 1


@pytest.mark.parametrize("extra,key", [
    ('[[rule]]\nproto = "tcp"\npreference = 65534\n', "rule[1].preference"),
    ("", "engine.default_preference"),
])
def test_a_rule_or_default_preference_cannot_name_a_pin(extra, key):
    text = BASE + PIN + extra
    if not extra:
        text = text.replace("default_preference = 3", "default_preference = 65534")
    with pytest.raises(ConfigError) as e:
        _Loader("<t>").load(text)
    assert key in str(e.value) and "reserved for the pin to b" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ 2. [[trust]]
def guest(service, preference, src="2001:db8:1:99::10", dport=9):
    return g.tagged_udp(service=service, preference=preference, dport=dport, src=src)


def test_trust_table_longest_prefix_and_fallback_to_untagged():
    frames = [
        guest(0, 1),                                     # data/1 from the guest net: allowed
        guest(2, 1),                                     # voip: not allowed -> untagged (data, default 3)
        guest(0, 2),                                     # QoS: not allowed -> untagged
        guest(3, 50, src="2001:db8:1:99:1::5"),          # longer prefix: video 50 allowed
        guest(1, 1, src="2001:db8:1:99:1::5"),           # longer prefix decides: control not allowed
        guest(2, 2, src="2001:db8:1:5::5"),              # no table: anything
        guest(1, 0, src="2001:db8:1:77::5"),             # services = []: never
        guest(3, 7, dport=5004),                         # untrusted, then the rules: voip 2
        guest(200, 3),                                   # reserved service counts as data: allowed
    ]
    res, cnt = classify(frames, BASE + TRUST + RULES)
    assert res == [(0, 1), (0, 3), (0, 3), (3, 50), (0, 3), (2, 2), (0, 3), (2, 2), (0, 3)]
    assert cnt["untrusted_option"] == 5 and cnt["tagged"] == 4 and cnt["untagged"] == 5
    assert cnt["reserved_service"] == 1


def test_untrusted_option_reaches_the_engine_counter_table():
    cfg = _Loader("<t>").load(BASE + TRUST)
    pipe = _pipeline.Pipeline(cfg, batch=8)
    fw = _forward.Forwarder(pipe, True, 2, 8)
    frames = [guest(2, 1), guest(0, 1), guest(0, 3)]
    buf, off, ln = pack_frames(frames)
    pipe.process(np.array(buf, np.uint8), off, ln, np.zeros(3))
    snap = CT.snapshot(fw.counters)
    assert snap["untrusted_option"] == 1
    pipe.apply(cfg)                                  # a reload keeps counting into the same table
    pipe.process(np.array(buf, np.uint8), off, ln, np.zeros(3))
    assert CT.snapshot(fw.counters)["untrusted_option"] == 2


trust_table = st.fixed_dictionaries({
    "plen": st.integers(48, 128), "net": st.integers(0, 3),
    "services": st.lists(st.sampled_from(C.SERVICE_NAMES), max_size=4, unique=True),
    "prefs": st.lists(st.one_of(st.integers(0, 65535),
                                st.tuples(st.integers(0, 65535), st.integers(0, 65535))
                                .map(lambda t: f"{min(t)}-{max(t)}")), max_size=4)})


def trust_text(tables):
    out, seen = [], set()
    for t in tables:
        addr = ipaddress.IPv6Address("2001:db8:1::") + (t["net"] << 64) + t["net"]
        net = ipaddress.IPv6Network(f"{addr}/{t['plen']}", strict=False)
        if net in seen:
            continue
        seen.add(net)
        prefs = ", ".join(str(p) if isinstance(p, int) else f'"{p}"' for p in t["prefs"])
        svcs = ", ".join(f'"{s}"' for s in t["services"])
        out.append(f'[[trust]]\nsrc = "{net}"\nservices = [{svcs}]\npreferences = [{prefs}]\n')
    return "".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(trust_table, max_size=5),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 255), st.integers(0, 65535), st.booleans()),
                min_size=1, max_size=16),
       st.lists(st.one_of(g.valid_frame(), g.mutated_frame()), max_size=6))
def test_trust_compiled_matches_reference(tables, packets, others):
    frames = [guest(s, p if not pin else PIN_BASE - 1, src=f"2001:db8:1:{n}::{n}")
              for n, s, p, pin in packets] + others
    classify(frames, BASE + PIN + RULES + trust_text(tables))


@pytest.mark.parametrize("body,key,words", [
    ('src = "2001:db8:2::/64"', "trust[0].src", "not inside the LAN's lan_prefixes"),
    ('src = "192.0.2.0/28"', "trust[0].src", "IPv4 prefix"),
    ('services = ["data"]', "trust[0].src", "is missing"),
    ('src = "2001:db8:1::/64"\nservices = ["bulk"]', "trust[0].services[0]", "not a service class"),
    ('src = "2001:db8:1::/64"\npreferences = [70000]', "trust[0].preferences[0]", "out of range"),
    ('src = "2001:db8:1::/64"\npreferences = ["4-70000"]', "trust[0].preferences[0]", "out of range"),
    ('src = "2001:db8:1::/64"\npreferences = ["9-4"]', "trust[0].preferences[0]", "runs backwards"),
    ('src = "2001:db8:1::/64"\npreferences = ["four"]', "trust[0].preferences[0]", "not a preference"),
    ('src = "2001:db8:1::/64"\npreferences = 3', "trust[0].preferences", "must be a list"),
    ('src = "2001:db8:1::/64"\nservice = ["data"]', "trust[0].service", "unknown key"),
])
def test_trust_validation_is_one_sentence(body, key, words):
    with pytest.raises(ConfigError) as e:
        _Loader("<t>").load(BASE + "[[trust]]\n" + body + "\n")
    msg = str(e.value)
    assert key in msg and words in msg and "\n" not in msg


def test_trust_duplicate_prefix_and_corpus_files():
    with pytest.raises(ConfigError, match="already trust"):
        _Loader("<t>").load(BASE + '[[trust]]\nsrc = "2001:db8:1::/64"\n[[trust]]\nsrc = "2001:db8:1::/64"\n')
    names = [n for n in os.listdir(os.path.join(HERE, "corpus", "config")) if n.startswith("trust-")]
    assert len(names) >= 4


# ------------------------------------------------------------------ 3. strip_option
RA = b"\x05\x02\x00\x00"                                 # router alert (RFC 2711), 2n+0


def stripped(frames, vnets=None, strip=0x3E, hop=True, gso_too=False):
    """Compiled rewrite with strip; checked against the reference; (frames, vnets) out."""
    n = len(frames)
    vnets = vnets or [{}] * n
    buf, off, ln = pack_frames(frames)
    buf = np.array(buf, np.uint8)
    rows = np.zeros(n, C.ROW_DTYPE)
    _parse.parse_batch(buf, off, ln, rows, 0x3E, np.zeros(C.N_REASONS, np.uint64))
    va = vnet_array(vnets)
    before = va.copy()
    verdict = np.zeros(n, np.uint8)
    macs = np.array([list(g.MAC_A), list(g.MAC_B)], np.uint8)
    idx = np.zeros(n, np.int16)
    _rewrite.rewrite(buf, off, ln, rows, idx, macs, idx + 1, macs, verdict, n, vnet=va, hop=hop,
                     gso_too=gso_too, strip=strip)
    out = []
    for i in range(n):
        want, v, vafter = rewrite_frame(frames[i], rows[i], g.MAC_A, g.MAC_B, before[i], hop=hop,
                                        gso_too=gso_too, strip=strip)
        assert verdict[i] == v
        got = bytes(buf[off[i]:off[i] + ln[i]])
        if v == 0:
            assert got == want, i
            assert {k: int(va[i][k]) for k in vafter} == vafter, i
        out.append((got, {k: int(va[i][k]) for k in C.VNET_DTYPE.names}))
    return out


def csum(frame):
    """The frame with its IPv6 UDP/TCP checksum right (framegen leaves it 0)."""
    ip = dpkt.ethernet.Ethernet(frame).data
    raw = bytes(ip.data)
    l4 = len(frame) - len(raw)
    proto = 17 if isinstance(ip.data, dpkt.udp.UDP) else 6
    at = l4 + (6 if proto == 17 else 16)
    frame = frame[:at] + b"\0\0" + frame[at + 2:]
    c = g.checksum(ip.src + ip.dst + struct.pack("!I3xB", len(raw), proto) + frame[l4:]) or 0xFFFF
    return frame[:at] + struct.pack("!H", c) + frame[at + 2:]


def check_dpkt(frame):
    """dpkt parses the frame as Ethernet/IPv6, finds no traffic control option, and the UDP
    checksum verifies over the pseudo-header."""
    e = dpkt.ethernet.Ethernet(frame)
    ip = e.data
    assert isinstance(ip, dpkt.ip6.IP6) and ip.plen == len(frame) - 14 - 40
    hbh = ip.extension_hdrs.get(0)
    if hbh is not None:
        assert all(o["type"] != 0x3E for o in hbh.options)
    udp = ip.data
    assert isinstance(udp, dpkt.udp.UDP)
    raw = bytes(udp)
    pseudo = ip.src + ip.dst + struct.pack("!I3xB", len(raw), 17)
    assert g.checksum(pseudo + raw) == 0


def test_golden_whole_hop_by_hop_header_removed():
    before = csum(g.tagged_udp(service=3, preference=2, dport=5004, hlim=9))
    assert before[14 + 6] == 0 and before[14 + 40:14 + 48] == bytes.fromhex("1100 3e03 0300 0200".replace(" ", ""))
    (after, _), = stripped([before])
    udp = before[14 + 48:]
    ip = bytearray(before[14:14 + 40])
    ip[4:6] = struct.pack("!H", len(udp))                 # payload length - 8
    ip[6] = 17                                            # the chain skips the header
    ip[7] = 8                                             # the hop
    assert after == g.MAC_B + g.MAC_A + b"\x86\xdd" + bytes(ip) + udp
    assert len(after) == len(before) - 8
    check_dpkt(after)


def test_golden_other_options_kept_aligned_with_short_padding():
    before = csum(g.tagged_udp(service=3, preference=2, before=(RA,)))   # RA(4) + ours(5) + PadN(5): 16 bytes
    hbh = before[54:70]
    assert hbh == bytes([17, 1]) + RA + bytes.fromhex("3e0303000201030000")[:5] + g.padn(5)
    (after, _), = stripped([before])
    assert after[54:62] == bytes([17, 0]) + RA + g.padn(2)          # cut to 8 bytes, RA at offset 2
    assert after[14 + 6] == 0 and len(after) == len(before) - 8
    check_dpkt(after)
    # a header that cannot shrink: the option becomes padding, never a run over 7 bytes
    late = csum(g.eth(g.ipv6(g.hbh(17, g.tc_option(1, 1), g.pad1(), RA) + g.udp(), 0)))
    (after, _), = stripped([late])
    assert after[54:70] == bytes([17, 1]) + g.padn(6) + RA + g.padn(4)
    check_dpkt(after)


def test_not_stripped_without_the_flag_or_the_option_or_a_different_type():
    f = g.tagged_udp()
    assert stripped([f], strip=0)[0][0][54:62] == f[54:62]
    plain = g.eth(g.ipv6(g.udp(), 17))
    assert stripped([plain])[0][0][22:] == plain[22:]          # only the hop limit (byte 21) moved
    other = g.tagged_udp(option_type=0x21)
    assert stripped([other], strip=0x3E)[0][0][22:] == other[22:]


def test_vlan_tagged_and_unfinished_checksum():
    f = g.eth(g.ipv6(g.hbh(17, g.tc_option(2, 2)) + g.udp(1, 2, b"payload!" * 20), 0), vlans=(7,))
    l3 = 18
    f, v = partial(f, l3, l3 + 48, 17, 6)
    (after, va), = stripped([f], [v])
    assert va["flags"] == 2                            # finished before the strip: DATA_VALID
    check_dpkt(after)


def test_super_frame_offsets_move_back():
    payload = bytes(range(256)) * 12
    f = g.eth(g.ipv6(g.hbh(6, g.tc_option(3, 2)) + g.tcp(1000, 80, payload), 0))
    l3, l4 = 14, 14 + 48
    f, v = partial(f, l3, l4, 6, 6)
    v.update(gso_type=4, gso_size=1400, hdr_len=l4 + 20)
    (after, va), = stripped([f], [v])
    assert va["csum_start"] == l4 - 8 and va["hdr_len"] == l4 + 20 - 8 and va["gso_size"] == 1400
    assert va["flags"] == 1 and va["csum_offset"] == 16
    assert after[l3 + 6] == 6 and after[l4 - 8:] == f[l4:]   # the pseudo-header sum left in place
    # the kernel would finish it: finishing here gives a checksum dpkt's pseudo-header agrees with
    (done, _), = stripped([f], [v], gso_too=True)
    ip = dpkt.ethernet.Ethernet(done).data
    raw = bytes(ip.data)
    assert g.checksum(ip.src + ip.dst + struct.pack("!I3xB", len(raw), 6) + raw) == 0


@st.composite
def hbh_frame(draw):
    opts = draw(g.option_list())
    body = g.udp(draw(g.port), draw(g.port), draw(st.binary(max_size=64)))
    f = g.eth(g.ipv6(g.opts_header(17, opts) + body, 0), vlans=tuple(draw(st.lists(st.integers(1, 4094),
                                                                                       max_size=1))))
    if draw(st.booleans()):
        l3 = 14 + (4 if f[12:14] == b"\x81\x00" else 0)
        f, v = partial(f, l3, len(f) - len(body), 17, 6)
        return f, v
    return f, {}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hbh_frame(), min_size=1, max_size=12))
def test_strip_compiled_matches_reference_and_dpkt_agrees(batch):
    frames = [f for f, _ in batch]
    for (after, _), f in zip(stripped(frames, [v for _, v in batch]), frames):
        rows = parse_frames([f])
        if rows[0]["reason"] != 0 or not rows[0]["has_opt"]:
            continue
        ip = dpkt.ethernet.Ethernet(after).data
        assert ip.plen == len(after) - 14 - 40
        hbh = ip.extension_hdrs.get(0)
        if hbh is not None:
            assert all(o["type"] != 0x3E for o in hbh.options)
            raw = bytes(after[54:54 + (after[55] + 1) * 8])
            run, i = 0, 2
            while i < len(raw):                      # RFC 8504 5.3: at most 7 padding bytes in a row
                n = 1 if raw[i] == 0 else 2 + raw[i + 1]
                run = run + n if raw[i] in (0, 1) else 0
                assert run <= 7
                i += n
        again = parse_frames([after])[0]
        assert again["reason"] == 0 and not again["has_opt"]


def test_forwarder_strips_on_the_flagged_uplink_only(monkeypatch):
    import test_forward

    cfg = load_config(None)
    cfg.uplinks[0].strip_option = True
    monkeypatch.setattr(test_forward, "CFG", cfg)
    # video with QoS goes via ar1 (strip_option), untagged data via ar2 (its header kept)
    frames = [csum(g.tagged_udp(service=3, preference=2, dst="2001:db8:ee::1")),
              csum(g.eth(g.ipv6(g.hbh(17, g.tc_option(0, 3)) + g.udp(7, 9), 0, dst="2001:db8:ee::2")))]
    fw, rf = test_forward.pair()
    assert fw.up_strip.tolist() == [0x3E, 0] and rf.up_strip == [0x3E, 0]
    buf, off, ln = pack_frames(frames)
    buf = np.array(buf, np.uint8)
    out, off2, ln2 = fw.outbound(buf, off, ln, vnet_array([{}, {}]), np.full(2, 1.0))
    assert out.tolist() == [0, 1]
    assert ln2[0] == len(frames[0]) - 8 and ln2[1] == len(frames[1])
    check_dpkt(bytes(buf[off2[0]:off2[0] + ln2[0]]))
    assert bytes(buf[off2[1] + 54:off2[1] + 62]) == frames[1][54:62]
    fw, rf = test_forward.pair()
    test_forward.compare(fw, rf, frames, [{}, {}], np.full(2, 2.0), "out")
    fw.set_strip(load_config(None))                    # a reload turns it off
    assert fw.up_strip.tolist() == [0, 0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(hbh_frame(), st.tuples(g.valid_frame(), st.just({}))), min_size=1, max_size=16))
def test_forwarder_with_strip_matches_reference_on_random_frames(batch):
    import test_forward

    cfg = load_config(None)
    for up in cfg.uplinks:
        up.strip_option = True
    saved, test_forward.CFG = test_forward.CFG, cfg
    try:
        fw, rf = test_forward.pair()
    finally:
        test_forward.CFG = saved
    frames = [g.MAC_B + g.MAC_A + f[12:] for f, _ in batch]
    test_forward.compare(fw, rf, frames, [v for _, v in batch], np.full(len(frames), 1.0), "out")
