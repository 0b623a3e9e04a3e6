"""Classification: option, rules, DSCP, ICMP; compiled engine._classify vs the reference."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framegen as g
from engine import _classify
from engine.config import _Loader, load_config
from engine.frames import parse_frames
from engine.ref import classify as ref

RULES = """
[engine]
default_preference = 7
[[uplink]]
name = "a"
device = "a0"
[[rule]]
proto = "udp"
dport = "5060-5061"
service = "voip"
preference = 2
[[rule]]
dst = "2001:db8:c0::/48"
preference = 1
[[rule]]
src = "192.0.2.0/28"
proto = "tcp"
service = "video"
[[rule]]
dscp = "AF11"
service = "control"
"""


def classify(frames, text=RULES):
    cfg = _Loader("<test>").load(text)
    rows = parse_frames(frames)
    n = len(frames)
    sc, pc = np.zeros(n, np.uint8), np.zeros(n, np.uint16)
    sr, pr = np.zeros(n, np.uint8), np.zeros(n, np.uint16)
    c, r = _classify.Classifier(cfg), ref.Classifier(cfg)
    c.classify(rows, sc, pc)
    r.classify(rows, sr, pr)
    assert (sc == sr).all() and (pc == pr).all()
    assert c.counters() == r.counters()
    return list(zip(sc.tolist(), pc.tolist())), c.counters()


def test_compiled_classifier_is_loaded():
    assert _classify.__file__.endswith(".so")


def test_option_wins_and_reserved_service_counts_as_data():
    res, cnt = classify([g.tagged_udp(service=3, preference=2, dport=5060),
                         g.tagged_udp(service=200, preference=9)])
    assert res == [(3, 2), (0, 9)]
    assert cnt["tagged"] == 2 and cnt["reserved_service"] == 1 and cnt["rule_hits"] == [0, 0, 0, 0]


def test_rules_first_match_and_partial_sets():
    frames = [
        g.eth(g.ipv6(g.udp(4000, 5061), 17)),                                  # rule 0
        g.eth(g.ipv6(g.udp(4000, 80), 17, dst="2001:db8:c0::5", tclass=46 << 2)),  # rule 1: pref only
        g.eth(g.ipv4(g.tcp(1, 443), 6, src="192.0.2.9"), 0x0800),              # rule 2 (IPv4 prefix)
        g.eth(g.ipv4(g.tcp(1, 443), 6, src="192.0.2.99"), 0x0800),             # outside /28
        g.eth(g.ipv6(g.tcp(1, 80), 6, tclass=10 << 2)),                        # rule 3 (AF11)
    ]
    res, cnt = classify(frames)
    assert res == [(2, 2), (2, 1), (3, 7), (0, 7), (1, 7)]
    assert cnt["rule_hits"] == [1, 1, 1, 1]


def test_dscp_mapping_table():
    expect = {46: 2, 34: 3, 36: 3, 38: 3, 32: 3, 40: 3, 48: 1, 56: 1, 0: 0, 10: 1, 26: 0, 8: 0}
    frames = [g.eth(g.ipv6(g.tcp(), 6, tclass=d << 2)) for d in expect]
    res, _ = classify(frames)
    assert [s for s, _ in res] == list(expect.values())


def test_icmp_other_than_echo_is_control():
    frames = [g.eth(g.ipv6(g.icmpv6(135), 58)), g.eth(g.ipv6(g.icmpv6_echo(), 58)),
              g.eth(g.ipv4(g.icmp4_echo(), 1), 0x0800),
              g.eth(g.ipv4(b"\x03\x01\x00\x00" + bytes(4), 1), 0x0800)]
    res, cnt = classify(frames)
    assert [s for s, _ in res] == [1, 0, 0, 1] and cnt["icmp_control"] == 2


def test_default_config_classifies():
    cfg = load_config(None)
    c = _classify.Classifier(cfg)
    rows = parse_frames([g.eth(g.ipv6(g.udp(1, 5060), 17)), g.eth(g.ipv6(g.udp(1, 9), 17))])
    s, p = np.zeros(2, np.uint8), np.zeros(2, np.uint16)
    c.classify(rows, s, p)
    assert list(s) == [2, 0] and list(p) == [2, cfg.default_preference]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(g.valid_frame(), g.mutated_frame()), min_size=1, max_size=16))
def test_compiled_matches_reference_on_random_frames(frames):
    classify(frames)


RULES_PIN = RULES + '[[rule]]\ndst = "2001:db8:ff::/64"\nuplink = "a"\n'


def test_pin_rule_holds_against_the_option():
    """uplink = NAME pins even tagged traffic: 'the corporate prefix only via I2' is a policy
    the application's own option cannot override; its service type is kept."""
    from engine.config import PIN_BASE

    res, cnt = classify([g.tagged_udp(service=3, preference=2),                      # dst 2001:db8:ff::1
                         g.tagged_udp(service=3, preference=2, dst="2001:db8:1::9"),
                         g.eth(g.ipv6(g.udp(1, 9), 17))], RULES_PIN)
    assert res == [(3, PIN_BASE), (3, 2), (0, PIN_BASE)]
    assert cnt["rule_hits"][4] == 2


@given(st.lists(st.one_of(g.valid_frame(), g.mutated_frame()), min_size=1, max_size=16))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_compiled_matches_reference_with_a_pin_rule(frames):
    classify(frames, RULES_PIN)
