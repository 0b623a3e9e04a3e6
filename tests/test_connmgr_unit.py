"""The connection manager without a network: its health state machine and its decisions,
driven by a fake clock, a State as netlink would describe the machine, the compiled
selector and flow table.  (tests/test_connmgr.py runs it for real in the testbed.)"""
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


def manager(extra="", known=(True, True), tmp_dir="/tmp"):
    import os
    import tempfile

    from engine.config import default_config_path

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False, dir=tmp_dir) as f:
        f.write(open(default_config_path()).read() + extra)
    cfg = load_config(f.name)
    os.unlink(f.name)
    clock, log = Clock(), []
    st = machine(cfg)
    sel = _select.Selector(cfg)
    flows = _flowbase.FlowTable(1024, None, cfg.idle_timeout_s)
    cm = ConnectionManager(cfg, sel, flows, st, lambda: np.array(known, bool), log.append, clock=clock,
                           probes=False)
    return cm, st, flows, clock, log


def add_flow(flows, uplink, dport):
    rows = parse_frames([g.eth(g.ipv6(g.udp(1, dport), 17))])
    out = np.full(1, -1, np.int16)
    flows.insert(rows, np.zeros(1), out, np.array([uplink], np.int16), np.zeros(1, np.uint8), np.array([3], np.uint16))


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


def test_failback_return_after_the_hold():
    cm, st, flows, clock, log = manager('\n[monitor]\nfailback = "return"\nfailback_hold_s = 5.0\nhold_down_s = 1.0\n')
    best = int(cm.selector.choice_table()[3, 0])   # where untagged data goes (preference 3)
    add_flow(flows, best, 1000)
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
    assert flows.uplink_counts(2)[best] == 1       # the flow is back on its best uplink


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
