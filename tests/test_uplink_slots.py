"""Uplink slots (engine/slots.py), the parts that run without a testbed: the policy laid
into slots (positions kept by name across a reload, pins following their uplink, too many
uplinks refused naming the key), the compiled selector never choosing an empty slot
(property test against the selector's own choice table), and the connection manager
moving a removed uplink's flows and starting an added one afresh.  tests/test_uplink_churn.py
runs mmr reload adding and removing uplinks live."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine import _flowbase, _select
from engine.config import PIN_BASE
from engine.connmgr import ConnectionManager
from engine.errors import ConfigError, UserError
from engine.slots import default_slots, slot_names, slotted
from engine.netlink import Link, State
from test_connmgr_unit import UP, Clock, add_flow, load_text

UPLINK = '[[uplink]]\nname = "{n}"\ndevice = "{d}"\ngateway_mac = "02:00:00:00:00:0{i}"\nmetric = {m}\n'


def text(names, extra="", engine=""):
    return ('[engine]\nlan = "lan0"\nlan_prefixes = ["2001:db8:1::/64"]\n' + engine + "\n"
            + "".join(UPLINK.format(n=n, d=f"dev{n}", i=i + 1, m=10 * (i + 1)) for i, n in enumerate(names))
            + extra)


PIN = '[[rule]]\nproto = "udp"\ndport = 53\nuplink = "{n}"\n'


def test_default_slots_leave_headroom_and_are_bounded():
    assert default_slots(1) == 4 and default_slots(2) == 4 and default_slots(5) == 7
    assert default_slots(254) == 254


def test_uplinks_keep_their_slot_by_name_and_pins_follow():
    run = slotted(load_text(text(["a", "b"], PIN.format(n="b"))), 4)
    assert slot_names(run) == ["a", "b", "", ""]
    assert run.policies[PIN_BASE - 1].pin == 1
    # a reload: a removed, c added before b in the file, b pinned
    new = slotted(load_text(text(["c", "b"], PIN.format(n="b"))), 4, slot_names(run))
    assert slot_names(new) == ["c", "b", "", ""]         # c takes the free slot 0, b stays at 1
    assert new.policies[PIN_BASE - 1].pin == 1 and [r.preference for r in new.rules if r.pin] == [PIN_BASE - 1]
    new = slotted(load_text(text(["b", "d", "e"], PIN.format(n="e"))), 4, slot_names(new))
    assert slot_names(new) == ["d", "b", "e", ""]
    assert new.policies[PIN_BASE - 2].pin == 2 and PIN_BASE - 2 not in load_text(text(["b"])).policies
    assert [r.preference for r in new.rules if r.pin] == [PIN_BASE - 2]
    assert all(u.empty and not u.usable and u.device == "" for u in new.uplinks[3:])


def test_more_uplinks_than_slots_is_one_sentence_naming_the_key():
    with pytest.raises(UserError) as e:
        slotted(load_text(text(["a", "b", "c"])), 2, ["a", "b"])
    msg = str(e.value)
    assert "uplink_slots" in msg and "restart" in msg and msg.count(". ") == 0, msg


def test_uplink_slots_fewer_than_the_uplinks_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_text(text(["a", "b"], engine="uplink_slots = 1"), str(tmp_path))
    assert "engine.uplink_slots" in str(e.value) and "write at least 2" in str(e.value)
    assert load_text(text(["a"], engine="uplink_slots = 6"), str(tmp_path)).uplink_slots == 6


@settings(max_examples=60, deadline=None)
@given(present=st.lists(st.booleans(), min_size=6, max_size=6), usable=st.lists(st.booleans(), min_size=6, max_size=6))
def test_the_selector_never_chooses_an_empty_slot(present, usable):
    """Any mix of slots filled and emptied by reloads, any usable mask: every choice of the
    compiled selector (every service and preference, the pins too) names a filled slot."""
    names = [f"u{k}" for k in range(6) if present[k]] or ["u0"]
    cfg = slotted(load_text(text(names, "".join(PIN.format(n=n) for n in names[:1]))), 8)
    sel = _select.Selector(cfg)
    assert _select.__file__.endswith(".so")
    mask = np.array([u and not c.empty for u, c in zip(usable + [True, True], cfg.uplinks)], np.uint8)
    sel.update(np.zeros((8, len(cfg.uplinks[0].chars)), np.float64), mask)
    table = np.asarray(sel.choice_table())
    chosen = set(int(x) for x in np.unique(table)) - {-1}
    assert all(not cfg.uplinks[k].empty for k in chosen), (chosen, slot_names(cfg))
    assert chosen <= {k for k in range(8) if mask[k]}


def machine(cfg):
    """The uplinks' devices as netlink would describe them (an empty slot has none)."""
    st_ = State()
    for i, u in enumerate(cfg.uplinks, start=2):
        if not u.empty:
            st_.links[i] = Link(i, u.device, UP, 1500, bytes(6))
            st_.addrs[i] = {bytes(15) + bytes([i]): (64, None)}
    return st_


def manager(names, slots=4):
    cfg = slotted(load_text(text(names)), slots)
    clock, log = Clock(), []
    st_ = machine(cfg)
    flows = _flowbase.FlowTable(1024, None, cfg.idle_timeout_s)
    # a next hop "known" in every slot: what keeps an empty one out is the manager itself
    cm = ConnectionManager(cfg, _select.Selector(cfg), flows, st_, lambda: np.ones(slots, bool), log.append,
                           clock=clock, probes=False)
    return cm, st_, flows, log


def test_empty_slots_are_hidden_and_never_usable():
    cm, st_, flows, log = manager(["a", "b"])
    assert [u["name"] for u in cm.status()] == ["a", "b"]
    assert cm.usable_mask().tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError):
        cm.set_admin("", "up")                          # an empty slot's name is nobody's


def test_a_removed_uplink_s_flows_move_and_an_added_one_starts_afresh():
    cm, st_, flows, log = manager(["a", "b"])
    add_flow(flows, 0, 1000)
    add_flow(flows, 0, 1002)
    add_flow(flows, 1, 1001)
    cm.remove(0)
    assert flows.uplink_counts(4).tolist() == [0, 3, 0, 0]
    assert {"uplink": "a", "reason": "removed by reload", "flows": 2}.items() <= cm.moves[-1].items()
    assert cm.moved_flows == 2 and any("uplink a down (removed by reload): 2 flows moved" in x for x in log)
    cm.links_changed()                          # a netlink event does not bring it back
    assert not cm.usable_mask()[0]
    new = slotted(load_text(text(["b", "c"])), 4, slot_names(cm.cfg))
    assert slot_names(new) == ["c", "b", "", ""]
    st_.links[2].name = "devc"                  # (the fake machine: slot 0's device is c's now)
    cm.apply(new, _select.Selector(new))
    h = cm.health[0]
    assert (h.name, h.dev, h.removed, h.admin, h.changes) == ("c", "devc", False, "auto", 0)
    assert [u["name"] for u in cm.status()] == ["c", "b"] and cm.usable_mask().tolist() == [1, 1, 0, 0]
