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


# ------------------------------------------------------------ load balancing: weights, sticky
LB = C.PREF_LOAD_BALANCE


def lb_cfg(*ups, sticky=0, extra=""):
    """ups: (name, metric, weight or None, extra uplink lines)."""
    text = f"[select]\nsticky_s = {sticky}\n" + extra
    for name, metric, weight, more in ups:
        text += uplink(name, metric) + ("" if weight is None else f"weight = {weight}\n") + more
    return cfg_of(text)


def run_lb(sel, n, service=DATA, pref=LB):
    out = np.empty(n, np.int16)
    sel.select(np.full(n, service, np.uint8), np.full(n, pref, np.uint16), out)
    return out.tolist()


def test_load_balancing_follows_the_weights_exactly():
    cfg = lb_cfg(("a", 1, 3, ""), ("b", 2, 1, ""))
    c, r = _select.Selector(cfg), ref.Selector(cfg)
    got = run_lb(c, 400)
    assert got == run_lb(r, 400)
    assert got.count(0) == 300 and got.count(1) == 100
    for k in range(1, 401):                  # smooth: every prefix within one flow of 3:1
        assert abs(got[:k].count(0) - 0.75 * k) <= 1
    assert got[:4] == [0, 0, 1, 0]           # interleaved, not 300 then 100
    assert c.counters() == r.counters() and c.counters()["selected"] == [300, 100]


def test_default_weight_is_the_bandwidth_and_equal_without_one():
    cfg = cfg_of(uplink("a", 1, bandwidth_mbps=20) + uplink("b", 2, bandwidth_mbps=50))
    c = _select.Selector(cfg)
    assert c.weights().tolist() == [20.0, 50.0]
    got = run_lb(c, 70)
    assert got.count(0) == 20 and got.count(1) == 50
    assert c.choice_table()[LB, DATA] == 1   # a rotation starts on the largest weight
    cfg = cfg_of(uplink("a", 1) + uplink("b", 2) + uplink("c", 3))
    c = _select.Selector(cfg)
    assert c.weights().tolist() == [1.0, 1.0, 1.0]
    assert run_lb(c, 6) == [0, 1, 2, 0, 1, 2]


def test_weight_zero_gets_no_share_and_none_usable_drops():
    cfg = lb_cfg(("a", 1, 0, ""), ("b", 2, None, "bandwidth_mbps = 10\n"), ("c", 3, 2.5, ""))
    c, r = _select.Selector(cfg), ref.Selector(cfg)
    got = run_lb(c, 250)
    assert got == run_lb(r, 250) and 0 not in got
    assert got.count(1) == 200 and got.count(2) == 50      # 10 : 2.5
    only_zero = lb_cfg(("a", 1, 0, ""), ("b", 2, 0, ""))
    c = _select.Selector(only_zero)
    assert run_lb(c, 3) == [-1, -1, -1] and c.counters()["no_uplink"] == 3
    assert run_lb(c, 2, pref=1) == [0, 0]                  # other preferences do not care
    assert c.choice_table()[LB, DATA] == -1


def test_down_uplink_gets_no_share_and_comes_back_fresh():
    cfg = lb_cfg(("a", 1, 1, ""), ("b", 2, 1, ""), ("c", 3, 1, ""))
    c, r = _select.Selector(cfg), ref.Selector(cfg)
    chars = np.zeros((3, C.N_CHARS))
    assert run_lb(c, 2) == run_lb(r, 2) == [0, 1]
    for s in (c, r):
        s.update(chars, np.array([1, 0, 1], np.uint8))
    assert c.rotation().tolist() == [0.0, 0.0, 0.0]         # other shares: a new rotation
    got = run_lb(c, 6)
    assert got == run_lb(r, 6) == [0, 2, 0, 2, 0, 2]
    for s in (c, r):
        s.update(chars, np.ones(3, np.uint8))
    got = run_lb(c, 30)
    assert got == run_lb(r, 30) and [got.count(u) for u in range(3)] == [10, 10, 10]
    assert np.array_equal(c.rotation(), r.rotation())


def test_ties_go_to_the_drafts_load_balancing_score_then_metric():
    # equal weights: the first flow goes where section 5.2 would send it (lowest queueing delay)
    cfg = cfg_of(uplink("a", 1, queueing_delay_ms=40) + "weight = 1\n" + uplink("b", 2, queueing_delay_ms=10)
                 + "weight = 1\n" + uplink("c", 3, queueing_delay_ms=25) + "weight = 1\n")
    assert run_lb(_select.Selector(cfg), 6) == [1, 2, 0, 1, 2, 0]


def test_other_preferences_keep_the_metric_winner_between_balanced_flows():
    cfg = cfg_of(CASE_51.replace("loss = 0.02\n", "loss = 0.02\nweight = 1\n")
                 .replace("loss = 0.001\n", "loss = 0.001\nweight = 1\n"))
    c = _select.Selector(cfg)
    svc = np.array([VIDEO, VOIP, DATA, CONTROL] * 25, np.uint8)
    prf = np.array([1, 3, 1, 3] * 25, np.uint16)
    out = np.empty(100, np.int16)
    c.select(svc, prf, out)
    assert set(out[prf == 1].tolist()) == {0}               # max throughput: wlan, always
    lb = out[prf == 3].tolist()
    assert lb.count(0) == lb.count(1) == 25


def rows_from(srcs):
    rows = np.zeros(len(srcs), C.ROW_DTYPE)
    for i, s in enumerate(srcs):
        rows[i]["src"] = list(bytes(14) + bytes([0, s]))
    return rows


def test_sticky_sources_keep_their_uplink_while_live():
    cfg = lb_cfg(("a", 1, 1, ""), ("b", 2, 1, ""), sticky=60)
    for s in (_select.Selector(cfg), ref.Selector(cfg)):
        src = [1, 1, 2, 1, 2, 3, 3]
        ts = np.array([0.0, 1, 2, 30, 40, 50, 55])
        out = np.empty(7, np.int16)
        s.select(np.zeros(7, np.uint8), np.full(7, LB, np.uint16), out, rows=rows_from(src), ts=ts)
        # source 1 -> a, 2 -> b (the rotation turns only for a source's first flow), 3 -> a
        assert out.tolist() == [0, 0, 1, 0, 1, 0, 0]
        assert s.counters()["sticky"] == 4
        # 60 s after its last flow a source is forgotten: 1 (last at 30) chooses again at 91
        s.select(np.zeros(2, np.uint8), np.full(2, LB, np.uint16), out, 2, rows=rows_from([1, 2]),
                 ts=np.array([91.0, 95.0]))
        assert out[:2].tolist() == [1, 1]        # 1: rotation (b); 2: live since 40 -> b
        # stickiness is for load balancing only: other preferences keep their winner
        s.select(np.zeros(1, np.uint8), np.ones(1, np.uint16), out, 1, rows=rows_from([2]), ts=np.array([96.0]))
        assert out[0] == 0


def test_sticky_source_on_a_down_uplink_chooses_again():
    cfg = lb_cfg(("a", 1, 1, ""), ("b", 2, 1, ""), sticky=600)
    c, r = _select.Selector(cfg), ref.Selector(cfg)
    outs = []
    for s in (c, r):
        out = np.empty(4, np.int16)
        s.select(np.zeros(2, np.uint8), np.full(2, LB, np.uint16), out, 2, rows=rows_from([7, 8]),
                 ts=np.array([1.0, 2.0]))
        assert out[:2].tolist() == [0, 1]
        s.update(np.zeros((2, C.N_CHARS)), np.array([0, 1], np.uint8))
        s.update(np.zeros((2, C.N_CHARS)), np.array([1, 1], np.uint8))   # back, but 7 forgot a
        s.select(np.zeros(2, np.uint8), np.full(2, LB, np.uint16), out[2:], 2, rows=rows_from([7, 8]),
                 ts=np.array([3.0, 4.0]))
        outs.append(out.tolist())
    assert outs[0] == outs[1] and outs[0][3] == 1 and c.counters() == r.counters()
    assert c.sticky_sources() == 2


def test_reload_keeps_the_rotation_and_sticky_sources():
    from engine.pipeline import Pipeline

    cfg = lb_cfg(("a", 1, 1, ""), ("b", 2, 1, ""), sticky=600)
    p = Pipeline(cfg)
    old = p.selector
    run_lb(old, 1)
    rows = rows_from([5])
    out = np.empty(1, np.int16)
    old.select(np.zeros(1, np.uint8), np.full(1, LB, np.uint16), out, rows=rows, ts=np.array([1.0]))
    assert out[0] == 1
    p.apply(lb_cfg(("a", 1, 1, ""), ("b", 2, 1, ""), sticky=300))
    assert p.selector is not old and p.selector.sticky_s == 300
    assert np.array_equal(p.selector.rotation(), old.rotation())
    p.selector.select(np.zeros(1, np.uint8), np.full(1, LB, np.uint16), out, rows=rows, ts=np.array([2.0]))
    assert out[0] == 1 and p.selector.counters()["sticky"] == 1
    p.apply(lb_cfg(("a", 1, 1, ""), ("c", 2, 1, ""), sticky=300))    # other uplinks: fresh
    assert p.selector.sticky_sources() == 0


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.sampled_from([0, 0.5, 1, 2, 3, 7.25])),
                          st.floats(0, 100), st.integers(0, 3), st.booleans()), min_size=1, max_size=5),
       st.sampled_from([0, 5, 60]),
       st.lists(st.tuples(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([0, 1, 2, 3, 3, 3, 9]),
                                              st.integers(0, 12), st.floats(0, 4)), max_size=25),
                          st.lists(st.booleans(), min_size=5, max_size=5)), min_size=1, max_size=6))
def test_compiled_matches_reference_on_balanced_batches(ups, sticky, batches):
    """Weights (none, 0, fractions), sticky on or off, usable masks changing between batches:
    the same outputs, counters, rotation values."""
    text = f"[select]\nsticky_s = {sticky}\n"
    for i, (w, bw, metric, usable) in enumerate(ups):
        text += uplink(f"u{i}", metric, bandwidth_mbps=bw, queueing_delay_ms=10 * i)
        text += ("" if w is None else f"weight = {w}\n") + f"usable = {'true' if usable else 'false'}\n"
    cfg = cfg_of(text)
    c, r = _select.Selector(cfg), ref.Selector(cfg)
    n_up = len(ups)
    t = 0.0
    for flows, mask in batches:
        n = len(flows)
        svc = np.array([f[0] for f in flows], np.uint8)
        prf = np.array([f[1] for f in flows], np.uint16)
        rows = rows_from([f[2] for f in flows])
        ts = t + np.cumsum([f[3] for f in flows])
        t = float(ts[-1]) if n else t
        oc, orr = np.empty(n, np.int16), np.empty(n, np.int16)
        c.select(svc, prf, oc, rows=rows, ts=ts)
        r.select(svc, prf, orr, rows=rows, ts=ts)
        assert oc.tolist() == orr.tolist()
        assert np.array_equal(c.rotation(), r.rotation())
        usable = np.array(mask[:n_up], np.uint8)
        chars = np.array([[u[1]] + [0.0] * (C.N_CHARS - 1) for u in ups])
        c.update(chars, usable)
        r.update(chars, usable)
    assert c.counters() == r.counters()
    assert np.array_equal(c.weights(), r.weights())


@pytest.mark.parametrize("text,key,problem", [
    ("weight = -1\n", "uplink[0].weight", "-1.0 is out of range"),
    ('weight = "heavy"\n', "uplink[0].weight", "must be a number, got str"),
    ("weight = true\n", "uplink[0].weight", "must be a number, got bool"),
    ("weight = nan\n", "uplink[0].weight", "must be a finite number"),
    ("weight = inf\n", "uplink[0].weight", "must be a finite number"),
    ("weight = [1, 2]\n", "uplink[0].weight", "must be a number, got list"),
    ("[select]\nsticky_s = -5\n", "select.sticky_s", "-5.0 is out of range"),
    ('[select]\nsticky_s = "10m"\n', "select.sticky_s", "must be a number"),
    ("[select]\nsticky = 10\n", "select.sticky", "unknown key"),
    ("select = 3\n", "select", "must be a table"),
])
def test_weight_and_sticky_errors_are_one_sentence(text, key, problem):
    from engine.errors import ConfigError

    body = uplink("a", 1) + text if not text.startswith(("[select]", "select")) else text + "\n" + uplink("a", 1)
    with pytest.raises(ConfigError) as e:
        cfg_of(body)
    msg = str(e.value)
    assert e.value.key == key and problem in msg and "\n" not in msg, msg
    assert ("weight" not in key or "a share of the load-balanced flows" in msg)


def test_weight_and_sticky_are_read():
    cfg = cfg_of("[select]\nsticky_s = 600\n" + uplink("a", 1) + "weight = 3\n" + uplink("b", 2) + "weight = 0\n"
                 + uplink("c", 3))
    assert [u.weight for u in cfg.uplinks] == [3.0, 0.0, None] and cfg.select["sticky_s"] == 600.0
    assert cfg_of(uplink("a", 1)).select == {"sticky_s": 0.0}


# ------------------------------------------------------------------ resolvers pinned to their uplink
RESOLVERS = {"u0": ["2001:db8:a0::53", "198.18.0.53"], "u1": ["2001:db8:a1::53"], "u2": ["198.18.2.53"]}
OTHERS = ["2001:db8:ff::1", "198.51.100.1", "2001:db8:a1::54"]


def resolver_cfg(metrics=(0, 1, 2), default_preference=0):
    text = f"[engine]\ndefault_preference = {default_preference}\n"
    for k, m in enumerate(metrics):
        text += uplink(f"u{k}", m, bandwidth_mbps=10 * (k + 1), queueing_delay_ms=10 * (3 - k))
        text += "dns = [" + ", ".join(f'"{a}"' for a in RESOLVERS[f"u{k}"]) + "]\n"
    return cfg_of(text)


def test_a_resolver_takes_the_uplink_that_gave_it_whatever_the_metric():
    """RFC 6419 2.3.1: the primary (lowest metric) is u0, yet a new flow to u1's or u2's
    resolver leaves through u1 or u2; with that uplink unusable it gets none (-1, counted)
    rather than another ISP's; other destinations follow the metric."""
    from engine import _pipeline
    import framegen as g
    from engine.frames import pack_frames
    from engine.ref.pipeline import RefPipeline

    cfg = resolver_cfg()
    dsts = ["2001:db8:a1::53", "198.18.2.53", "2001:db8:a0::53", "2001:db8:ff::1", "198.51.100.1"]
    frames = [g.eth(g.ipv6(g.udp(5300 + k, 53, b"q"), 17, src="2001:db8:1::10", dst=d)) if ":" in d else
              g.eth(g.ipv4(g.udp(5300 + k, 53, b"q"), 17, src="192.0.2.10", dst=d), 0x0800)
              for k, d in enumerate(dsts)]
    buf, off, ln = pack_frames(frames)
    for usable, want in (([1, 1, 1], [1, 2, 0, 0, 0]), ([1, 0, 1], [C.DROP if False else -3, 2, 0, 0, 0])):
        pipe, ref_pipe = _pipeline.Pipeline(cfg, batch=16), RefPipeline(cfg)
        chars = np.zeros((3, C.N_CHARS))
        pipe.selector.update(chars, np.array(usable, np.uint8))
        ref_pipe.selector.update(chars, np.array(usable, np.uint8))
        ts = np.full(len(frames), 10.0)
        out = pipe.process(np.array(buf, np.uint8), off, ln, ts).tolist()
        assert out == ref_pipe.process(np.array(buf, np.uint8), off, ln, ts).tolist()
        assert out[:3] == [1 if usable[1] else _pipeline.DROP, 2, 0] and out[3:] == [0, 0], out
        c = pipe.selector.counters()
        assert c["resolver_pinned"] == (3 if usable[1] else 2) and c["resolver_down"] == (0 if usable[1] else 1)
        assert c == ref_pipe.selector.counters()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sum(RESOLVERS.values(), []) + OTHERS), st.integers(1024, 1100),
                          st.integers(0, 3)), min_size=1, max_size=30),
       st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=1, max_size=4),
       st.sampled_from([0, 1, 3]), st.permutations([0, 1, 2]))
def test_pinned_resolvers_compiled_match_reference(flows, masks, default_preference, metrics):
    """Batches of new and known flows to resolvers and to other addresses, usable masks
    changing between batches, load balancing or the metric for the rest: the compiled
    pipeline and the reference give the same uplinks and counters."""
    from engine import _pipeline
    import framegen as g
    from engine.frames import pack_frames
    from engine.ref.pipeline import RefPipeline

    cfg = resolver_cfg(metrics, default_preference)
    pipe, ref_pipe = _pipeline.Pipeline(cfg, batch=64), RefPipeline(cfg)
    chars = np.array([[10.0 * (k + 1), 0, 10.0 * (3 - k)] + [0.0] * (C.N_CHARS - 3) for k in range(3)])
    t = 1.0
    for mask in masks:
        usable = np.array(mask, np.uint8)
        pipe.selector.update(chars, usable)
        ref_pipe.selector.update(chars, usable)
        frames = [g.eth(g.ipv6(g.udp(sp, 53, b"q"), 17, src=f"2001:db8:1::{k + 1:x}", dst=d)) if ":" in d else
                  g.eth(g.ipv4(g.udp(sp, 53, b"q"), 17, src=f"192.0.2.{k + 1}", dst=d), 0x0800)
                  for sp, (d, _, k) in ((f[1], f) for f in flows)]
        buf, off, ln = pack_frames(frames)
        ts = np.full(len(frames), t)
        t += 1.0
        out = pipe.process(np.array(buf, np.uint8), off, ln, ts).tolist()
        assert out == ref_pipe.process(np.array(buf, np.uint8), off, ln, ts).tolist()
    assert pipe.selector.counters() == ref_pipe.selector.counters()
    assert sorted(pipe.selector.resolvers()) == sorted(ref_pipe.selector.resolvers())


def test_resolver_errors_are_one_sentence():
    from engine.errors import ConfigError

    both = uplink("u0", 0) + 'dns = ["2001:db8::53"]\n' + uplink("u1", 1) + 'dns = ["2001:db8::53"]\n'
    with pytest.raises(ConfigError, match=r"uplink\[1\]\.dns: 2001:db8::53 is already a resolver of uplink 'u0'; "):
        cfg_of(both)
    with pytest.raises(ConfigError, match=r"uplink\[0\]\.dns: 'dns.example' is not an IPv6 or IPv4 address"):
        cfg_of(uplink("u0", 0) + 'dns = ["dns.example"]\n')
    many = uplink("u0", 0) + "dns = [" + ", ".join(f'"2001:db8::{k + 1:x}"' for k in range(65)) + "]\n"
    with pytest.raises(ConfigError, match="at most 64"):
        cfg_of(many)


def test_rdnss_options_are_read_within_their_bounds():
    """What a router on the uplink wrote: RDNSS options among others, and options that lie
    about their length, are read only as far as they truly go."""
    import socket
    import struct

    from engine.netlink import rdnss_servers

    a, b = (socket.inet_pton(socket.AF_INET6, x) for x in ("2001:db8:a1::53", "2001:db8:a1::35"))
    mtu = struct.pack("!BBHI", 5, 1, 0, 1500)
    rdnss = struct.pack("!BBHI", 25, 5, 0, 1800) + a + b
    assert rdnss_servers(mtu + rdnss) == [(a, 1800), (b, 1800)]
    assert rdnss_servers(rdnss[:-8]) == []                                   # cut short
    assert rdnss_servers(struct.pack("!BBHI", 25, 2, 0, 9) + a[:8]) == []    # even length: no address
    assert rdnss_servers(struct.pack("!BBHI", 25, 0, 0, 9) + rdnss) == []    # length 0 ends the walk
    assert rdnss_servers(b"") == [] and rdnss_servers(b"\x19\x03") == []
