"""Uplinks that come and go, the parts that run without a testbed: the translation's address
following (no address at start said once, a gone address's mappings kept for the moved
flows a moment, then dropped) on the compiled translator, and probes on a device that is
absent (nothing sent through an unbound socket).  tests/test_uplink_churn.py runs the
whole of it live."""
import ipaddress

import pytest

from engine import _forward, _nat
from engine._pipeline import Pipeline
from engine.config import load_config
from engine.connmgr import Prober
from engine.translate import LINGER_S, Translation

ADDR = ipaddress.ip_address("198.18.1.2")
OTHER = ipaddress.ip_address("198.18.1.3")
LAN = [ipaddress.ip_network("192.168.1.0/24")]


class Log:
    def __init__(self):
        self.lines, self.warnings = [], []

    def __call__(self, text):
        self.lines.append(text)

    def warning(self, text):
        self.warnings.append(text)


class State:
    """What Translation reads of engine.netlink.State: the addresses per device index."""

    def __init__(self):
        self.addrs = {}

    def addresses(self, index):
        return list(self.addrs.get(index, []))


def translation(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text('[engine]\nlan = "lan0"\nlan_prefixes = ["192.168.1.0/24"]\n'
                 '[[uplink]]\nname = "isp1"\ndevice = "up1"\nnat = "masquerade"\n'
                 '[[uplink]]\nname = "isp2"\ndevice = "up2"\nnat = "none"\n')
    cfg = load_config(str(p))
    fw = _forward.Forwarder(Pipeline(cfg, batch=16), True, 2, 16)
    log = Log()
    t = Translation(cfg, fw, True, log)
    assert type(t.nat) is _nat.Nat44 and _nat.__file__.endswith(".so")      # the compiled one
    return t, log


def test_no_address_at_start_is_said_once_and_translation_starts_when_it_comes(tmp_path):
    t, log = translation(tmp_path)
    st = State()
    for _ in range(3):                                  # every netlink event refreshes
        t.refresh(st, [None, None], LAN)                # the device absent
        t.refresh(st, [7, None], LAN)                   # there, no IPv4 address yet
    said = [w for w in log.warnings if "has no IPv4 address" in w]
    assert len(said) == 1 and "isp1 (up1, absent)" in said[0], log.warnings
    assert t.nat.address(0) is None and t.status()["uplinks"]["isp1"]["address"] is None
    st.addrs[7] = [ADDR]
    assert t.refresh(st, [7, None], LAN)
    assert t.nat.address(0) == ADDR.packed and "uplink isp1 translates IPv4 to 198.18.1.2" in log.lines
    assert t.guard_sets()["nat4"] == ("ipv4_addr", ["198.18.1.2"])
    st.addrs[7] = []                                    # gone again: said again, once
    t.refresh(st, [7, None], LAN)
    t.refresh(st, [7, None], LAN)
    assert len([w for w in log.warnings if "has no IPv4 address" in w]) == 2


def test_a_gone_address_lingers_for_the_moved_flows_then_goes(tmp_path):
    """The device (or its address) goes: status and the guard say no address at once; the
    translator keeps the old address and its mappings for LINGER_S (the moved flows' next
    packets find them and count as moved), then drops them."""
    t, log = translation(tmp_path)
    st = State()
    st.addrs[7] = [ADDR]
    t.refresh(st, [7, None], LAN)
    del st.addrs[7]
    t.refresh(st, [None, None], LAN)
    assert t.status()["uplinks"]["isp1"]["address"] is None and t.guard_sets()["nat4"][1] == []
    assert t.nat.address(0) == ADDR.packed
    now = t.lose_at[0] - LINGER_S
    t.expire(now + LINGER_S / 2)
    assert t.nat.address(0) == ADDR.packed
    t.expire(now + LINGER_S + 0.01)
    assert t.nat.address(0) is None and any("its IPv4 address is gone" in x for x in log.lines), log.lines
    # back with another address during the linger: taken at once, the old mappings dropped
    st.addrs[8] = [ADDR]
    t.refresh(st, [8, None], LAN)
    del st.addrs[8]
    t.refresh(st, [None, None], LAN)
    st.addrs[9] = [OTHER]
    t.refresh(st, [9, None], LAN)
    assert t.nat.address(0) == OTHER.packed and t.lose_at[0] is None
    t.expire(now + 100)
    assert t.nat.address(0) == OTHER.packed


@pytest.mark.privileged                  # raw ICMP sockets
def test_probes_of_an_absent_device_are_not_sent_elsewhere():
    """SO_BINDTODEVICE fails for a device that does not exist: the prober stays unbound and
    sends nothing (an unbound socket would probe through whatever route the kernel has),
    every probe counting as lost, until rebind() finds the device."""
    p = Prober("nosuchdev0", ["192.0.2.1", "2001:db8::1"], 1)
    try:
        assert not p.bound and not p.rebind()
        p.send(0.0)
        assert len(p.pending) == 2                      # recorded: they time out as lost
        bound = Prober("lo", ["127.0.0.1"], 2)
        assert bound.bound and bound.rebind()
        for s in bound.socks.values():
            s.close()
    finally:
        for s in p.socks.values():
            s.close()
