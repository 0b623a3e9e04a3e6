"""Metric selection: the draft's section 5 case studies by hand, compiled vs reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _select
from engine import constants as C
from engine.config import _Loader
from engine.ref import select as ref

DATA, CONTROL, VOIP, VIDEO = range(4)


def cfg_of(text):
    return _Loader("<test>").load(text)


def uplink(name, metric, **chars):
    body = "".join(f"{k} = {v}\n" for k, v in chars.items())
    return f'[[uplink]]\nname = "{name}"\ndevice = "{name}"\nmetric = {metric}\n{body}\n'


def pick(cfg, service, preference):
    s = _select.Selector(cfg)
    out = np.empty(1, np.int16)
    s.select(np.array([service], np.uint8), np.array([preference], np.uint16), out)
    r = ref.Selector(cfg)
    assert r.select_one(service, preference) == out[0]
    return int(out[0])


def test_compiled_selector_is_loaded():
    assert _select.__file__.endswith(".so")


# Draft 5.1, maximize throughput: V_n = (bandwidth, loss), V_t = (PacketSize, v).
#   wlan: 11 Mb/s, loss 0.02     cell: 2 Mb/s, loss 0.001     v = 0.5
#   normalised bandwidth: wlan 11/11 = 1, cell 2/11 = 0.1818
#   normalised loss (cost): wlan 1 - 0.02/0.02 = 0, cell 1 - 0.001/0.02 = 0.95
#   video/data (PacketSize 1.0): wlan 1*1 + 0*0.5 = 1.0;   cell 0.1818 + 0.95*0.5 = 0.6568 -> wlan
#   VoIP (0.5):                  wlan 0.5 + 0 = 0.5;       cell 0.0909 + 0.475 = 0.5659 -> cell
#   control (0.1):               wlan 0.1;                 cell 0.0182 + 0.475 = 0.4932 -> cell
CASE_51 = ("[classes]\nv = 0.5\n" + uplink("wlan", 1, bandwidth_mbps=11, loss=0.02)
           + uplink("cell", 2, bandwidth_mbps=2, loss=0.001))


@pytest.mark.parametrize("service,expect", [(VIDEO, 0), (DATA, 0), (VOIP, 1), (CONTROL, 1)])
def test_case_5_1_maximize_throughput(service, expect):
    cfg = cfg_of(CASE_51)
    assert pick(cfg, service, C.PREF_MAX_THROUGHPUT) == expect
    scores = _select.Selector(cfg).scores(service, 1)
    hand = {VIDEO: (1.0, 2 / 11 + 0.95 * 0.5), DATA: (1.0, 2 / 11 + 0.475),
            VOIP: (0.5, 1 / 11 + 0.475), CONTROL: (0.1, 0.2 / 11 + 0.475)}[service]
    assert scores == pytest.approx(hand)


# Draft 5.2, load balancing: V_n = (queueing delay), V_t = (1).
#   a: 40 ms -> 1 - 40/40 = 0;  b: 10 ms -> 0.75;  c: 25 ms -> 0.375  -> b for every class
CASE_52 = (uplink("a", 1, queueing_delay_ms=40) + uplink("b", 2, queueing_delay_ms=10)
           + uplink("c", 3, queueing_delay_ms=25))


@pytest.mark.parametrize("service", [DATA, CONTROL, VOIP, VIDEO])
def test_case_5_2_load_balancing(service):
    cfg = cfg_of(CASE_52)
    assert pick(cfg, service, C.PREF_LOAD_BALANCE) == 1
    assert _select.Selector(cfg).scores(service, 3) == pytest.approx([0.0, 0.75, 0.375])


# Draft 5.3, QoS with load balancing: V_n = (QoS, queueing delay), V_t = (service type, 1),
# service type 1 for VoIP/video, 0 for data/control.
#   ar1: qos 1, 30 ms -> (1, 0);   ar2: qos 0, 10 ms -> (0, 0.6667)
#   video/VoIP: ar1 1*1 + 0 = 1.0;   ar2 0 + 0.6667       -> ar1 (the draft's section 6.2)
#   data/control: ar1 0 + 0 = 0;     ar2 0 + 0.6667       -> ar2
CASE_53 = (uplink("ar1", 10, qos=1.0, queueing_delay_ms=30)
           + uplink("ar2", 20, qos=0.0, queueing_delay_ms=10))


@pytest.mark.parametrize("service,expect", [(VIDEO, 0), (VOIP, 0), (DATA, 1), (CONTROL, 1)])
def test_case_5_3_qos_with_load_balancing(service, expect):
    cfg = cfg_of(CASE_53)
    assert pick(cfg, service, C.PREF_QOS) == expect


def test_preference_0_is_the_primary_and_ties_go_to_lower_metric_then_order():
    cfg = cfg_of(uplink("x", 5, bandwidth_mbps=100) + uplink("y", 1) + uplink("z", 1))
    assert pick(cfg, DATA, 0) == 1                      # lowest metric; y before z by order
    cfg = cfg_of(uplink("x", 3, queueing_delay_ms=10) + uplink("y", 2, queueing_delay_ms=10))
    assert pick(cfg, DATA, 3) == 1                      # equal scores: lower metric wins


def test_unusable_uplinks_are_excluded_and_normalisation_follows():
    text = (uplink("a", 1, bandwidth_mbps=100) + "usable = false\n"
            + uplink("b", 2, bandwidth_mbps=10) + uplink("c", 3, bandwidth_mbps=20))
    text = text.replace('metric = 1\nbandwidth_mbps = 100\n\nusable = false',
                        'metric = 1\nbandwidth_mbps = 100\nusable = false')
    cfg = cfg_of(text)
    assert not cfg.uplinks[0].usable
    s = _select.Selector(cfg)
    assert s.normalized()[2, C.CHAR_INDEX["bandwidth"]] == 1.0   # max over usable: 20
    assert pick(cfg, DATA, 1) == 2


def test_no_usable_uplink_gives_minus_one_and_is_counted():
    cfg = cfg_of(uplink("a", 1))
    s = _select.Selector(cfg)
    s.update(np.zeros((1, C.N_CHARS)), np.zeros(1, np.uint8))
    out = np.empty(3, np.int16)
    s.select(np.zeros(3, np.uint8), np.zeros(3, np.uint16), out)
    assert list(out) == [-1, -1, -1] and s.counters()["no_uplink"] == 3


def test_undefined_preference_falls_back_to_0_and_is_counted():
    cfg = cfg_of(CASE_52)
    s = _select.Selector(cfg)
    out = np.empty(2, np.int16)
    s.select(np.zeros(2, np.uint8), np.array([999, 3], np.uint16), out)
    assert out[0] == 0 and out[1] == 1                  # 999 -> policy 0 -> primary "a"
    assert s.counters()["undefined_preference"] == 1


def test_config_policy_and_class_parameters():
    text = ('[classes]\nweight = { data = 0.0, control = 0.0, voip = 1.0, video = 2.0 }\n'
            '[policy.4]\nname = "secure-cheap"\nnetwork = ["security", "cost"]\nflow = ["weight", 1.0]\n'
            + uplink("a", 1, security=1.0, cost=10) + uplink("b", 2, security=0.2, cost=2))
    cfg = cfg_of(text)
    # a: security 1, cost 1-10/10 = 0; b: security 0.2, cost 1-2/10 = 0.8
    # video (w=2): a 2.0, b 0.4 + 0.8 = 1.2 -> a;  data (w=0): a 0, b 0.8 -> b
    assert pick(cfg, VIDEO, 4) == 0 and pick(cfg, DATA, 4) == 1


def test_live_update_changes_the_choice_and_choice_table():
    cfg = cfg_of(CASE_53)
    s = _select.Selector(cfg)
    assert s.choice_table()[2, VIDEO] == 0
    chars = np.array([[0, 0, 50, 0, 1, 0, 0, 0], [0, 0, 1, 0, 1, 0, 0, 0]], float)  # both QoS now
    s.update(chars, np.ones(2, np.uint8))
    assert s.choice_table()[2, VIDEO] == 1


chars_st = st.lists(st.tuples(st.floats(0, 100), st.floats(0, 1), st.floats(0, 100), st.floats(0, 50),
                              st.floats(0, 1), st.floats(0, 1), st.floats(0, 5000), st.floats(0, 10),
                              st.integers(0, 3), st.booleans()), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(chars_st, st.lists(st.tuples(st.integers(0, 255), st.integers(0, 6)), min_size=1, max_size=30))
def test_compiled_matches_reference(ups, flows):
    text = "[policy.5]\nnetwork = [\"jitter\", \"power\", \"bandwidth\"]\nflow = [\"packet_size\", 0.3, \"needs_qos\"]\n"
    for i, (bw, loss, qd, jit, qos, sec, pw, cost, metric, usable) in enumerate(ups):
        text += uplink(f"u{i}", metric, bandwidth_mbps=bw, loss=loss, queueing_delay_ms=qd,
                       jitter_ms=jit, qos=qos, security=sec, power_mw=pw, cost=cost)
        text += f"usable = {'true' if usable else 'false'}\n"
    cfg = cfg_of(text)
    svc = np.array([f[0] for f in flows], np.uint8)
    prf = np.array([f[1] for f in flows], np.uint16)
    out_c = np.empty(len(flows), np.int16)
    out_r = np.empty(len(flows), np.int16)
    c, r = _select.Selector(cfg), ref.Selector(cfg)
    c.select(svc, prf, out_c)
    r.select(svc, prf, out_r)
    assert (out_c == out_r).all()
    assert c.counters() == r.counters()
    assert np.allclose(c.normalized(), np.array(r.normalized()))


def test_rule_pins_an_uplink_only_via_it():
    """RFC 6419 2.2 per-application policy: 'the corporate prefix only via u1'."""
    from engine import _classify
    from engine.config import PIN_BASE

    text = (uplink("u0", 0, bandwidth_mbps=100) + uplink("u1", 1, bandwidth_mbps=1)
            + '[[rule]]\ndst = "2001:db8:c0::/48"\nuplink = "u1"\n')
    cfg = cfg_of(text)
    rows = np.zeros(2, C.ROW_DTYPE)
    rows["family"] = 6
    rows["proto"] = 17
    rows["dst"][0] = list(bytes.fromhex("20010db800c0" + "00" * 10))
    rows["dst"][1] = list(bytes.fromhex("20010db800c1" + "00" * 10))
    svc, pref = np.zeros(2, np.uint8), np.zeros(2, np.uint16)
    _classify.Classifier(cfg).classify(rows, svc, pref, 2)
    assert pref[0] == PIN_BASE - 1 and pref[1] == 0
    for service in range(4):
        assert pick(cfg, service, PIN_BASE - 1) == 1          # even where u0 would win
        assert pick(cfg, service, 1) == 0
    cfg.uplinks[1].usable = False
    assert pick(cfg, DATA, PIN_BASE - 1) == -1                 # only via u1: nothing else
    s = _select.Selector(cfg)
    assert s.choice_table()[PIN_BASE - 1, DATA] == -1


def test_pin_rule_errors():
    from engine.errors import ConfigError

    base = uplink("u0", 0) + uplink("u1", 1)
    with pytest.raises(ConfigError, match="not an uplink"):
        cfg_of(base + '[[rule]]\nproto = "tcp"\nuplink = "u9"\n')
    with pytest.raises(ConfigError, match="cannot be combined"):
        cfg_of(base + '[[rule]]\nproto = "tcp"\nuplink = "u1"\npreference = 2\n')
    with pytest.raises(ConfigError, match="renumber"):
        cfg_of(base + '[policy.65534]\nnetwork = ["qos"]\nflow = [1]\n[[rule]]\nproto = "tcp"\nuplink = "u1"\n')
