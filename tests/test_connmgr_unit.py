"""The connection manager without a network: its health state machine and its decisions,
driven by a fake clock, a State as netlink would describe the machine, the compiled
selector and flow table.  (tests/test_connmgr.py runs it for real in the testbed.)"""
import re

import numpy as np

import framegen as g
from engine import _flowbase, _select
from engine import _kernel as K
from engine.config import load_config
from engine.connmgr import ConnectionManager, UplinkHealth
from engine.frames import parse_frames
from engine.netlink import Link, State

UP = K.IFF_UP | K.IFF_LOWER_UP


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def machine(cfg):
    st = State()
    for i, u in enumerate(cfg.uplinks, start=2):
        st.links[i] = Link(i, u.device, UP, 1500, bytes(6))
        st.addrs[i] = {bytes(15) + bytes([i]): (64, None)}      # an address of its own
    return st


def policy_text(extra="", uplink0="", uplink1=""):
    """The built-in policy with ``uplink0``/``uplink1`` lines added to ar1's/ar2's
    [[uplink]] table and ``extra`` at the end."""
    from engine.config import default_config_path

    text = open(default_config_path()).read()
    text = text.replace('device = "up1"\n', 'device = "up1"\n' + uplink0 + "\n", 1)
    text = text.replace('device = "up2"\n', 'device = "up2"\n' + uplink1 + "\n", 1)
    return text + extra


def load_text(text, tmp_dir="/tmp"):
    import os
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False, dir=tmp_dir) as f:
        f.write(text)
    try:
        return load_config(f.name)
    finally:
        os.unlink(f.name)


def manager(extra="", known=(True, True), tmp_dir="/tmp", uplink0="", uplink1="", prober=None):
    """A ConnectionManager on a fake clock; with ``prober`` (FakeProber) its probes run too."""
    cfg = load_text(policy_text(extra, uplink0, uplink1), tmp_dir)
    clock, log = Clock(), []
    st = machine(cfg)
    sel = _select.Selector(cfg)
    flows = _flowbase.FlowTable(1024, None, cfg.idle_timeout_s)
    cm = ConnectionManager(cfg, sel, flows, st, lambda: np.array(known, bool), log.append, clock=clock,
                           probes=prober is not None, **({"prober": prober} if prober else {}))
    return cm, st, flows, clock, log


class FakeProber:
    """Prober without sockets: ``answer[target]`` is the RTT a target's reply brings (None:
    it never answers; default 10 ms); replies arrive at the next ``receive``."""

    def __init__(self, dev, targets, ident):
        self.dev, self.targets = dev, list(targets)
        self.round, self.seq = 0, 0
        self.pending, self.replies, self.answer, self.sent = {}, [], {}, []

    def fds(self):
        return []

    def send(self, now):
        self.round += 1
        self.sent.append(now)
        for t in self.targets:
            self.seq += 1
            self.pending[self.seq] = (now, now, self.round)
            rtt = self.answer.get(t, 0.010)
            if rtt is not None:
                self.replies.append((self.seq, rtt))
        return self.round

    def receive(self, now):
        out = [(rtt, self.pending.pop(q)[2]) for q, rtt in self.replies if q in self.pending]
        self.replies = []
        return out

    def expired(self, now, timeout):
        old = [(q, r) for q, (t, _, r) in self.pending.items() if now - t > timeout]
        for q, _ in old:
            del self.pending[q]
        return [r for _, r in old]

    def oldest(self):
        return min((t for t, _, _ in self.pending.values()), default=None)

    def close(self):
        pass


def run_for(cm, clock, seconds, step=0.05):
    """The poll loop on the fake clock: tick, then every prober's replies are 'readable'."""
    end = clock.t + seconds
    while clock.t < end:
        clock.t += step
        cm.tick()
        for i, p in enumerate(cm.probers):
            if p is not None and p.replies:
                cm.probe_readable(i)


def add_flow(flows, uplink, dport, pref=3):
    rows = parse_frames([g.eth(g.ipv6(g.udp(1, dport), 17))])
    out = np.full(1, -1, np.int16)
    flows.insert(rows, np.zeros(1), out, np.array([uplink], np.int16), np.zeros(1, np.uint8),
                 np.array([pref], np.uint16))


def test_health_goes_down_after_down_after_losses_and_up_after_hold():
    h = UplinkHealth(0, "ar1", "up1", window=20, now=0.0)
    assert [h.probe(None, t, 3, 3) for t in (1.0, 1.2)] == [False, False] and h.usable
    assert h.probe(None, 1.4, 3, 3) is True and not h.usable and h.reason == "3 probes lost"
    h.went_down(1.4, 3.0)
    assert h.hold == 3.0
    # answers before the hold-down ends do not bring it back
    assert [h.probe(0.01, t, 3, 3) for t in (1.6, 1.8, 2.0)] == [False, False, False]
    assert h.probe(0.01, 4.5, 3, 3) is True and h.usable


def test_flapping_doubles_the_hold_down():
    h = UplinkHealth(0, "ar1", "up1", window=20, now=0.0)
    h.went_down(10.0, 3.0)
    h.came_up(13.0)
    h.went_down(14.0, 3.0)              # down again 1 s after coming up: flapping
    assert h.hold == 6.0
    h.came_up(20.0)
    h.went_down(21.0, 3.0)
    assert h.hold == 12.0
    h.came_up(100.0)
    h.went_down(200.0, 3.0)             # long stable: back to the configured hold-down
    assert h.hold == 3.0


def test_timeout_adapts_to_the_rtt():
    h = UplinkHealth(0, "ar1", "up1", window=20, now=0.0)
    assert h.timeout(1.0) == 1.0
    for _ in range(5):
        h.probe(0.002, 0.0, 3, 3)
    assert h.timeout(1.0) == 0.25                 # 3 x 2 ms, at least 250 ms
    for _ in range(20):
        h.probe(0.2, 0.0, 3, 3)
    assert abs(h.timeout(1.0) - 0.6) < 1e-9


def test_link_down_moves_only_its_flows():
    cm, st, flows, clock, log = manager()
    add_flow(flows, 0, 1000)
    add_flow(flows, 1, 1001)
    st.links[2].flags = 0                          # ar1's device: admin down
    cm.links_changed()
    assert [h.usable for h in cm.health] == [False, True]
    assert flows.uplink_counts(2).tolist() == [0, 2]
    assert cm.moves[-1]["uplink"] == "ar1" and cm.moves[-1]["reason"] == "link down"
    assert any("uplink ar1 down (link down): 1 flows moved" in line for line in log)


def test_address_removed_and_device_gone_are_named():
    cm, st, flows, clock, log = manager()
    st.addrs[2] = {}
    cm.links_changed()
    assert cm.status()[0]["reason"] == "address removed"
    del st.links[3]
    cm.links_changed()
    assert cm.status()[1]["reason"] == "device removed"
    assert not any(u["usable"] for u in cm.status())


def test_a_device_absent_at_start_is_named_until_it_comes():
    """mmr run starts without an uplink's device: 'no device yet' (not 'removed') through
    other link events; once the device is there with an address, the uplink is usable."""
    cfg = load_text(policy_text(), "/tmp")
    st = machine(cfg)
    del st.links[2], st.addrs[2]                  # ar1's up1 does not exist
    flows = _flowbase.FlowTable(1024, None, cfg.idle_timeout_s)
    cm = ConnectionManager(cfg, _select.Selector(cfg), flows, st, lambda: np.array([True, True], bool), [].append,
                           clock=Clock(), probes=False)
    assert cm.status()[0]["reason"] == "no device yet" and not cm.status()[0]["usable"]
    cm.links_changed()
    assert cm.status()[0]["reason"] == "no device yet"
    st.links[9] = Link(9, "up1", UP, 1500, bytes(6))     # it appears, under another index
    st.addrs[9] = {bytes(15) + b"\x09": (64, None)}
    cm.links_changed()
    assert cm.status()[0]["usable"] and cm.status()[0]["reason"] == ""
    del st.links[9]
    cm.links_changed()
    assert cm.status()[0]["reason"] == "device removed"


def test_failback_return_after_the_hold():
    cm, st, flows, clock, log = manager('\n[monitor]\nfailback = "return"\nfailback_hold_s = 5.0\nhold_down_s = 1.0\n')
    best = int(cm.selector.choice_table()[2, 0])   # where data asking for QoS goes (preference 2)
    add_flow(flows, best, 1000, pref=2)
    add_flow(flows, best, 1001, pref=3)            # load balanced: its turn put it there
    st.links[2 + best].flags = 0
    cm.links_changed()
    assert flows.uplink_counts(2)[best] == 0
    clock.t += 2
    st.links[2 + best].flags = UP
    cm.links_changed()
    assert cm.failback_at == clock.t + 5.0
    clock.t += 5.1
    cm.tick()
    assert any("failback" in line for line in log)
    # the QoS flow is back on its best uplink; the load-balanced one stays where failover put
    # it (sending every balanced flow to the choice table's one uplink would undo the spread)
    assert flows.uplink_counts(2)[best] == 1 and flows.uplink_counts(2)[1 - best] == 1


def test_no_next_hop_keeps_an_uplink_unusable():
    cm, st, flows, clock, log = manager(known=(False, True))
    s = cm.status()
    assert not s[0]["usable"] and s[0]["reason"] == "no next hop" and s[1]["usable"]


def test_next_due_is_the_earliest_timer():
    cm, st, flows, clock, log = manager('\n[monitor]\nfailback = "return"\n')
    assert cm.next_due(clock.t) >= clock.t
    cm.failback_at = clock.t + 0.5
    assert cm.next_due(clock.t) <= clock.t + 0.5


def test_every_uplink_failing_its_probes_at_once_keeps_them():
    """Probes lost on both uplinks (a flood, a broken probe target, a clock jump): the first
    goes down, the last one is kept in use (and said so), and judged by its probes again once
    any probe answers."""
    cm, st, flows, clock, log = manager()
    ar1, ar2 = cm.health
    for _ in range(3):
        clock.t += 0.2
        cm._probe_result(ar1, None, clock.t)
    assert cm.status()[0]["usable"] is False and cm.status()[1]["usable"] is True
    for _ in range(3):
        clock.t += 0.2
        cm._probe_result(ar2, None, clock.t)
    s = cm.status()
    assert s[0]["usable"] and s[1]["usable"] and "kept" in s[1]["reason"], s     # both suspect, both kept
    assert any("every uplink looks down by its probes alone; keeping ar1, ar2" in line for line in log)
    clock.t += 5                                   # past ar1's hold-down: its probes answer
    for _ in range(3):
        cm._probe_result(ar1, 0.001, clock.t)
    s = cm.status()
    assert s[0]["usable"] is True and s[1]["usable"] is False
    assert any("judged by them again" in line for line in log)


def test_a_dead_link_is_not_kept():
    """The suspicion is about probes: a link that is down stays down even if it is the last."""
    cm, st, flows, clock, log = manager()
    st.links[2].flags = 0
    st.links[3].flags = 0
    cm.links_changed()
    assert not any(u["usable"] for u in cm.status())


# ------------------------------------------------------------------ reliability (probe rounds)
THREE = 'probe_targets = ["2001:db8:a1::1", "2001:db8:a1::2", "2001:db8:a1::3"]'


def until(cm, clock, pred, limit, step=0.05):
    """Run the fake loop until pred(); the fake seconds it took (None: not within limit)."""
    t0 = clock.t
    while clock.t - t0 < limit:
        run_for(cm, clock, step, step)
        if pred():
            return clock.t - t0
    return None


def test_reliability_a_round_needs_that_many_targets():
    cm, st, flows, clock, log = manager(uplink0=THREE + "\nreliability = 2", prober=FakeProber)
    p = cm.probers[0]
    run_for(cm, clock, 1.0)
    s = cm.status()[0]
    assert s["usable"] and s["reliability"] == "2/3" and s["probe_loss"] == 0
    p.answer["2001:db8:a1::3"] = None              # one of three silent: two still answer
    run_for(cm, clock, 3.0)
    s = cm.status()[0]
    assert s["usable"] and s["probes"] == "ok" and 0.2 < s["probe_loss"] < 0.5, s
    p.answer["2001:db8:a1::2"] = None              # one of three answers: every round fails
    took = until(cm, clock, lambda: not cm.status()[0]["usable"], 3.0)
    # three failed rounds (200 ms apart), the last decided when its probe times out (250 ms)
    assert took is not None and 0.5 <= took <= 1.0, took
    s = cm.status()[0]
    assert "3 probe rounds with fewer than 2 of 3 targets answering" in s["reason"], s
    assert cm.moves[-1]["uplink"] == "ar1"
    p.answer.clear()
    assert until(cm, clock, lambda: cm.status()[0]["usable"], 6.0) is not None


def test_reliability_one_any_target_keeps_it_up():
    """The default (reliability = 1): one answering target of three is enough."""
    cm, st, flows, clock, log = manager(uplink0=THREE, prober=FakeProber)
    p = cm.probers[0]
    p.answer.update({"2001:db8:a1::1": None, "2001:db8:a1::2": None})
    run_for(cm, clock, 3.0)
    s = cm.status()[0]
    assert s["usable"] and s["reliability"] == "1/3" and s["probe_loss"] > 0.5, s
    p.answer["2001:db8:a1::3"] = None
    assert until(cm, clock, lambda: not cm.status()[0]["usable"], 2.0) is not None


def test_a_round_is_decided_as_soon_as_it_is_certain():
    h = UplinkHealth(0, "ar1", "up1", window=20, now=0.0)
    h.start_round(1, 3, 2)
    assert h.tally(1, True) is None                # 1 of the 2 needed
    assert h.tally(1, True) is True                # 2: success, without waiting for the third
    assert h.tally(1, False) is None and 1 not in h.rounds
    h.start_round(2, 3, 2)
    assert h.tally(2, False) is None
    assert h.tally(2, False) is False              # at most 1 can answer now: failed
    assert h.tally(2, True) is None and not h.rounds
    assert h.tally(99, True) is None               # a round it does not know: ignored


# ------------------------------------------------------------------ per-uplink probe settings
def test_per_uplink_probe_settings_override_monitor():
    cm, st, flows, clock, log = manager("\n[monitor]\ndown_after = 5\n", prober=FakeProber,
                                        uplink0="probe_interval_ms = 1000.0\ndown_after = 2\nhold_down_s = 7.0")
    assert (cm.s[0]["probe_interval_ms"], cm.s[0]["down_after"], cm.s[0]["hold_down_s"]) == (1000.0, 2, 7.0)
    assert (cm.s[1]["probe_interval_ms"], cm.s[1]["down_after"], cm.s[1]["hold_down_s"]) == (200.0, 5, 3.0)
    assert cm.cfg.uplinks[0].monitor["down_after"] == 2 and cm.cfg.uplinks[0].overrides == {
        "probe_interval_ms": 1000.0, "down_after": 2, "hold_down_s": 7.0}
    run_for(cm, clock, 2.0)
    assert len(cm.probers[0].sent) in (2, 3) and 9 <= len(cm.probers[1].sent) <= 11
    cm.probers[1].answer = {t: None for t in cm.probers[1].targets}
    assert until(cm, clock, lambda: not cm.status()[1]["usable"], 3.0) is not None
    assert cm.status()[1]["reason"] == "5 probes lost" and cm.health[1].hold == 3.0
    cm.probers[1].answer = {}
    assert until(cm, clock, lambda: cm.status()[1]["usable"], 8.0) is not None
    cm.probers[0].answer = {t: None for t in cm.probers[0].targets}
    took = until(cm, clock, lambda: not cm.status()[0]["usable"], 5.0)
    assert took is not None and took > 1.0                      # two rounds 1 s apart, then the timeout
    assert cm.status()[0]["reason"] == "2 probes lost" and cm.health[0].hold == 7.0


def test_next_due_follows_each_uplinks_own_interval():
    cm, st, flows, clock, log = manager(prober=FakeProber, uplink0="probe_interval_ms = 1000.0",
                                        uplink1="probe_interval_ms = 300.0")
    cm.tick()
    for p in cm.probers:
        p.replies.clear()
        p.pending.clear()
    assert abs(cm.next_due(clock.t) - (clock.t + 0.3)) < 1e-9


def config_error(text):
    import pytest

    from engine.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_text(text)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def test_probe_setting_errors_name_the_key_and_are_one_sentence():
    msg = config_error(policy_text(uplink0='probe_targets = ["2001:db8:a1::1", "2001:db8:a1::2"]\nreliability = 3'))
    assert "uplink[0].reliability: 3 is more than the 2 probe target(s) of this uplink; write at most 2" in msg
    msg = config_error(policy_text(uplink1="reliability = 2"))       # the gateway is its only target
    assert "uplink[1].reliability: 2 is more than the 1 probe target(s)" in msg
    msg = config_error(policy_text(uplink0="reliability = 0"))
    assert "uplink[0].reliability: 0 is out of range" in msg
    msg = config_error(policy_text(uplink0="probe_interval_ms = 60000.0"))   # [monitor]'s 1 s timeout
    assert "uplink[0].probe_timeout_ms: is shorter than a tenth of the probe interval" in msg
    msg = config_error(policy_text(uplink0="down_after = 0"))
    assert "uplink[0].down_after: 0 is out of range" in msg
    msg = config_error(policy_text(uplink0="degraded_rtt_ms = 100.0\nrecovered_rtt_ms = 100.0"))
    assert "uplink[0].recovered_rtt_ms: 100.0 ms is not below degraded_rtt_ms (100.0 ms)" in msg
    msg = config_error(policy_text("\n[monitor]\ndegraded_loss = 0.1\n", uplink1="recovered_loss = 0.2"))
    assert "uplink[1].recovered_loss: 0.2 is not below degraded_loss (0.1)" in msg
    msg = config_error(policy_text("\n[monitor]\nrecovered_loss = 0.2\n"))
    assert "monitor.recovered_loss: is set but degraded_loss is not" in msg
    msg = config_error(policy_text(uplink0="degraded_loss = 1.5"))
    assert "uplink[0].degraded_loss: 1.5 is out of range" in msg
    msg = config_error(policy_text(uplink0="probe_intervall_ms = 100.0"))
    assert "uplink[0].probe_intervall_ms: unknown key" in msg


# ------------------------------------------------------------------ degraded
def feed(cm, i, rtts):
    """Probe results of uplink i, one round each, 200 ms apart."""
    for rtt in rtts:
        cm.clock.t += 0.2
        cm._probe_result(cm.health[i], rtt, cm.clock.t)


def test_degraded_by_rtt_with_hysteresis():
    """ar1 (the primary: metric 10) with degraded_rtt_ms = 100 (recovers below 80): its RTT
    climbs to 150 ms: degraded after DEGRADED_MIN_SAMPLES and down_after rounds over it,
    usable, its flows stay, new flows of preference 0 and of the delay policy go to ar2; an
    RTT wandering between 85 and 115 ms does not flap it; 10 ms recovers it."""
    from engine.connmgr import DEGRADED_MIN_SAMPLES

    cm, st, flows, clock, log = manager(uplink0="degraded_rtt_ms = 100.0")
    add_flow(flows, 0, 1000)
    assert int(cm.selector.choice_table()[0, 0]) == 0          # preference 0: the primary, ar1
    feed(cm, 0, [0.010] * 5)
    feed(cm, 0, [0.150] * 20)
    h = cm.health[0]
    assert h.degraded and h.degraded_changes == 1
    s = cm.status()
    assert s[0]["usable"] and s[0]["degraded"] and s[0]["degraded_reason"].startswith("RTT ")
    assert not s[1]["degraded"] and s[1]["degraded_reason"] == ""
    assert any(line.startswith("uplink ar1 degraded (RTT ") for line in log), log
    assert flows.uplink_counts(2).tolist() == [1, 0]           # not moved: still usable
    assert not cm.moves
    table = cm.selector.choice_table()
    assert int(table[0, 0]) == 1                               # the primary is now the healthy ar2
    assert s[0]["characteristics"]["queueing_delay"] >= 100    # V_n: at least the probes' RTT
    # around the threshold: 115, 85, 115, 85 ... (mean ~100): stays degraded, no flapping
    feed(cm, 0, [0.115, 0.085] * 30)
    assert h.degraded and h.degraded_changes == 1
    feed(cm, 0, [0.010] * 20)
    assert not h.degraded and h.degraded_changes == 2
    assert any(line.startswith("uplink ar1 recovered (RTT ") for line in log), log
    assert int(cm.selector.choice_table()[0, 0]) == 0
    assert cm.status()[0]["characteristics"]["queueing_delay"] == 30.0     # configured again
    # a single threshold would have flapped: count the crossings of 100 ms in the window mean
    assert DEGRADED_MIN_SAMPLES <= 20


def test_degraded_needs_down_after_rounds_and_enough_samples():
    cm, st, flows, clock, log = manager(uplink0="degraded_rtt_ms = 100.0\ndown_after = 4")
    feed(cm, 0, [0.200] * 9)                      # fewer than DEGRADED_MIN_SAMPLES: not judged
    assert not cm.health[0].degraded
    feed(cm, 0, [0.200] * 3)                      # judged over for 3 rounds: not yet (down_after 4)
    assert not cm.health[0].degraded
    feed(cm, 0, [0.200])
    assert cm.health[0].degraded


def test_degraded_by_loss_without_going_down():
    """Every third probe lost (never down_after in a row): 33 % loss > degraded_loss 0.2."""
    cm, st, flows, clock, log = manager("\n[monitor]\ndegraded_loss = 0.2\n")
    feed(cm, 1, [0.01, 0.01, None] * 8)
    h = cm.health[1]
    assert h.degraded and h.usable and re.fullmatch(r"probe loss 3\d% > 20%", h.degraded_reason), h.degraded_reason
    assert cm.status()[1]["characteristics"]["loss"] > 0.3              # V_n loss: at least the probes'
    assert not cm.health[0].degraded
    feed(cm, 1, [0.01] * 20)
    assert not h.degraded


def test_what_was_lost_while_down_does_not_make_it_degraded():
    cm, st, flows, clock, log = manager("\n[monitor]\ndegraded_loss = 0.2\nhold_down_s = 0.5\n")
    feed(cm, 0, [0.01] * 10 + [None] * 6)         # down: 6 lost
    assert not cm.status()[0]["usable"]
    feed(cm, 0, [0.01] * 12)                      # up again; the window still holds the 6
    assert cm.status()[0]["usable"] and cm.status()[0]["probe_loss"] > 0.2
    assert not cm.health[0].degraded


def test_a_reload_without_thresholds_recovers_it():
    cm, st, flows, clock, log = manager(uplink0="degraded_rtt_ms = 100.0")
    feed(cm, 0, [0.3] * 15)
    assert cm.health[0].degraded
    new = load_text(policy_text())
    cm.apply(new, _select.Selector(new))
    cm._probe_result(cm.health[0], 0.3, clock.t)
    assert not cm.health[0].degraded and int(cm.selector.choice_table()[0, 0]) == 0


# ------------------------------------------------------------------ administrative mode
def test_admin_down_moves_flows_and_auto_gives_them_back_to_probes():
    cm, st, flows, clock, log = manager()
    add_flow(flows, 0, 1000)
    add_flow(flows, 1, 1001)
    s = cm.set_admin("ar1", "down")
    assert s["name"] == "ar1" and s["admin"] == "down" and not s["usable"] and s["reason"] == "admin down"
    assert flows.uplink_counts(2).tolist() == [0, 2]
    assert cm.moves[-1]["uplink"] == "ar1" and cm.moves[-1]["reason"] == "admin down"
    assert any("uplink ar1: administrative mode down (was auto)" in line for line in log)
    assert any("uplink ar1 down (admin down): 1 flows moved" in line for line in log)
    st.links[2].flags = UP                         # link events do not bring it back
    cm.links_changed()
    assert not cm.status()[0]["usable"]
    s = cm.set_admin("ar1", "auto")
    assert s["usable"] and s["admin"] == "auto" and s["reason"] == ""
    assert cm.set_admin("ar1", "auto")["usable"]   # the same mode again: nothing happens
    assert sum("administrative mode" in line for line in log) == 2


def test_admin_up_overrides_link_and_probes_but_not_the_next_hop():
    cm, st, flows, clock, log = manager(known=(True, True))
    st.links[2].flags = 0
    cm.links_changed()
    assert not cm.status()[0]["usable"]
    s = cm.set_admin("ar1", "up")
    assert s["usable"] and s["admin"] == "up" and s["reason"] == "admin up (overriding: link down)", s
    for _ in range(5):
        cm._probe_result(cm.health[0], None, clock.t)
    assert cm.status()[0]["usable"] and cm.status()[0]["probes"] == "failing"
    cm2, *_ = manager(known=(False, True))
    assert not cm2.set_admin("ar1", "up")["usable"]          # no gateway MAC: nothing to send to


def test_admin_down_is_never_kept_as_a_suspect():
    """ar1 administratively down, ar2's probes all lost: ar2 is kept (probes suspect), ar1 is not."""
    cm, st, flows, clock, log = manager()
    cm.set_admin("ar1", "down")
    for _ in range(3):
        clock.t += 0.2
        cm._probe_result(cm.health[1], None, clock.t)
    s = cm.status()
    assert not s[0]["usable"] and s[0]["reason"] == "admin down"
    assert s[1]["usable"] and "kept" in s[1]["reason"]


def test_admin_mode_errors_and_survival_across_a_reload():
    import pytest

    cm, st, flows, clock, log = manager()
    with pytest.raises(ValueError, match="no uplink named 'nope'; the uplinks are ar1, ar2"):
        cm.set_admin("nope", "down")
    with pytest.raises(ValueError, match="'off' is not an administrative mode; use up, down or auto"):
        cm.set_admin("ar1", "off")
    cm.set_admin("ar2", "down")
    new = load_text(policy_text())
    cm.apply(new, _select.Selector(new))
    s = cm.status()
    assert s[1]["admin"] == "down" and not s[1]["usable"]
    from engine.connmgr import ConnMgr
    assert ConnMgr is ConnectionManager
